/**
 * The real server as a child process, for restart, crash and shutdown tests: under vitest, `dist/main.js` of the run's
 * compiled copy of `src/` (`CompiledCopy.ts`), which starts in a fraction of the time tsx takes to compile
 * `src/main.ts`; elsewhere (the benchmarks), `src/main.ts` through tsx.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { request } from "node:http"
import { createServer } from "node:net"
import * as Path from "node:path"

const root = Path.resolve(import.meta.dirname, "../..")

/** A TCP port that was free a moment ago. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once("error", reject)
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address()
      probe.close(() => resolve(typeof address === "object" && address ? address.port : 0))
    })
  })

/**
 * A port nobody listens on, for a test that needs one to stay so a while (a receiver started later): below the
 * kernel's ephemeral range (32768 up), where `freePort` and every `listen(0)` of the run's other processes draw theirs
 * (one of them took a `freePort` port meant to stay silent, and answered 404).
 */
export const unusedPort = async (): Promise<number> => {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    const free = await new Promise<boolean>((resolve) => {
      const probe = createServer()
      probe.once("error", () => resolve(false))
      probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)))
    })
    if (free) return port
  }
}

export interface ServerProcess {
  readonly url: string
  readonly child: ChildProcess
  /** Everything the process wrote so far. */
  readonly output: () => string
  /** What it wrote to stdout alone (its log lines). */
  readonly stdout: () => string
  /** Sends `signal` and resolves with the exit code (or signal name) once the process is gone. */
  readonly stop: (signal?: NodeJS.Signals) => Promise<number | string>
}

/** The variable `globalSetup.ts` hands the compiled copy's directory to the test files in (forks inherit it). */
export const COMPILED_COPY_ENV = "OPENAI_BATCH_COMPILED_COPY"

/** The directory of this run's compiled copy of `src/` (the package root of its `dist/`), when there is one. */
export const compiledCopy = (): string | undefined => process.env[COMPILED_COPY_ENV]

/** The server's command line: plain node on the compiled copy's entry point, or tsx on the source. */
export const serverArgs = () => {
  const copy = compiledCopy()
  return copy === undefined ? ["--import", "tsx", "src/main.ts"] : [Path.join(copy, "dist", "main.js")]
}

/** The port was taken between `freePort` and the server's listen (by another test's process). */
class PortTaken extends Error {}

/**
 * Server processes started and not yet ended: killed when the test process exits. A test that timed out did not
 * always run its finalizers, and its server ran on for the rest of the run (and after it), taking a core's share.
 */
const running = new Set<ChildProcess>()
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL")
})

/** `child`, killed with the test process if it still runs then (`running`). */
const tracked = (child: ChildProcess): ChildProcess => {
  running.add(child)
  child.once("exit", () => running.delete(child))
  return child
}

/**
 * Runs the server (`serverArgs`) with `env` on top of ours; resolves once `/v1/health` answers. Without a `port`, on
 * a free one, and on another if a process running beside the tests took it before the server listened.
 */
export const startServer = async (env: Record<string, string>, port?: number): Promise<ServerProcess> => {
  for (let attempt = 1;; attempt++) {
    try {
      return await startOn(env, port ?? (await freePort()))
    } catch (error) {
      if (!(error instanceof PortTaken) || port !== undefined || attempt >= 5) throw error
    }
  }
}

const startOn = async (env: Record<string, string>, listenPort: number): Promise<ServerProcess> => {
  const child = tracked(spawn(process.execPath, serverArgs(), {
    cwd: root,
    env: { ...process.env, HOST: "127.0.0.1", PORT: String(listenPort), ...env },
    stdio: ["ignore", "pipe", "pipe"]
  }))
  let output = ""
  let stdout = ""
  child.stdout!.on("data", (d) => {
    output += d
    stdout += d
  })
  child.stderr!.on("data", (d) => (output += d))
  // "close", not "exit": the exit can come before the last of its output is read (a test then missed its last line).
  const exited = new Promise<number | string>((resolve) =>
    child.once("close", (code, signal) => resolve(code ?? signal ?? -1))
  )
  const url = `http://127.0.0.1:${listenPort}`
  const deadline = Date.now() + 30_000
  // Its own listening line too: another test's server that took the port between `freePort` and this one's listen
  // answered the health check, and the test ran against that server's files.
  const listening = new RegExp(`Listening on http://\\S+:${listenPort} `)
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const Failure = output.includes("EADDRINUSE") ? PortTaken : Error
      throw new Failure(`server exited before it was ready:\n${output}`)
    }
    try {
      if (listening.test(output) && (await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(2000) })).ok) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL")
      throw new Error(`server did not start in time:\n${output}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    url,
    child,
    output: () => output,
    stdout: () => stdout,
    stop: (signal = "SIGTERM") => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      return exited
    }
  }
}

/**
 * Runs the server to completion (for start-up failures): exit code and output. With `timeoutMs`, a server still
 * running then (one that started when it should have refused) is killed, and its code is null.
 */
export const runServerToExit = (
  env: Record<string, string>,
  timeoutMs?: number
): Promise<{ code: number | null; output: string }> =>
  new Promise((resolve) => {
    const child = tracked(spawn(process.execPath, serverArgs(), {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    }))
    let output = ""
    child.stdout!.on("data", (d) => (output += d))
    child.stderr!.on("data", (d) => (output += d))
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    // "close", not "exit": the exit can come before the last of its output is read.
    child.once("close", (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })

/**
 * A `POST /v1/files` whose multipart body stops after `bytes` of the file: `req.end(STALLED_UPLOAD_END)` finishes
 * it; `response` is its status, or "aborted" when the connection is lost.
 */
export const stalledUpload = (url: string, bytes: Uint8Array) => {
  const req = request(`${url}/v1/files`, {
    method: "POST",
    headers: { "content-type": `multipart/form-data; boundary=${STALLED_BOUNDARY}`, "transfer-encoding": "chunked" }
  })
  const response = new Promise<number | "aborted">((resolve) => {
    req.on("response", (res) => resolve(res.statusCode!))
    req.on("error", () => resolve("aborted"))
  })
  req.write(`--${STALLED_BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n`)
  req.write(`--${STALLED_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n`)
  req.write(bytes)
  return { req, response }
}
const STALLED_BOUNDARY = "stalled-boundary"
/** What finishes a `stalledUpload`'s body. */
export const STALLED_UPLOAD_END = `\r\n--${STALLED_BOUNDARY}--\r\n`
