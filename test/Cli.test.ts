/**
 * The `openai-batch` command line, run as a user runs it (the compiled `bin`, a child process, off a terminal)
 * against the real server process and the upstream simulator: exit codes, the files written, the plain-output
 * transcript of a 1,000-line batch, local validation giving the server's own problems before anything is uploaded,
 * `--json`, a failed submit leaving nothing behind, Ctrl-C while watching, a watch riding out a lost connection (and
 * giving up), and `serve`. `CliFiles.test.ts` has its input from a pipe and its downloads; `cliCalls.test.ts` what
 * only a scripted server can do.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import * as Path from "node:path"
import type OpenAI from "openai"
import { toFile } from "openai"
import type { Simulator } from "../scripts/simulator.js"
import { problemLine } from "../src/cli/describe.js"
import { chatLine, terminal, waitFor } from "./support/Batches.js"
import { cliSuite, fileLines, KEY, linesOf, type Run } from "./support/CliSuite.js"
import { freePort, type ServerProcess } from "./support/ServerProcess.js"
import { startForwarder, type TcpForwarder } from "./support/TcpForwarder.js"

const root = Path.resolve(import.meta.dirname, "..")

describe("the openai-batch command line", () => {
  const suite = cliSuite()
  const { cli, inputFile, slowBatch } = suite
  let sim: Simulator
  let server: ServerProcess
  let scratch: string
  let openai: OpenAI
  beforeAll(() => {
    ;[sim, server, scratch, openai] = [suite.sim(), suite.server(), suite.scratch(), suite.openai()]
  })
  let failingBatchId: string | undefined
  /**
   * For two pairs of adjacent tests, which vitest runs together: most of their time is a child process starting or a
   * batch sleeping, and neither disturbs the other (a failed submit creates no batch; `serve` runs a server of its
   * own). Any other two would: the server runs one batch at a time, and the tests assert on the files and batches
   * they find. The Files side of the command line is `CliFiles.test.ts`'s, against a server of its own.
   */
  const alongside = { timeout: 180_000, concurrent: true }

  it.live("submit --watch of 1,000 lines, some failing, off a terminal: plain progress lines, both files, exit 3", () =>
    Effect.promise(async () => {
      const failing = new Set(Array.from({ length: 20 }, (_, k) => `req-${k * 50 + 49}`))
      const file = inputFile("thousand.jsonl", Array.from({ length: 1000 }, (_, i) =>
        chatLine(`req-${i}`, failing.has(`req-${i}`) ? `refuse ${i} [fail:400]` : `hello ${i}`)))
      const out = Path.join(scratch, "out-1000")
      const run = await cli(["submit", file, "--watch", "--out", out, "--interval", "0.2"])
      expect(run.code, run.stderr).toBe(3) // ended, some requests failed: results to read, not a call to make again
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
      // The batch's age in its stamps' whole seconds (its creation's second may have ended before the first poll).
      expect(progress[0]).toMatch(new RegExp(`^\\[\\d+s\\] ${id} (validating|in_progress)`))
      expect(progress.at(-1)).toMatch(new RegExp(`^\\[\\d+s\\] ${id} completed 1,000/1,000 \\(100%\\), 20 failed, .*[\\d.]+k tokens$`))
      const outputPath = Path.join(out, `${id}_output.jsonl`)
      const errorPath = Path.join(out, `${id}_error.jsonl`)
      expect(rest.slice(progress.length)).toEqual([
        expect.stringMatching(new RegExp(`^${id} completed in (under 1s|\\d+s): 980 succeeded, 20 failed, [\\d.]+k tokens$`)),
        `output: ${outputPath} (980 lines)`,
        `errors: ${errorPath} (20 lines)`,
        "errors by reason: 20 × status 400"
      ])
      // One clock, the batch's: its last line's age is the summary's run time ("[2s] … completed", "completed in 1s").
      const ran = /completed in (?:under 1s|(\d+)s)/.exec(rest[progress.length]!)!
      expect(progress.at(-1)).toMatch(new RegExp(`^\\[${ran[1] ?? "0"}s\\] `))

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
      // A first line that is no request does not name the endpoint: the first request does.
      const embedding = JSON.stringify({ custom_id: "e", method: "POST", url: "/v1/embeddings", body: { model: "sim-model", input: "x" } })
      const [empty, named, unversioned, many, brokenFirst] = await Promise.all([
        cli(["submit", inputFile("empty.jsonl", [])]),
        cli(["submit", inputFile("requests.json", [chatLine("a", "fine")])]),
        cli(["submit", inputFile("unversioned.jsonl", [noV1])]),
        cli(["submit", inputFile("garbage.jsonl", garbage)]),
        cli(["submit", inputFile("broken-first.jsonl", ["{not json", embedding])])
      ])
      expect(empty.code).toBe(2)
      expect(empty.stderr).toContain("empty.jsonl: 1 problem (the server would refuse the file or fail the batch with the same); nothing was uploaded.")
      expect([named.code, named.stdout]).toEqual([2, "file: invalid_file_format: Invalid file format for Batch API. Must be .jsonl\n"])
      expect([unversioned.code, linesOf(unversioned.stdout)]).toEqual([2, [
        "file: invalid_value: Invalid endpoint '/chat/completions': an endpoint is a /v1/… path, such as /v1/chat/completions."
      ]])
      // Every problem counted, those the list leaves out too.
      expect([many.code, many.stderr]).toEqual([2, expect.stringContaining("garbage.jsonl: 3,000 problems for /v1/chat/completions")])
      expect([brokenFirst.code, brokenFirst.stderr]).toEqual([2, expect.stringContaining("broken-first.jsonl: 1 problem for /v1/embeddings")])
      expect((await openai.files.list()).data.map((f) => f.id)).toEqual([uploaded.id, ...filesBefore])
    }), 180_000)

  it.live("a failed submit leaves nothing behind: a refused create deletes the upload; --max-requests, --metadata and --limit are checked locally", () =>
    Effect.promise(async () => {
      const file = inputFile("three.jsonl", [chatLine("one", "1"), chatLine("two", "2"), chatLine("three", "3")])
      // An endpoint the server does not know (none of OpenAI's): its refusal comes with the create.
      const unknown = inputFile("unknown.jsonl", ["a", "b"].map((id) =>
        JSON.stringify({ custom_id: id, method: "POST", url: "/v1/foo", body: { model: "sim-model" } })))
      const [refused, tooMany, noKey, noValue, longValue, twice, proto, tooLong, listNoValue, badOut] = await Promise.all([
        cli(["submit", unknown]),
        cli(["submit", file, "--max-requests", "2", "--watch", "--out", Path.join(scratch, "out-too-many")]),
        cli(["submit", file, "--metadata", "=x"]),
        cli(["submit", file, "--metadata", "novalue"]),
        cli(["submit", file, "--metadata", `note=${"x".repeat(513)}`]),
        cli(["submit", file, "--metadata", "run=1", "--metadata", "run=2"]),
        cli(["submit", file, "--metadata", "__proto__=x"]),
        cli(["list", "--limit", "20000"]),
        cli(["list", "--metadata", "sweep"]), // list's filter takes its pairs as submit does, and refuses them so
        // Results that could not be written are found out before the batch is made, not once it has run.
        cli(["submit", file, "--watch", "--out", Path.join(file, "out")])
      ])
      expect([badOut.code, badOut.stderr]).toEqual([2, expect.stringContaining(`cannot write the results to ${Path.join(file, "out")} (--out): a part of its path is a file, not a directory; nothing was done.`)])
      // A command line the server would refuse, or would read wrong, is refused before anything is sent (exit 2).
      expect([noKey.code, noKey.stderr]).toEqual([2, expect.stringContaining("--metadata takes KEY=VALUE, with a key before the '=': got '=x'")])
      expect([noValue.code, noValue.stderr]).toEqual([2, expect.stringContaining("got 'novalue'")])
      expect([longValue.code, longValue.stderr]).toEqual([2, expect.stringContaining("--metadata: Invalid 'metadata.note': string too long")])
      expect([twice.code, twice.stderr]).toEqual([2, expect.stringContaining("--metadata gives 'run' twice")])
      expect([proto.code, proto.stderr]).toEqual([2, expect.stringContaining("--metadata: Invalid 'metadata': a key must not be '__proto__'.")])
      expect([tooLong.code, tooLong.stderr]).toEqual([2, expect.stringContaining("--limit must be from 1 to 10000")])
      expect([listNoValue.code, listNoValue.stderr]).toEqual([2, expect.stringContaining("--metadata takes KEY=VALUE, with a key before the '=': got 'sweep'")])
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
      expect([watchBadOut.code, watchBadOut.stderr]).toEqual([2, expect.stringContaining("(--out): a part of its path is a file, not a directory; nothing was done.")])
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

  it.live("retry reruns the failed requests as a new batch; it and submit, with an idempotency key, once", () =>
    Effect.promise(async () => {
      expect(failingBatchId).toBeDefined()
      const out = Path.join(scratch, "out-retry")
      const keyed = ["retry", failingBatchId!, "--only", "error", "--idempotency-key", "ci-job-42"]
      const run = await cli([...keyed, "--watch", "--out", out, "--interval", "0.2"])
      expect(run.code, run.stderr).toBe(3) // the same 20 fail again
      const [id] = linesOf(run.stdout)
      expect(id).not.toBe(failingBatchId)
      expect((await openai.batches.retrieve(id!)).metadata).toMatchObject({ retry_of: failingBatchId })
      expect(linesOf(run.stdout).slice(-2)).toEqual([`errors: ${Path.join(out, `${id}_error.jsonl`)} (20 lines)`, "errors by reason: 20 × status 400"])
      // The same command again (a CI job run twice) gives the rerun made before; without the key, a new one.
      const [again, unkeyed] = [await cli(keyed), await cli(["retry", failingBatchId!, "--only", "error"])]
      expect([again.code, linesOf(again.stdout)]).toEqual([0, [id]])
      expect(linesOf(unkeyed.stdout)[0]).not.toBe(id)
      await Effect.runPromise(waitFor(openai, linesOf(unkeyed.stdout)[0]!, terminal))

      // A submit with a key, run twice: the file goes up again, and the batch made the first time is given (the
      // server compared the bytes); the second upload is deleted. An empty key (an unset variable) is refused.
      const input = inputFile("keyed.jsonl", [chatLine("k1", "keyed 1"), chatLine("k2", "keyed 2")])
      const submitted = ["submit", input, "--idempotency-key", "ci-submit-7"]
      const first = await cli(submitted)
      const second = await cli(submitted)
      expect([first.code, second.code], second.stderr).toEqual([0, 0])
      expect(linesOf(second.stdout)).toEqual(linesOf(first.stdout))
      const batch = await openai.batches.retrieve(linesOf(first.stdout)[0]!)
      expect(second.stderr).toContain(`${batch.id} was created before with this idempotency key, from ${batch.input_file_id}; `)
      expect(second.stderr).toMatch(/file-\w+, uploaded again, is deleted/)
      const uploads = []
      for await (const file of openai.files.list()) if (file.filename === "keyed.jsonl") uploads.push(file.id)
      expect(uploads).toEqual([batch.input_file_id])
      await Effect.runPromise(waitFor(openai, batch.id, terminal))
      const empty = await cli(["submit", input, "--idempotency-key", ""])
      expect([empty.code, empty.stderr.trim()]).toEqual([2, "--idempotency-key is empty (if it was given a variable, is that variable set?)"])
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
      const child = spawn(process.execPath, [suite.main(), "serve"], {
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
      const child = spawn(process.execPath, [suite.main(), "serve"], {
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
