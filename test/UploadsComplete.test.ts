/**
 * `POST /v1/uploads/{id}/complete` outlives its request, on SQLite (both file storages) and PostgreSQL, through the
 * official `openai` client: a client that hangs up while a multi-MB upload is assembled still gets it completed,
 * and a complete repeated with the same parts (during the assembly, or after it) gets the same completed upload;
 * other parts are refused.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { expect, layer } from "@effect/vitest"
import { Effect, Fiber, Layer, Option } from "effect"
import type OpenAI from "openai"
import { StorageLive } from "../src/Layers.js"
import { failure } from "./support/Batches.js"
import { eventuallyEffect, storages, testApp } from "./support/TestApp.js"
import { auth, clients, createUpload, md5, sendPart, sql } from "./support/Uploads.js"

const MiB = 1024 * 1024
const PART_BYTES = 8 * MiB

/** An upload of three 8 MiB parts, each a different byte pattern, all sent. */
const bigUpload = (a: OpenAI, filename: string) =>
  Effect.gen(function*() {
    const input = Buffer.alloc(3 * PART_BYTES)
    for (let i = 0; i < input.length; i++) input[i] = 97 + ((i * 7 + (i >> 20)) % 26)
    const upload = yield* createUpload(a, input.length, { filename, purpose: "user_data", mime_type: "text/plain" })
    const parts = yield* Effect.forEach([0, 1, 2], (i) => sendPart(a, upload.id, input.subarray(i * PART_BYTES, (i + 1) * PART_BYTES)))
    return { upload, input, body: { part_ids: parts.map((p) => p.id), md5: md5(input) } }
  })

/** Waits, looking every millisecond (a timer: the server's I/O goes on), until a complete claimed the upload (it is `completing`, or done already). */
const claimed = (id: string): Effect.Effect<string, never, SqlClient.SqlClient> =>
  sql(`SELECT status FROM uploads WHERE id = '${id}'`).pipe(
    Effect.map((rows) => (rows as ReadonlyArray<{ status: string }>)[0]!.status),
    Effect.flatMap((status) => status === "pending" ? Effect.zipRight(Effect.sleep("1 millis"), claimed(id)) : Effect.succeed(status))
  )

// With SQLite holding the file bytes too, the assembly's statements leave the test no moment to see it `completing`.
for (const { backend, fileStorage } of storages.filter((s) => s.backend === "postgres" || s.fileStorage === "local")) {
  const app = StorageLive.pipe(Layer.provideMerge(testApp({ fileStorage: Option.some(fileStorage) }, backend, { auth })))

  layer(app, { excludeTestServices: true })(`${backend}, ${fileStorage} file bytes`, (it) => {
    it.effect("a client hanging up during the assembly: the upload completes anyway, and a retry gets it", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const { body, input, upload } = yield* bigUpload(a, "hung-up.txt")
        const hangUp = new AbortController()
        const first = yield* Effect.fork(Effect.promise(() =>
          a.uploads.complete(upload.id, body, { signal: hangUp.signal }).then(() => "answered", () => "hung up")
        ))
        expect(yield* claimed(upload.id)).toBe("completing")
        hangUp.abort()
        expect(yield* Fiber.join(first)).toBe("hung up")

        // Nobody asks again: the file appears all the same.
        const listed = yield* eventuallyEffect(
          Effect.promise(() => a.files.list({ purpose: "user_data" })).pipe(
            Effect.map((page) => page.data.find((f) => f.filename === "hung-up.txt")),
            Effect.tap((file) => expect(file).toBeDefined())
          ),
          20_000
        )
        // The SDK's retry of the lost answer: the completed upload, as many times as asked.
        const retried = yield* Effect.promise(() => a.uploads.complete(upload.id, body))
        expect(retried).toEqual({ ...upload, status: "completed", file: listed })
        expect(yield* Effect.promise(() => a.uploads.complete(upload.id, { part_ids: body.part_ids }))).toEqual(retried)
        const content = yield* Effect.promise(async () => Buffer.from(await (await a.files.content(listed!.id)).arrayBuffer()))
        expect(content.equals(input)).toBe(true)

        // Other parts (here, fewer) are another complete: refused.
        const other = yield* failure(() => a.uploads.complete(upload.id, { part_ids: body.part_ids.slice(1) }))
        expect([other.status, other.error.message]).toEqual([400, `Cannot complete upload ${upload.id}: it is already completed.`])
      }), { timeout: 60_000 })

    it.effect("a complete repeated while the first runs gets the same completed upload; other parts are refused", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const { body, upload } = yield* bigUpload(a, "twice.txt")
        const first = yield* Effect.fork(Effect.promise(() => a.uploads.complete(upload.id, body)))
        expect(yield* claimed(upload.id)).toBe("completing")
        const [second, swapped] = yield* Effect.all([
          Effect.promise(() => a.uploads.complete(upload.id, body)),
          failure(() => a.uploads.complete(upload.id, { part_ids: [...body.part_ids].reverse() }))
        ], { concurrency: "unbounded" })
        const completed = yield* Fiber.join(first)
        expect(completed).toEqual({ ...upload, status: "completed", file: expect.any(Object) })
        expect(second).toEqual(completed)
        expect(swapped.status).toBe(400)
        expect(swapped.error.message).toMatch(new RegExp(`^Cannot complete upload ${upload.id}: it is (being|already) completed\\.$`))
        // One assembly: one file.
        const made = (yield* Effect.promise(() => a.files.list({ purpose: "user_data" }))).data.filter((f) => f.filename === "twice.txt")
        expect(made.map((f) => f.id)).toEqual([completed.file!.id])
      }), { timeout: 60_000 })
  })
}
