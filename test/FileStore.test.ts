/** FileStore against real SQLite and real PostgreSQL (a fresh schema), and real files in a scratch directory. */
import { assert, describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Cause, Chunk, Clock, Duration, Effect, Exit, Fiber, Layer, Option, Stream, TestClock } from "effect"
import { mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from "node:fs"
import * as Path from "node:path"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { AppConfig } from "../src/Config.js"
import { type FileId, FileId as FileIdSchema } from "../src/domain/Ids.js"
import { StorageLive } from "../src/Layers.js"
import { fileNameOfNodeId, isMissingBlob } from "../src/storage/BlobStore.js"
import { configFor, eventuallyEffect, storages, storedBlobs, TestDatabase, TestDataDir } from "./support/TestApp.js"

const bytesOf = (text: string) => new TextEncoder().encode(text)

const readAll = (stream: Stream.Stream<Uint8Array>) =>
  Effect.map(Stream.runCollect(stream), (chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)))

const upload = (filename: string, purpose: string, body: Uint8Array, expiresAfterSeconds?: number) =>
  Effect.flatMap(FileStore, (files) =>
    files.create({ filename, purpose, project: "default", expiresAfterSeconds }, Stream.make(body.subarray(0, 3), body.subarray(3))))

for (const { backend, fileStorage } of storages) describe(`FileStore (${backend}, ${fileStorage} bytes)`, () => {
  const config = configFor({ fileStorage: Option.some(fileStorage) })
  const storeLayerWith = (config: ReturnType<typeof configFor>) =>
    FileStoreLive.pipe(
      Layer.provideMerge(StorageLive),
      Layer.provideMerge(config),
      Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
    )
  const storeLayer = storeLayerWith(config)

  it.scoped("round-trips metadata and bytes, including binary content", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      // Over two of the SQL storage's 512 KiB chunks, the last one partial.
      const binary = new Uint8Array(1300 * 1024 + 7).map((_, i) => (i * 7919) % 256)
      const created = yield* upload("blob.bin", "user_data", binary)
      expect(created).toMatchObject({ object: "file", bytes: binary.length, filename: "blob.bin", purpose: "user_data" })
      expect(created.id).toMatch(/^file-[0-9A-Za-z]{24}$/)
      expect(created.status).toBe("processed")
      expect(created.expires_at).toBeNull()

      expect(yield* files.get(created.id, "all")).toEqual(created)
      const { file, stream, streamFrom } = yield* files.content(created.id, "all")
      expect(file).toEqual(created)
      expect(Buffer.compare(yield* readAll(stream), Buffer.from(binary))).toBe(0)
      // From an offset (a Range): within the first chunk, at a chunk's first byte, within the last, at the end.
      for (const offset of [1, 512 * 1024, 1024 * 1024 + 5, binary.length - 1, binary.length]) {
        expect([offset, Buffer.compare(yield* readAll(streamFrom(offset)), Buffer.from(binary.subarray(offset)))]).toEqual([offset, 0])
      }
    }).pipe(Effect.provide(storeLayer)))

  it.scoped("lists newest first by default and pages with after/limit in both orders", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const ids: Array<FileId> = []
      for (let i = 0; i < 7; i++) ids.push((yield* upload(`f${i}.jsonl`, i % 2 === 0 ? "batch" : "user_data", bytesOf(`${i}\n`))).id)

      const all = yield* files.list({ visibility: "all",  limit: 100, order: "desc" })
      expect(all.data.map((f) => f.id)).toEqual([...ids].reverse())
      expect(all.hasMore).toBe(false)

      const page1 = yield* files.list({ visibility: "all",  limit: 3, order: "asc" })
      expect(page1.data.map((f) => f.id)).toEqual(ids.slice(0, 3))
      expect(page1.hasMore).toBe(true)
      const page2 = yield* files.list({ visibility: "all",  limit: 3, order: "asc", after: page1.data[2]!.id })
      expect(page2.data.map((f) => f.id)).toEqual(ids.slice(3, 6))
      expect(page2.hasMore).toBe(true)
      const page3 = yield* files.list({ visibility: "all",  limit: 3, order: "asc", after: page2.data[2]!.id })
      expect(page3.data.map((f) => f.id)).toEqual(ids.slice(6))
      expect(page3.hasMore).toBe(false)

      const desc2 = yield* files.list({ visibility: "all",  limit: 2, order: "desc", after: ids[4] })
      expect(desc2.data.map((f) => f.id)).toEqual([ids[3], ids[2]])

      const batchOnly = yield* files.list({ visibility: "all",  limit: 100, order: "asc", purpose: "batch" })
      expect(batchOnly.data.map((f) => f.id)).toEqual([ids[0], ids[2], ids[4], ids[6]])
      const exit = yield* Effect.exit(files.list({ visibility: "all",  limit: 2, order: "asc", after: FileIdSchema.make("file-nope") }))
      assert(Exit.isFailure(exit))
    }).pipe(Effect.provide(storeLayer)))

  it.scoped("remove deletes the metadata and the bytes", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const created = yield* upload("gone.jsonl", "batch", bytesOf("{}\n"))
      expect((yield* storedBlobs).blobs).toContain(created.id)
      yield* files.remove(created.id, "all")
      expect((yield* storedBlobs).blobs).not.toContain(created.id)
      expect((yield* Effect.flip(files.get(created.id, "all")))._tag).toBe("FileNotFound")
      expect((yield* Effect.flip(files.remove(created.id, "all")))._tag).toBe("FileNotFound")
    }).pipe(Effect.provide(storeLayer)))

  // SQL bytes are read a chunk at a time: a file deleted meanwhile read as a shorter one (a batch ran its first lines).
  // Bytes on disk are read from the open file, which a delete leaves whole.
  it.scoped("a file deleted while it is read: its read fails as bytes missing, or ends whole; never shorter", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const binary = new Uint8Array(1300 * 1024 + 7).map((_, i) => (i * 7919) % 256)
      const created = yield* upload("read.bin", "user_data", binary)
      const { stream } = yield* files.content(created.id, "all")
      const pulled = yield* Stream.toPull(stream)
      let read = Chunk.reduce(yield* pulled, 0, (n, bytes) => n + bytes.length)
      yield* files.remove(created.id, "all")
      const rest = yield* Effect.exit(Stream.runCollect(Stream.repeatEffectChunkOption(pulled)))
      if (Exit.isSuccess(rest)) {
        for (const bytes of rest.value) read += bytes.length
        expect(read).toBe(binary.length)
        expect(fileStorage).toBe("local")
      } else {
        expect(isMissingBlob(Cause.squash(rest.cause))).toBe(true)
        expect(fileStorage).toBe("sql")
      }
    }).pipe(Effect.provide(storeLayer)))

  it.scoped("a deleted or swept file's id stays an `after` cursor for a day: deleting each file of a page as it is listed reaches them all", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const ids: Array<FileId> = []
      for (let i = 0; i < 5; i++) ids.push((yield* upload(`f${i}.jsonl`, "batch", bytesOf(`${i}\n`))).id)
      // The SDK's `for await (const file of files.list()) await files.delete(file.id)`, two a page.
      const seen: Array<FileId> = []
      let after: FileId | undefined
      for (let page = 0; page < 10; page++) {
        const { data, hasMore } = yield* files.list({ visibility: "all", limit: 2, order: "desc", after })
        for (const file of data) yield* files.remove(file.id, "all")
        seen.push(...data.map((f) => f.id))
        after = data.at(-1)?.id
        if (!hasMore) break
      }
      expect(seen).toEqual([...ids].reverse())

      // Swept once expired: its place is kept too.
      const expiring = yield* upload("expiring.jsonl", "batch", bytesOf("e\n"), 3600)
      const later = yield* upload("later.jsonl", "batch", bytesOf("l\n"))
      yield* TestClock.adjust("3601 seconds")
      yield* files.sweepExpired
      expect((yield* files.list({ visibility: "all", limit: 10, order: "asc", after: expiring.id })).data.map((f) => f.id))
        .toEqual([later.id])
      // Not another project's cursor.
      const other = yield* Effect.flip(files.list({ visibility: { project: "other" }, limit: 10, order: "asc", after: expiring.id }))
      expect(other._tag).toBe("UnknownCursor")

      // An id written again after its deletion (a batch's output file is, under its id): the live file's place counts.
      const again = yield* files.create({ id: expiring.id, filename: "again.jsonl", purpose: "batch", project: "default" }, Stream.make(bytesOf("a\n")))
      expect((yield* files.list({ visibility: "all", limit: 10, order: "asc", after: again.id })).data).toEqual([])
      yield* files.remove(again.id, "all")

      // A day after the deletion, the place is let go of (the background sweep, every 2 days here, stays out of it).
      yield* TestClock.adjust("1 day")
      yield* files.sweepExpired
      const gone = yield* Effect.flip(files.list({ visibility: "all", limit: 10, order: "asc", after: expiring.id }))
      expect(gone._tag).toBe("UnknownCursor")
    }).pipe(Effect.provide(storeLayerWith(configFor({ fileStorage: Option.some(fileStorage), fileSweepInterval: Duration.days(2) })))))

  it.scoped("BATCH_FILES_EXPIRE_AFTER: batch files given no expiry get it; others, and an expiry given, are as they were", () =>
    Effect.gen(function*() {
      const thirtyDays = 30 * 24 * 3600
      const expiry = (file: { readonly created_at: number; readonly expires_at: number | null }) =>
        file.expires_at === null ? null : file.expires_at - file.created_at
      expect(expiry(yield* upload("in.jsonl", "batch", bytesOf("{}\n")))).toBe(thirtyDays)
      expect(expiry(yield* upload("out.jsonl", "batch_output", bytesOf("{}\n")))).toBe(thirtyDays)
      expect(expiry(yield* upload("mine.txt", "user_data", bytesOf("x")))).toBeNull()
      expect(expiry(yield* upload("short.jsonl", "batch", bytesOf("{}\n"), 3600))).toBe(3600)
    }).pipe(Effect.provide(storeLayerWith(configFor({ fileStorage: Option.some(fileStorage), batchFilesExpireAfter: Option.some(Duration.days(30)) })))))

  it.scoped("expired files vanish from get and list at once, and the sweep deletes their bytes", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const shortLived = yield* upload("short.jsonl", "batch", bytesOf("a\n"), 3600)
      const kept = yield* upload("kept.jsonl", "batch", bytesOf("b\n"))
      expect(shortLived.expires_at).toBe(shortLived.created_at + 3600)

      yield* TestClock.adjust("3599 seconds")
      expect((yield* files.get(shortLived.id, "all")).id).toBe(shortLived.id)

      yield* TestClock.adjust("2 seconds")
      expect((yield* Effect.flip(files.get(shortLived.id, "all")))._tag).toBe("FileNotFound")
      expect((yield* Effect.flip(files.content(shortLived.id, "all")))._tag).toBe("FileNotFound")
      expect((yield* files.list({ visibility: "all",  limit: 10, order: "asc" })).data.map((f) => f.id)).toEqual([kept.id])

      // The background sweep runs every `fileSweepInterval` (60 s by default) and removes the bytes: on PostgreSQL,
      // with the whole suite's forks on two cores, that took over 2 s once.
      yield* TestClock.adjust("60 seconds")
      yield* eventuallyEffect(Effect.map(storedBlobs, (stored) => expect(stored.blobs).toEqual([kept.id])), 10_000)
    }).pipe(Effect.provide(storeLayer)))

  it.scoped("an interrupted or failed upload leaves no file and no bytes", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const never = Stream.concat(Stream.make(bytesOf("partial")), Stream.never)
      const fiber = yield* Effect.fork(files.create({ filename: "x.jsonl", purpose: "batch", project: "default" }, never))
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      yield* Fiber.interrupt(fiber)
      const failing = Stream.concat(Stream.make(bytesOf("partial")), Stream.fail("client went away"))
      expect(yield* Effect.flip(files.create({ filename: "y.jsonl", purpose: "batch", project: "default" }, failing))).toBe(
        "client went away"
      )
      expect((yield* files.list({ visibility: "all",  limit: 10, order: "asc" })).data).toEqual([])
      expect(yield* storedBlobs).toEqual({ blobs: [], staging: [] })
    }).pipe(Effect.provide(storeLayer)))

  it.scoped("at start, removes its staged leftovers, not another node's, and sets aside (on disk) or removes (in the database) old bytes no file refers to", () =>
    Effect.gen(function*() {
      const { path } = yield* TestDataDir
      // Each `Effect.provide` of this layer is one start of the service on the same storage.
      const start = FileStoreLive.pipe(Layer.provideMerge(StorageLive), Layer.provideMerge(config))
      const kept = yield* upload("kept.jsonl", "batch", bytesOf("k\n")).pipe(Effect.provide(start))
      const deleted = yield* upload("deleted.jsonl", "batch", bytesOf("d\n")).pipe(Effect.provide(start))
      yield* Effect.flatMap(FileStore, (files) => files.remove(deleted.id, "all")).pipe(Effect.provide(start))
      // What a process killed mid-upload, or between publishing bytes and writing metadata, leaves behind.
      const othersStaging = Path.join(path, "files", "staging", "other-node")
      if (fileStorage === "local") {
        const { nodeId } = yield* Effect.provide(AppConfig, config)
        const longAgo = new Date(Date.now() - 2 * 86_400_000)
        writeFileSync(Path.join(path, "files", "staging", fileNameOfNodeId(nodeId), "half-written"), "partial")
        // And what one stopped between a delete's row and its bytes leaves: a deleted file's, an upload part's.
        for (const [name, text] of [["file-orphan", "no metadata"], [deleted.id, "deleted"], ["part_orphan", "a part"]] as const) {
          writeFileSync(Path.join(path, "files", "blobs", name), text)
          utimesSync(Path.join(path, "files", "blobs", name), longAgo, longAgo)
        }
        // Another node sharing the directory: its upload under way, its file row on its way, and what it left
        // when it died two days ago.
        mkdirSync(othersStaging, { recursive: true })
        writeFileSync(Path.join(othersStaging, "uploading"), "partial")
        writeFileSync(Path.join(othersStaging, "died-with-its-node"), "partial")
        utimesSync(Path.join(othersStaging, "died-with-its-node"), longAgo, longAgo)
        writeFileSync(Path.join(path, "files", "blobs", "file-just-published"), "row on its way")
      } else {
        yield* Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const { nodeId } = yield* AppConfig
          const longAgo = (yield* Clock.currentTimeMillis) - 3_600_000
          yield* sql`INSERT INTO blob_staging ${sql.insert({ token: "half-written", owner: nodeId, created_at: longAgo })}`
          yield* sql`INSERT INTO blob_chunks ${sql.insert({ token: "half-written", seq: 0, data: bytesOf("partial") })}`
          yield* sql`INSERT INTO blobs ${sql.insert({ key: "file-orphan", token: "orphan", published_at: longAgo })}`
          yield* sql`INSERT INTO blob_chunks ${sql.insert({ token: "orphan", seq: 0, data: bytesOf("no metadata") })}`
        }).pipe(Effect.provide(start))
      }

      const [listed, stored] = yield* Effect.all([
        Effect.flatMap(FileStore, (files) => files.list({ visibility: "all",  limit: 10, order: "asc" })),
        storedBlobs
      ]).pipe(Effect.provide(start))
      expect(listed.data.map((f) => f.id)).toEqual([kept.id])
      if (fileStorage === "local") {
        expect(stored).toEqual({ blobs: ["file-just-published", kept.id].sort(), staging: ["other-node/uploading"] })
        // Kept where an operator finds them: a database restored older than its files would otherwise lose the
        // newer files' bytes for good.
        const aside = Path.join(path, "files", "orphaned")
        expect(readdirSync(aside)).toEqual(["file-orphan"])
        expect(readFileSync(Path.join(aside, "file-orphan"), "utf8")).toBe("no metadata")
      } else {
        expect(stored).toEqual({ blobs: [kept.id], staging: [] })
      }
    }).pipe(Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))))
})

describe("a node's staging directory", () => {
  it("is named by its id, encoded so that no id names another directory or one too long for the file system", () => {
    expect(fileNameOfNodeId("host:8321")).toBe("host%3A8321")
    expect(fileNameOfNodeId("..")).toBe("%2E%2E")
    expect(fileNameOfNodeId(".")).toBe("%2E")
    expect(fileNameOfNodeId("a/../b")).toBe("a%2F%2E%2E%2Fb")
    const long = fileNameOfNodeId("n".repeat(300))
    expect(long).toMatch(/^sha256-[0-9a-f]{64}$/)
    expect(fileNameOfNodeId("n".repeat(300))).toBe(long)
    expect(fileNameOfNodeId("m".repeat(300))).not.toBe(long)
  })
})
