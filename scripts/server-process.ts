/** What the benchmarks share: the compiled server's node flags, waiting for it, and reading its memory. */
import { readFileSync } from "node:fs"
import * as Path from "node:path"

export const root = Path.resolve(import.meta.dirname, "..")

/** The node flags `npm start` runs the server with, read from package.json so benchmarks never drift from it. */
export const startFlags = (): Array<string> => {
  const start: string = JSON.parse(readFileSync(Path.join(root, "package.json"), "utf8")).scripts.start
  const flags = /\bnode\s+(.*?)\s*dist\/main\.js/.exec(start)?.[1]
  if (flags === undefined) throw new Error(`cannot find the node command in the start script: ${start}`)
  return flags.split(/\s+/).filter(Boolean)
}

/** Resolves once `url` answers (any status below 500). */
export const waitHealthy = async (url: string) => {
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(url, { signal: AbortSignal.timeout(1000) })).status < 500) return
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${url} did not come up`)
}

/** A process's peak (`VmHWM`) or current (`VmRSS`) resident set size, in MB. */
export const memoryMb = (pid: number, field: "VmHWM" | "VmRSS"): number =>
  Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN) / 1024
