/**
 * What the benchmarks share: building the programs, the server's node flags, waiting for it, reading its memory,
 * stopping it.
 */
import { type ChildProcess, execSync, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import * as Path from "node:path"
import { startFlags } from "../src/cli/serve.js"

/** The node flags `npm start` runs the server with (shared with the CLI's `serve`). */
export { startFlags }

export const root = Path.resolve(import.meta.dirname, "..")

/** `npm run build`: the bundled `dist/main.js` and `dist/cli/main.js` that `npm start` and the bin run. */
export const buildPrograms = () => execSync("npm run build --silent", { cwd: root, stdio: "inherit" })

/**
 * The compiled server (`dist/main.js`, `npm run build` first) on 127.0.0.1:`port` with `dataDir`: `npm start`'s node
 * flags unless `nodeFlags` are given, this process's environment with `env` on top, its stdout shown or not.
 */
export const spawnServer = (options: {
  readonly port: number
  readonly dataDir: string
  readonly env?: Record<string, string>
  readonly nodeFlags?: ReadonlyArray<string>
  readonly stdout?: "ignore" | "inherit"
}) =>
  spawn(process.execPath, [...(options.nodeFlags ?? startFlags()), "dist/main.js"], {
    cwd: root,
    env: { ...process.env, PORT: String(options.port), HOST: "127.0.0.1", DATA_DIR: options.dataDir, ...options.env },
    stdio: ["ignore", options.stdout ?? "ignore", "inherit"]
  })

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

/** Stops the benchmark's child processes (SIGTERM) and waits until each has exited. */
export const stopChildren = (children: ReadonlyArray<ChildProcess>) => {
  for (const child of children) child.kill("SIGTERM")
  return Promise.all(children.map((child) => new Promise((resolve) => child.exitCode !== null ? resolve(null) : child.once("exit", resolve))))
}
