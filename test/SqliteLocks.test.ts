/**
 * Another process holding the SQLite file's write lock (an operator's `sqlite3` session, a node beside this one, a
 * restore): the node waits for it from a timer, its event loop free meanwhile (better-sqlite3's own wait is
 * synchronous: `/v1/health` took 4–9 s), and the write goes through once the lock is let go. The other process is a
 * connection of the test's own to the same file: SQLite's locks hold between connections of one process too.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { describe, expect, it, layer } from "@effect/vitest"
import Database from "better-sqlite3"
import { Context, Effect, Exit, Layer, LogLevel, Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { toFile } from "openai"
import { layerSqlite } from "../src/storage/Sql.js"
import { lockWaitingTransaction } from "../src/storage/sqliteLocks.js"
import { chatLine, sdk, upload } from "./support/Batches.js"
import { baseUrl, TestDataDir, testApp } from "./support/TestApp.js"

const HELD_MS = 1500

layer(testApp({}, "sqlite", { logLevel: LogLevel.Error }), { excludeTestServices: true })("a write lock another process holds on the SQLite file", (it) => {
  it.effect("the event loop keeps turning and the server answering; an upload and a delete wait for the lock, then are done", () =>
    Effect.gen(function*() {
      const { path } = yield* TestDataDir
      const url = yield* baseUrl
      const openai = sdk(url)
      const before = yield* upload(openai, [chatLine("a", "hello")], "before.jsonl")
      const other = new Database(Path.join(path, "batches.sqlite"))
      const outcome = yield* Effect.promise(async () => {
        other.exec("BEGIN IMMEDIATE")
        let released = false
        let ticks = 0
        const timer = setInterval(() => ticks++, 20)
        const uploading = openai.files.create({ file: await toFile(Buffer.from(`${chatLine("b", "hi")}\n`), "during.jsonl"), purpose: "batch" })
          .then((file) => ({ file, whileHeld: !released }), (error) => ({ error: String(error), whileHeld: !released }))
        // A delete is a transaction: its begin waits for the lock too.
        const deleting = openai.files.delete(before.id).then((d) => ({ deleted: d.deleted, whileHeld: !released }))
        const health = fetch(`${url}/v1/health`).then((res) => ({ status: res.status, whileHeld: !released }))
        // Readiness asks the database: the upload's wait for the lock leaves it the connection meanwhile.
        await new Promise((resolve) => setTimeout(resolve, 300))
        const ready = fetch(`${url}/v1/ready`).then((res) => ({ status: res.status, whileHeld: !released }))
        await new Promise((resolve) => setTimeout(resolve, HELD_MS))
        const ticksWhileHeld = ticks
        other.exec("COMMIT")
        released = true
        const result = { uploaded: await uploading, deleted: await deleting, health: await health, ready: await ready, ticksWhileHeld }
        clearInterval(timer)
        return result
      }).pipe(Effect.ensuring(Effect.sync(() => other.close())))
      // Blocked, the loop turned 0–1 times in 1.5 s, and the upload failed (503) after SQLite's 5 s.
      expect(outcome.ticksWhileHeld).toBeGreaterThan(HELD_MS / 20 / 3)
      expect(outcome.health).toEqual({ status: 200, whileHeld: true })
      expect(outcome.ready).toEqual({ status: 200, whileHeld: true })
      expect(outcome.uploaded).toMatchObject({ file: { object: "file", filename: "during.jsonl" }, whileHeld: false })
      expect(outcome.deleted).toEqual({ deleted: true, whileHeld: false })
      const listed = yield* Effect.promise(() => openai.files.list())
      expect(listed.data.map((f) => f.filename)).toEqual(["during.jsonl"])
      expect(before.status).toBe("processed")
    }), 30_000)
})

describe("the SQLite client's connection", () => {
  it.scoped("lent by `reserve` holds no transaction: what is written on it is committed, and a transaction follows", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(Path.join(tmpdir(), "sqlite-reserve-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const file = Path.join(dir, "db.sqlite")
      const sql = yield* Effect.map(Layer.build(layerSqlite(file)), (context) => Context.get(context, SqlClient.SqlClient))
      yield* sql`CREATE TABLE t (n INTEGER)`
      yield* Effect.scoped(Effect.flatMap(sql.reserve, (connection) => connection.executeRaw("INSERT INTO t VALUES (1)", [])))
      const other = new Database(file, { readonly: true })
      try {
        expect(other.prepare("SELECT count(*) AS c FROM t").get()).toEqual({ c: 1 })
      } finally {
        other.close()
      }
      yield* sql.withTransaction(sql`INSERT INTO t VALUES (2)`)
      expect(yield* sql`SELECT n FROM t ORDER BY n`).toEqual([{ n: 1 }, { n: 2 }])
    }))

  it.effect("is let go when a transaction's begin fails in any way, a defect included", () =>
    Effect.gen(function*() {
      const permit = yield* Effect.makeSemaphore(1)
      let throws = true
      const connection = {
        executeUnprepared: () => {
          if (throws) throw new TypeError("The database connection is not open") // as prepare() throws
          return Effect.succeed([])
        }
      } as unknown as SqlConnection.Connection
      const reserve = Effect.as(Effect.acquireRelease(permit.take(1), () => permit.release(1)), connection)
      // As @effect/sql acquires it: in a scope it never closes when the acquisition fails.
      const failed = yield* Effect.exit(Scope.extend(lockWaitingTransaction(reserve, "BEGIN IMMEDIATE"), yield* Scope.make()))
      expect(Exit.isFailure(failed)).toBe(true)
      throws = false
      // The permit was given back: the next begin gets the connection at once.
      const next = yield* Effect.scoped(lockWaitingTransaction(reserve, "BEGIN IMMEDIATE")).pipe(Effect.timeout("1 second"), Effect.exit)
      expect(Exit.isSuccess(next)).toBe(true)
    }))
})
