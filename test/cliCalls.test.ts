/**
 * The CLI's calls against a scripted server, for what the real one cannot be made to do on demand: answer a poll
 * with a 503 or a 404, cut a download half-way, take its time over an upload. What a user notices: a watch that
 * rides out a passing failure and stops at a final one, a file that is whole or absent, an upload that is not cut
 * by the client's overall timeout.
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import { describe, expect, it } from "@effect/vitest"
import { Console, Duration, Effect, Exit, Layer, Option } from "effect"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import type { Batch } from "openai/resources/batches"
import { layer as batchApiLayer, make as makeBatchApi } from "../src/cli/BatchApi.js"
import { saveResults } from "../src/cli/download.js"
import { submit } from "../src/cli/submit.js"
import { note, printJson, say } from "../src/cli/output.js"
import { upstreamNote } from "../src/cli/upstreamNotes.js"
import { watch } from "../src/cli/watch.js"

type Handler = (req: IncomingMessage, res: ServerResponse, nth: number) => void

/** A server answering each request with `handle` (told how many came before); its base URL, `/v1` included. */
const scriptedServer = Effect.acquireRelease(
  Effect.sync(() => {
    let handle: Handler = (_req, res) => res.writeHead(500).end()
    let requests = 0
    const server = createServer((req, res) => handle(req, res, requests++))
    return { server, set: (h: Handler) => ((handle = h), (requests = 0)), count: () => requests }
  }).pipe(Effect.tap(({ server }) => Effect.async<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))))),
  ({ server }) => Effect.async<void>((resume) => void server.close(() => resume(Effect.void)).closeAllConnections())
).pipe(Effect.map((s) => ({ ...s, url: `http://127.0.0.1:${(s.server.address() as AddressInfo).port}/v1` })))

const batch = (status: Batch["status"], more: Partial<Batch> = {}): Batch => ({
  id: "batch_abc",
  object: "batch",
  endpoint: "/v1/chat/completions",
  input_file_id: "file-in",
  completion_window: "24h",
  status,
  created_at: 1_750_000_000,
  request_counts: { total: 2, completed: status === "completed" ? 2 : 0, failed: 0 },
  ...more
})

const json = (res: ServerResponse, status: number, body: unknown) =>
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body))

const apiError = (res: ServerResponse, status: number, message: string, code: string | null = null) =>
  json(res, status, { error: { message, type: "invalid_request_error", param: null, code } })

/** `effect` with what it writes to stdout and stderr (`Console`) kept in `lines` instead. */
const recorded = <A, E, R>(effect: Effect.Effect<A, E, R>, lines: Array<string>) =>
  Console.consoleWith((console) =>
    Effect.withConsole(effect, {
      ...console,
      log: (...args: ReadonlyArray<unknown>) => Effect.sync(() => void lines.push(args.join(" "))),
      error: (...args: ReadonlyArray<unknown>) => Effect.sync(() => void lines.push(args.join(" ")))
    })
  )

const fastWatch = { mode: "plain", interval: Duration.millis(20), retryFor: Duration.seconds(20) } as const

/**
 * A fast watch of a server whose polls find the batch as `polls` has it, one after another (the last one from then on),
 * and whose `GET /v1/upstreams` is answered by `upstreams` (told how often it was asked before): the watch's last
 * batch, its notes, and how often the upstreams were asked.
 */
const watchedWith = (polls: ReadonlyArray<Batch>, upstreams: (res: ServerResponse, asked: number) => void) =>
  Effect.gen(function*() {
    const server = yield* scriptedServer
    const api = Layer.merge(batchApiLayer({ baseUrl: server.url, apiKey: undefined }), NodeContext.layer)
    let polled = 0
    let asked = 0
    server.set((req, res) =>
      req.url?.endsWith("/upstreams") ? upstreams(res, asked++) : json(res, 200, polls[Math.min(polled++, polls.length - 1)]))
    const notes: Array<string> = []
    const ended = yield* recorded(watch("batch_abc", fastWatch), notes).pipe(Effect.provide(api))
    return { ended, notes, asked: () => asked }
  })

describe("the CLI's calls against a scripted server", () => {
  it.scopedLive("a watch retries a poll answered 503 and says so once; a 404 (the batch is gone) ends it at once", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const api = Layer.merge(batchApiLayer({ baseUrl: server.url, apiKey: undefined }), NodeContext.layer)
      const answers: ReadonlyArray<(res: ServerResponse) => void> = [
        (res) => json(res, 200, batch("in_progress")),
        (res) => apiError(res, 503, "restarting"),
        (res) => json(res, 200, batch("completed"))
      ]
      server.set((_req, res, nth) => answers[Math.min(nth, answers.length - 1)]!(res))
      const notes: Array<string> = []
      const ended = yield* recorded(watch("batch_abc", fastWatch), notes).pipe(Effect.provide(api))
      expect(ended.status).toBe("completed")
      expect(notes.filter((l) => !l.startsWith("["))).toEqual([
        "server unavailable (503 restarting); retrying for up to 20s…",
        "reconnected"
      ])

      server.set((_req, res, nth) => (nth === 0 ? json(res, 200, batch("in_progress")) : apiError(res, 404, "No batch found with id 'batch_abc'.")))
      const gone = yield* Effect.exit(recorded(watch("batch_abc", fastWatch), []).pipe(Effect.provide(api)))
      expect(Exit.isFailure(gone) && JSON.stringify(gone.cause)).toContain("404 No batch found")
      expect(server.count()).toBe(2) // not asked again: a 404 does not pass
    }))

  // `submit --watch` ended at a connection reset on its first poll (exit 1, "reading batch …"), the batch made.
  it.scopedLive("a watch of a batch just made rides out a failure of its very first poll", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const api = Layer.merge(batchApiLayer({ baseUrl: server.url, apiKey: undefined }), NodeContext.layer)
      server.set((_req, res, nth) => (nth === 0 ? apiError(res, 503, "restarting") : json(res, 200, batch("completed"))))
      const notes: Array<string> = []
      const ended = yield* recorded(watch("batch_abc", { ...fastWatch, printed: batch("validating") }), notes).pipe(Effect.provide(api))
      expect(ended.status).toBe("completed")
      expect(notes.filter((l) => !l.startsWith("["))).toEqual([
        "server unavailable (503 restarting); retrying for up to 20s…",
        "reconnected"
      ])
    }))

  it.scopedLive("a watch whose batch does not move says its upstream is down (this server's GET /v1/upstreams), then back", () =>
    Effect.gen(function*() {
      const running = batch("in_progress", { model: "m" })
      const polls = [running, running, running, running, batch("completed", { model: "m" })]
      const downSince = Math.floor(Date.now() / 1000) - 125
      const upstream = (state: string) => ({
        object: "list",
        data: [
          { name: "other", state: "down", down_since: 1, down_reason: "failing", models: ["x"], serves_any_model: false },
          { name: "vllm", state, down_since: state === "down" ? downSince : null, down_reason: state === "down" ? "unreachable" : null, models: ["m"], serves_any_model: false }
        ]
      })
      const seen = yield* watchedWith(polls, (res, asked) => json(res, 200, upstream(asked === 0 ? "down" : "up")))
      expect(seen.ended.status).toBe("completed")
      expect(seen.notes.filter((l) => l.startsWith("Upstream"))).toEqual([
        expect.stringMatching(/^Upstream vllm is down since 2m0[5-7]s ago \(no connection\): the batch waits for it, losing nothing, and goes on once it is back\.$/),
        "Upstream vllm is back: the batch goes on."
      ])
      // Asked only while the batch did not move (and once more, to see it back): polls 2, 3 and 4.
      expect(seen.asked()).toBe(3)

      // Another server (OpenAI's) has no such route: nothing is said, and the watch goes on.
      const quiet = yield* watchedWith(polls, (res) => apiError(res, 404, "Invalid URL (GET /v1/upstreams)"))
      expect(quiet.ended.status).toBe("completed")
      expect(quiet.notes.filter((l) => !l.startsWith("["))).toEqual([])
      expect(quiet.asked()).toBe(1) // not asked again after its 404
    }))

  it.scopedLive("a watch that said the upstream was down says it is back though the batch ended before the next poll", () =>
    Effect.gen(function*() {
      const running = batch("in_progress", { model: "m" })
      const upstream = (state: string) => ({
        object: "list",
        data: [{ name: "vllm", state, down_since: null, down_reason: state === "down" ? "unreachable" : null, models: ["m"], serves_any_model: false }]
      })
      const seen = yield* watchedWith([running, running, batch("completed", { model: "m" })], (res, asked) =>
        json(res, 200, upstream(asked === 0 ? "down" : "up")))
      expect(seen.notes.filter((l) => l.startsWith("Upstream"))).toEqual([
        "Upstream vllm is down (no connection): the batch waits for it, losing nothing, and goes on once it is back.",
        "Upstream vllm is back."
      ])
    }))

  it("a down upstream's note says what brings the batch back: the server's return, or a configuration mended", () => {
    const down = (reason: string) =>
      upstreamNote({ name: "vllm", state: "down", down_since: null, down_reason: reason, models: ["m"], serves_any_model: false }, false, 0)
    expect(down("unreachable")).toBe("Upstream vllm is down (no connection): the batch waits for it, losing nothing, and goes on once it is back.")
    expect(down("path")).toMatch(/goes on once this server is restarted with the upstream's base URL mended \(…\/v1\)\.$/)
    expect(down("key")).toMatch(/goes on once the upstream takes its key again \(or this server is restarted with another\)\.$/)
  })

  it.scopedLive("a watch whose batch does not move while its upstream is up says it may be waiting behind other batches, once a stall", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const api = Layer.merge(batchApiLayer({ baseUrl: server.url, apiKey: undefined }), NodeContext.layer)
      const at = (done: number) => batch("in_progress", { model: "m", request_counts: { total: 10, completed: done, failed: 0 } })
      // Standing still, moving, standing still again, then done: each stall said once.
      const polls = [...Array(12).fill(at(0)), at(5), ...Array(12).fill(at(5)), batch("completed", { model: "m" })]
      let polled = 0
      server.set((req, res) =>
        req.url?.endsWith("/upstreams")
          ? json(res, 200, { object: "list", data: [{ name: "vllm", state: "up", down_since: null, down_reason: null, models: ["m"], serves_any_model: false }] })
          : json(res, 200, polls[Math.min(polled++, polls.length - 1)]))
      const notes: Array<string> = []
      yield* recorded(watch("batch_abc", { ...fastWatch, stallNoteAfter: 0.1 }), notes).pipe(Effect.provide(api))
      const stalls = notes.filter((l) => l.startsWith("No request"))
      expect(stalls).toHaveLength(2)
      expect(stalls[0]).toMatch(/^No request of the batch has finished for \d+s, though its upstream is up: the server may be running other batches first \(it runs MAX_CONCURRENT_BATCHES at a time\), or its requests take that long\.$/)
    }))

  it.scopedLive("a call the client retries (answered 429, then 502 with a page) is retried, and its answer used", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const api = makeBatchApi({ baseUrl: server.url, apiKey: undefined })
      const page = `<html><body>${"Bad gateway. ".repeat(2000)}</body></html>` // more than one chunk, cut by the retry
      server.set((_req, res, nth) => {
        if (nth === 0) return void res.writeHead(429, { "retry-after-ms": "10", "content-type": "application/json" }).end(JSON.stringify({ error: { message: "slow down", type: "requests", param: null, code: "rate_limit_exceeded" } }))
        if (nth === 1) return void res.writeHead(502, { "retry-after-ms": "10", "content-type": "text/html" }).end(page)
        json(res, 200, { object: "list", data: [batch("completed")], first_id: "batch_abc", last_id: "batch_abc", has_more: false })
      })
      const listed = yield* api.list(5)
      expect(listed.map((b) => b.id)).toEqual(["batch_abc"])
      expect(server.count()).toBe(3)
    }))

  it.scopedLive("a list of many pages reads them all without a warning (the client adds an abort listener per page)", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const warnings: Array<string> = []
      const warned = (warning: Error) => void warnings.push(warning.name)
      process.on("warning", warned)
      yield* Effect.addFinalizer(() => Effect.sync(() => void process.off("warning", warned)))
      server.set((_req, res, nth) =>
        json(res, 200, { object: "list", data: [batch("completed", { id: `batch_${nth}` })], first_id: `batch_${nth}`, last_id: `batch_${nth}`, has_more: nth < 14 }))
      const listed = yield* makeBatchApi({ baseUrl: server.url, apiKey: undefined }).list(100, { keep: () => true })
      expect(listed).toHaveLength(15)
      yield* Effect.sleep("50 millis") // warnings are emitted on the next turns
      expect(warnings).toEqual([])
    }))

  it.scopedLive("a server whose answers are no batch (a page, null, a list that never moves on) is said so in a line, never read as one", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const api = makeBatchApi({ baseUrl: server.url, apiKey: undefined })
      server.set((_req, res) => res.writeHead(200, { "content-type": "text/html" }).end("<html>a proxy's page</html>"))
      expect((yield* Effect.flip(api.retrieve("batch_abc"))).message).toBe(`reading batch batch_abc: the server's answer is not a batch: <html>a proxy's page</html>`)
      expect((yield* Effect.flip(api.cancel("batch_abc"))).message).toMatch(/^cancelling batch batch_abc: the server's answer is not a batch: /)
      server.set((_req, res) => json(res, 200, null))
      expect((yield* Effect.flip(api.poll("batch_abc"))).message).toBe("reading batch batch_abc: the server's answer is not a batch: null")
      // The same page again and again: a filtered list asked for it 1,200 times a second, for ever.
      server.set((_req, res) =>
        json(res, 200, { object: "list", data: [batch("failed", { id: "batch_same" })], first_id: "batch_same", last_id: "batch_same", has_more: true }))
      const endless = yield* Effect.flip(api.list(20, { keep: (b) => b.status === "completed" }))
      expect(endless.message).toBe("listing batches: the server's next page lists no batch not listed before: its pages do not move on")
      expect(server.count()).toBe(2)
      // A page that is no list: it said "No batches." (an empty list), exit 0.
      server.set((_req, res) => res.writeHead(200, { "content-type": "text/html" }).end("<html>a proxy's page</html>"))
      expect((yield* Effect.flip(api.list(20))).message).toBe("listing batches: the server's answer is not a list: <html>a proxy's page</html>")
      // Upstreams that are no upstreams are left out (a watch read their models, and died on a null).
      server.set((_req, res) => json(res, 200, { data: [null, { name: "u", models: ["m"], state: "up" }, { name: "v" }] }))
      expect(yield* api.upstreams).toEqual([{ name: "u", models: ["m"], state: "up" }])
    }))

  it.scopedLive("an upload or a create answered 429 or 503 (nothing done) is made again after the wait asked for, and said; a 500 is not", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const dir = mkdtempSync(Path.join(tmpdir(), "cli-calls-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const input = Path.join(dir, "input.jsonl")
      const line = `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n`
      writeFileSync(input, line)
      const api = makeBatchApi({ baseUrl: server.url, apiKey: undefined })
      const file = { id: "file-in", object: "file", bytes: 10, created_at: 1, filename: "input.jsonl", purpose: "batch", status: "processed" }
      const uploaded: Array<boolean> = []
      server.set((req, res, nth) => {
        const chunks: Array<Buffer> = []
        req.on("data", (c: Buffer) => chunks.push(c))
        req.on("end", () => {
          if (req.url === "/v1/files") uploaded.push(Buffer.concat(chunks).toString().includes(`\r\n\r\n${line}`))
          if (nth === 0) return void res.writeHead(429, { "retry-after-ms": "20", "content-type": "application/json" }).end(JSON.stringify({ error: { message: "Rate limit reached", type: "requests", param: null, code: "rate_limit_exceeded" } }))
          if (nth === 1) return json(res, 200, file)
          if (nth === 2) return void res.writeHead(503, { "retry-after": new Date(0).toUTCString(), "content-type": "application/json" }).end(JSON.stringify({ error: { message: "The server is busy", type: "server_error", param: null, code: "server_busy" } }))
          if (nth === 3) return json(res, 200, batch("validating"))
          apiError(res, 500, "a fault")
        })
      })
      const notes: Array<string> = []
      const sent = yield* recorded(api.upload(input), notes)
      expect(sent.id).toBe("file-in")
      // The file went up whole both times (opened again for the second).
      expect(uploaded).toEqual([true, true])
      const made = yield* recorded(api.create({ input_file_id: "file-in", endpoint: "/v1/chat/completions", completion_window: "24h" }), notes)
      expect(made.id).toBe("batch_abc")
      // The waits asked for: 20 ms, and a date already past (HTTP's other form), not the 2 s of a 503 that asks none.
      expect(notes).toEqual([
        expect.stringMatching(/^uploading .*input\.jsonl: 429 Rate limit reached.*; trying again in 1s…$/),
        expect.stringMatching(/^creating the batch: 503 The server is busy.*; trying again in 0s…$/)
      ])
      // A 500 may come after the batch was made: not made again.
      const fault = yield* Effect.flip(api.create({ input_file_id: "file-in", endpoint: "/v1/chat/completions", completion_window: "24h" }))
      expect(fault.message).toContain("500")
      expect(server.count()).toBe(5)
    }))

  it.scopedLive("a submit's create without an answer, or with a 5xx, keeps the upload (a batch may exist); with a key, it is asked again", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const dir = mkdtempSync(Path.join(tmpdir(), "cli-calls-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const input = Path.join(dir, "input.jsonl")
      writeFileSync(input, `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}\n`)
      const api = Layer.merge(batchApiLayer({ baseUrl: server.url, apiKey: undefined }), NodeContext.layer)
      const file = { id: "file-in", object: "file", bytes: 10, created_at: 1, filename: "input.jsonl", purpose: "batch", status: "processed" }
      const calls: Array<string> = []
      /** Answers the upload, then each create as `creates` says: no answer (the connection cut), a status, or the batch. */
      const answering = (creates: ReadonlyArray<"cut" | number>) => {
        let created = 0
        server.set((req, res) => {
          calls.push(`${req.method} ${req.url}`)
          req.resume()
          req.on("end", () => {
            if (req.url === "/v1/files") return json(res, 200, file)
            if (req.method !== "POST") return json(res, 200, { id: "file-in", object: "file", deleted: true })
            const next = creates[Math.min(created++, creates.length - 1)]!
            if (next === "cut") return void res.socket?.destroy()
            if (next === 200) return json(res, 200, batch("validating"))
            apiError(res, next, "Bad gateway")
          })
        })
      }
      const submitted = (key?: string) =>
        submit({ file: input, endpoint: Option.none(), metadata: {}, maxRequests: 100, idempotencyKey: key, watch: false, mode: "plain", interval: Duration.seconds(1), retryFor: Duration.zero, out: dir })
      // A gateway's 502 while the server restarts: the first call may have made the batch; its input is kept.
      answering([502])
      const notes: Array<string> = []
      const failure = yield* Effect.flip(recorded(submitted(), notes).pipe(Effect.provide(api)))
      expect(failure.message).toContain("502")
      expect(notes.at(-1)).toBe("no clear answer to the create: a batch may exist for file-in (kept); `openai-batch list` shows it")
      expect(calls).toEqual(["POST /v1/files", "POST /v1/batches"]) // no DELETE
      // With a key: asked again after no answer and after a 502, and the batch it gives kept.
      calls.length = 0
      answering(["cut", 502, 200])
      const keyedNotes: Array<string> = []
      yield* recorded(submitted("ci-7"), keyedNotes).pipe(Effect.provide(api))
      expect(calls).toEqual(["POST /v1/files", "POST /v1/batches", "POST /v1/batches", "POST /v1/batches"])
      expect(keyedNotes.filter((n) => n.includes("asking again"))).toEqual([
        expect.stringMatching(/^creating the batch: .*; asking again in 1s \(the idempotency key makes it safe\)…$/),
        expect.stringMatching(/^creating the batch: 502 .*; asking again in 2s \(the idempotency key makes it safe\)…$/)
      ])
      expect(keyedNotes.at(-1)).toBe("batch_abc")
    }))

  it.scopedLive("a base URL without /v1 that gets the server's unknown-route 404 or 415 is told to add it; a missing batch is not", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const root = server.url.replace(/\/v1$/, "")
      server.set((req, res) => apiError(res, 404, `Invalid URL (GET ${req.url})`))
      const noV1 = yield* Effect.flip(makeBatchApi({ baseUrl: root, apiKey: undefined }).retrieve("batch_abc"))
      expect(noV1.message).toContain(`; the base URL is the API's, /v1 included (${root}/v1?)`)
      // An upload posted to /files (no /v1) meets the server's 415 for a body outside the API: the same hint.
      server.set((_req, res) => apiError(res, 415, "Request bodies must be JSON (Content-Type: application/json)."))
      const upload = yield* Effect.flip(makeBatchApi({ baseUrl: root, apiKey: undefined }).cancel("batch_abc"))
      expect(upload.message).toContain(`; the base URL is the API's, /v1 included (${root}/v1?)`)
      server.set((_req, res) => apiError(res, 404, "No batch found with id 'batch_abc'.", "not_found"))
      const missing = yield* Effect.flip(makeBatchApi({ baseUrl: server.url, apiKey: undefined }).retrieve("batch_abc"))
      expect(missing.message).not.toContain("/v1 included")
      expect(missing.message).not.toContain("no Batches API")
      // Another server's 404, without a code (an inference server's address given for this one): said so.
      server.set((req, res) => json(res, 404, { error: { message: `Unknown route ${req.method} ${req.url}`, code: null } }))
      const elsewhere = yield* Effect.flip(makeBatchApi({ baseUrl: server.url, apiKey: undefined }).list(1))
      expect(elsewhere.message).toContain(`; ${server.url} has no Batches API: is it this server's address (--base-url, else OPENAI_BASE_URL)?`)
    }))

  it.scopedLive("a download cut half-way never leaves a partial file under its name, and goes on from where it stopped (or over again)", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const dir = mkdtempSync(Path.join(tmpdir(), "cli-calls-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const body = Array.from({ length: 2000 }, (_, i) => JSON.stringify({ id: `line-${i}`, custom_id: `r${i}` })).join("\n") + "\n"
      /** The first `cuts` answers stop half-way through the body (the connection dropped). */
      const cutting = (cuts: number): Handler => (_req, res, nth) => {
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(body.length) })
        if (nth >= cuts) return void res.end(body)
        // Cut a moment after the half was sent: the client has written it (what it writes is what a resume asks after).
        res.write(body.slice(0, body.length / 2), () => setTimeout(() => res.destroy(), 200))
      }
      const finished = batch("completed", { output_file_id: "file-out" })
      const save = (retryFor: Duration.Duration, notes: Array<string>) =>
        saveResults(finished, dir, { retryFor, tell: (line) => Effect.sync(() => void notes.push(line)) }).pipe(
          Effect.provide(batchApiLayer({ baseUrl: server.url, apiKey: undefined })),
          Effect.provide(NodeContext.layer)
        )
      const target = Path.join(dir, "batch_abc_output.jsonl")

      server.set(cutting(Infinity))
      const failed = yield* Effect.exit(save(Duration.zero, []))
      expect(Exit.isFailure(failed)).toBe(true)
      expect(readdirSync(dir)).toEqual([]) // neither the file nor its partial

      // A server without ranges (a 200 to a Range): the download starts over.
      writeFileSync(target, "an older copy\n")
      server.set(cutting(1))
      const notes: Array<string> = []
      const saved = yield* save(Duration.seconds(20), notes)
      expect(saved.output).toEqual({ path: target, lines: 2000 })
      expect(readFileSync(target, "utf8")).toBe(body)
      expect(readdirSync(dir)).toEqual(["batch_abc_output.jsonl"])
      expect(notes).toEqual([expect.stringMatching(/^server unavailable \(.+\); retrying for up to 20s…$/), "reconnected"])

      // This server answers a Range: the next try asks for the rest only, and the file is whole.
      rmSync(target)
      const asked: Array<string | undefined> = []
      server.set((req, res, nth) => {
        asked.push(req.headers.range)
        if (nth === 0) return cutting(1)(req, res, nth)
        const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? "")?.[1] ?? 0)
        res.writeHead(206, { "content-type": "application/octet-stream", "content-range": `bytes ${from}-${body.length - 1}/${body.length}` })
        res.end(body.slice(from))
      })
      const resumed = yield* save(Duration.seconds(20), [])
      expect(asked).toEqual([undefined, `bytes=${body.length / 2}-`])
      expect(resumed.output).toEqual({ path: target, lines: 2000 })
      expect(readFileSync(target, "utf8")).toBe(body)
      expect(readdirSync(dir)).toEqual(["batch_abc_output.jsonl"])

      // The file's whole size, for the download's progress line: from the range's answer, or the whole one's length.
      const api = makeBatchApi({ baseUrl: server.url, apiKey: undefined })
      const rest = yield* api.content("file-out", 100)
      expect([rest.resumed, rest.size]).toEqual([true, body.length])
      yield* Effect.promise(() => rest.body.cancel())
      server.set(cutting(0))
      const whole = yield* api.content("file-out")
      expect([whole.resumed, whole.size]).toEqual([false, body.length])
      yield* Effect.promise(() => whole.body.cancel())
    }))

  it.scopedLive("a server that is not this one: a batch id that is a path writes nothing; its text cannot drive the terminal", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const root = mkdtempSync(Path.join(tmpdir(), "cli-calls-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(root, { recursive: true, force: true })))
      const dir = Path.join(root, "a", "b")
      server.set((_req, res) => res.writeHead(200, { "content-type": "application/octet-stream" }).end("{}\n"))
      const escaping = batch("completed", { id: "../../ESCAPED", output_file_id: "file-out" })
      const refused = yield* Effect.flip(saveResults(escaping, dir, { retryFor: Duration.zero, tell: () => Effect.void }).pipe(
        Effect.provide(batchApiLayer({ baseUrl: server.url, apiKey: undefined })),
        Effect.provide(NodeContext.layer)
      ))
      expect(refused.message).toBe(`The server's batch id "../../ESCAPED" cannot name a file; nothing was written.`)
      expect(readdirSync(root)).toEqual([])

      // A title change and a clear screen in a metadata key, a right-to-left override in a name: drawn, not obeyed.
      const lines: Array<string> = []
      yield* recorded(Effect.zipRight(say("k\u001b]0;PWNED\u0007\u001b[2J: v"), note("Q1\u202elnosj.exe\ttab")), lines)
      expect(lines).toEqual(["k⟨U+001B⟩]0;PWNED⟨U+0007⟩⟨U+001B⟩[2J: v", "Q1⟨U+202E⟩lnosj.exe\ttab"])
      // A line is one line: a newline in a server's id cannot forge another.
      const forged: Array<string> = []
      yield* recorded(Effect.zipRight(say("batch_a\nbatch_b: completed"), note("x\ny")), forged)
      expect(forged).toEqual(["batch_a⟨U+000A⟩batch_b: completed", "x⟨U+000A⟩y"])
      // In JSON too: it escapes C0 itself, not C1 nor the bidirectional controls.
      const json: Array<string> = []
      yield* recorded(printJson({ k: "\u009b2J\u202e\u001b" }), json)
      expect(json).toEqual(['{"k":"\\u009b2J\\u202e\\u001b"}'])
      expect(JSON.parse(json[0]!)).toEqual({ k: "\u009b2J\u202e\u001b" })
    }))

  it.scopedLive("an upload is not bounded by the client's overall timeout (only by inactivity); other calls are", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer
      const dir = mkdtempSync(Path.join(tmpdir(), "cli-calls-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const input = Path.join(dir, "input.jsonl")
      writeFileSync(input, "x".repeat(256 * 1024))
      // The answer comes 600 ms after the request began, as for a large file on a slow link: with a client timeout
      // of 200 ms standing for its 10 minutes.
      server.set((req, res) => {
        let bytes = 0
        req.on("data", (chunk: Buffer) => (bytes += chunk.length))
        req.on("end", () =>
          setTimeout(() =>
            req.url?.startsWith("/v1/files")
              ? json(res, 200, { id: "file-up", object: "file", bytes, created_at: 1, filename: "input.jsonl", purpose: "batch", status: "processed" })
              : json(res, 200, batch("in_progress")), 600))
      })
      const api = makeBatchApi({ baseUrl: server.url, apiKey: undefined, timeout: Duration.millis(200) })
      const file = yield* api.upload(input)
      expect(file.id).toBe("file-up")
      expect(file.bytes).toBeGreaterThan(256 * 1024) // the whole form came
      const poll = yield* Effect.flip(api.poll("batch_abc"))
      expect(poll.message).toContain("did not answer in time")
      expect(poll.transient).toBe("no answer in time")
    }))
})
