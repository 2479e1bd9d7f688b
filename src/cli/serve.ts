/**
 * `serve`: the server exactly as `npm start` runs it: `node <the start script's flags> dist/main.js` (`src/main.ts`
 * through tsx when the CLI itself runs from source), in the same environment, its output passed through. The
 * child runs in a process group of its own, and every SIGINT, SIGTERM and SIGHUP the CLI gets is passed on once
 * (a Ctrl-C reaches the server once, not twice: a signal repeated a second or more into its shutdown stops it at
 * once, `src/main.ts`); when the CLI is gone (SIGKILL), the server stops at once. The CLI exits with the server's
 * exit code.
 */
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { constants } from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import { packageRoot } from "../packageRoot.js"
import { SERVED_BY_CLI } from "../serveMarker.js"
import { failed } from "./failure.js"

const root = packageRoot()

/** The node flags `npm start` runs the server with, read from package.json (the benchmarks use them too). */
export const startFlags = (): Array<string> => {
  const start: string = JSON.parse(readFileSync(Path.join(root, "package.json"), "utf8")).scripts.start
  const flags = /\bnode\s+(.*?)\s*dist\/main\.js/.exec(start)?.[1]
  if (flags === undefined) throw new Error(`cannot find the node command in the start script: ${start}`)
  return flags.split(/\s+/).filter(Boolean)
}

const forwarded: ReadonlyArray<NodeJS.Signals> = ["SIGINT", "SIGTERM", "SIGHUP"]

/** Runs the server until it exits; gives its exit code (128 + the signal's number when a signal ended it). */
export const serve = Effect.async<number, ReturnType<typeof failed>>((resume) => {
  const fromSource = fileURLToPath(import.meta.url).endsWith(".ts")
  const entry = Path.join(root, fromSource ? "src/main.ts" : "dist/main.js")
  // From source, the CLI's own `--import tsx` loads the server's TypeScript too.
  const child = spawn(process.execPath, [...(fromSource ? process.execArgv : []), ...startFlags(), entry], {
    // The channel tells the server when this process is gone (`src/main.ts`): a SIGKILL is not passed on.
    stdio: ["ignore", "inherit", "inherit", "ipc"],
    env: { ...process.env, [SERVED_BY_CLI]: "1" },
    detached: true
  })
  const pass = (signal: NodeJS.Signals) => () => child.kill(signal)
  const handlers = forwarded.map((signal) => [signal, pass(signal)] as const)
  for (const [signal, handler] of handlers) process.on(signal, handler)
  const done = () => {
    for (const [signal, handler] of handlers) process.off(signal, handler)
  }
  child.once("error", (error) => {
    done()
    resume(Effect.fail(failed(`starting the server: ${error.message}`)))
  })
  child.once("exit", (code, signal) => {
    done()
    // A server ends by itself with a code: a signal that ended it was no stop of its own (a SIGKILL, a crash).
    if (signal !== null) process.stderr.write(`openai-batch serve: the server was ended by ${signal}\n`)
    resume(Effect.succeed(code ?? 128 + (signal ? constants.signals[signal] : 0)))
  })
  return Effect.sync(() => child.kill("SIGTERM"))
})
