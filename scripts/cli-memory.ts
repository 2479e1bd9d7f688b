/**
 * The CLI's memory with a large batch (not a test): `openai-batch submit FILE --watch` of 50,000 chat requests
 * (about 100 MB, each padded with a long system message), run as the compiled `bin` (`dist/cli/main.js`) against the
 * compiled server and the simulator. The file is checked, uploaded and its results downloaded as streams, so the
 * CLI's peak RSS (VmHWM) should not grow with the file: run two sizes to see it.
 *
 *   npm run bench:cli [-- --mb 100 --lines 50000]
 */
import { spawn } from "node:child_process"
import { createWriteStream, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { freePort } from "../test/support/ServerProcess.js"
import { buildPrograms, memoryMb, root, spawnServer, stopChildren, waitHealthy } from "./server-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const TOTAL = arg("mb", 100) * 1024 * 1024
const LINES = arg("lines", 50_000)

/** Writes `LINES` chat requests of about `TOTAL` bytes in all to `path`, never whole in memory. */
const writeInput = async (path: string) => {
  const out = createWriteStream(path)
  const size = Math.floor(TOTAL / LINES)
  for (let i = 0; i < LINES; i++) {
    const head = `{"custom_id":"req-${i}","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"system","content":"`
    const tail = `"},{"role":"user","content":"request ${i}"}]}}\n`
    if (!out.write(head + "x".repeat(Math.max(0, size - head.length - tail.length)) + tail)) {
      await new Promise<void>((resolve) => out.once("drain", () => resolve()))
    }
  }
  await new Promise<void>((resolve) => out.end(() => resolve()))
}

const main = async () => {
  buildPrograms()
  const dir = mkdtempSync(Path.join(tmpdir(), "cli-bench-"))
  const children: Array<ReturnType<typeof spawn>> = []
  try {
    const simPort = await freePort()
    children.push(spawn(process.execPath, ["--import", "tsx", "scripts/simulator.ts", "--port", String(simPort)], { cwd: root, stdio: "ignore" }))
    const simUrl = `http://127.0.0.1:${simPort}/v1`
    const port = await freePort()
    children.push(spawnServer({ port, dataDir: Path.join(dir, "data"), env: { INFERENCE_BASE_URL: simUrl } }))
    const base = `http://127.0.0.1:${port}/v1`
    await Promise.all([waitHealthy(`${simUrl}/models`), waitHealthy(`${base}/health`)])
    const input = Path.join(dir, "input.jsonl")
    await writeInput(input)

    const started = performance.now()
    const cli = spawn(process.execPath, ["dist/cli/main.js", "submit", input, "--watch", "--out", Path.join(dir, "out")], {
      cwd: root,
      env: { ...process.env, OPENAI_BASE_URL: base },
      stdio: ["ignore", "pipe", "inherit"]
    })
    let output = ""
    cli.stdout!.on("data", (d) => (output += d))
    // VmHWM is the peak so far: the last reading before the process ends is its peak.
    let peak = 0
    const sampler = setInterval(() => {
      try {
        const now = memoryMb(cli.pid!, "VmHWM")
        if (Number.isFinite(now)) peak = now // NaN once the process is a zombie
      } catch {
        // gone
      }
    }, 50)
    const code = await new Promise<number | null>((resolve) => cli.once("exit", resolve))
    clearInterval(sampler)
    console.log(output.split("\n").filter((l) => !l.startsWith("[")).join("\n"))
    console.log(`${LINES} requests, ${(TOTAL / 1024 / 1024).toFixed(0)} MiB: exit ${code} in ` +
      `${((performance.now() - started) / 1000).toFixed(1)} s; CLI peak RSS ${peak.toFixed(0)} MB`)
  } finally {
    await stopChildren(children)
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
