/**
 * Results while a batch runs (`GET /v1/batches/{id}/results`, an extension), through the official `openai` client's
 * generic `get`, on SQLite and PostgreSQL: polled during a 2,000-request batch whose lines finish out of order and
 * partly fail, the windows a poller collects grow monotonically and, concatenated, are the final output and error
 * files byte for byte; a line finished after a later one is never skipped (windows stop at the first unfinished
 * line); `x-next-after` moves on when a window of the kind is empty; `after` and `limit`; a read that fails is a
 * 500, never a 200 cut short; another project's batch is a 404 like an unknown one; bad parameters a 400 naming them.
 */
import { expect, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect, Layer, LogLevel } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { BatchStore, make as makeBatchStore } from "../src/batches/BatchStore.js"
import { makePartialResults } from "../src/batches/partialResults.js"
import { makeBatchSql } from "../src/batches/sql.js"
import { chatLine, createBatch, failure, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, baseUrl, testAppWithUpstream } from "./support/TestApp.js"
import { sideBySide } from "./support/SideBySide.js"

const KEYS = { a: "sk-proj-a-partial-5c1e", b: "sk-proj-b-partial-a07d" }
const auth = AuthTest({ apiKeys: [`${KEYS.a}:projA`, `${KEYS.b}:projB`] })
const config = {
  inferenceRetryBaseDelay: Duration.millis(10),
  maxRequestsPerBatch: 5000,
  maxConcurrentBatches: 2,
  maxConcurrentRequestsPerBatch: 32
}

const clients = Effect.map(baseUrl, (base) => {
  const client = (apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
  return { a: client(KEYS.a), b: client(KEYS.b) }
})

interface Window {
  readonly status: number
  readonly contentType: string | null
  readonly contentLength: string | null
  readonly lastLine: number
  readonly nextAfter: number
  readonly bytes: Buffer
  /** The input line numbers of its lines (custom ids are `l<line>`). */
  readonly lines: Array<number>
}

/** The input line numbers of a file's lines (custom ids are `l<line>`). */
const linesOf = (text: string): Array<number> =>
  text.split("\n").filter((l) => l !== "").map((l) => Number(JSON.parse(l).custom_id.slice(1)))

/**
 * One call of the extension, as a user makes it with the SDK (`asResponse`: the SDK would parse
 * `application/jsonl` as JSON, its test being "contains application/json").
 */
const results = (openai: OpenAI, id: string, query: Record<string, unknown> = {}) =>
  Effect.promise(async (): Promise<Window> => {
    const response = await openai.get(`/batches/${id}/results`, { query }).asResponse()
    const bytes = Buffer.from(await response.arrayBuffer())
    return {
      status: response.status,
      contentType: response.headers.get("content-type"),
      contentLength: response.headers.get("content-length"),
      lastLine: Number(response.headers.get("x-last-line")),
      nextAfter: Number(response.headers.get("x-next-after")),
      bytes,
      lines: linesOf(bytes.toString())
    }
  })

/** What a window shows the poller: `[its lines, x-last-line, x-next-after]`. */
const seen = (window: Window) => [window.lines, window.lastLine, window.nextAfter]

const fileText = (openai: OpenAI, fileId: string | null | undefined) =>
  Effect.promise(async () => (fileId ? Buffer.from(await (await openai.files.content(fileId)).arrayBuffer()) : Buffer.alloc(0)))

/**
 * What every window must be: a 200 of `application/jsonl` with its length, lines after `after` in order (at most
 * `limit`), the last one `x-last-line` (0 when none), and `x-next-after` never behind either.
 */
const expectWindow = (window: Window, after: number, limit: number | undefined) => {
  expect([window.status, window.contentType, window.contentLength]).toEqual([200, "application/jsonl", String(window.bytes.length)])
  window.lines.forEach((line, i) => expect(line).toBeGreaterThan(i === 0 ? after : window.lines[i - 1]!))
  expect(window.lastLine).toBe(window.lines.at(-1) ?? 0)
  expect(window.nextAfter).toBeGreaterThanOrEqual(Math.max(after, window.lastLine))
  if (limit !== undefined) expect(window.lines.length).toBeLessThanOrEqual(limit)
}

/**
 * Polls both kinds from line 0 (output windows of at most `outputLimit` lines), each resuming from its
 * `x-next-after`, until the batch is final and both windows come back empty, checking each window. Returns, per
 * kind, what was collected, the last `after`, and how many windows with lines were served while it was `in_progress`.
 */
const pollUntilDone = (openai: OpenAI, id: string, outputLimit: number) =>
  Effect.gen(function*() {
    const kinds = ([["output", outputLimit], ["error", undefined]] as const).map(([kind, limit]) =>
      ({ kind, limit, after: 0, whileRunning: 0, collected: [] as Array<Buffer> }))
    for (;;) {
      const before = yield* Effect.promise(() => openai.batches.retrieve(id))
      let empty = true
      for (const state of kinds) {
        const { after, kind, limit } = state
        const window = yield* results(openai, id, { kind, after, ...(limit === undefined ? {} : { limit }) })
        expectWindow(window, after, limit)
        if (window.lines.length > 0) {
          empty = false
          if (before.status === "in_progress") state.whileRunning++
        }
        state.collected.push(window.bytes)
        state.after = window.nextAfter
      }
      if (empty && terminal(before)) {
        const [output, error] = kinds.map((k) => ({ bytes: Buffer.concat(k.collected), after: k.after, whileRunning: k.whileRunning }))
        return { output: output!, error: error! }
      }
      // Between polls, as a poller would: the server, the simulator and this loop share one thread.
      yield* Effect.sleep(Duration.millis(50))
    }
  })

/** Line `n` of the large batch: every 97th sleeps (finishing after later lines), some fail with a status. */
const prompt = (n: number) =>
  n % 97 === 0 ? `p${n} [sleep:60]` : n % 50 === 0 ? `p${n} [fail:400]` : n % 333 === 0 ? `p${n} [fail:422]` : `p${n}`

for (const backend of backends) sideBySide(`results while a batch runs (${backend})`, () => {
  layer(testAppWithUpstream(config, {}, backend, { auth }), { excludeTestServices: true })("extension", (it) => {
    it.effect("polled during a 2,000-request batch, output and error windows add up to the final files, byte for byte", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const total = 2000 // four of the runner's slices
        const file = yield* upload(a, Array.from({ length: total }, (_, i) => chatLine(`l${i + 1}`, prompt(i + 1))))
        const batch = yield* createBatch(a, file.id)
        const polled = yield* pollUntilDone(a, batch.id, 300)
        const done = yield* waitFor(a, batch.id, terminal)
        expect(done.status).toBe("completed")
        expect(done.request_counts!.failed).toBe(Array.from({ length: total }, (_, i) => prompt(i + 1)).filter((p) => p.includes("fail")).length)
        expect(polled.output.bytes.equals(yield* fileText(a, done.output_file_id))).toBe(true)
        expect(polled.error.bytes.equals(yield* fileText(a, done.error_file_id))).toBe(true)
        expect(linesOf(polled.output.bytes.toString()).length).toBe(done.request_counts!.completed)
        // Both pollers end at the last line, the output one although line 2,000 is an error line.
        expect([polled.output.after, polled.error.after]).toEqual([total, total])
        // The windows were served while the batch ran, not only once it was over.
        expect(polled.output.whileRunning).toBeGreaterThan(1)
      }), { timeout: 60_000 })

    it.effect("a line that finishes after later ones (here by a cancel) holds the window back until it is done; x-next-after; after and limit", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        // Line 2 never answers: it is "done" only once the batch is cancelled (batch_cancelled), after lines 3 to 5.
        const file = yield* upload(a, [chatLine("l1", "one"), chatLine("l2", "two [hang]"), chatLine("l3", "three"), chatLine("l4", "four [fail:400]"), chatLine("l5", "five")])
        const batch = yield* createBatch(a, file.id)
        yield* waitFor(a, batch.id, (b) => b.request_counts!.completed + b.request_counts!.failed === 4)
        // Only line 1 is served, and nothing after it yet; the error poller moves on past line 1 (final, not an error).
        const early = yield* results(a, batch.id)
        expectWindow(early, 0, undefined)
        expect(seen(early)).toEqual([[1], 1, 1])
        expect(seen(yield* results(a, batch.id, { kind: "error" }))).toEqual([[], 0, 1])
        expect(seen(yield* results(a, batch.id, { after: 1 }))).toEqual([[], 0, 1])

        yield* Effect.promise(() => a.batches.cancel(batch.id))
        const done = yield* waitFor(a, batch.id, terminal)
        expect(done.status).toBe("cancelled")
        const rest = yield* results(a, batch.id, { after: 1 })
        expect(seen(rest)).toEqual([[3, 5], 5, 5])
        expect(Buffer.concat([early.bytes, rest.bytes]).equals(yield* fileText(a, done.output_file_id))).toBe(true)
        const errors = yield* results(a, batch.id, { kind: "error", after: 1 })
        expect(seen(errors)).toEqual([[2, 4], 4, 5])
        expect(JSON.parse(errors.bytes.toString().split("\n")[0]!).error.code).toBe("batch_cancelled")
        expect(errors.bytes.equals(yield* fileText(a, done.error_file_id))).toBe(true)
        // No error line after 4, yet the poller moves on to the last line.
        expect(seen(yield* results(a, batch.id, { kind: "error", after: 4 }))).toEqual([[], 0, 5])

        // With `limit`, a full window goes on from its last line (lines of the kind may follow).
        const limited = yield* results(a, batch.id, { limit: 2 })
        expectWindow(limited, 0, 2)
        expect(seen(limited)).toEqual([[1, 3], 3, 3])
        expect(seen(yield* results(a, batch.id, { after: limited.nextAfter, limit: 2 }))).toEqual([[5], 5, 5])
        // Past the last line: nothing (x-last-line 0), and `after` echoed in x-next-after: a poller stays where it is.
        for (const after of [5, 100]) {
          const past = yield* results(a, batch.id, { after })
          expectWindow(past, after, undefined)
          expect(seen(past)).toEqual([[], 0, after])
        }
      }), { timeout: 30_000 })

    it.effect("answers past 8 MiB: a response is one page, its x-last-line and x-next-after its last line", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        // A page stops once 8 MiB of answers come before a line: after line 1's, lines 2 and 3 wait for the next.
        const file = yield* upload(a, [chatLine("l1", "one [big:8.01]"), chatLine("l2", "two"), chatLine("l3", "three")])
        const batch = yield* createBatch(a, file.id)
        const done = yield* waitFor(a, batch.id, terminal)
        const first = yield* results(a, batch.id)
        expectWindow(first, 0, undefined)
        expect(seen(first)).toEqual([[1], 1, 1])
        const second = yield* results(a, batch.id, { after: first.nextAfter })
        expect(seen(second)).toEqual([[2, 3], 3, 3])
        expect(Buffer.concat([first.bytes, second.bytes]).equals(yield* fileText(a, done.output_file_id))).toBe(true)
      }))

    it.effect("another project's batch is a 404 exactly as an unknown one; without a key, a 401", () =>
      Effect.gen(function*() {
        const { a, b } = yield* clients
        const file = yield* upload(a, [chatLine("l1", "one")])
        const batch = yield* createBatch(a, file.id)
        yield* waitFor(a, batch.id, terminal)
        const unknown = "batch_00000000000000000000000000"
        const other = yield* failure(() => b.get(`/batches/${batch.id}/results`))
        const missing = yield* failure(() => b.get(`/batches/${unknown}/results`))
        expect(other.status).toBe(404)
        expect(JSON.stringify(other.error)).toBe(JSON.stringify(missing.error).replaceAll(unknown, batch.id))
        expect(other.error).toMatchObject({ type: "invalid_request_error", param: "batch_id" })
        const anonymous = yield* Effect.promise(() => fetch(`${a.baseURL}/batches/${batch.id}/results`))
        expect(anonymous.status).toBe(401)
        expect((yield* results(a, batch.id)).lines).toEqual([1])
      }))

    it.effect("a bad kind, after or limit is a 400 naming it", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const file = yield* upload(a, [chatLine("l1", "one")])
        const batch = yield* createBatch(a, file.id)
        const bad: Array<[string, string]> = [
          ["kind=bogus", "kind"], ["kind=", "kind"], ["kind=output&kind=error", "kind"],
          ["after=-1", "after"], ["after=1.5", "after"], ["after=abc", "after"], ["after=1e3", "after"],
          ["after=", "after"], ["after=99999999999", "after"], ["limit=0", "limit"], ["limit=10001", "limit"]
        ]
        for (const [query, param] of bad) {
          const response = yield* Effect.promise(() =>
            fetch(`${a.baseURL}/batches/${batch.id}/results?${query}`, { headers: { authorization: `Bearer ${KEYS.a}` } })
          )
          const body = yield* Effect.promise(() => response.json() as Promise<any>)
          expect([query, response.status, body.error.type, body.error.param]).toEqual([query, 400, "invalid_request_error", param])
          expect(body.error.message).toContain(`'${param}'`)
        }
      }))
  })
})

/**
 * A store whose page reads fail (as when the database connection drops or a statement times out between the
 * window and its lines): the window is found, its lines cannot be read.
 */
const pageReadsFail = Layer.effect(BatchStore, Effect.gen(function*() {
  const store = yield* makeBatchStore
  const sql = yield* SqlClient.SqlClient
  const lost = () => Effect.die(new SqlError({ cause: new Error("Connection terminated unexpectedly"), message: "connection lost" }))
  return { ...store, ...makePartialResults(sql, makeBatchSql(sql), lost) }
}))

layer(testAppWithUpstream(config, {}, "sqlite", { auth, batchStore: pageReadsFail, logLevel: LogLevel.None }), { excludeTestServices: true })(
  "results while a batch runs, when reading the lines fails",
  (it) => {
    it.effect("the client gets a 503 database_unavailable in the error envelope, not a 200 with fewer lines", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const file = yield* upload(a, [chatLine("l1", "one"), chatLine("l2", "two")])
        const batch = yield* createBatch(a, file.id)
        expect((yield* waitFor(a, batch.id, terminal)).request_counts!.completed).toBe(2)
        const error = yield* failure(() => a.get(`/batches/${batch.id}/results`).asResponse())
        expect([error.status, error.error?.type, error.error?.code]).toEqual([503, "server_error", "database_unavailable"])
      }))
  }
)
