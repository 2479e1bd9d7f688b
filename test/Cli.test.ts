/**
 * The `openai-batch` command line, run as a user runs it (the compiled `bin`, a child process, off a terminal)
 * against the real server process and the upstream simulator: exit codes, the files written, the plain-output
 * transcript of a 1,000-line batch, local validation giving the server's own problems before anything is uploaded,
 * `--json`, a failed submit leaving nothing behind, Ctrl-C while watching, a watch riding out a lost connection (and
 * giving up), and `serve`. `cliCalls.test.ts` has what only a scripted server can do.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI, { toFile } from "openai"
import { type Simulator, startSimulator } from "../scripts/simulator.js"
import { problemLine } from "../src/cli/describe.js"
import { chatLine, terminal, waitFor } from "./support/Batches.js"
import { type CompiledCli, compileCli } from "./support/CompiledCli.js"
import { freePort, type ServerProcess, startServer } from "./support/ServerProcess.js"
import { startForwarder, type TcpForwarder } from "./support/TcpForwarder.js"

const root = Path.resolve(import.meta.dirname, "..")
const KEY = "sk-cli-test-key-0123456789abcdef"

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * `openai-batch …args` in `cwd` (where a watch without `--out` writes its files); `whileRunning` may act on the
 * process as its output arrives.
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

const linesOf = (text: string) => text.split("\n").filter((l) => l !== "")
const fileLines = (path: string): Array<any> => linesOf(readFileSync(path, "utf8")).map((l) => JSON.parse(l))

describe("the openai-batch command line", () => {
  let sim: Simulator
  let server: ServerProcess
  let scratch: string
  let openai: OpenAI
  let env: Record<string, string>
  let compiled: CompiledCli
  const cli = (
    args: ReadonlyArray<string>,
    extraEnv: Record<string, string> = {},
    whileRunning?: (child: ChildProcess, stdout: string, stderr: string) => void,
    input?: string
  ) => runCli(compiled.main, scratch, args, { ...env, ...extraEnv }, whileRunning, input)
  const inputFile = (name: string, lines: ReadonlyArray<string>, eol = "\n") => {
    const path = Path.join(scratch, name)
    writeFileSync(path, lines.join(eol) + eol)
    return path
  }
  /** A batch of `lines`, created with the SDK. */
  const sdkBatch = async (lines: ReadonlyArray<string>) => {
    const file = await openai.files.create({ file: await toFile(Buffer.from(lines.join("\n") + "\n"), "sdk.jsonl"), purpose: "batch" })
    return openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
  }
  /** A running batch of `count` requests that sleep far longer than the tests, but for the first `quick`, once those are done. */
  const slowBatch = async (count: number, quick: number) => {
    const batch = await sdkBatch(Array.from({ length: count }, (_, i) => chatLine(`slow-${i}`, i < quick ? `quick ${i}` : `slow ${i} [sleep:60000]`)))
    return Effect.runPromise(waitFor(openai, batch.id, (b) => b.status === "in_progress" && (b.request_counts?.completed ?? 0) >= quick))
  }
  let failingBatchId: string | undefined
  /**
   * For two pairs of adjacent tests, which vitest runs together: most of their time is a child process starting or a
   * batch sleeping, and neither disturbs the other (a failed submit creates no batch; `serve` runs a server of its
   * own). Any other two would: the server runs one batch at a time, and the tests assert on the files and batches
   * they find.
   */
  const alongside = { timeout: 180_000, concurrent: true }

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
    rmSync(scratch, { recursive: true, force: true })
    compiled?.remove()
  })

  it.live("submit --watch of 1,000 lines, some failing, off a terminal: plain progress lines, both files, exit 1", () =>
    Effect.promise(async () => {
      const failing = new Set(Array.from({ length: 20 }, (_, k) => `req-${k * 50 + 49}`))
      const file = inputFile("thousand.jsonl", Array.from({ length: 1000 }, (_, i) =>
        chatLine(`req-${i}`, failing.has(`req-${i}`) ? `refuse ${i} [fail:400]` : `hello ${i}`)))
      const out = Path.join(scratch, "out-1000")
      const run = await cli(["submit", file, "--watch", "--out", out, "--interval", "0.2"])
      expect(run.code, run.stderr).toBe(1)
      expect(run.stderr).toContain("1,000 requests for /v1/chat/completions, no problems found")
      expect(run.stdout).not.toMatch(/\x1b\[/) // no terminal escapes in a pipe

      // The transcript: the id, progress lines (the status never going back), the summary, the files.
      const [id, ...rest] = linesOf(run.stdout)
      expect(id).toMatch(/^batch_[0-9a-f]+$/)
      failingBatchId = id
      const progress = rest.filter((l) => l.startsWith("["))
      expect(rest.slice(0, progress.length)).toEqual(progress)
      const order = ["validating", "in_progress", "finalizing", "completed"]
      const statuses = progress.map((line) => {
        const match = new RegExp(`^\\[\\d+s\\] ${id} (\\w+)(?: \\d[\\d,]*/1,000 \\(\\d+%\\), \\d+ failed, .*tokens)?$`).exec(line)
        expect(match, line).not.toBeNull()
        return order.indexOf(match![1]!)
      })
      expect(statuses).toEqual([...statuses].sort((a, b) => a - b))
      expect(progress[0]).toMatch(new RegExp(`^\\[0s\\] ${id} (validating|in_progress)`))
      expect(progress.at(-1)).toMatch(new RegExp(`^\\[\\d+s\\] ${id} completed 1,000/1,000 \\(100%\\), 20 failed, .*[\\d.]+k tokens$`))
      const outputPath = Path.join(out, `${id}_output.jsonl`)
      const errorPath = Path.join(out, `${id}_error.jsonl`)
      expect(rest.slice(progress.length)).toEqual([
        expect.stringMatching(new RegExp(`^${id} completed in (under 1s|\\d+s): 980 succeeded, 20 failed, [\\d.]+k tokens$`)),
        `output: ${outputPath} (980 lines)`,
        `errors: ${errorPath} (20 lines)`,
        "errors by reason: 20 × status 400"
      ])

      const output = fileLines(outputPath)
      const errors = fileLines(errorPath)
      expect(output.length).toBe(980)
      expect(errors.map((l) => l.custom_id).sort()).toEqual([...failing].sort())
      expect(errors.every((l) => l.response.status_code === 400)).toBe(true)
      expect(output.every((l) => l.response.status_code === 200 && !failing.has(l.custom_id))).toBe(true)
    }), 180_000)

  it.live("a batch whose every request succeeds exits 0; --json prints objects; flags beat the environment", () =>
    Effect.promise(async () => {
      const file = inputFile("clean.jsonl", Array.from({ length: 20 }, (_, i) => chatLine(`ok-${i}`, `fine ${i}`)))
      const out = Path.join(scratch, "out-clean")
      // The server and key from flags, before and after the subcommand; the environment points elsewhere.
      const run = await cli(
        ["--base-url", `${server.url}/v1`, "submit", file, "--api-key", KEY, "--watch", "--json", "--metadata", "team=cli", "--metadata", "run=a=b", "--out", out, "--interval", "0.2"],
        { OPENAI_BASE_URL: "http://127.0.0.1:9/v1", OPENAI_API_KEY: "sk-wrong" }
      )
      expect(run.code, run.stderr).toBe(0)
      const objects = linesOf(run.stdout).map((l) => JSON.parse(l))
      const [created, ...later] = objects
      expect(created).toMatchObject({ object: "batch", metadata: { team: "cli", run: "a=b" }, endpoint: "/v1/chat/completions" })
      const summary = later.at(-1)
      expect(later.slice(0, -1).every((b) => b.object === "batch" && b.id === created.id)).toBe(true)
      // Each object printed once a change: the created one was printed again by the watch.
      const changes = [created, ...later.slice(0, -1)].map((b) => `${b.status} ${b.request_counts.completed + b.request_counts.failed}`)
      expect(changes.filter((change, i) => change === changes[i - 1])).toEqual([])
      expect(later.at(-2)).toMatchObject({ status: "completed", request_counts: { total: 20, completed: 20, failed: 0 } })
      expect(summary).toMatchObject({
        object: "batch.summary",
        id: created.id,
        status: "completed",
        output_path: Path.join(out, `${created.id}_output.jsonl`),
        output_lines: 20,
        error_path: null,
        error_lines: 0,
        error_reasons: {}
      })
      expect(fileLines(summary.output_path).map((l) => l.custom_id)).toEqual(Array.from({ length: 20 }, (_, i) => `ok-${i}`))
    }), 180_000)

  it.live("a bad file: the server's own problems, line by line, exit 2, and nothing uploaded", () =>
    Effect.promise(async () => {
      const lines = [
        chatLine("a", "fine"),
        "",
        "{not json",
        chatLine("a", "again"),
        JSON.stringify({ custom_id: "c", method: "GET", url: "/v1/chat/completions", body: { model: "sim-model", messages: [] } }),
        JSON.stringify({ custom_id: "d", method: "POST", url: "/v1/embeddings", body: { model: "sim-model", input: "x" } }),
        JSON.stringify({ custom_id: "e", method: "POST", url: "/v1/chat/completions" }),
        JSON.stringify({ custom_id: "f", method: "POST", url: "/v1/chat/completions", body: { model: "sim-model", messages: [], stream: true } }),
        chatLine("g", "other model", "another-model"),
        chatLine("h", "fine")
      ]
      const file = inputFile("bad.jsonl", lines, "\r\n")
      const filesBefore = (await openai.files.list()).data.map((f) => f.id)
      const [text, json] = await Promise.all([cli(["submit", file, "--watch"]), cli(["submit", file, "--json"])])
      expect(text.code).toBe(2)
      expect(json.code).toBe(2)
      expect(text.stderr).toContain("nothing was uploaded")
      expect((await openai.files.list()).data.map((f) => f.id)).toEqual(filesBefore)

      // The same file through the server: its failed batch lists the same problems.
      const uploaded = await openai.files.create({ file: await toFile(readFileSync(file), "bad.jsonl"), purpose: "batch" })
      const created = await openai.batches.create({ input_file_id: uploaded.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
      const failed = await Effect.runPromise(waitFor(openai, created.id, terminal))
      expect(failed.status).toBe("failed")
      const serverProblems = failed.errors!.data!
      expect(new Set(serverProblems.map((e) => e.code))).toEqual(new Set([
        "invalid_json_line", "duplicate_custom_id", "invalid_request", "invalid_url", "missing_required_parameter", "streaming_unsupported", "model_mismatch"
      ]))
      expect(linesOf(text.stdout)).toEqual(serverProblems.map(problemLine))
      expect(linesOf(json.stdout).map((l) => JSON.parse(l))).toEqual(serverProblems)

      // An empty file was checked against no endpoint: its summary names none.
      // What the server refuses before reading a line, too: a name not .jsonl, an endpoint that is no /v1/ path.
      const noV1 = JSON.stringify({ custom_id: "x", method: "POST", url: "/chat/completions", body: { model: "sim-model", messages: [] } })
      const garbage = Array.from({ length: 3000 }, () => "{not json")
      const [empty, named, unversioned, many] = await Promise.all([
        cli(["submit", inputFile("empty.jsonl", [])]),
        cli(["submit", inputFile("requests.json", [chatLine("a", "fine")])]),
        cli(["submit", inputFile("unversioned.jsonl", [noV1])]),
        cli(["submit", inputFile("garbage.jsonl", garbage)])
      ])
      expect(empty.code).toBe(2)
      expect(empty.stderr).toContain("empty.jsonl: 1 problem (the server would refuse the file or fail the batch with the same); nothing was uploaded.")
      expect([named.code, named.stdout]).toEqual([2, "file: invalid_file_format: Invalid file format for Batch API. Must be .jsonl\n"])
      expect([unversioned.code, linesOf(unversioned.stdout)]).toEqual([2, [
        "file: invalid_value: Invalid endpoint '/chat/completions': an endpoint is a /v1/… path, such as /v1/chat/completions."
      ]])
      // Every problem counted, those the list leaves out too.
      expect([many.code, many.stderr]).toEqual([2, expect.stringContaining("garbage.jsonl: 3,000 problems for /v1/chat/completions")])
      expect((await openai.files.list()).data.map((f) => f.id)).toEqual([uploaded.id, ...filesBefore])
    }), 180_000)

  it.live("a download killed before its end is taken up by the next one, from its partial file; the others left are removed, a link never followed", () =>
    Effect.promise(async () => {
      expect(failingBatchId).toBeDefined()
      const batch = await openai.batches.retrieve(failingBatchId!)
      const content = Buffer.from(await (await openai.files.content(batch.output_file_id!)).arrayBuffer())
      const out = Path.join(scratch, "out-left")
      mkdirSync(out, { recursive: true })
      const target = Path.join(out, `${batch.id}_output.jsonl`)
      // Two processes killed while downloading (their pids gone): the first bytes of the one that got further are
      // marked, to tell that the download went on from them rather than over again.
      const gone = spawnSync(process.execPath, ["-e", ""]).pid!
      const kept = Buffer.from(content.subarray(0, 1000))
      kept[0] = "[".charCodeAt(0)
      const minuteAgo = new Date(Date.now() - 60_000) // left untouched a while: no download elsewhere writes them
      for (const [pid, bytes] of [[gone, kept], [gone + 1_000_000, content.subarray(0, 10)]] as const) {
        writeFileSync(`${target}.${pid}.partial`, bytes)
        utimesSync(`${target}.${pid}.partial`, minuteAgo, minuteAgo)
      }
      // A link planted in the directory (another user's, say) is neither followed nor taken.
      const elsewhere = Path.join(scratch, "not-yours.txt")
      writeFileSync(elsewhere, "mine\n")
      symlinkSync(elsewhere, `${target}.${gone + 2_000_000}.partial`)
      const run = await cli(["download", batch.id, "--out", out])
      expect(run.code, run.stderr).toBe(0)
      expect(readFileSync(target).equals(Buffer.concat([kept, content.subarray(1000)]))).toBe(true)
      expect(readdirSync(out).filter((name) => name.endsWith(".partial"))).toEqual([`${Path.basename(target)}.${gone + 2_000_000}.partial`])
      expect(readFileSync(elsewhere, "utf8")).toBe("mine\n")
    }), 60_000)

  it.live("submit - reads the requests from the standard input (a script's pipe); a path that is no file is refused", () =>
    Effect.promise(async () => {
      const out = Path.join(scratch, "out-stdin")
      const lines = [chatLine("piped-1", "one"), chatLine("piped-2", "two")].join("\n") + "\n"
      const run = await cli(["submit", "-", "--watch", "--out", out, "--interval", "0.2"], {}, undefined, lines)
      expect(run.code, run.stderr).toBe(0)
      expect(run.stderr).toContain("the standard input: 2 requests for /v1/chat/completions, no problems found; uploading…")
      const [id] = linesOf(run.stdout)
      expect(fileLines(Path.join(out, `${id}_output.jsonl`)).map((l) => l.custom_id).sort()).toEqual(["piped-1", "piped-2"])
      const [missing, directory] = await Promise.all([cli(["submit", Path.join(scratch, "nope.jsonl")]), cli(["submit", scratch])])
      expect([missing.code, missing.stderr]).toEqual([2, `${Path.join(scratch, "nope.jsonl")}: no such file; nothing was done.\n`])
      expect([directory.code, directory.stderr]).toEqual([2, `${scratch} is not a regular file (for the standard input, give -); nothing was done.\n`])
    }), 60_000)

  it.live("a download whose output file the server no longer has still writes the error file, says so, and exits 1", () =>
    Effect.promise(async () => {
      const made = await sdkBatch([chatLine("kept", "fine"), chatLine("failing", "no [fail:400]")])
      const batch = await Effect.runPromise(waitFor(openai, made.id, terminal))
      await openai.files.delete(batch.output_file_id!) // as an expiry (output_expires_after) does
      const out = Path.join(scratch, "out-gone")
      const run = await cli(["download", batch.id, "--out", out])
      expect(run.code).toBe(1)
      expect(linesOf(run.stdout)).toEqual([
        `errors: ${Path.join(out, `${batch.id}_error.jsonl`)} (1 line)`,
        "errors by reason: 1 × status 400",
        `output: ${batch.output_file_id} is no longer on the server (expired or deleted)`
      ])
      expect(fileLines(Path.join(out, `${batch.id}_error.jsonl`)).map((l) => l.custom_id)).toEqual(["failing"])
    }), 60_000)

  it.live("status, list, download, cancel: their outputs and exit codes", () =>
    Effect.promise(async () => {
      const rejected = await sdkBatch(["{not json"]).then((b) => Effect.runPromise(waitFor(openai, b.id, terminal)))
      const finished = await sdkBatch([chatLine("done", "quick")]).then((b) => Effect.runPromise(waitFor(openai, b.id, terminal)))
      const batch = await slowBatch(40, 4)
      const id = batch.id
      const out = Path.join(scratch, "out-cancel")
      const [status, statusJson, list, listJson, early, unknown, noKey, noFiles] = await Promise.all([
        cli(["status", id]),
        cli(["status", id, "--json"]),
        cli(["list"]),
        cli(["list", "--json", "--limit", "2"]),
        cli(["download", id, "--out", out]),
        cli(["status", "batch_0123456789abcdef0123456789abcdef"]),
        cli(["status", id], { OPENAI_API_KEY: "" }),
        cli(["download", rejected.id, "--json", "--out", out])
      ])
      expect(status.code, status.stderr).toBe(0)
      expect(linesOf(status.stdout)).toEqual(expect.arrayContaining([
        `${id}: in_progress`,
        "  requests    40: 4 completed, 0 failed",
        expect.stringMatching(/^ {2}phases {6}validating \d+s, in_progress \d+s so far$/)
      ]))
      expect(statusJson.code).toBe(0)
      expect(JSON.parse(statusJson.stdout)).toMatchObject({ id, object: "batch", status: "in_progress" })
      expect(list.code).toBe(0)
      expect(linesOf(list.stdout)[0]).toMatch(/^ID +STATUS +DONE\/TOTAL +FAILED +TOKENS +CREATED +ENDPOINT$/)
      expect(linesOf(list.stdout)[1]).toMatch(new RegExp(`^${id} +in_progress +4/40 +0 +\\d+ +\\S+ ago +/v1/chat/completions$`))
      expect(listJson.code).toBe(0)
      const listed = linesOf(listJson.stdout).map((l) => JSON.parse(l))
      expect(listed.map((b) => b.id)).toEqual([id, finished.id]) // newest first
      expect(early.code).toBe(1)
      expect(early.stderr).toContain(`${id} is in_progress: its files are written when it ends`)
      expect(unknown.code).toBe(1)
      expect(unknown.stderr).toMatch(/404/)
      expect(noKey.code).toBe(1)
      expect(noKey.stderr).toContain("401")
      expect(noKey.stderr).toContain("give a key with --api-key or OPENAI_API_KEY")
      // A batch that failed validation has no file to save: exit 1 in JSON too, with what the server found.
      expect(rejected.status).toBe("failed")
      expect([noFiles.code, noFiles.stderr]).toEqual([1, expect.stringContaining(`${rejected.id} is failed and has no output or error file.`)])
      expect(JSON.parse(noFiles.stdout)).toMatchObject({
        id: rejected.id, status: "failed", output_path: null, error_path: null, errors: [expect.objectContaining({ code: "invalid_json_line", line: 1 })]
      })

      // The refused cancel of the finished batch alongside, not to leave a core idle while one CLI starts.
      const [cancel, tooLate] = await Promise.all([cli(["cancel", id]), cli(["cancel", finished.id])])
      expect(cancel.code, cancel.stderr).toBe(0)
      expect(cancel.stdout).toMatch(new RegExp(`^${id}: (cancelling|cancelled)\\n$`))
      await Effect.runPromise(waitFor(openai, id, terminal))
      const [again, download] = await Promise.all([cli(["cancel", id]), cli(["download", id, "--out", out])])
      expect(again.code).toBe(0) // cancelling a cancelled batch changes nothing
      expect(again.stdout).toBe(`${id}: cancelled\n`)
      expect(tooLate.code).toBe(1)
      expect(tooLate.stderr).toContain(`cancelling batch ${finished.id}: 409 Cannot cancel a batch with status 'completed'.`)
      expect(download.code, download.stderr).toBe(0)
      expect(linesOf(download.stdout)).toEqual([
        `output: ${Path.join(out, `${id}_output.jsonl`)} (4 lines)`,
        `errors: ${Path.join(out, `${id}_error.jsonl`)} (36 lines)`,
        // Lines the cancel left unrun are told apart from failures.
        "errors by reason: 36 × batch_cancelled"
      ])
      expect(fileLines(Path.join(out, `${id}_error.jsonl`)).every((l) => l.error?.code === "batch_cancelled")).toBe(true)
    }), 180_000)

  it.live("a failed submit leaves nothing behind: a refused create deletes the upload; --max-requests, --metadata and --limit are checked locally", () =>
    Effect.promise(async () => {
      const file = inputFile("three.jsonl", [chatLine("one", "1"), chatLine("two", "2"), chatLine("three", "3")])
      // An endpoint the server does not know (none of OpenAI's): its refusal comes with the create.
      const unknown = inputFile("unknown.jsonl", ["a", "b"].map((id) =>
        JSON.stringify({ custom_id: id, method: "POST", url: "/v1/foo", body: { model: "sim-model" } })))
      const [refused, tooMany, noKey, noValue, longValue, twice, proto, tooLong, badOut] = await Promise.all([
        cli(["submit", unknown]),
        cli(["submit", file, "--max-requests", "2", "--watch", "--out", Path.join(scratch, "out-too-many")]),
        cli(["submit", file, "--metadata", "=x"]),
        cli(["submit", file, "--metadata", "novalue"]),
        cli(["submit", file, "--metadata", `note=${"x".repeat(513)}`]),
        cli(["submit", file, "--metadata", "run=1", "--metadata", "run=2"]),
        cli(["submit", file, "--metadata", "__proto__=x"]),
        cli(["list", "--limit", "500"]),
        // Results that could not be written are found out before the batch is made, not once it has run.
        cli(["submit", file, "--watch", "--out", Path.join(file, "out")])
      ])
      expect([badOut.code, badOut.stderr]).toEqual([2, expect.stringContaining(`cannot write the results to ${Path.join(file, "out")} (--out): ENOTDIR; nothing was done.`)])
      // A command line the server would refuse, or would read wrong, is refused before anything is sent (exit 2).
      expect([noKey.code, noKey.stderr]).toEqual([2, expect.stringContaining("--metadata takes KEY=VALUE, with a key before the '=': got '=x'")])
      expect([noValue.code, noValue.stderr]).toEqual([2, expect.stringContaining("got 'novalue'")])
      expect([longValue.code, longValue.stderr]).toEqual([2, expect.stringContaining("--metadata: Invalid 'metadata.note': string too long")])
      expect([twice.code, twice.stderr]).toEqual([2, expect.stringContaining("--metadata gives 'run' twice")])
      expect([proto.code, proto.stderr]).toEqual([2, expect.stringContaining("--metadata: Invalid 'metadata': a key must not be '__proto__'.")])
      expect([tooLong.code, tooLong.stderr]).toEqual([2, expect.stringContaining("--limit must be from 1 to 100")])
      expect(refused.code).toBe(1)
      expect(refused.stdout).toBe("")
      const refusal = linesOf(refused.stderr)
      expect(refusal[1]).toMatch(/^the batch was not created: file-\S+ \(uploaded for it\) is deleted$/)
      expect(refusal[2]).toMatch(/^creating the batch: 400 Invalid value: '\/v1\/foo'\. Supported values are: /)
      expect(tooMany.code).toBe(2)
      expect(tooMany.stdout).toBe("line 3: too_many_tasks: The batch has more than 2 requests, the most one batch may hold.\n")
      expect(tooMany.stderr).toContain("nothing was uploaded")
      expect((await openai.files.list()).data.filter((f) => ["three.jsonl", "unknown.jsonl"].includes(f.filename))).toEqual([])
    }), alongside)

  it.live("--help and a mistyped command through a pipe are plain text, without colour codes; a base URL that is no http(s) URL or an empty key is refused, a URL with a password never shown", () =>
    Effect.promise(async () => {
      const notDir = inputFile("not-a-dir.jsonl", [])
      const [help, mistyped, emptyUrl, emptyKey, ftpUrl, secretUrl, https, page, query, gateway, watchBadOut, watchProcOut] = await Promise.all([
        cli(["--help"]),
        cli(["lsit"]),
        cli(["--base-url", "", "list"]), // a script's unset variable: never the client's default, OpenAI's API
        cli(["list", "--api-key", ""]), // the same: the client threw with a stack trace
        cli(["list"], { OPENAI_BASE_URL: "user:sekrit@example.com/v1" }), // no scheme: it parses, with "user:" as one
        cli(["list"], { OPENAI_BASE_URL: "http://user:sekrit@127.0.0.1:1/v1" }),
        cli(["list"], { OPENAI_BASE_URL: server.url.replace(/^http:/, "https:") + "/v1" }), // the server is there, in http
        cli(["list", "--base-url", `${server.url}/ui/`]), // the dashboard's address, copied from the browser
        cli(["list", "--base-url", `${server.url}/v1?token=abc`]), // sent as /v1?token=abc/batches
        cli(["list", "--base-url", "http://127.0.0.1:1/ui/openai/v1"]), // a gateway's path may hold a ui: tried
        cli(["watch", "batch_0123456789abcdef0123456789abcdef", "--out", Path.join(notDir, "out")]),
        // Where a directory cannot be made though its parent exists: Node's recursive mkdir spun there for ever.
        cli(["watch", "batch_0123456789abcdef0123456789abcdef", "--out", "/proc/openai-batch-out"])
      ])
      expect([watchProcOut.code, watchProcOut.stderr]).toEqual([2, expect.stringContaining("(--out): ENOENT; nothing was done.")])
      // A watch's results that could not be written are found out before it waits for the batch.
      expect([watchBadOut.code, watchBadOut.stderr]).toEqual([2, expect.stringContaining("(--out): ENOTDIR; nothing was done.")])
      expect([emptyUrl.code, emptyUrl.stderr]).toEqual([2, expect.stringContaining("--base-url must be an http:// or https:// URL, /v1 included (got '')")])
      expect([emptyKey.code, emptyKey.stderr]).toEqual([2, "--api-key is empty (if it was given a variable, is that variable set?); nothing was done.\n"])
      expect([ftpUrl.code, ftpUrl.stderr]).toEqual([2, expect.stringContaining("OPENAI_BASE_URL must be an http:// or https:// URL")])
      expect([secretUrl.code, secretUrl.stderr]).toEqual([1, expect.stringContaining("cannot reach http://127.0.0.1:1/v1")])
      expect(secretUrl.stderr).toContain("start a server with `openai-batch serve`")
      const httpsUrl = server.url.replace(/^http:/, "https:") + "/v1"
      expect([https.code, https.stderr]).toEqual([1, expect.stringContaining(`listing batches: ${httpsUrl} does not answer in https (`)])
      expect(https.stderr).toContain(`is it ${server.url}/v1?`)
      expect(https.stderr).not.toContain("start a server")
      expect([page.code, page.stderr]).toEqual([2, expect.stringContaining(`--base-url must be the API's base URL, /v1 included, not a page's or a route's (${server.url}/v1?)`)])
      expect([query.code, query.stderr]).toEqual([2, expect.stringContaining("--base-url must be the API's base URL, without ?query or #fragment")])
      expect(query.stderr).not.toContain("abc")
      expect([gateway.code, gateway.stderr]).toEqual([1, expect.stringContaining("cannot reach http://127.0.0.1:1/ui/openai/v1")])
      expect(ftpUrl.stderr).toContain("(got '…@example.com/v1')")
      for (const run of [ftpUrl, secretUrl]) expect(run.stderr).not.toContain("sekrit")
      expect(help.code).toBe(0)
      expect(help.stdout).toContain("USAGE\n\n$ openai-batch [--base-url URL] [--api-key KEY]")
      expect(mistyped.code).toBe(2)
      expect(mistyped.stderr).toContain("Invalid subcommand for openai-batch")
      for (const text of [help.stdout, mistyped.stderr]) expect(text).not.toContain("\x1b[")
    }), alongside)

  it.live("Ctrl-C (or a CI runner's SIGTERM) while watching off a terminal stops watching, says how to cancel, and leaves the batch running", () =>
    Effect.promise(async () => {
      const stop = async (signal: "SIGINT" | "SIGTERM") => {
        const batch = await slowBatch(10, 1)
        let sent = false
        const run = await cli(["watch", batch.id, "--interval", "0.2"], {}, (child, stdout) => {
          if (!sent && stdout.includes("in_progress")) {
            sent = true
            child.kill(signal)
          }
        })
        expect(run.code).toBe(signal === "SIGINT" ? 130 : 143)
        expect(run.stderr).toContain(`Stopped watching ${batch.id}; the batch keeps running.`)
        expect(run.stderr).toContain(`openai-batch cancel ${batch.id}`)
        expect((await openai.batches.retrieve(batch.id)).status).toBe("in_progress")
        await openai.batches.cancel(batch.id)
      }
      await Promise.all([stop("SIGINT"), stop("SIGTERM")])
    }), alongside)

  it.live("retry reruns the failed requests as a new batch; with an idempotency key, once", () =>
    Effect.promise(async () => {
      expect(failingBatchId).toBeDefined()
      const out = Path.join(scratch, "out-retry")
      const keyed = ["retry", failingBatchId!, "--only", "error", "--idempotency-key", "ci-job-42"]
      const run = await cli([...keyed, "--watch", "--out", out, "--interval", "0.2"])
      expect(run.code, run.stderr).toBe(1) // the same 20 fail again
      const [id] = linesOf(run.stdout)
      expect(id).not.toBe(failingBatchId)
      expect((await openai.batches.retrieve(id!)).metadata).toMatchObject({ retry_of: failingBatchId })
      expect(linesOf(run.stdout).slice(-2)).toEqual([`errors: ${Path.join(out, `${id}_error.jsonl`)} (20 lines)`, "errors by reason: 20 × status 400"])
      // The same command again (a CI job run twice) gives the rerun made before; without the key, a new one.
      const [again, unkeyed] = [await cli(keyed), await cli(["retry", failingBatchId!, "--only", "error"])]
      expect([again.code, linesOf(again.stdout)]).toEqual([0, [id]])
      expect(linesOf(unkeyed.stdout)[0]).not.toBe(id)
      await Effect.runPromise(waitFor(openai, linesOf(unkeyed.stdout)[0]!, terminal))
    }), 180_000)

  it.live("a watch rides out a lost server (said once, then reconnected; files and exit 0), and gives up after --retry-for", () =>
    Effect.promise(async () => {
      // Each watch goes through a forwarder that drops every connection once the batch runs, as a restarting server
      // would: the first gets it back once the watch said so, the second never does. `submit --watch`, so that no
      // batch can end before its watch has started, however slow the machine.
      const target = { host: "127.0.0.1", port: Number(new URL(server.url).port) }
      const [riding, lost] = await Promise.all([startForwarder(target), startForwarder(target)])
      const via = (forwarder: TcpForwarder) => ({ OPENAI_BASE_URL: `http://127.0.0.1:${forwarder.port}/v1` })
      try {
        const held = inputFile("held.jsonl", Array.from({ length: 6 }, (_, i) => chatLine(`held-${i}`, `held ${i} [sleep:2500]`)))
        const single = inputFile("single.jsonl", [chatLine("single", "alone [sleep:2500]")])
        const out = Path.join(scratch, "out-ride")
        let givingUp: Promise<Run> | undefined
        const rides = await cli(["submit", held, "--watch", "--interval", "0.2", "--out", out], via(riding), (_child, stdout, stderr) => {
          if (givingUp === undefined && stdout.includes(" in_progress")) {
            riding.cut()
            // Meanwhile a second batch (it waits for the first: one runs at a time), watched through a lost connection.
            givingUp = cli(["submit", single, "--watch", "--interval", "0.2", "--retry-for", "1", "--out", out], via(lost), (_c, own) => {
              if (/^\[/m.test(own)) lost.cut()
            })
          }
          if (stderr.includes("server unavailable")) riding.restore()
        })
        const givesUp = await givingUp!

        expect(rides.code, rides.stderr).toBe(0)
        expect(linesOf(rides.stderr).slice(2)).toEqual([
          expect.stringMatching(/^server unavailable \(.+\); retrying for up to 10m00s…$/),
          "reconnected"
        ])
        const id = linesOf(rides.stdout)[0]!
        expect(linesOf(rides.stdout).slice(-2)).toEqual([
          expect.stringMatching(new RegExp(`^${id} completed in (under 1s|\\d+s): 6 succeeded, 0 failed`)),
          `output: ${Path.join(out, `${id}_output.jsonl`)} (6 lines)`
        ])
        expect(fileLines(Path.join(out, `${id}_output.jsonl`)).map((l) => l.custom_id).sort()).toEqual(
          Array.from({ length: 6 }, (_, i) => `held-${i}`)
        )

        expect(givesUp.code).toBe(1)
        const other = linesOf(givesUp.stdout)[0]!
        const stderr = linesOf(givesUp.stderr)
        expect(stderr.filter((l) => l.startsWith("server unavailable"))).toEqual([
          expect.stringMatching(/^server unavailable \(.+\); retrying for up to 1s…$/) // once, not at each try
        ])
        expect(stderr.slice(-1)).toEqual([
          `Gave up after retrying for 1s (--retry-for). Batch ${other} is not affected: \`openai-batch watch ${other}\` picks it up again.`
        ])
      } finally {
        await Promise.all([riding.close(), lost.close()])
      }
    }), alongside)

  it.live("serve starts the server as npm start does, passes SIGTERM on, and exits with its code", () =>
    Effect.promise(async () => {
      const port = await freePort()
      const serveEnv = { PORT: String(port), HOST: "127.0.0.1", DATA_DIR: Path.join(scratch, "serve-data"), INFERENCE_BASE_URL: sim.url }
      let up = false
      const child = spawn(process.execPath, [compiled.main, "serve"], {
        cwd: root,
        env: { ...process.env, ...serveEnv },
        stdio: ["ignore", "pipe", "pipe"]
      })
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
      const [bad] = await Promise.all([
        cli(["serve"], { ...serveEnv, PORT: "not-a-port" }),
        (async () => {
          const deadline = Date.now() + 60_000
          while (!up && Date.now() < deadline) {
            up = await fetch(`http://127.0.0.1:${port}/v1/health`).then((r) => r.ok, () => false)
            if (!up) await new Promise((r) => setTimeout(r, 50))
          }
        })()
      ])
      expect(up).toBe(true)
      child.kill("SIGTERM")
      expect(await exited).toBe(0)
      expect(await fetch(`http://127.0.0.1:${port}/v1/health`).then(() => "answered", () => "refused")).toBe("refused")
      expect(bad.code).toBe(1)
      // The server's log line, on its stdout as its other lines.
      expect(bad.stdout).toContain("Invalid configuration")
      expect(bad.stdout).toContain("PORT")
    }), alongside)

  it.live("serve killed (SIGKILL, which it cannot pass on): the server stops too, not left serving in a group of its own", () =>
    Effect.promise(async () => {
      const port = await freePort()
      const child = spawn(process.execPath, [compiled.main, "serve"], {
        cwd: root,
        env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", LOG_FORMAT: "json", DATA_DIR: Path.join(scratch, "killed-serve-data"), INFERENCE_BASE_URL: sim.url },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stdout = ""
      child.stdout!.on("data", (d) => (stdout += d))
      // The server writes to the same pipe: it ends when the server has exited too.
      const outputEnded = new Promise((resolve) => child.stdout!.once("end", resolve))
      const health = () => fetch(`http://127.0.0.1:${port}/v1/health`).then((r) => (r.ok ? "answered" : "refused"), () => "refused")
      const deadline = Date.now() + 60_000
      while ((await health()) !== "answered" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      expect(await health()).toBe("answered")
      child.kill("SIGKILL")
      const stopped = Date.now() + 10_000
      while ((await health()) === "answered" && Date.now() < stopped) await new Promise((r) => setTimeout(r, 50))
      expect(await health()).toBe("refused")
      await outputEnded
      const stoppedLine = stdout.split("\n").find((line) => line.includes('"event":"server.stopped_at_once"'))
      expect(JSON.parse(stoppedLine ?? "{}").message).toContain("The openai-batch serve process that started this server is gone")
    }), alongside)
})
