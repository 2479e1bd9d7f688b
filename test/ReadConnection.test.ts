/**
 * The polled reads' own connection (`storage/ReadConnection.ts`) on a SQLite file: a read made while another fiber's
 * transaction is open neither waits for it nor sees its uncommitted rows, sees them once committed, and a read made
 * inside a transaction sees that transaction's own writes; a read repeated while nothing was committed gives the rows it
 * gave. Without a `ReadConnection` (an in-memory database) the
 * reads go through the `SqlClient`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Fiber, Layer, Option } from "effect"
import Database from "better-sqlite3"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { LIST_PAGE_BYTES } from "../src/domain/List.js"
import { ReadConnection, readValuesOf, rowsInPage, sharedPerRows } from "../src/storage/ReadConnection.js"
import { layerSqlite } from "../src/storage/Sql.js"

const tempFile = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-reads-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
).pipe(Effect.map((dir) => Path.join(dir, "reads.sqlite")))

/** The numbers of table `t`, read as a store on `sql` reads them, with what `context` provides. */
const numbersOf = (sql: SqlClient.SqlClient, context: Context.Context<never>) =>
  Effect.gen(function*() {
    const readValues = yield* Effect.provide(readValuesOf(sql), context)
    const rows = yield* Effect.orDie(readValues(sql`SELECT n FROM t ORDER BY n`))
    return rows.map(([n]) => n)
  })

/** A migrated SQLite database at `filename`, a table `t (n)` in it, and the stores' way of reading it. */
const database = (filename: string) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(layerSqlite(filename))
    const sql = Context.get(context, SqlClient.SqlClient)
    yield* sql`CREATE TABLE t (n INTEGER)`
    return { context, sql, numbers: numbersOf(sql, context) }
  })

describe("ReadConnection", () => {
  it.live("a read neither waits for a transaction in progress nor sees its rows until it commits", () =>
    Effect.gen(function*() {
      const { numbers, sql } = yield* database(yield* tempFile)
      yield* sql`INSERT INTO t (n) VALUES (1)`
      const inserted = yield* Deferred.make<void>()
      const commit = yield* Deferred.make<void>()
      const transaction = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO t (n) VALUES (2)`
        yield* Deferred.succeed(inserted, undefined)
        yield* Deferred.await(commit)
      })).pipe(Effect.fork)
      yield* Deferred.await(inserted)
      // Through the SqlClient this read would wait for the transaction's connection: the timeout would end it.
      const during = yield* numbers.pipe(Effect.timeout(Duration.seconds(2)), Effect.option)
      expect(during).toEqual(Option.some([1]))
      yield* Deferred.succeed(commit, undefined)
      yield* Fiber.join(transaction)
      expect(yield* numbers).toEqual([1, 2])
    }).pipe(Effect.scoped))

  it.live("a read inside a transaction sees the transaction's own writes", () =>
    Effect.gen(function*() {
      const { numbers, sql } = yield* database(yield* tempFile)
      const seen = yield* sql.withTransaction(Effect.zipRight(sql`INSERT INTO t (n) VALUES (3)`, numbers))
      expect(seen).toEqual([3])
    }).pipe(Effect.scoped))

  it.live("a read repeated while nothing was committed gives the rows it gave; a commit on any connection, another process's too, is seen at once", () =>
    Effect.gen(function*() {
      const filename = yield* tempFile
      const { context, sql } = yield* database(filename)
      yield* sql`INSERT INTO t (n) VALUES (1)`
      const readValues = yield* Effect.provide(readValuesOf(sql), context)
      const read = (n: number) => Effect.orDie(readValues(sql`SELECT n FROM t WHERE n >= ${n} ORDER BY n`))
      const first = yield* read(1)
      expect(yield* read(1)).toBe(first) // the same rows, not read again
      expect(yield* read(2)).toEqual([]) // other parameters: another read

      yield* sql`INSERT INTO t (n) VALUES (2)` // this process's own writer
      const afterWrite = yield* read(1)
      expect(afterWrite).toEqual([[1], [2]])
      expect(yield* read(2)).toEqual([[2]])

      // Another process's connection to the same file (as an API-only node's batches node writes).
      const other = new Database(filename)
      other.prepare("INSERT INTO t (n) VALUES (3)").run()
      other.close()
      expect(yield* read(1)).toEqual([[1], [2], [3]])
    }).pipe(Effect.scoped))

  it.live("a read of rows too large to keep is read again when repeated (what is built from it lives as long)", () =>
    Effect.gen(function*() {
      const { context, sql } = yield* database(yield* tempFile)
      yield* sql`ALTER TABLE t ADD COLUMN text TEXT`
      // 9 Mi characters in all: more than the 8 Mi kept at once.
      for (let n = 0; n < 9; n++) yield* sql`INSERT INTO t (n, text) VALUES (${n}, ${"x".repeat(1024 * 1024)})`
      const readValues = yield* Effect.provide(readValuesOf(sql), context)
      const read = (n: number) => Effect.orDie(readValues(sql`SELECT n, text FROM t WHERE n >= ${n} ORDER BY n`))
      const large = yield* read(0)
      expect(yield* read(0)).not.toBe(large)
      expect(yield* read(0)).toEqual(large)
      const smaller = yield* read(2) // 7 Mi: kept
      expect(yield* read(2)).toBe(smaller)
    }).pipe(Effect.scoped))

  it("a list page takes rows up to about LIST_PAGE_BYTES as stored, one at least, and no more than its limit", () => {
    const row = (chars: number) => [`batch_${chars}`, "x".repeat(chars)]
    expect(rowsInPage([row(10), row(10), row(10)], 2)).toBe(2)
    expect(rowsInPage([row(400_000), row(400_000), row(400_000), row(10)], 100)).toBe(2)
    expect(rowsInPage([row(2 * LIST_PAGE_BYTES), row(10)], 100)).toBe(1)
    expect(rowsInPage([], 20)).toBe(0)
  })

  it.live("a database in memory or temporary (\"\") has none: its reads go through the SqlClient", () =>
    Effect.gen(function*() {
      for (const filename of [":memory:", ""]) {
        const { context, numbers, sql } = yield* database(filename)
        expect(Context.getOption(context, ReadConnection)).toEqual(Option.none())
        yield* sql`INSERT INTO t (n) VALUES (4)`
        expect(yield* numbers).toEqual([4])
      }
    }).pipe(Effect.scoped))

  it.live("a store given another SqlClient reads its own database, not the connection's file", () =>
    Effect.gen(function*() {
      const file = yield* database(yield* tempFile)
      yield* file.sql`INSERT INTO t (n) VALUES (1)`
      // An embedder's second database, built where the first one's ReadConnection is in context.
      const memory = yield* database(":memory:").pipe(Effect.provide(file.context))
      yield* memory.sql`INSERT INTO t (n) VALUES (2)`
      expect(yield* numbersOf(memory.sql, Context.merge(file.context, memory.context))).toEqual([2])
      expect(yield* file.numbers).toEqual([1])
    }).pipe(Effect.scoped))

  it("what is built from a read's rows is built once per rows array and key (a page's size)", () => {
    let built = 0
    const pageOf = sharedPerRows((rows, limit: number) => (built++, { data: rows.slice(0, limit), hasMore: rows.length > limit }))
    const rows = [[1], [2], [3]]
    const page = pageOf(rows, 2)
    expect(pageOf(rows, 2)).toBe(page)
    expect(pageOf(rows, 3)).toEqual({ data: rows, hasMore: false }) // another key: built anew
    expect(pageOf([[1], [2], [3]], 2)).toEqual(page) // rows read anew: built anew
    expect(built).toBe(3)
  })
})
