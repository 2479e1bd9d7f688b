/**
 * A file whose bytes are gone from storage (a database restored beside older files, a blob removed by hand) is
 * answered with an error before any header, on every storage: it answered 200 and then cut the connection. A batch
 * over such an input file fails its validation saying so: its retries ended in a bare `internal_error`. A start
 * says the files listed without their bytes (a database restored newer than its files' copy), once, by id.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Context, Effect, Layer, Logger, LogLevel, Option, Stream } from "effect"
import Database from "better-sqlite3"
import { rmSync, utimesSync, writeFileSync } from "node:fs"
import * as Path from "node:path"
import { toFile } from "openai"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { missingBytesLine, sayMissingBytes } from "../src/files/missingBytes.js"
import { BlobGoneWhileRead, type BlobStoreShape } from "../src/storage/BlobStore.js"
import { SqlLive } from "../src/storage/Sql.js"
import { chatLine, createBatch, sdk, terminal, waitFor } from "./support/Batches.js"
import { startServer } from "./support/ServerProcess.js"
import { baseUrl, scratchDir, storages, storedByAnApp, TestDataDir, testApp } from "./support/TestApp.js"

for (const { backend, fileStorage } of storages) {
  describe(`missing file content (${backend}, ${fileStorage} bytes)`, () => {
    layer(testApp({ fileStorage: Option.some(fileStorage) }, backend, { logLevel: LogLevel.None }), { excludeTestServices: true })("", (it) => {
      it.effect("downloading it is a 500 that says so, whole or by range; the file's other bytes still serve", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const openai = sdk(base)
          const kept = yield* Effect.promise(async () => openai.files.create({ file: await toFile(Buffer.from("kept\n"), "kept.jsonl"), purpose: "user_data" }))
          const lost = yield* Effect.promise(async () => openai.files.create({ file: await toFile(Buffer.from("lost bytes\n"), "lost.jsonl"), purpose: "user_data" }))
          // Its bytes go, its row stays.
          if (fileStorage === "local") {
            rmSync(Path.join((yield* TestDataDir).path, "files", "blobs", encodeURIComponent(lost.id)))
          } else {
            yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM blobs WHERE key = ${lost.id}`).pipe(Effect.provide(SqlLive))
          }
          for (const range of [undefined, "bytes=2-5"]) {
            const res = yield* Effect.promise(() => fetch(`${base}/v1/files/${lost.id}/content`, { headers: range ? { range } : {} }))
            expect(res.status).toBe(500)
            const body = yield* Effect.promise(() => res.json())
            expect(body).toEqual({
              error: {
                message: `The content of file ${lost.id} is missing from the server's storage.`,
                type: "server_error",
                param: null,
                code: null
              }
            })
          }
          const text = yield* Effect.promise(() => openai.files.content(kept.id).then((r) => r.text()))
          expect(text).toBe("kept\n")
        }))

      it.effect("a batch over an input file whose bytes are gone fails its validation, saying so", () =>
        Effect.gen(function*() {
          const openai = sdk(yield* baseUrl)
          const input = yield* Effect.promise(async () =>
            openai.files.create({ file: await toFile(Buffer.from(chatLine("a", "hello") + "\n"), "in.jsonl"), purpose: "batch" }))
          if (fileStorage === "local") {
            rmSync(Path.join((yield* TestDataDir).path, "files", "blobs", encodeURIComponent(input.id)))
          } else {
            yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DELETE FROM blobs WHERE key = ${input.id}`).pipe(Effect.provide(SqlLive))
          }
          const batch = yield* createBatch(openai, input.id)
          const done = yield* waitFor(openai, batch.id, terminal, 10_000)
          expect([done.status, done.errors?.data]).toEqual(["failed", [{
            code: "file_content_missing",
            message: `The content of input file ${input.id} is missing from the server's storage: upload it again.`,
            param: "input_file_id",
            line: null
          }]])
        }))
    })
  })
}

/** The live store, but each file's bytes go after its first 64 KiB are read (its storage lost mid-download). */
const BytesGoMidRead = Layer.effect(FileStore, Effect.map(FileStore, (live) =>
  FileStore.of({
    ...live,
    content: (id, visibility) =>
      Effect.map(live.content(id, visibility), (content) => ({
        ...content,
        stream: Stream.concat(Stream.take(content.stream, 1), Stream.die(new BlobGoneWhileRead(id)))
      }))
  }))).pipe(Layer.provide(FileStoreLive))

layer(testApp({}, "sqlite", { logLevel: LogLevel.None, fileStore: BytesGoMidRead }), { excludeTestServices: true })(
  "bytes that go while they are sent",
  (it) => {
    it.effect("cut the connection at once: the client is not left waiting for the rest until the connection times out", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const openai = sdk(base)
        const file = yield* Effect.promise(async () =>
          openai.files.create({ file: await toFile(Buffer.alloc(1024 * 1024, "x"), "big.jsonl"), purpose: "user_data" }))
        const started = Date.now()
        const outcome = yield* Effect.promise(async () => {
          const res = await fetch(`${base}/v1/files/${file.id}/content`)
          const status = res.status
          const read = await res.arrayBuffer().then((b) => `${b.byteLength} bytes`, (e: Error) => `cut: ${e.message}`)
          return { status, read }
        })
        // Its head was sent (200, and its length): the body ends short, with an error, at once (it waited for the
        // connection's keep-alive timeout, 65 s on a server of `npm start`, 5 s here).
        expect(outcome).toEqual({ status: 200, read: expect.stringMatching(/^cut: /) })
        expect(Date.now() - started).toBeLessThan(2000)
      }))
  }
)

describe("a start beside a files' copy older than the database", () => {
  it.live("names the files listed without their bytes, once, and serves the others", () =>
    Effect.scoped(Effect.flatMap(scratchDir, (dataDir) =>
      Effect.promise(async () => {
        const env = { DATA_DIR: dataDir, LOG_FORMAT: "json" }
        const [kept, lost] = await storedByAnApp(dataDir, 2)
        // Restored: the rows of a while ago (files of the last minute are not looked at), one file's bytes not there.
        const db = new Database(Path.join(dataDir, "batches.sqlite"))
        db.prepare("UPDATE files SET created_at = created_at - 120").run()
        db.close()
        const blobs = Path.join(dataDir, "files", "blobs")
        rmSync(Path.join(blobs, encodeURIComponent(lost!.id)))
        // A stray file whose name is no key's (stopped the start: its name could not be decoded), an hour old.
        writeFileSync(Path.join(blobs, "100%.txt"), "x")
        utimesSync(Path.join(blobs, "100%.txt"), new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000))

        const server = await startServer(env)
        try {
          const said = server.stdout().split("\n").filter((l) => l.includes('"event":"files.missing_bytes"')).map((l) => JSON.parse(l))
          expect(said).toEqual([expect.objectContaining({ level: "WARN", files: 1, message: missingBytesLine(1, [lost!.id], blobs) })])
          const content = await fetch(`${server.url}/v1/files/${kept!.id}/content`)
          expect([content.status, (await content.text()).length]).toEqual([200, kept!.bytes])
        } finally {
          await server.stop()
        }
      }))), { timeout: 60_000 })
})

/**
 * `sayMissingBytes` now over a table of `files` (id, age in seconds) of which `present` have bytes: the `files`
 * counts of its warnings. (Real time: `it.effect` in this file runs on its last `layer`'s runtime, without TestClock.)
 */
const missingSaid = (files: ReadonlyArray<readonly [string, number]>, present: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const nowMs = Date.now()
    const sql = Context.get(yield* Layer.build(SqliteClient.layer({ filename: ":memory:" })), SqlClient.SqlClient)
    yield* sql`CREATE TABLE files (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL)`
    for (let i = 0; i < files.length; i += 500) {
      yield* sql`INSERT INTO files ${sql.insert(files.slice(i, i + 500).map(([id, age]) => ({ id, created_at: Math.floor(nowMs / 1000) - age })))}`
    }
    const blobs = { published: { dir: "/data/files/blobs", keys: Effect.succeed(new Set(present)) } } as unknown as BlobStoreShape
    const said: Array<unknown> = []
    const recorder = Logger.make(({ annotations }) => void said.push(Object.fromEntries(annotations).files))
    yield* sayMissingBytes(sql, blobs).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, recorder)))
    return said
  }).pipe(Effect.scoped)

describe("the start's check of the files' bytes", () => {
  it.live("says nothing of a file made in the last minute without bytes (its upload may be being written)", () =>
    Effect.gen(function*() {
      // A false warning at each start beside an upload in progress would teach operators to ignore the real one.
      const said = yield* missingSaid([["file-old", 3600], ["file-young", 10]], ["file-old"])
      expect(said).toEqual([])
    }))

  it.live("counts each missing file once over thousands of files (read 1,000 rows at a time)", () =>
    Effect.gen(function*() {
      // The count said is what the operator has to restore: over pages, a file missed or counted twice misleads.
      const ids = Array.from({ length: 2_500 }, (_, i) => `file-${String(i).padStart(5, "0")}`)
      const missing = new Set([ids[10], ids[1_500], ids[2_499]])
      const said = yield* missingSaid(ids.map((id) => [id, 3600] as const), ids.filter((id) => !missing.has(id)))
      expect(said).toEqual([3])
    }))
})
