/**
 * Inline requests (an extension): `POST /v1/batches` with `requests: [...]` instead of `input_file_id`, through the
 * official `openai` client (and raw HTTP for a body the client cannot write). The requests become an ordinary input
 * file (listed, downloadable), validated as a file is (line = position + 1); the body is bounded by
 * `MAX_JSON_BODY_BYTES` and the file by the project's storage quota; exactly one of `input_file_id` and `requests`.
 * On SQLite and PostgreSQL.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Layer, LogLevel, Option, Queue } from "effect"
import type OpenAI from "openai"
import { BatchStore, make as makeBatchStore } from "../src/batches/BatchStore.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { chatLine, failure, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { rawRequest } from "./support/RawHttp.js"
import { backends, baseUrl, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const MAX_JSON_BODY_BYTES = 16 * 1024

const settings = {
  inferenceRetryBaseDelay: Duration.millis(10),
  inferenceMaxAttempts: 2,
  maxJsonBodyBytes: MAX_JSON_BODY_BYTES,
  maxFileBytesPerProject: Option.some(64 * 1024),
  maxRequestsPerBatch: 1000
}

const chat = (customId: string, prompt: string) => JSON.parse(chatLine(customId, prompt))

/** `POST /v1/batches` with `requests`, through the SDK (which has no such parameter). */
const postInline = (openai: OpenAI, requests: unknown, extra: Record<string, unknown> = {}) =>
  openai.batches.create({ endpoint: "/v1/chat/completions", completion_window: "24h", requests, ...extra } as any)
const createInline = (openai: OpenAI, requests: ReadonlyArray<unknown>, extra: Record<string, unknown> = {}) =>
  Effect.promise(() => postInline(openai, requests, extra))

const fileText = (openai: OpenAI, id: string) => Effect.promise(async () => (await openai.files.content(id)).text())

for (const backend of backends) describe(`inline requests (${backend})`, () => {
  layer(testAppWithUpstream(settings, { keepBodies: true }, backend), { excludeTestServices: true })("inline", (it) => {
    it.effect("3 requests inline: stored as a listed, downloadable input file, and the batch runs", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const requests = [chat("a", "first"), chat("b", "second [fail:400]"), chat("c", "third")]
        const created = yield* createInline(openai, requests, {
          metadata: { via: "inline" },
          output_expires_after: { anchor: "created_at", seconds: 7200 }
        })
        expect(created).toMatchObject({ object: "batch", status: "validating", endpoint: "/v1/chat/completions", metadata: { via: "inline" } })
        expect(Object.keys(created)).not.toContain("requests")

        const file = yield* Effect.promise(() => openai.files.retrieve(created.input_file_id))
        expect(file).toMatchObject({ object: "file", purpose: "batch", filename: `${created.id}_inline.jsonl`, status: "processed" })
        const text = yield* fileText(openai, created.input_file_id)
        expect(text).toBe(requests.map((r) => JSON.stringify(r)).join("\n") + "\n")
        expect(file.bytes).toBe(Buffer.byteLength(text))
        // A copy of the prompts the server made: kept while the batch may run and its own files after it (it was
        // kept for good).
        expect(file.expires_at! - created.expires_at!).toBeGreaterThanOrEqual(7199)
        expect(file.expires_at! - created.expires_at!).toBeLessThanOrEqual(7201)
        const listed = yield* Effect.promise(() => openai.files.list({ purpose: "batch" }))
        expect(listed.data.map((f) => f.id)).toContain(created.input_file_id)

        const done = yield* waitFor(openai, created.id, terminal)
        expect(done.status).toBe("completed")
        expect(done.request_counts).toEqual({ total: 3, completed: 2, failed: 1 })
        expect((yield* readLines(openai, done.output_file_id)).map((l) => l.custom_id)).toEqual(["a", "c"])
        expect((yield* readLines(openai, done.error_file_id)).map((l) => l.custom_id)).toEqual(["b"])
      }))

    it.effect("each request is kept as written: big integers and strings exact, whitespace between tokens dropped", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const openai = sdk(base)
        const sim = yield* Upstream
        // What `JSON.stringify` cannot write: an integer beyond 2^53, an escaped string with inner spaces, a line
        // break between tokens (a JSONL line cannot hold one).
        const body = `{"endpoint":"/v1/chat/completions","completion_window":"24h","requests":[
          {"custom_id": "big", "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "sim-model", "seed": 12345678901234567891,
                    "messages": [{"role": "user", "content": "keep \\"this\\"  as\\u0020is"}]}}
        ]}`
        const answer = yield* rawRequest(base, {
          method: "POST",
          path: "/v1/batches",
          headers: { "content-type": "application/json" },
          body
        })
        expect(answer.status).toBe(200)
        const line = '{"custom_id":"big","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model",' +
          '"seed":12345678901234567891,"messages":[{"role":"user","content":"keep \\"this\\"  as\\u0020is"}]}}\n'
        expect(yield* fileText(openai, answer.json.input_file_id)).toBe(line)
        const done = yield* waitFor(openai, answer.json.id, terminal)
        expect(done.status).toBe("completed")
        const sent = sim.stats.bodies.find((b) => b.body.includes('"seed":12345678901234567891'))
        expect(sent).toBeDefined()
      }))

    it.effect("a bad request fails the batch with its position + 1 as the line, as in a file", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const sim = yield* Upstream
        const before = sim.stats.requests
        const requests = [
          chat("ok", "fine"),
          { custom_id: "no-body", method: "POST", url: "/v1/chat/completions" },
          chat("ok", "duplicate"),
          "not an object"
        ]
        const created = yield* createInline(openai, requests)
        const done = yield* waitFor(openai, created.id, terminal)
        expect(done.status).toBe("failed")
        expect(done.errors!.data!.map((e) => [e.code, e.line, e.param])).toEqual([
          ["missing_required_parameter", 2, "body"],
          ["duplicate_custom_id", 3, "custom_id"],
          ["invalid_json_line", 4, null]
        ])
        expect(sim.stats.requests).toBe(before)
      }))

    it.effect("exactly one of input_file_id and requests: both or neither is a 400 naming the parameter", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const file = yield* upload(openai, [chatLine("x", "x")])
        const both = yield* failure(() => postInline(openai, [chat("a", "a")], { input_file_id: file.id }))
        expect(both.status).toBe(400)
        expect(both.error).toEqual({
          message: "Give either 'input_file_id' or 'requests' (the requests inline), not both.",
          type: "invalid_request_error",
          param: "requests",
          code: "invalid_value"
        })
        // Neither: exactly what an OpenAI client got before the extension.
        const neither = yield* failure(() => openai.batches.create({ endpoint: "/v1/chat/completions", completion_window: "24h" } as any))
        expect(neither.status).toBe(400)
        expect(neither.error).toEqual({
          message: "Missing required parameter: 'input_file_id'.",
          type: "invalid_request_error",
          param: "input_file_id",
          code: "missing_required_parameter"
        })
        // …even when other parameters are missing too.
        const nothing = yield* failure(() => openai.batches.create({} as any))
        expect(nothing.error).toEqual(neither.error)
        const empty = yield* failure(() => postInline(openai, []))
        expect(empty.status).toBe(400)
        expect(empty.error.param).toBe("requests")
        const notArray = yield* failure(() => postInline(openai, { a: 1 }))
        expect(notArray.status).toBe(400)
        expect(notArray.error).toMatchObject({ param: "requests", message: "Invalid type for 'requests': expected an array, but got an object instead." })
        // More than a batch may hold (MAX_REQUESTS_PER_BATCH), however small: refused before their lines are made
        // (500,000 tiny ones in a 1 MiB body held the event loop half a second).
        const many = yield* failure(() => postInline(openai, Array.from({ length: 1001 }, () => 0)))
        expect([many.status, many.error]).toEqual([400, {
          message: "'requests' holds 1001 requests; a batch may hold 1000 at most.",
          type: "invalid_request_error",
          param: "requests",
          code: "too_many_tasks"
        }])
        // A bad create parameter is checked before anything is stored.
        const before = (yield* Effect.promise(() => openai.files.list())).data.length
        const badWindow = yield* failure(() => postInline(openai, [chat("a", "a")], { completion_window: "1h" }))
        expect(badWindow.error.param).toBe("completion_window")
        expect((yield* Effect.promise(() => openai.files.list())).data.length).toBe(before)
      }))

    it.effect("a body over MAX_JSON_BODY_BYTES is a 413; a file over the project's storage quota too; nothing stored", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const before = (yield* Effect.promise(() => openai.files.list())).data.length
        const tooLarge = yield* failure(() => postInline(openai, [chat("a", "x".repeat(MAX_JSON_BODY_BYTES))]))
        expect(tooLarge.status).toBe(413)
        expect(tooLarge.error.type).toBe("invalid_request_error")
        // Within the body limit, beyond what the project's quota leaves.
        const filler = yield* upload(openai, ["y".repeat(60 * 1024)], "filler.jsonl")
        const overQuota = yield* failure(() => postInline(openai, [chat("a", "x".repeat(8 * 1024))]))
        expect(overQuota.status).toBe(413)
        expect(overQuota.error).toMatchObject({ param: "requests", code: "storage_quota_exceeded" })
        yield* Effect.promise(() => openai.files.delete(filler.id))
        expect((yield* Effect.promise(() => openai.files.list())).data.length).toBe(before)
      }))

    it.effect("an idempotency key gives the same batch for the same requests (one input file), a 409 for others", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const inlineFiles = Effect.map(
          Effect.promise(() => openai.files.list({ purpose: "batch" })),
          (page) => page.data.filter((f) => f.filename.endsWith("_inline.jsonl")).length
        )
        const before = yield* inlineFiles
        const requests = [chat("k1", "keyed")]
        const first = yield* createInline(openai, requests, { idempotency_key: "inline-key" })
        const again = yield* createInline(openai, requests, { idempotency_key: "inline-key" })
        expect(again.id).toBe(first.id)
        expect(again.input_file_id).toBe(first.input_file_id)
        const other = yield* failure(() => postInline(openai, [chat("k2", "other")], { idempotency_key: "inline-key" }))
        expect(other.status).toBe(409)
        expect(other.error.param).toBe("idempotency_key")
        expect(yield* inlineFiles).toBe(before + 1)
      }))
  })
})

/**
 * Where batch creates stop: `before` their row's insert and `after` it (in its transaction, for inline requests),
 * each arrival told on the queue of its gate; a gate made open lets them by.
 */
interface Gates {
  readonly before: { readonly open: Deferred.Deferred<void>; readonly arrivals: Queue.Queue<void> }
  readonly after: { readonly open: Deferred.Deferred<void>; readonly arrivals: Queue.Queue<void> }
}
const gateOf = (open: boolean) =>
  Effect.gen(function*() {
    const gate = { open: yield* Deferred.make<void>(), arrivals: yield* Queue.unbounded<void>() }
    if (open) yield* Deferred.succeed(gate.open, undefined)
    return gate
  })
let gates: Gates
const setGates = (before: "open" | "closed", after: "open" | "closed") =>
  Effect.map(Effect.all({ before: gateOf(before === "open"), after: gateOf(after === "open") }), (made) => void (gates = made))
const pass = (gate: Gates["before"]) => Effect.zipRight(Queue.offer(gate.arrivals, undefined), Deferred.await(gate.open))
const createsStopAtGates = Layer.effect(BatchStore, Effect.map(makeBatchStore, (store) => ({
  ...store,
  create: (batch: Parameters<typeof store.create>[0]) =>
    Effect.zipRight(pass(gates.before), Effect.tap(store.create(batch), () => pass(gates.after)))
})))

const inlineFilesOf = (openai: OpenAI) =>
  Effect.promise(async () => (await openai.files.list()).data.filter((f) => f.filename.endsWith("_inline.jsonl")).map((f) => f.id))

// On PostgreSQL, whose other connections read on while a create's transaction waits (SQLite's one connection waits).
layer(testAppWithUpstream(settings, {}, "postgres", { batchStore: createsStopAtGates }), { excludeTestServices: true })(
  "inline requests, the input file and its batch",
  (it) => {
    it.effect("are committed together: a process killed after either is written leaves neither", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        yield* setGates("open", "closed")
        const batchesBefore = (yield* Effect.promise(() => openai.batches.list())).data.length
        const creating = yield* Effect.fork(createInline(openai, [chat("a", "a")]))
        yield* Queue.take(gates.after.arrivals) // the batch's row inserted, not yet committed
        const meanwhile = {
          files: yield* inlineFilesOf(openai),
          batches: (yield* Effect.promise(() => openai.batches.list())).data.length - batchesBefore
        }
        yield* Deferred.succeed(gates.after.open, undefined)
        const batch = yield* Fiber.join(creating)
        expect(meanwhile).toEqual({ files: [], batches: 0 }) // were the process killed then, nothing would be left
        expect(yield* inlineFilesOf(openai)).toEqual([batch.input_file_id])
      }))

    it.effect("two creates with one idempotency key at once make one batch and keep one input file", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        yield* setGates("closed", "open")
        const before = yield* inlineFilesOf(openai)
        const creates = yield* Effect.fork(Effect.all(
          [0, 1].map(() => createInline(openai, [chat("a", "a")], { idempotency_key: "both-at-once" })),
          { concurrency: "unbounded" }
        ))
        yield* Effect.zipRight(Queue.take(gates.before.arrivals), Queue.take(gates.before.arrivals)) // both past the key's look-up
        yield* Deferred.succeed(gates.before.open, undefined)
        const [first, second] = yield* Fiber.join(creates)
        expect(second!.id).toBe(first!.id)
        const made = (yield* inlineFilesOf(openai)).filter((id) => !before.includes(id))
        expect(made).toEqual([first!.input_file_id])
      }))
  }
)

/** An app's own `FileStore` that runs no check (TypeScript lets a `create` drop the parameter). */
const ChecklessFileStore = Layer.effect(FileStore, Effect.map(FileStore, (live) =>
  FileStore.of({
    ...live,
    create: (meta, content) => live.create(meta, content)
  }))).pipe(Layer.provide(FileStoreLive))

layer(testAppWithUpstream(settings, {}, "sqlite", { fileStore: ChecklessFileStore, logLevel: LogLevel.Error }), { excludeTestServices: true })(
  "inline requests with an app's own FileStore that runs no check",
  (it) => {
    it.effect("still make their batch and its one input file; a refused key keeps none", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const first = yield* createInline(openai, [chat("a", "a")], { idempotency_key: "k" })
        const again = yield* createInline(openai, [chat("a", "a")], { idempotency_key: "k" })
        expect(again.id).toBe(first.id)
        expect(yield* inlineFilesOf(openai)).toEqual([first.input_file_id])
        const done = yield* waitFor(openai, first.id, terminal)
        expect([done.status, done.request_counts?.completed]).toEqual(["completed", 1])
      }))
  }
)
