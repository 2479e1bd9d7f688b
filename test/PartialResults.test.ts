/**
 * Results while a batch runs (`GET /v1/batches/{id}/results`, an extension), through the official `openai` client's
 * generic `get`, on SQLite and PostgreSQL: polled during a 5,000-request batch whose lines finish out of order and
 * partly fail, the windows a poller collects grow monotonically and, concatenated, are the final output and error
 * files byte for byte; a line finished after a later one is never skipped (windows stop at the first unfinished
 * line); `after` and `limit`; another project's batch is a 404 like an unknown one; bad parameters a 400 naming them.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { chatLine, createBatch, failure, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, baseUrl, testAppWithUpstream } from "./support/TestApp.js"

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
  readonly lastLine: number
  readonly text: string
}

/**
 * One call of the extension, as a user makes it with the SDK (`asResponse`: the SDK would parse
 * `application/jsonl` as JSON, its test being "contains application/json").
 */
const results = (openai: OpenAI, id: string, query: Record<string, unknown> = {}) =>
  Effect.promise(async (): Promise<Window> => {
    const response = await openai.get(`/batches/${id}/results`, { query }).asResponse()
    return {
      status: response.status,
      contentType: response.headers.get("content-type"),
      lastLine: Number(response.headers.get("x-last-line")),
      text: await response.text()
    }
  })

/** The input line numbers of a window's lines (custom ids are `l<line>`). */
const linesOf = (text: string): Array<number> =>
  text.split("\n").filter((l) => l !== "").map((l) => Number(JSON.parse(l).custom_id.slice(1)))

const fileText = (openai: OpenAI, fileId: string | null | undefined) =>
  Effect.promise(async () => (fileId ? Buffer.from(await (await openai.files.content(fileId)).arrayBuffer()) : Buffer.alloc(0)))

/**
 * Polls `kind` from line 0 until the batch is final and a window comes back empty, checking each window: lines
 * after `after`, in order, the last one `x-last-line` (or `after` echoed when empty). Returns what was collected
 * and how many windows with lines were served while the batch was still `in_progress`.
 */
const pollUntilDone = (openai: OpenAI, id: string, kind: "output" | "error", limit?: number) =>
  Effect.gen(function*() {
    let after = 0
    let whileRunning = 0
    const collected: Array<Buffer> = []
    for (;;) {
      const before = yield* Effect.promise(() => openai.batches.retrieve(id))
      const window = yield* results(openai, id, { kind, after, ...(limit === undefined ? {} : { limit }) })
      expect(window.status).toBe(200)
      expect(window.contentType).toBe("application/jsonl")
      const lines = linesOf(window.text)
      if (lines.length === 0) {
        expect(window.lastLine).toBe(after)
        if (terminal(before)) return { bytes: Buffer.concat(collected), whileRunning }
      } else {
        expect(lines[0]).toBeGreaterThan(after)
        for (let i = 1; i < lines.length; i++) expect(lines[i]).toBeGreaterThan(lines[i - 1]!)
        expect(window.lastLine).toBe(lines.at(-1))
        if (limit !== undefined) expect(lines.length).toBeLessThanOrEqual(limit)
        if (before.status === "in_progress") whileRunning++
      }
      collected.push(Buffer.from(window.text))
      after = window.lastLine
      yield* Effect.sleep(Duration.millis(40))
    }
  })

/** Line `n` of the large batch: every 97th sleeps (finishing after later lines), some fail with a status. */
const prompt = (n: number) =>
  n % 97 === 0 ? `p${n} [sleep:60]` : n % 50 === 0 ? `p${n} [fail:400]` : n % 333 === 0 ? `p${n} [fail:422]` : `p${n}`

for (const backend of backends) describe(`results while a batch runs (${backend})`, () => {
  layer(testAppWithUpstream(config, { latencyMs: 2 }, backend, { auth }), { excludeTestServices: true })("extension", (it) => {
    it.effect("polled during a 5,000-request batch, output and error windows add up to the final files, byte for byte", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const total = 5000
        const file = yield* upload(a, Array.from({ length: total }, (_, i) => chatLine(`l${i + 1}`, prompt(i + 1))))
        const batch = yield* createBatch(a, file.id)
        const [output, errors] = yield* Effect.all([
          pollUntilDone(a, batch.id, "output", 700),
          pollUntilDone(a, batch.id, "error")
        ], { concurrency: 2 })
        const done = yield* waitFor(a, batch.id, terminal)
        expect(done.status).toBe("completed")
        expect(done.request_counts!.failed).toBe(Array.from({ length: total }, (_, i) => prompt(i + 1)).filter((p) => p.includes("fail")).length)
        expect(output.bytes.equals(yield* fileText(a, done.output_file_id))).toBe(true)
        expect(errors.bytes.equals(yield* fileText(a, done.error_file_id))).toBe(true)
        expect(linesOf(output.bytes.toString()).length).toBe(done.request_counts!.completed)
        // The windows were served while the batch ran, not only once it was over.
        expect(output.whileRunning).toBeGreaterThan(1)
      }), { timeout: 60_000 })

    it.effect("a line that finishes after later ones holds the window back until it is done; after and limit", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const file = yield* upload(a, [chatLine("l1", "one"), chatLine("l2", "two [sleep:700]"), chatLine("l3", "three"), chatLine("l4", "four [fail:400]"), chatLine("l5", "five")])
        const batch = yield* createBatch(a, file.id)
        // Lines 1, 3, 4 and 5 are done; line 2 is not: only line 1 is served, and nothing after it yet.
        yield* waitFor(a, batch.id, (b) => b.request_counts!.completed + b.request_counts!.failed === 4)
        const early = yield* results(a, batch.id)
        expect([linesOf(early.text), early.lastLine]).toEqual([[1], 1])
        const errorsEarly = yield* results(a, batch.id, { kind: "error" })
        expect([linesOf(errorsEarly.text), errorsEarly.lastLine]).toEqual([[], 0])
        const resumed = yield* results(a, batch.id, { after: 1 })
        expect([resumed.text, resumed.lastLine]).toEqual(["", 1])

        const done = yield* waitFor(a, batch.id, terminal)
        const rest = yield* results(a, batch.id, { after: 1 })
        expect([linesOf(rest.text), rest.lastLine]).toEqual([[2, 3, 5], 5])
        expect(early.text + rest.text).toBe((yield* fileText(a, done.output_file_id)).toString())
        const errorsDone = yield* results(a, batch.id, { kind: "error", after: 0 })
        expect([linesOf(errorsDone.text), errorsDone.lastLine]).toEqual([[4], 4])
        expect(errorsDone.text).toBe((yield* fileText(a, done.error_file_id)).toString())

        const limited = yield* results(a, batch.id, { limit: 2 })
        expect([linesOf(limited.text), limited.lastLine]).toEqual([[1, 2], 2])
        const next = yield* results(a, batch.id, { after: limited.lastLine, limit: 2 })
        expect([linesOf(next.text), next.lastLine]).toEqual([[3, 5], 5])
        // Past the last line: nothing, and `after` echoed so that a poller stays where it is.
        for (const after of [5, 100]) {
          const past = yield* results(a, batch.id, { after })
          expect([past.text, past.lastLine]).toEqual(["", after])
        }
      }), { timeout: 30_000 })

    it.effect("a cancelled batch: the window stops at the request in flight, then holds its batch_cancelled line", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const file = yield* upload(a, [chatLine("l1", "one"), chatLine("l2", "two [hang]"), chatLine("l3", "three")])
        const batch = yield* createBatch(a, file.id)
        yield* waitFor(a, batch.id, (b) => b.request_counts!.completed === 2)
        expect(linesOf((yield* results(a, batch.id)).text)).toEqual([1])
        yield* Effect.promise(() => a.batches.cancel(batch.id))
        const done = yield* waitFor(a, batch.id, terminal)
        expect(done.status).toBe("cancelled")
        const output = yield* results(a, batch.id)
        const errors = yield* results(a, batch.id, { kind: "error" })
        expect([linesOf(output.text), output.lastLine, linesOf(errors.text), errors.lastLine]).toEqual([[1, 3], 3, [2], 2])
        expect(JSON.parse(errors.text).error.code).toBe("batch_cancelled")
        expect(output.text).toBe((yield* fileText(a, done.output_file_id)).toString())
        expect(errors.text).toBe((yield* fileText(a, done.error_file_id)).toString())
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
        expect(linesOf((yield* results(a, batch.id)).text)).toEqual([1])
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
