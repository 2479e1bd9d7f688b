import { afterAll, beforeAll } from "vitest"
import fs from "node:fs"
const ticks = () => {
  const f = fs.readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ")
  // fields after ") ": state is index 0 → utime=11, stime=12, cutime=13, cstime=14
  return { self: Number(f[11]) + Number(f[12]), children: Number(f[13]) + Number(f[14]) }
}
let start = ticks(), t0 = Date.now(), name = ""
beforeAll((suite: any) => { start = ticks(); t0 = Date.now(); name = suite?.filepath ?? suite?.file?.filepath ?? "?" })
afterAll(() => {
  const end = ticks()
  fs.appendFileSync("/tmp/cpu.tsv", `${name.split("/").pop()}\t${(end.self - start.self) / 100}\t${(end.children - start.children) / 100}\t${(Date.now() - t0) / 1000}\n`)
})
