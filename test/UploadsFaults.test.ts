/**
 * The Uploads API when the database fails at the end of a complete (faults injected with SQLite triggers, on both
 * file storages): a failed publish leaves no file, no bytes and no staging behind and the upload completable
 * again; a failed clean-up of the parts after the upload completed does not turn the complete into an error, and a
 * retry of the complete removes the parts left.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { StorageLive } from "../src/Layers.js"
import { failure } from "./support/Batches.js"
import { storedBlobs, testApp } from "./support/TestApp.js"
import { auth, clients, createUpload, partBlobs, sendPart, sql } from "./support/Uploads.js"

for (const fileStorage of ["local", "sql"] as const) {
  const app = StorageLive.pipe(Layer.provideMerge(testApp({ fileStorage: Option.some(fileStorage) }, "sqlite", { auth })))

  layer(app, { excludeTestServices: true })(`sqlite, ${fileStorage} file bytes, faults`, (it) => {
    it.effect("a complete whose publish fails leaves nothing behind, and the upload completes later", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const bytes = Buffer.from("{\"a\":1}\n")
        const upload = yield* createUpload(a, bytes.length)
        const part = yield* sendPart(a, upload.id, bytes)
        yield* sql(`CREATE TRIGGER refuse_completion BEFORE UPDATE OF status ON uploads
          WHEN NEW.status = 'completed' BEGIN SELECT RAISE(ABORT, 'injected fault'); END`)

        const failed = yield* failure(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))
        expect(failed.status).toBe(500)
        expect(yield* sql(`SELECT status FROM uploads WHERE id = '${upload.id}'`)).toEqual([{ status: "pending" }])
        expect((yield* Effect.promise(() => a.files.list())).data).toEqual([])
        expect(yield* storedBlobs).toEqual({ blobs: [part.id], staging: [] }) // the part, and no file's bytes

        yield* sql("DROP TRIGGER refuse_completion")
        const completed = yield* Effect.promise(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))
        expect(yield* Effect.promise(async () => (await a.files.content(completed.file!.id)).text())).toBe(bytes.toString())
      }))

    it.effect("a complete whose clean-up of the parts fails still answers the completed upload; a retry removes them", () =>
      Effect.gen(function*() {
        const { a } = yield* clients
        const upload = yield* createUpload(a, 4)
        const part = yield* sendPart(a, upload.id, Buffer.from("abcd"))
        yield* sql(`CREATE TRIGGER keep_parts BEFORE DELETE ON upload_parts BEGIN SELECT RAISE(ABORT, 'injected fault'); END`)

        const completed = yield* Effect.promise(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))
        expect(completed.status).toBe("completed")
        expect((yield* partBlobs).parts).toContain(part.id) // left for the sweep
        yield* sql("DROP TRIGGER keep_parts")
        // The client's retry gets the completed upload, and takes the parts it finds with it.
        const again = yield* Effect.promise(() => a.uploads.complete(upload.id, { part_ids: [part.id] }))
        expect([again.status, again.file?.id]).toEqual(["completed", completed.file!.id])
        expect((yield* partBlobs).parts).toEqual([])
      }))
  })
}
