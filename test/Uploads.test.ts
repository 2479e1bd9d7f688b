/**
 * The Uploads API through the official `openai` client (`uploads.create`, `uploads.parts.create`,
 * `uploads.complete`, `uploads.cancel`), on SQLite with file bytes on disk, SQLite with bytes in SQL chunks, and
 * PostgreSQL: parts sent in parallel (one streamed chunked) become an ordinary File that runs as a batch input; a
 * wrong byte total, an unknown part, an md5 mismatch leave the upload pending; cancel and completion delete the
 * parts, and a closed upload refuses parts, completes and cancels; another project's upload is an unknown id; an
 * upload expires an hour after its creation; a restart keeps an upload and its parts; parts added at once are
 * each checked against the others. Bounds and bad parameters: `UploadsLimits.test.ts`; faults: `UploadsFaults.test.ts`.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit, Fiber, Layer, Option, Stream } from "effect"
import { createReadStream, writeFileSync } from "node:fs"
import * as Path from "node:path"
import { AppConfig } from "../src/Config.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { partIdsDigest } from "../src/files/uploadAssembly.js"
import { Uploads, UploadsLive } from "../src/files/Uploads.js"
import { StorageLive } from "../src/Layers.js"
import { BlobStore } from "../src/storage/BlobStore.js"
import { chatLine, createBatch, failure, readLines, terminal, waitFor } from "./support/Batches.js"
import { sideBySide } from "./support/SideBySide.js"
import { configFor, eventuallyEffect, storages, TestDatabase, TestDataDir, testApp, testAppWithUpstream } from "./support/TestApp.js"
import { auth, clients, createUpload, md5, partBlobs, sendPart, sendPartPromise, sql } from "./support/Uploads.js"

const UNKNOWN_UPLOAD = "upload_000000000000000000000000"

/**
 * The bytes under the live storage, each read starting `late` (an assembly that takes its time); `reads.started`
 * counts the reads begun.
 */
const slowPartReads = (reads: { started: number }, late: Duration.DurationInput = "1 second") => Layer.effect(
  BlobStore,
  Effect.map(BlobStore, (blobs) =>
    BlobStore.of({
      ...blobs,
      read: (id) => {
        const waited = Effect.zipRight(Effect.sync(() => reads.started++), Effect.sleep(late))
        return Stream.concat(Stream.drain(Stream.fromEffect(waited)), blobs.read(id))
      }
    }))
)

describe("uploads", () => {
  // Each storage's suite beside the others: their apps and databases are their own.
  for (const { backend, fileStorage } of storages) sideBySide(`${backend}, ${fileStorage}`, () => {
    const reads = { started: 0 }
    // `StorageLive` is the very layer the app is built on (shared by reference), so the tests see its storage.
    // The sweep waits (the default minute), so what is gone went with the request that deleted it.
    const app = StorageLive.pipe(Layer.provideMerge(testAppWithUpstream(
      { fileStorage: Option.some(fileStorage), maxConcurrentRequestsPerBatch: 8 },
      {},
      backend,
      { auth }
    )))
    const sweeping = StorageLive.pipe(Layer.provideMerge(testApp(
      { fileStorage: Option.some(fileStorage), fileSweepInterval: Duration.millis(100) },
      backend,
      { auth }
    )))

    layer(app, { excludeTestServices: true })(`${backend}, ${fileStorage} file bytes`, (it) => {
      it.effect("five parts sent in parallel become an ordinary file, which runs as a batch input", () =>
        Effect.gen(function*() {
          const { a } = yield* clients
          const { path } = yield* TestDataDir
          const input = Buffer.from(
            Array.from({ length: 300 }, (_, i) => chatLine(`line-${i}`, `prompt ${i}`)).join("\n") + "\n"
          )
          const upload = yield* createUpload(a, input.length)
          expect(upload).toEqual({
            id: expect.stringMatching(/^upload_[0-9A-Za-z]{24}$/),
            object: "upload",
            bytes: input.length,
            created_at: expect.any(Number),
            filename: "input.jsonl",
            purpose: "batch",
            status: "pending",
            expires_at: upload.created_at + 3600,
            file: null
          })

          // Cut anywhere (mid-line), sent at once; the last one streamed by the SDK (chunked, no Content-Length).
          const cuts = [0, 1, 7000, 7001, 20_000, input.length]
          const pieces = cuts.slice(1).map((end, i) => input.subarray(cuts[i], end))
          writeFileSync(Path.join(path, "last-part"), pieces[4]!)
          const parts = yield* Effect.all([
            ...pieces.slice(0, 4).map((piece) => sendPart(a, upload.id, piece)),
            Effect.promise(() => a.uploads.parts.create(upload.id, { data: createReadStream(Path.join(path, "last-part")) }))
          ], { concurrency: "unbounded" })
          for (const part of parts) {
            expect(part).toEqual({
              id: expect.stringMatching(/^part_[0-9A-Za-z]{24}$/),
              object: "upload.part",
              created_at: expect.any(Number),
              upload_id: upload.id
            })
          }
          const unused = yield* sendPart(a, upload.id, Buffer.from("named in no complete"))
          expect((yield* partBlobs).parts).toHaveLength(6)

          const completed = yield* Effect.promise(() =>
            a.uploads.complete(upload.id, { part_ids: parts.map((p) => p.id), md5: md5(input) }))
          expect(completed).toEqual({ ...upload, status: "completed", file: expect.any(Object) })
          const file = completed.file!
          expect(file).toEqual({
            id: expect.stringMatching(/^file-/),
            object: "file",
            bytes: input.length,
            created_at: expect.any(Number),
            expires_at: null,
            filename: "input.jsonl",
            purpose: "batch",
            status: "processed",
            status_details: null
          })
          // An ordinary file: retrieved, listed, downloaded byte for byte; every part's bytes are gone.
          expect(yield* Effect.promise(() => a.files.retrieve(file.id))).toEqual(file)
          expect((yield* Effect.promise(() => a.files.list({ purpose: "batch" }))).data.map((f) => f.id)).toContain(file.id)
          const content = yield* Effect.promise(async () => Buffer.from(await (await a.files.content(file.id)).arrayBuffer()))
          expect(content.equals(input)).toBe(true)
          expect(yield* partBlobs).toEqual({ parts: [], staging: [] })

          // Closed now: no parts, no second complete, no cancel.
          const late = yield* failure(() => sendPartPromise(a, upload.id, Buffer.from("late")))
          expect([late.status, late.error.message]).toEqual([400, `Cannot add a part to upload ${upload.id}: it is already completed.`])
          const again = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [unused.id] }))
          expect([again.status, again.error.message]).toEqual([400, `Cannot complete upload ${upload.id}: it is already completed.`])
          expect((yield* failure(() => a.uploads.cancel(upload.id))).status).toBe(400)

          const batch = yield* createBatch(a, file.id)
          const done = yield* waitFor(a, batch.id, terminal)
          expect([done.status, done.request_counts]).toEqual(["completed", { total: 300, completed: 300, failed: 0 }])
          const output = yield* readLines(a, done.output_file_id)
          expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: 300 }, (_, i) => `line-${i}`))
        }), { timeout: 30_000 })

      it.effect("a wrong byte total, an unknown or repeated part and an md5 mismatch are 400s; the upload stays completable", () =>
        Effect.gen(function*() {
          const { a } = yield* clients
          const filesBefore = (yield* Effect.promise(() => a.files.list())).data.length
          const bytes = Buffer.from(chatLine("only", "hello") + "\n")
          const upload = yield* createUpload(a, bytes.length, { expires_after: { anchor: "created_at", seconds: 7200 } })
          const first = yield* sendPart(a, upload.id, bytes.subarray(0, 10))
          const second = yield* sendPart(a, upload.id, bytes.subarray(10))

          const short = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [second.id] }))
          expect([short.status, short.param, short.error.message]).toEqual([
            400,
            "part_ids",
            `The parts add up to ${bytes.length - 10} bytes, but upload ${upload.id} was created with bytes ${bytes.length}.`
          ])
          const twice = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [first.id, first.id, second.id] }))
          expect([twice.status, twice.param]).toEqual([400, "part_ids"])
          const unknown = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [first.id, "part_nope"] }))
          expect([unknown.status, unknown.param, unknown.error.message]).toEqual([
            400,
            "part_ids",
            `Upload ${upload.id} has no part 'part_nope'.`
          ])
          // In the wrong order the bytes add up, but not to the file the md5 describes.
          const swapped = yield* failure(() =>
            a.uploads.complete(upload.id, { part_ids: [second.id, first.id], md5: md5(bytes) }))
          expect([swapped.status, swapped.param]).toEqual([400, "md5"])
          expect(swapped.error.message).toMatch(/^The MD5 of the parts \([0-9a-f]{32}\) does not match the md5 given/)
          const malformed = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [first.id], md5: "xyz" }))
          expect([malformed.status, malformed.param]).toEqual([400, "md5"])
          const none = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [] }))
          expect([none.status, none.param]).toEqual([400, "part_ids"])
          expect((yield* Effect.promise(() => a.files.list())).data).toHaveLength(filesBefore) // none of that made a file

          const completed = yield* Effect.promise(() =>
            a.uploads.complete(upload.id, { part_ids: [first.id, second.id], md5: md5(bytes).toUpperCase() }))
          expect(completed.status).toBe("completed")
          expect(completed.file!.expires_at).toBe(completed.file!.created_at + 7200) // `expires_after` is the File's
          expect(yield* Effect.promise(async () => (await a.files.content(completed.file!.id)).text())).toBe(bytes.toString())
        }))

      it.effect("cancel deletes the parts; a cancelled upload takes no part and no complete, and cancels again", () =>
        Effect.gen(function*() {
          const { a } = yield* clients
          const upload = yield* createUpload(a, 8, { purpose: "user_data", filename: "notes.txt", mime_type: "text/plain" })
          const part = yield* sendPart(a, upload.id, Buffer.from("12345678"))
          expect((yield* partBlobs).parts).toContain(part.id)

          const cancelled = yield* Effect.promise(() => a.uploads.cancel(upload.id))
          expect(cancelled).toEqual({ ...upload, status: "cancelled", file: null })
          expect((yield* partBlobs).parts).not.toContain(part.id)
          const late = yield* failure(() => sendPartPromise(a, upload.id, Buffer.from("x")))
          expect([late.status, late.error.message]).toEqual([400, `Cannot add a part to upload ${upload.id}: it was cancelled.`])
          expect((yield* failure(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))).status).toBe(400)
          expect(yield* Effect.promise(() => a.uploads.cancel(upload.id))).toEqual(cancelled)
        }))

      it.effect("another project's upload answers exactly as an unknown one; no key, no upload", () =>
        Effect.gen(function*() {
          const { a, b, stranger } = yield* clients
          const upload = yield* createUpload(a, 4)
          const part = yield* sendPart(a, upload.id, Buffer.from("abcd"))
          const calls: ReadonlyArray<(id: string) => Promise<unknown>> = [
            (id) => sendPartPromise(b, id, Buffer.from("abcd")),
            (id) => b.uploads.complete(id, { part_ids: [part.id] }),
            (id) => b.uploads.cancel(id)
          ]
          for (const call of calls) {
            const other = yield* failure(() => call(upload.id))
            const unknown = yield* failure(() => call(UNKNOWN_UPLOAD))
            expect([other.status, unknown.status]).toEqual([404, 404])
            expect(JSON.stringify(other.error)).toBe(JSON.stringify(unknown.error).replaceAll(UNKNOWN_UPLOAD, upload.id))
          }
          expect((yield* failure(() => stranger.uploads.create({
            bytes: 4,
            filename: "x.jsonl",
            mime_type: "text/jsonl",
            purpose: "batch"
          }))).status).toBe(401)
          // Untouched by all that: the owner completes it.
          const completed = yield* Effect.promise(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))
          expect(completed.status).toBe("completed")
          expect((yield* failure(() => b.files.retrieve(completed.file!.id))).status).toBe(404)
        }))
    })

    layer(sweeping, { excludeTestServices: true })(`${backend}, ${fileStorage} file bytes, swept`, (it) => {
      it.effect("an upload expires an hour after its creation: closed at once, then its parts are swept", () =>
        Effect.gen(function*() {
          const { a } = yield* clients
          const upload = yield* createUpload(a, 4)
          const part = yield* sendPart(a, upload.id, Buffer.from("abcd"))
          yield* sql(`UPDATE uploads SET expires_at = created_at - 1 WHERE id = '${upload.id}'`) // an hour later

          const late = yield* failure(() => sendPartPromise(a, upload.id, Buffer.from("x")))
          expect([late.status, late.error.message]).toEqual([
            400,
            `Cannot add a part to upload ${upload.id}: it expired (an upload takes parts and can be completed for an hour after its creation).`
          ])
          expect((yield* failure(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))).status).toBe(400)
          expect((yield* failure(() => a.uploads.cancel(upload.id))).status).toBe(400)
          // The sweep (every FILE_SWEEP_INTERVAL, here 100 ms) stores the status and deletes the parts.
          yield* eventuallyEffect(Effect.gen(function*() {
            const rows = yield* sql(`SELECT status FROM uploads WHERE id = '${upload.id}'`)
            expect(rows).toEqual([{ status: "expired" }])
            expect((yield* partBlobs).parts).not.toContain(part.id)
          }))
        }))
    })

    // The services alone, on the test's database and data directory (started twice: a restart).
    const start = UploadsLive.pipe(
      Layer.provideMerge(FileStoreLive),
      Layer.provideMerge(StorageLive),
      Layer.provideMerge(configFor({ fileStorage: Option.some(fileStorage) }))
    )
    const stagePart = (piece: Uint8Array) =>
      Effect.flatMap(Uploads, (uploads) =>
        Effect.gen(function*() {
          const writer = yield* uploads.openPart
          yield* writer.write(piece)
          return yield* writer.finish
        }))
    /** The bytes of the tests below, in two parts. */
    const bytes = Buffer.from("first half|second half\n")
    /** An upload of `bytes` in project `p` and its two parts' ids, added. */
    const uploadInTwoParts = Effect.gen(function*() {
      const uploads = yield* Uploads
      const upload = yield* uploads.create({ project: "p", bytes: bytes.length, filename: "f.jsonl", purpose: "batch", mimeType: "text/jsonl" })
      const parts: Array<string> = []
      for (const piece of [bytes.subarray(0, 11), bytes.subarray(11)]) {
        const part = yield* Effect.scoped(Effect.flatMap(stagePart(piece), (staged) => uploads.addPart(upload.id, { project: "p" }, staged)))
        parts.push(part.id)
      }
      return { upload, parts }
    })

    it.effect(`${backend}, ${fileStorage} file bytes: a restart keeps an upload, its parts, and gives back a completion cut short (not another node's)`, () =>
      Effect.gen(function*() {
        const { id, others, parts } = yield* Effect.gen(function*() {
          const uploads = yield* Uploads
          const { parts, upload } = yield* uploadInTwoParts
          // A crash in the middle of a complete leaves its claim behind.
          const { nodeId } = yield* AppConfig
          yield* sql(`UPDATE uploads SET status = 'completing', completing_owner = '${nodeId}' WHERE id = '${upload.id}'`)
          // Another node sharing the database completes an upload of its own meanwhile.
          const others = yield* uploads.create({ project: "p", bytes: 1, filename: "o.jsonl", purpose: "batch", mimeType: "text/jsonl" })
          yield* sql(`UPDATE uploads SET status = 'completing', completing_owner = 'other-node',
            completing_until = ${Date.now() + 60_000} WHERE id = '${others.id}'`)
          return { id: upload.id, parts, others: others.id }
        }).pipe(Effect.provide(start))

        const content = yield* Effect.gen(function*() {
          expect(yield* sql(`SELECT status FROM uploads WHERE id = '${others}'`)).toEqual([{ status: "completing" }])
          const completed = yield* Effect.flatMap(Uploads, (uploads) => uploads.complete(id, { project: "p" }, parts, md5(bytes)))
          const { stream } = yield* Effect.flatMap(FileStore, (files) => files.content(completed.file!.id, { project: "p" }))
          return Buffer.concat(yield* Stream.runCollect(stream).pipe(Effect.map((c) => Array.from(c))))
        }).pipe(Effect.provide(start))
        expect(content.toString()).toBe(bytes.toString())
      }).pipe(Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))))

    it.live(`${backend}, ${fileStorage} file bytes: a completion left by a node that died is taken over by the next complete; a live one is waited for`, () =>
      Effect.gen(function*() {
        const uploads = yield* Uploads
        const withParts = Effect.map(uploadInTwoParts, ({ parts, upload }) => ({ id: upload.id, parts }))
        /** A complete of `parts` claimed by `owner` until `until` (epoch ms), as that node's complete leaves it. */
        const claimedBy = (id: string, parts: ReadonlyArray<string>, owner: string, until: number) =>
          sql(`UPDATE uploads SET status = 'completing', completing_owner = '${owner}', completing_until = ${until},
            part_ids_digest = '${partIdsDigest(parts)}' WHERE id = '${id}'`)

        // A node that died in the middle of a complete: its claim has not been renewed for a while.
        const left = yield* withParts
        yield* claimedBy(left.id, left.parts, "gone-node", Date.now() - 1_000)
        const completed = yield* uploads.complete(left.id, { project: "p" }, left.parts, md5(bytes))
        expect(completed.status).toBe("completed")
        const { stream } = yield* Effect.flatMap(FileStore, (files) => files.content(completed.file!.id, { project: "p" }))
        expect(Buffer.concat(yield* Stream.runCollect(stream).pipe(Effect.map((c) => Array.from(c)))).toString()).toBe(bytes.toString())

        // Or cancelled, as a pending one.
        const dropped = yield* withParts
        yield* claimedBy(dropped.id, dropped.parts, "gone-node", Date.now() - 1_000)
        expect((yield* uploads.cancel(dropped.id, { project: "p" })).status).toBe("cancelled")

        // A node at work on one (its claim renewed): a complete of the same parts waits for it, others are refused.
        const live = yield* withParts
        yield* claimedBy(live.id, live.parts, "busy-node", Date.now() + 60_000)
        expect(yield* Effect.timeout(uploads.complete(live.id, { project: "p" }, live.parts, undefined), "1200 millis").pipe(Effect.flip))
          .toMatchObject({ _tag: "TimeoutException" })
        expect(yield* Effect.flip(uploads.complete(live.id, { project: "p" }, [...live.parts].reverse(), undefined)))
          .toMatchObject({ _tag: "UploadClosed", status: "completing" })

        // Left by a node that died, past its hour: expired, at once and for the sweep.
        const expired = yield* withParts
        yield* claimedBy(expired.id, expired.parts, "gone-node", Date.now() - 1_000)
        yield* sql(`UPDATE uploads SET expires_at = ${Math.floor(Date.now() / 1000) - 1} WHERE id = '${expired.id}'`)
        expect(yield* Effect.flip(uploads.complete(expired.id, { project: "p" }, expired.parts, undefined)))
          .toMatchObject({ _tag: "UploadClosed", status: "expired" })
        yield* uploads.sweep
        expect(yield* sql(`SELECT status FROM uploads WHERE id IN ('${expired.id}', '${live.id}') ORDER BY status`)).toEqual([
          { status: "completing" },
          { status: "expired" }
        ])
        // A day past their hour, the rows of closed uploads go too (a repeated complete is then a 404); others stay.
        const dayAgo = Math.floor(Date.now() / 1000) - 86_400
        yield* sql(`UPDATE uploads SET expires_at = ${dayAgo} WHERE id IN ('${expired.id}', '${left.id}', '${live.id}')`)
        yield* sql(`UPDATE uploads SET expires_at = ${dayAgo + 60} WHERE id = '${dropped.id}'`)
        yield* uploads.sweep
        const kept = yield* sql(`SELECT id FROM uploads WHERE id IN ('${expired.id}', '${left.id}', '${live.id}', '${dropped.id}')`)
        expect((kept as ReadonlyArray<{ id: string }>).map((r) => r.id).sort()).toEqual([live.id, dropped.id].sort())
      }).pipe(Effect.scoped, Effect.provide(start), Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))))

    it.live(`${backend}, ${fileStorage} file bytes: a long completion keeps its claim, renewed every heartbeat; one taken over stops, and makes no file`, () =>
      Effect.gen(function*() {
        const uploads = yield* Uploads
        const bytes = Buffer.from("one part\n")
        const upload = yield* uploads.create({ project: "p", bytes: bytes.length, filename: "f.jsonl", purpose: "batch", mimeType: "text/jsonl" })
        const part = yield* Effect.scoped(Effect.flatMap(stagePart(bytes), (staged) => uploads.addPart(upload.id, { project: "p" }, staged)))
        const completing = yield* Effect.fork(uploads.complete(upload.id, { project: "p" }, [part.id], undefined))
        const claim = sql(`SELECT status, completing_until FROM uploads WHERE id = '${upload.id}'`).pipe(
          Effect.map((rows) => ({ status: (rows as Array<any>)[0]!.status, until: Number((rows as Array<any>)[0]!.completing_until) })))
        const first = yield* eventuallyEffect(Effect.tap(claim, (c) => Effect.sync(() => expect(c.status).toBe("completing"))), 2_000)
        // Past the 300 ms a claim lasts unrenewed, the assembly still reading its part (2 s): renewed meanwhile. Seen
        // renewed, not compared with the clock: a loaded machine once stalled the heartbeat past 300 ms.
        yield* eventuallyEffect(Effect.tap(claim, (c) => Effect.sync(() => {
          expect(c.until).toBeGreaterThan(first.until + 300)
          expect(c.status).toBe("completing")
        })), 3_000)
        expect((yield* Fiber.join(completing)).status).toBe("completed")

        // A node whose claim another node took over (it lapsed while this one stalled) stops its assembly at its
        // next renewal, makes no file of it, and leaves the upload to that node.
        const other = yield* uploads.create({ project: "p", bytes: 3 * bytes.length, filename: "g.jsonl", purpose: "batch", mimeType: "text/jsonl" })
        const otherParts = yield* Effect.forEach([1, 2, 3], () =>
          Effect.scoped(Effect.flatMap(stagePart(bytes), (staged) => uploads.addPart(other.id, { project: "p" }, staged))))
        const files = yield* Effect.map(FileStore, (store) => store.list({ visibility: { project: "p" }, limit: 100, order: "desc" }))
        const before = (yield* files).data.length
        const readsBefore = reads.started
        const waiting = yield* Effect.fork(uploads.complete(other.id, { project: "p" }, otherParts.map((p) => p.id), undefined))
        yield* Effect.sleep("200 millis")
        yield* sql(`UPDATE uploads SET completing_owner = 'taker', completing_until = ${Date.now() + 60_000} WHERE id = '${other.id}'`)
        yield* Effect.sleep("2500 millis") // its second part would be read by now (the first took 2 s)
        expect(reads.started - readsBefore).toBe(1)
        expect(yield* sql(`SELECT status, completing_owner FROM uploads WHERE id = '${other.id}'`)).toEqual([
          { status: "completing", completing_owner: "taker" }
        ])
        expect((yield* files).data.length).toBe(before)
        yield* Fiber.interrupt(waiting) // it waits for the taker's outcome
      }).pipe(
        Effect.provide(UploadsLive.pipe(
          Layer.provideMerge(FileStoreLive),
          Layer.provideMerge(slowPartReads(reads, "2 seconds").pipe(Layer.provideMerge(StorageLive))),
          Layer.provideMerge(configFor({
            fileStorage: Option.some(fileStorage),
            leaseTtl: Duration.millis(300),
            heartbeatInterval: Duration.millis(50)
          }))
        )),
        Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
      ))

    it.live(`${backend}, ${fileStorage} file bytes: a completion whose parts went with the node that took it over answers that node's upload`, () =>
      Effect.gen(function*() {
        // Each part's read waits for `resume` (the node stalled past LEASE_TTL), telling `reading` it began.
        const reading = yield* Deferred.make<void>()
        const resume = yield* Deferred.make<void>()
        const stalledReads = Layer.effect(
          BlobStore,
          Effect.map(BlobStore, (blobs) =>
            BlobStore.of({
              ...blobs,
              read: (id, offset) =>
                Stream.concat(
                  Stream.drain(Stream.fromEffect(Effect.zipRight(Deferred.succeed(reading, undefined), Deferred.await(resume)))),
                  blobs.read(id, offset)
                )
            }))
        )
        yield* Effect.gen(function*() {
          const uploads = yield* Uploads
          const files = yield* FileStore
          const blobs = yield* BlobStore
          const { parts, upload } = yield* uploadInTwoParts
          const completing = yield* Effect.fork(uploads.complete(upload.id, { project: "p" }, parts, md5(bytes)))
          yield* Deferred.await(reading)
          // Meanwhile another node took the lapsed claim over, completed the upload and discarded its parts.
          const file = yield* files.create({ filename: "f.jsonl", purpose: "batch", project: "p" }, Stream.make(new Uint8Array(bytes)))
          yield* sql(`UPDATE uploads SET status = 'completed', file_id = '${file.id}', completing_owner = NULL,
            completing_until = NULL WHERE id = '${upload.id}'`)
          yield* sql(`DELETE FROM upload_parts WHERE upload_id = '${upload.id}'`)
          yield* Effect.forEach(parts, (part) => blobs.remove(part), { discard: true })
          // The node resumes: its read fails before a renewal (an hour away) tells it the claim is lost.
          yield* Deferred.succeed(resume, undefined)
          const completed = yield* Fiber.join(completing)
          expect(completed.status).toBe("completed")
          expect(completed.file?.id).toBe(file.id)
          const listed = yield* files.list({ visibility: { project: "p" }, limit: 100, order: "desc" })
          expect(listed.data.map((f) => f.id)).toEqual([file.id])
        }).pipe(Effect.provide(UploadsLive.pipe(
          Layer.provideMerge(FileStoreLive),
          Layer.provideMerge(stalledReads.pipe(Layer.provideMerge(StorageLive))),
          Layer.provideMerge(configFor({
            fileStorage: Option.some(fileStorage),
            leaseTtl: Duration.hours(2),
            heartbeatInterval: Duration.hours(1)
          }))
        )))
      }).pipe(Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))))

    it.live(`${backend}, ${fileStorage} file bytes: a node never takes over its own completion, though its claim lapsed`, () =>
      Effect.gen(function*() {
        const uploads = yield* Uploads
        const { parts, upload } = yield* uploadInTwoParts
        const completing = yield* Effect.fork(uploads.complete(upload.id, { project: "p" }, parts, md5(bytes)))
        // Its claim lapses while its parts are read (a second each), as when the node stalls past LEASE_TTL.
        yield* Effect.sleep("300 millis")
        yield* sql(`UPDATE uploads SET completing_until = ${Date.now() - 1_000} WHERE id = '${upload.id}'`)
        expect(yield* Effect.flip(uploads.complete(upload.id, { project: "p" }, [...parts].reverse(), undefined)))
          .toMatchObject({ _tag: "UploadClosed", status: "completing" })
        const completed = yield* Fiber.join(completing)
        const { stream } = yield* Effect.flatMap(FileStore, (files) => files.content(completed.file!.id, { project: "p" }))
        expect(Buffer.concat(yield* Stream.runCollect(stream).pipe(Effect.map((c) => Array.from(c)))).toString()).toBe(bytes.toString())
      }).pipe(
        Effect.provide(UploadsLive.pipe(
          Layer.provideMerge(FileStoreLive),
          Layer.provideMerge(slowPartReads(reads).pipe(Layer.provideMerge(StorageLive))),
          Layer.provideMerge(configFor({ fileStorage: Option.some(fileStorage) }))
        )),
        Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
      ))

    it.effect(`${backend}, ${fileStorage} file bytes: parts added at once are each checked against the others`, () =>
      Effect.scoped(Effect.gen(function*() {
        const uploads = yield* Uploads
        // 10 bytes: its parts may hold 20 (as much again for parts sent twice), so two of eight 8-byte parts fit.
        const upload = yield* uploads.create({ project: "p", bytes: 10, filename: "f.jsonl", purpose: "batch", mimeType: "text/jsonl" })
        const staged = yield* Effect.forEach(Array.from({ length: 8 }), () => stagePart(Buffer.from("12345678")))
        const added = yield* Effect.forEach(staged, (part) => Effect.exit(uploads.addPart(upload.id, { project: "p" }, part)), {
          concurrency: "unbounded"
        })
        expect(added.filter(Exit.isSuccess)).toHaveLength(2)
        expect(yield* sql(`SELECT parts_bytes, parts_count FROM uploads WHERE id = '${upload.id}'`)).toEqual([
          { parts_bytes: backend === "postgres" ? "16" : 16, parts_count: 2 }
        ])
        expect(yield* sql(`SELECT COUNT(*) AS n FROM upload_parts WHERE upload_id = '${upload.id}'`)).toEqual([
          { n: backend === "postgres" ? "2" : 2 }
        ])
      })).pipe(Effect.provide(start), Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))))
  })
})
