/**
 * The `openai-batch` command line as a user runs it, for the suites that drive it (`test/Cli*.test.ts`): the compiled
 * `bin` in a child process, off a terminal, against a real server process (API keys on) and the upstream simulator,
 * started for the suite (`cliSuite`, inside a `describe`).
 */
import { afterAll, beforeAll } from "@effect/vitest"
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI, { toFile } from "openai"
import { type Simulator, startSimulator } from "../../scripts/simulator.js"
import { chatLine, waitFor } from "./Batches.js"
import { type CompiledCli, compileCli } from "./CompiledCli.js"
import { type ServerProcess, startServer } from "./ServerProcess.js"

export const KEY = "sk-cli-test-key-0123456789abcdef"

export interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * `openai-batch …args` in `cwd` (where a watch without `--out` writes its files); `whileRunning` may act on the
 * process as its output arrives; `input`, when given, is its standard input.
 */
const runCli = (
  main: string,
  cwd: string,
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  whileRunning?: (child: ChildProcess, stdout: string, stderr: string) => void,
  input?: string
): Promise<Run> =>
  new Promise((resolve) => {
    const child = spawn(process.execPath, [main, ...args], {
      cwd,
      env: { ...process.env, ...env },
      stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"]
    })
    if (input !== undefined) child.stdin!.end(input)
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (d) => {
      stdout += d
      whileRunning?.(child, stdout, stderr)
    })
    child.stderr!.on("data", (d) => {
      stderr += d
      whileRunning?.(child, stdout, stderr)
    })
    child.once("exit", (code) => resolve({ code, stdout, stderr }))
  })

export const linesOf = (text: string) => text.split("\n").filter((l) => l !== "")
export const fileLines = (path: string): Array<any> => linesOf(readFileSync(path, "utf8")).map((l) => JSON.parse(l))

/** The suite's server, simulator, scratch directory and SDK client, with the CLI's runs against them. */
export interface CliSuite {
  readonly sim: () => Simulator
  readonly server: () => ServerProcess
  readonly scratch: () => string
  readonly openai: () => OpenAI
  /** The compiled `bin` (`dist/cli/main.js`), for a test that starts it itself. */
  readonly main: () => string
  readonly cli: (
    args: ReadonlyArray<string>,
    extraEnv?: Record<string, string>,
    whileRunning?: (child: ChildProcess, stdout: string, stderr: string) => void,
    input?: string
  ) => Promise<Run>
  /** A file of `lines` in the scratch directory. */
  readonly inputFile: (name: string, lines: ReadonlyArray<string>, eol?: string) => string
  /** A batch of `lines`, created with the SDK. */
  readonly sdkBatch: (lines: ReadonlyArray<string>, metadata?: Record<string, string>) => Promise<OpenAI.Batch>
  /** A running batch of `count` requests that sleep far longer than the tests, but for the first `quick`, once those are done. */
  readonly slowBatch: (count: number, quick: number) => Promise<OpenAI.Batch>
}

/** Starts the suite's server and simulator before its tests, and stops them after (call inside a `describe`). */
export const cliSuite = (): CliSuite => {
  let sim: Simulator
  let server: ServerProcess
  let scratch: string
  let openai: OpenAI
  let env: Record<string, string>
  let compiled: CompiledCli

  beforeAll(async () => {
    compiled = compileCli()
    sim = await startSimulator({ latencyMs: 2 })
    scratch = mkdtempSync(Path.join(tmpdir(), "batch-cli-"))
    server = await startServer({ DATA_DIR: Path.join(scratch, "data"), INFERENCE_BASE_URL: sim.url, API_KEYS: `${KEY}:cli` })
    openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 })
    env = { OPENAI_BASE_URL: `${server.url}/v1`, OPENAI_API_KEY: KEY }
  })

  afterAll(async () => {
    await server?.stop()
    await sim?.close()
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true })
    compiled?.remove()
  })

  const sdkBatch = async (lines: ReadonlyArray<string>, metadata?: Record<string, string>) => {
    const file = await openai.files.create({ file: await toFile(Buffer.from(lines.join("\n") + "\n"), "sdk.jsonl"), purpose: "batch" })
    return openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h", ...(metadata && { metadata }) })
  }
  return {
    sim: () => sim,
    server: () => server,
    scratch: () => scratch,
    openai: () => openai,
    main: () => compiled.main,
    cli: (args, extraEnv = {}, whileRunning, input) => runCli(compiled.main, scratch, args, { ...env, ...extraEnv }, whileRunning, input),
    inputFile: (name, lines, eol = "\n") => {
      const path = Path.join(scratch, name)
      writeFileSync(path, lines.join(eol) + eol)
      return path
    },
    sdkBatch,
    slowBatch: async (count, quick) => {
      const batch = await sdkBatch(Array.from({ length: count }, (_, i) => chatLine(`slow-${i}`, i < quick ? `quick ${i}` : `slow ${i} [sleep:60000]`)))
      return Effect.runPromise(waitFor(openai, batch.id, (b) => b.status === "in_progress" && (b.request_counts?.completed ?? 0) >= quick))
    }
  }
}
