/** SQLite's write-ahead log gives its room back after a burst of writes, instead of keeping its high-water mark. */
import { expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import { statSync } from "node:fs"
import * as Path from "node:path"
import { layerSqlite, WAL_SIZE_LIMIT } from "../src/storage/Sql.js"
import { TestDataDir } from "./support/TestApp.js"

it.scoped("the WAL file is cut back to WAL_SIZE_LIMIT after a checkpoint", () =>
  Effect.gen(function*() {
    const file = Path.join((yield* TestDataDir).path, "wal.sqlite")
    yield* Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE burst (data BLOB)`
      // One transaction larger than the limit: the WAL grows past it (checkpoints run only between transactions).
      const piece = Buffer.alloc(1024 * 1024, 7)
      yield* sql.withTransaction(Effect.forEach(Array.from({ length: WAL_SIZE_LIMIT / piece.length + 8 }), () =>
        sql`INSERT INTO burst (data) VALUES (${piece})`, { discard: true }))
      const wal = () => statSync(`${file}-wal`).size
      expect(wal()).toBeGreaterThan(WAL_SIZE_LIMIT)
      // Checkpointed in full, the next write starts the log over and cuts it back.
      yield* sql`PRAGMA wal_checkpoint(PASSIVE)`
      yield* sql`INSERT INTO burst (data) VALUES (${Buffer.alloc(1)})` // not a delete: zeroing 72 MB (secure_delete) fills the log again
      expect(wal()).toBeLessThanOrEqual(WAL_SIZE_LIMIT)
    }).pipe(Effect.provide(layerSqlite(file)))
  }).pipe(Effect.provide(TestDataDir.Default)), 30_000)
