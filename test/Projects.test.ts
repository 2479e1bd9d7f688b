/**
 * Projects (issue 14): through the official `openai` client with keys over two projects and an operator key, each
 * project sees only its own files and batches on every endpoint (another project's object is a 404 exactly like
 * an unknown id, an `after` cursor naming one is unknown), a batch's output and error files follow the batch's
 * project, a batch cannot read another project's input file, idempotency keys are per project, and the operator
 * sees and acts on everything while what it creates is its own project's (a batch over another project's file is
 * refused at once). Then the per-project limits: unfinished
 * batches (429), requests enqueued (validation fails, nothing sent upstream), bytes of files (413; the server's own
 * output files are never refused). On SQLite and PostgreSQL.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect, Fiber, Option } from "effect"
import * as Http from "node:http"
import OpenAI, { toFile } from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { chatLine, createBatch, failure, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, baseUrl, testApp, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const KEYS = { a1: "sk-proj-a-1-4e7d2c", a2: "sk-proj-a-2-91bf06", b: "sk-proj-b-d3a85e", admin: "sk-operator-77c1f0" }
const auth = AuthTest({
  apiKeys: [`${KEYS.a1}:projA`, `${KEYS.a2}:projA`, `${KEYS.b}:projB`],
  adminApiKeys: [KEYS.admin]
})
const fastRetries = {
  inferenceRetryBaseDelay: Duration.millis(10),
  inferenceMaxAttempts: 2,
  maxRequestsPerBatch: 50,
  maxConcurrentRequestsPerBatch: 2
}

/** A client for each key. */
const clients = Effect.map(baseUrl, (base) => {
  const client = (apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
  return { a1: client(KEYS.a1), a2: client(KEYS.a2), b: client(KEYS.b), admin: client(KEYS.admin) }
})

const uploadPromise = async (openai: OpenAI, name: string, text = "x\n", purpose: "batch" | "user_data" = "user_data") =>
  openai.files.create({ file: await toFile(Buffer.from(text), name), purpose })
const uploadText = (openai: OpenAI, name: string, text?: string) => Effect.promise(() => uploadPromise(openai, name, text))

/**
 * `call(otherId)` fails exactly as `call(unknownId)` does (status and error body, with the id swapped): another
 * project's object is indistinguishable from one that does not exist.
 */
const sameAsUnknown = (call: (id: string) => Promise<unknown>, otherId: string, unknownId: string, status = 404) =>
  Effect.gen(function*() {
    const other = yield* failure(() => call(otherId))
    const unknown = yield* failure(() => call(unknownId))
    expect(other.status).toBe(status)
    expect(unknown.status).toBe(status)
    expect(JSON.stringify(other.error)).toBe(JSON.stringify(unknown.error).replaceAll(unknownId, otherId))
  })

/** Every id a list gives, page after page of `limit` (the SDK follows `after` = the last id). */
const allFileIds = (openai: OpenAI, query: OpenAI.FileListParams = {}) =>
  Effect.promise(async () => {
    const ids: Array<string> = []
    for await (const f of openai.files.list({ limit: 2, ...query })) ids.push(f.id)
    return ids
  })
const allBatchIds = (openai: OpenAI) =>
  Effect.promise(async () => {
    const ids: Array<string> = []
    for await (const b of openai.batches.list({ limit: 2 })) ids.push(b.id)
    return ids
  })

const UNKNOWN_FILE = "file-00000000000000000000000000"
const UNKNOWN_BATCH = "batch_00000000000000000000000000"

describe("projects", () => {
  for (const backend of backends) {
    layer(testApp({}, backend, { auth }), { excludeTestServices: true })(`${backend}: files`, (it) => {
      it.effect("each project sees only its files on every endpoint; the operator sees all, and owns its uploads", () =>
        Effect.gen(function*() {
          const { a1, a2, b, admin } = yield* clients
          // Interleaved: A, B, A, B, A, B.
          const f: Array<OpenAI.FileObject> = []
          for (const [i, openai] of [a1, b, a2, b, a1, b].entries()) f.push(yield* uploadText(openai, `f${i}.txt`))
          const [fa1, fb1, fa2, fb2, fa3, fb3] = f.map((x) => x.id) as [string, string, string, string, string, string]

          // Retrieve and content: the project's other key sees them; the other project gets the unknown id's 404.
          expect((yield* Effect.promise(() => a2.files.retrieve(fa1))).id).toBe(fa1)
          expect(yield* Effect.promise(async () => (await a2.files.content(fa1)).text())).toBe("x\n")
          yield* sameAsUnknown((id) => b.files.retrieve(id), fa1, UNKNOWN_FILE)
          yield* sameAsUnknown((id) => b.files.content(id), fa1, UNKNOWN_FILE)
          yield* sameAsUnknown((id) => a1.files.retrieve(id), fb1, UNKNOWN_FILE)

          // Lists, page by page of 2, in both orders and with a purpose filter: only the project's files.
          expect(yield* allFileIds(a1)).toEqual([fa3, fa2, fa1])
          expect(yield* allFileIds(a2, { order: "asc" })).toEqual([fa1, fa2, fa3])
          expect(yield* allFileIds(b)).toEqual([fb3, fb2, fb1])
          expect(yield* allFileIds(b, { purpose: "user_data", order: "asc" })).toEqual([fb1, fb2, fb3])
          expect(yield* allFileIds(b, { purpose: "batch" })).toEqual([])
          // A page of one ends where the project's files end, whatever the other project holds after them.
          const first = yield* Effect.promise(() => a1.files.list({ limit: 1, order: "asc", after: fa2 }))
          expect([first.data.map((x) => x.id), first.has_more]).toEqual([[fa3], false])
          // Another project's file as the `after` cursor is an unknown cursor.
          yield* sameAsUnknown((id) => a1.files.list({ after: id }), fb2, UNKNOWN_FILE, 400)

          // Delete: the other project cannot (and the file stays); the owner can.
          yield* sameAsUnknown((id) => b.files.delete(id), fa1, UNKNOWN_FILE)
          expect((yield* Effect.promise(() => a1.files.retrieve(fa1))).id).toBe(fa1)
          expect((yield* Effect.promise(() => a2.files.delete(fa1))).deleted).toBe(true)

          // The operator sees every project's files, reads and deletes them.
          expect(yield* allFileIds(admin)).toEqual([fb3, fa3, fb2, fa2, fb1])
          expect(yield* Effect.promise(async () => (await admin.files.content(fb1)).text())).toBe("x\n")
          expect((yield* Effect.promise(() => admin.files.delete(fb3))).deleted).toBe(true)
          expect(yield* allFileIds(b)).toEqual([fb2, fb1])
          // What the operator uploads is its own project's: neither project sees it.
          const own = yield* uploadText(admin, "operator.txt")
          yield* sameAsUnknown((id) => a1.files.retrieve(id), own.id, UNKNOWN_FILE)
          yield* sameAsUnknown((id) => b.files.delete(id), own.id, UNKNOWN_FILE)
          expect(yield* allFileIds(a1)).toEqual([fa3, fa2])
          expect((yield* allFileIds(admin))[0]).toBe(own.id)
        }))
    })

    layer(testAppWithUpstream(fastRetries, {}, backend, { auth }), { excludeTestServices: true })(`${backend}: batches`, (it) => {
      it.effect("a batch, its output and error files are its project's; another project gets 404 everywhere", () =>
        Effect.gen(function*() {
          const { a1, a2, b, admin } = yield* clients
          const input = yield* upload(a1, [chatLine("ok", "quick"), chatLine("bad", "no [fail:400]")])
          const batch = yield* Effect.promise(() =>
            a1.batches.create({ input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))
          const done = yield* waitFor(a2, batch.id, terminal)
          expect([done.status, done.request_counts]).toEqual(["completed", { total: 2, completed: 1, failed: 1 }])
          const [output, errors] = [done.output_file_id!, done.error_file_id!]
          expect((yield* readLines(a2, output)).map((l) => l.custom_id)).toEqual(["ok"])
          expect((yield* readLines(a1, errors)).map((l) => l.custom_id)).toEqual(["bad"])
          for (const id of [output, errors]) {
            yield* sameAsUnknown((x) => b.files.retrieve(x), id, UNKNOWN_FILE)
            yield* sameAsUnknown((x) => b.files.content(x), id, UNKNOWN_FILE)
            yield* sameAsUnknown((x) => b.files.delete(x), id, UNKNOWN_FILE)
          }
          expect(yield* allFileIds(a1, { purpose: "batch_output" })).toEqual(expect.arrayContaining([output, errors]))
          expect(yield* allFileIds(b, { purpose: "batch_output" })).toEqual([])
          yield* sameAsUnknown((id) => b.batches.retrieve(id), batch.id, UNKNOWN_BATCH)
          // The operator reads them all.
          expect((yield* Effect.promise(() => admin.batches.retrieve(batch.id))).status).toBe("completed")
          expect((yield* readLines(admin, output)).map((l) => l.custom_id)).toEqual(["ok"])
        }))

      it.effect("a batch over another project's input file fails validation as over a missing file", () =>
        Effect.gen(function*() {
          const { a1, b, admin } = yield* clients
          const sim = yield* Upstream
          const sent = sim.stats.requests
          const input = yield* upload(a1, [chatLine("x", "quick")])
          const create = (openai: OpenAI, fileId: string) =>
            Effect.promise(() => openai.batches.create({ input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h" }))
          const foreign = yield* waitFor(b, (yield* create(b, input.id)).id, terminal)
          const missing = yield* waitFor(b, (yield* create(b, UNKNOWN_FILE)).id, terminal)
          expect(foreign.status).toBe("failed")
          expect(foreign.errors!.data).toEqual([{
            code: "invalid_request",
            message: `Cannot find file ${input.id}, or organization does not have access to it.`,
            param: "input_file_id",
            line: null
          }])
          expect(JSON.stringify(foreign.errors)).toBe(JSON.stringify(missing.errors).replaceAll(UNKNOWN_FILE, input.id))
          // An operator's batch is its own project's too, and reads only that project's files: an operator, who sees
          // every project's files, is told at once, and no batch is made.
          const before = yield* allBatchIds(admin)
          const refused = yield* Effect.promise(() =>
            admin.batches.create({ input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
              .then(() => undefined, (e: unknown) => e))
          expect(refused).toBeInstanceOf(OpenAI.BadRequestError)
          expect((refused as InstanceType<typeof OpenAI.BadRequestError>).error).toMatchObject({
            type: "invalid_request_error",
            param: "input_file_id",
            code: "invalid_value",
            message: expect.stringContaining(`File ${input.id} is another project's: an operator's batch is its own project's`)
          })
          expect(yield* allBatchIds(admin)).toEqual(before)
          expect(sim.stats.requests).toBe(sent)
        }))

      it.effect("cancel, list and cursors: only the project's batches; the operator cancels any", () =>
        Effect.gen(function*() {
          const { a1, a2, b, admin } = yield* clients
          const before = { a: yield* allBatchIds(a1), b: yield* allBatchIds(b) }
          const hanging = (openai: OpenAI) =>
            Effect.flatMap(upload(openai, [chatLine("h", "wait [hang]")]), (file) =>
              Effect.promise(() =>
                openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })))
          // Interleaved: A, B, A, B.
          const ba1 = yield* hanging(a1)
          const bb1 = yield* hanging(b)
          const ba2 = yield* hanging(a2)
          const bb2 = yield* hanging(b)
          expect(yield* allBatchIds(a1)).toEqual([ba2.id, ba1.id, ...before.a])
          expect(yield* allBatchIds(b)).toEqual([bb2.id, bb1.id, ...before.b])
          const page = yield* Effect.promise(() => b.batches.list({ limit: 1, after: bb2.id }))
          expect(page.data.map((x) => x.id)).toEqual([bb1.id])
          yield* sameAsUnknown((id) => a1.batches.list({ after: id }), bb1.id, UNKNOWN_BATCH, 400)
          const everything = yield* allBatchIds(admin)
          expect(everything.slice(0, 4)).toEqual([bb2.id, ba2.id, bb1.id, ba1.id])

          // Cancel: another project's batch is unknown and keeps running; the operator cancels any.
          yield* waitFor(a1, ba1.id, (x) => x.status === "in_progress")
          yield* sameAsUnknown((id) => b.batches.cancel(id), ba1.id, UNKNOWN_BATCH)
          expect((yield* Effect.promise(() => a1.batches.retrieve(ba1.id))).status).toBe("in_progress")
          for (const [openai, id] of [[a2, ba1.id], [admin, ba2.id], [admin, bb1.id], [b, bb2.id]] as const) {
            const cancelled = yield* Effect.promise(() => openai.batches.cancel(id))
            expect(["cancelling", "cancelled"]).toContain(cancelled.status)
          }
          for (const id of [ba1.id, ba2.id]) expect((yield* waitFor(a1, id, terminal)).status).toBe("cancelled")
        }))

      it.effect("idempotency keys are per project: the same key in two projects makes two batches", () =>
        Effect.gen(function*() {
          const { a1, a2, b } = yield* clients
          const create = (openai: OpenAI, fileId: string) =>
            Effect.promise(() =>
              openai.batches.create({
                input_file_id: fileId,
                endpoint: "/v1/chat/completions",
                completion_window: "24h",
                idempotency_key: "shared-key"
              } as OpenAI.BatchCreateParams))
          const inA = yield* upload(a1, [chatLine("a", "quick")])
          const inB = yield* upload(b, [chatLine("b", "quick")])
          const first = yield* create(a1, inA.id)
          const again = yield* create(a2, inA.id)
          const other = yield* create(b, inB.id)
          expect(again.id).toBe(first.id)
          expect(other.id).not.toBe(first.id)
          expect(other.input_file_id).toBe(inB.id)
          expect((yield* waitFor(b, other.id, terminal)).status).toBe("completed")
        }))
    })

    const create = (openai: OpenAI, fileId: string) =>
      Effect.promise(() =>
        openai.batches.create({ input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h" }))
    const hangingBatch = (openai: OpenAI, lines = 1) =>
      Effect.flatMap(upload(openai, Array.from({ length: lines }, (_, i) => chatLine(`h${i}`, `wait ${i} [hang]`))), (file) =>
        create(openai, file.id))

    const activeLimit = { ...fastRetries, maxConcurrentBatches: 8, maxActiveBatchesPerProject: Option.some(2) }
    layer(testAppWithUpstream(activeLimit, {}, backend, { auth }), { excludeTestServices: true })(`${backend}: active batches`, (it) => {
      it.effect("a create beyond MAX_ACTIVE_BATCHES_PER_PROJECT is OpenAI's 429; other projects are not held back", () =>
        Effect.gen(function*() {
          const { a1, a2, admin, b } = yield* clients
          const first = yield* hangingBatch(a1)
          const hanging = yield* upload(a2, [chatLine("h", "wait [hang]")])
          const second = yield* createBatch(a2, hanging.id, { idempotency_key: "retry-me" } as any)
          // At the limit, a retry of a create already made is no new batch: it gets its batch back.
          expect((yield* createBatch(a2, hanging.id, { idempotency_key: "retry-me" } as any)).id).toBe(second.id)
          const input = yield* upload(a1, [chatLine("x", "quick")])
          const refused = yield* failure(() => a1.batches.create({ input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))
          expect(refused).toBeInstanceOf(OpenAI.RateLimitError)
          expect(refused.error).toEqual({
            message: "This project has 2 batches not yet finished, the most it may have at once (2). " +
              "Wait for one to finish, or cancel one, and try again.",
            type: "requests",
            param: null,
            code: "rate_limit_exceeded"
          })
          // It does not pass in a second: `x-should-retry: false`, so a client left to retry (2 by default) asks once.
          let sent = 0
          const counted = new OpenAI({ baseURL: a1.baseURL, apiKey: KEYS.a1, fetch: (url, init) => (sent++, fetch(url, init)) })
          expect(yield* failure(() => counted.batches.create({ input_file_id: input.id, endpoint: "/v1/chat/completions", completion_window: "24h" })))
            .toBeInstanceOf(OpenAI.RateLimitError)
          expect(sent).toBe(1)
          expect((yield* hangingBatch(b)).status).toBe("validating")
          expect((yield* hangingBatch(admin)).status).toBe("validating")
          // Once one has finished, there is room again.
          yield* Effect.promise(() => a1.batches.cancel(first.id))
          yield* waitFor(a1, first.id, terminal)
          const next = yield* create(a1, input.id)
          expect((yield* waitFor(a1, next.id, terminal)).status).toBe("completed")
        }))
    })

    const enqueuedLimit = { ...fastRetries, maxConcurrentBatches: 8, maxEnqueuedRequestsPerProject: Option.some(5) }
    layer(testAppWithUpstream(enqueuedLimit, {}, backend, { auth }), { excludeTestServices: true })(`${backend}: enqueued requests`, (it) => {
      it.effect("a batch that would take the project beyond MAX_ENQUEUED_REQUESTS_PER_PROJECT fails validation; nothing is sent", () =>
        Effect.gen(function*() {
          const { a1, b } = yield* clients
          const sim = yield* Upstream
          const held = yield* hangingBatch(a1, 3)
          yield* waitFor(a1, held.id, (x) => x.status === "in_progress")
          const tooMany = yield* upload(a1, [1, 2, 3].map((i) => chatLine(`t${i}`, `over ${i}`)))
          const failed = yield* waitFor(a1, (yield* create(a1, tooMany.id)).id, terminal)
          expect(failed.status).toBe("failed")
          expect(failed.errors!.data).toEqual([{
            code: "request_limit_exceeded",
            message: "The batch has 3 requests and this project's unfinished batches hold 3: together more than the 5 " +
              "requests a project may have enqueued. Try again once some have finished.",
            param: null,
            line: null
          }])
          expect([1, 2, 3].map((i) => sim.stats.byPrompt.get(`over ${i}`))).toEqual([undefined, undefined, undefined])
          // Up to the limit passes; another project counts its own.
          const fits = yield* upload(a1, [chatLine("f1", "fits 1"), chatLine("f2", "fits 2")])
          expect((yield* waitFor(a1, (yield* create(a1, fits.id)).id, terminal)).status).toBe("completed")
          expect((yield* waitFor(b, (yield* create(b, (yield* upload(b, [1, 2, 3, 4].map((i) => chatLine(`b${i}`, "quick"))))
            .id)).id, terminal)).status).toBe("completed")
          yield* Effect.promise(() => a1.batches.cancel(held.id))
        }))
    })

    const bytesLimit = { ...fastRetries, maxFileBytesPerProject: Option.some(1000) }
    layer(testAppWithUpstream(bytesLimit, {}, backend, { auth }), { excludeTestServices: true })(`${backend}: file bytes`, (it) => {
      it.effect("an upload beyond MAX_FILE_BYTES_PER_PROJECT is a 413; the batch's output files are written anyway", () =>
        Effect.gen(function*() {
          const { a1, a2, b } = yield* clients
          const input = yield* upload(a1, [1, 2, 3].map((i) => chatLine(`q${i}`, "quick")))
          const refused = yield* failure(() => uploadPromise(a2, "big.txt", "y".repeat(1000 - input.bytes + 1)))
          expect(refused.status).toBe(413)
          expect(refused.error).toEqual({
            message: "The file does not fit in this project's storage: its files may take 1000 bytes in all, " +
              `and ${1000 - input.bytes} bytes are left. Delete files to make room.`,
            type: "invalid_request_error",
            param: "file",
            code: "storage_quota_exceeded"
          })
          yield* uploadText(a2, "fits.txt", "y".repeat(1000 - input.bytes)) // exactly up to the limit
          expect((yield* uploadText(b, "other.txt", "z".repeat(900))).bytes).toBe(900)
          // The project is full, yet the batch's output file is written.
          const done = yield* waitFor(a1, (yield* create(a1, input.id)).id, terminal)
          expect(done.status).toBe("completed")
          expect((yield* readLines(a1, done.output_file_id)).length).toBe(3)
          const none = yield* failure(() => uploadPromise(a1, "one.txt", "1"))
          expect([none.status, none.error.message]).toEqual([413, expect.stringContaining("and 0 bytes are left")])
        }))
    })

    layer(testAppWithUpstream(bytesLimit, {}, backend, { auth }), { excludeTestServices: true })(`${backend}: file bytes at once`, (it) => {
      it.effect("uploads under way together count each other against MAX_FILE_BYTES_PER_PROJECT", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const { a1 } = yield* clients
          // Four uploads of 400 bytes against 1000: each sends its first half, and the rest once all four have.
          let release!: () => void
          const halfway = new Promise<void>((resolve) => (release = resolve))
          const statuses = yield* Effect.promise(() =>
            Promise.all([0, 1, 2, 3].map((i) => overlappingUpload(base, KEYS.a1, `f${i}.txt`, "x".repeat(400), halfway)))
          ).pipe(Effect.fork)
          yield* Effect.sleep("500 millis")
          release()
          const answered = yield* Fiber.join(statuses)
          // At most two fit (each counted against the others' bytes as they came); the rest a 413, none a 5xx.
          expect(answered.every((status) => status === 200 || status === 413)).toBe(true)
          expect(answered.filter((status) => status === 200).length).toBeGreaterThanOrEqual(1)
          expect(answered.filter((status) => status === 200).length).toBeLessThanOrEqual(2)
          const stored = yield* Effect.promise(async () => {
            let bytes = 0
            for await (const file of a1.files.list()) bytes += file.bytes
            return bytes
          })
          expect(stored).toBeLessThanOrEqual(1000)
        }))
    })
  }
})

/**
 * `POST /v1/files` of `content` by `key`, its body sent in two halves: the second once `halfway` settles. The status.
 */
const overlappingUpload = (base: string, key: string, filename: string, content: string, halfway: Promise<void>) =>
  new Promise<number>((resolve, reject) => {
    const boundary = "overlapping-upload-boundary"
    const head = `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\n` +
      `Content-Type: application/octet-stream\r\n\r\n`
    const half = Math.floor(content.length / 2)
    const request = Http.request(`${base}/v1/files`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": `multipart/form-data; boundary=${boundary}` }
    }, (response) => {
      response.resume()
      response.on("end", () => resolve(response.statusCode!))
    })
    request.on("error", reject)
    request.write(head + content.slice(0, half))
    void halfway.then(() => request.end(`${content.slice(half)}\r\n--${boundary}--\r\n`))
  })
