/**
 * Upgrading a database in use: a batch half done under the previous schema (outcomes stored in its request rows)
 * keeps every stored outcome and every pending request once the later migrations have run, on SQLite and PostgreSQL.
 * Nodes starting at once on a PostgreSQL schema migrate it one after another, and wait for no node on another schema.
 * The service's migrations are recorded in a table of its own, apart from an embedding app's migrator.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { describe, expect, it } from "@effect/vitest"
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Effect, Fiber, HashMap, Layer, Logger, Option, Redacted } from "effect"
import * as Path from "node:path"
import { make as makeBatchStore } from "../src/batches/BatchStore.js"
import { BatchId, BatchRequestId, FileId } from "../src/domain/Ids.js"
import { migrations } from "../src/storage/migrations.js"
import { MIGRATIONS_TABLE, runMigrations } from "../src/storage/migrationsTable.js"
import { postgresText } from "../src/observability/urlText.js"
import { layerPg, MigrationsLive, MIGRATION_LOCK, SqlLive } from "../src/storage/Sql.js"
import { newChatBatch, storedLines } from "./support/Batches.js"
import { createScratchSchema, dropScratchSchema } from "./support/Postgres.js"
import { type Backend, backends, configFor, eventuallyEffect, TestDatabase, TestDataDir } from "./support/TestApp.js"

const migrationsUpTo = (last: keyof typeof migrations) =>
  Object.fromEntries(Object.entries(migrations).filter(([name]) => name <= last))
const migrateUpTo = (last: keyof typeof migrations) => runMigrations(migrationsUpTo(last))

const clientFor = (backend: Backend) =>
  Layer.unwrapEffect(Effect.gen(function*() {
    const { path } = yield* TestDataDir
    const { url } = yield* TestDatabase
    const client: Layer.Layer<SqlClient.SqlClient, unknown> = backend === "sqlite" || Option.isNone(url)
      ? SqliteClient.layer({ filename: Path.join(path, "batches.sqlite") })
      : PgClient.layer({ url: url.value })
    return client
  })).pipe(Layer.orDie, Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend))))

const lastMigration = Object.keys(migrations).sort().at(-1) as keyof typeof migrations

describe("migrations", () => {
  for (const backend of backends) {
    it.scoped(`${backend}: a running batch keeps its stored outcomes, counts and pending requests across 0005 and 0006`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* migrateUpTo("0004_blobs")
        yield* sql`INSERT INTO batches (id, status, endpoint, input_file_id, completion_window, created_at, expires_at,
          in_progress_at, total, completed, failed)
          VALUES ('batch_old', 'in_progress', '/v1/chat/completions', 'file-x', '24h', 1, 86401, 2, 3, 1, 1)`
        yield* sql`INSERT INTO batch_requests
          (batch_id, line, custom_id, result_id, body, state, status_code, response, request_id) VALUES
          ('batch_old', 1, 'a', 'r1', '{}', 'done', 200, '{"ok":1}', 'req_1')`
        yield* sql`INSERT INTO batch_requests
          (batch_id, line, custom_id, result_id, body, state, error_code, error_message) VALUES
          ('batch_old', 2, 'b', 'r2', '{}', 'done', 'upstream_timeout', 'too slow')`
        yield* sql`INSERT INTO batch_requests (batch_id, line, custom_id, result_id, body) VALUES
          ('batch_old', 3, 'c', 'r3', '{"n":3}')`

        yield* migrateUpTo(lastMigration) // the store reads every column up to the last migration
        const store = yield* makeBatchStore
        const old = BatchId.make("batch_old")
        const succeeded = yield* storedLines(store, old, "succeeded")
        expect(succeeded.map((l) => [l.custom_id, l.response.status_code, l.response.body, l.response.request_id])).toEqual([
          ["a", 200, { ok: 1 }, "req_1"]
        ])
        const failed = yield* storedLines(store, old, "failed")
        expect(failed.map((l) => [l.custom_id, l.error.code, l.error.message])).toEqual([["b", "upstream_timeout", "too slow"]])
        const pending = yield* store.pendingRequests(old, 0, 3, { rows: 10, bytes: 1e6 })
        expect(pending.rows).toEqual([{ line: 3, customId: "c", resultId: "r3", body: "{\"n\":3}" }])
        // The pending request still takes exactly one outcome; the stored ones take none.
        const outcome = (line: number, customId: string) => ({
          _tag: "Error" as const,
          line,
          customId,
          resultId: BatchRequestId.make(`r${line}`),
          code: "batch_cancelled",
          message: "cancelled"
        })
        expect(yield* store.recordOutcomes(old, [outcome(1, "a"), outcome(3, "c")])).toEqual(new Set([3]))
        expect((yield* store.get(old, "all")).batch.request_counts).toEqual({ total: 3, completed: 1, failed: 2 })
      }).pipe(Effect.provide(clientFor(backend))))
  }

  for (const backend of backends) {
    it.scoped(`${backend}: 0007 puts every existing file and batch in project 'default', idempotency keys included`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* migrateUpTo("0006_result_counts")
        yield* sql`INSERT INTO files (id, bytes, created_at, filename, purpose) VALUES ('file-old', 3, 1, 'a.jsonl', 'batch')`
        yield* sql`INSERT INTO batches (id, status, endpoint, input_file_id, completion_window, created_at, expires_at,
          idempotency_key, request_hash) VALUES ('batch_old', 'validating', '/v1/chat/completions', 'file-old', '24h', 1,
          86401, 'key-1', 'hash-1')`

        yield* migrateUpTo("0007_projects")
        expect(yield* sql`SELECT id, project FROM files`).toEqual([{ id: "file-old", project: "default" }])
        yield* runMigrations(migrations) // the store reads the columns of later ones
        const store = yield* makeBatchStore
        const old = BatchId.make("batch_old")
        expect((yield* store.get(old, { project: "default" })).project).toBe("default")
        expect((yield* Effect.flip(store.get(old, { project: "projA" })))._tag).toBe("BatchNotFound")
        const page = yield* store.list({ visibility: { project: "default" }, limit: 10 })
        expect(page.data.map((b) => b.id)).toEqual([old])
        // The old idempotency key is project 'default''s: a retry there finds the batch, another project's is new.
        const retry = { ...newChatBatch(BatchId.make("batch_retry"), FileId.make("file-old")), idempotencyKey: "key-1" }
        const again = yield* store.create(retry)
        expect([again.created, again.record.batch.id]).toEqual([false, old])
        const elsewhere = yield* store.create({ ...retry, project: "projA" })
        expect([elsewhere.created, elsewhere.record.project]).toEqual([true, "projA"])
      }).pipe(Effect.provide(clientFor(backend))))
  }

  for (const backend of backends) {
    it.scoped(`${backend}: the service keeps its migrations in a table of its own; a database an earlier release migrated is taken up as it is`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const recorded = (table: string) =>
          Effect.map(sql<{ name: string }>`SELECT name FROM ${sql(table)} ORDER BY migration_id`, (rows) => rows.map((r) => r.name))
        // An earlier release: its migrations up to 0011 in @effect/sql's default table, a file stored.
        yield* Migrator.make({})({ loader: Migrator.fromRecord(migrationsUpTo("0011_request_attempts")) })
        yield* sql`INSERT INTO files (id, bytes, created_at, filename, purpose) VALUES ('file-old', 3, 1, 'a.jsonl', 'batch')`
        yield* Effect.scoped(Layer.build(MigrationsLive)) // ran again, 0001 would fail: its tables exist
        expect(yield* recorded(MIGRATIONS_TABLE)).toEqual(Object.keys(migrations).map((name) => name.slice(5)))
        expect(yield* sql`SELECT id FROM files`).toEqual([{ id: "file-old" }])
        expect(yield* sql`SELECT id FROM deleted_files`).toEqual([]) // 0012 ran
        // An app's own migrator on the same schema (the default table) runs its migrations, numbered as it likes.
        const app = yield* Migrator.make({})({
          loader: Migrator.fromRecord({
            "0012_app_users": sql`CREATE TABLE app_users (id INTEGER)`,
            "0013_app_orders": sql`CREATE TABLE app_orders (id INTEGER)`
          })
        })
        expect(app.map(([, name]) => name)).toEqual(["app_users", "app_orders"])
        yield* Effect.scoped(Layer.build(MigrationsLive)) // and the service's next start has nothing to do
        expect(yield* recorded(MIGRATIONS_TABLE)).toEqual(Object.keys(migrations).map((name) => name.slice(5)))
      }).pipe(Effect.provide(clientFor(backend))))

    it.scoped(`${backend}: a migration an earlier release skipped (an app's row held its number) stops the start, named`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        // The service's 0001, an app's 0002, then the service's 0003 on: its 0002 never ran.
        yield* Migrator.make({})({ loader: Migrator.fromRecord({ "0001_files": migrations["0001_files"], "0002_app_orders": Effect.void }) })
        yield* sql`CREATE TABLE batch_requests (line INTEGER)`
        yield* sql`INSERT INTO effect_sql_migrations (migration_id, name) VALUES (3, 'leases')`
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(MigrationsLive)))
        expect(String(exit)).toContain("Migrations 0002_batches never ran on this schema")
      }).pipe(Effect.provide(clientFor(backend))))

    it.scoped(`${backend}: a table of the service's name left by another app fails the start with a MigrationError an app can catch`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE files (name TEXT)`
        const caught = yield* Effect.scoped(Layer.build(MigrationsLive)).pipe(
          Effect.as("built"),
          Effect.catchTag("MigrationError", (e) => Effect.succeed(`${e.reason}: ${e.message}`))
        )
        expect(caught).toBe(`failed: Migration "1_files" failed`) // a defect before, past any catchTag
      }).pipe(Effect.provide(clientFor(backend))))

    it.scoped(`${backend}: the migrations that run are logged; a schema a later release migrated stops the start, named, and is left as it is`, () => {
      const lines: Array<string> = []
      const logger = Logger.make(({ message }) => void lines.push(String(message)))
      return Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const applied = () => lines.filter((l) => l.startsWith("Migrations applied"))
        yield* migrateUpTo("0010_upload_claims") // a new database: said at debug level only
        expect(applied()).toHaveLength(0)
        yield* Effect.scoped(Layer.build(MigrationsLive))
        expect(applied()).toEqual(["Migrations applied: 0011_request_attempts, 0012_deleted_files, 0013_batch_lease_owner, 0014_batch_model_unchecked, 0015_batch_cleared_parts"])
        yield* Effect.scoped(Layer.build(MigrationsLive)) // nothing to do: nothing said
        expect(applied()).toHaveLength(1)

        // A later release's migration recorded: this one would run on tables it does not know.
        yield* sql`INSERT INTO ${sql(MIGRATIONS_TABLE)} (migration_id, name) VALUES (9999, 'future_thing')`
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(MigrationsLive)))
        expect(String(exit)).toContain("A later release migrated this database (9999_future_thing)")
        expect(yield* sql`SELECT name FROM ${sql(MIGRATIONS_TABLE)} WHERE migration_id = 9999`).toEqual([{ name: "future_thing" }])
      }).pipe(Effect.provide(clientFor(backend)), Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
    })

    it.scoped(`${backend}: an app that migrated the schema first with its own migrator takes none of the service's migrations away`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const appMigrations = Object.fromEntries(Array.from({ length: 14 }, (_, i) =>
          [`${String(i + 1).padStart(4, "0")}_app_${i + 1}`, Effect.void] as const))
        yield* Migrator.make({})({ loader: Migrator.fromRecord(appMigrations) })
        yield* Effect.scoped(Layer.build(MigrationsLive))
        expect(yield* sql`SELECT COUNT(*) AS n FROM files`).toEqual([{ n: expect.anything() }])
        expect(yield* sql`SELECT id FROM deleted_files`).toEqual([])
        // And the app's next migration still runs.
        const next = yield* Migrator.make({})({
          loader: Migrator.fromRecord({ ...appMigrations, "0015_app_15": sql`CREATE TABLE app_15 (id INTEGER)` })
        })
        expect(next.map(([, name]) => name)).toEqual(["app_15"])
      }).pipe(Effect.provide(clientFor(backend))))
  }

  for (const backend of backends) {
    it.scoped(`${backend}: a start on a new database says so, and where; the next start on it does not`, () => {
      const created: Array<string> = []
      const logger = Logger.make(({ annotations, message }) => {
        if (Option.contains(HashMap.get(annotations, "event"), "database.created")) created.push(String(message))
      })
      return Effect.gen(function*() {
        const { path } = yield* TestDataDir
        const { url } = yield* TestDatabase
        const start = Effect.scoped(Layer.build(SqlLive.pipe(Layer.provide(configFor()))))
        yield* start
        const place = Option.match(url, {
          onNone: () => `${Path.join(path, "batches.sqlite")} (no earlier data here: if you expected some, check DATA_DIR)`,
          onSome: (u) => `${postgresText(Redacted.value(u))} (no earlier data here: if you expected some, check DATABASE_URL)`
        })
        expect(created).toEqual([`New database created at ${place}`])
        yield* start // the same DATA_DIR (or schema) again: its data is there, nothing to say
        expect(created).toHaveLength(1)
      }).pipe(
        Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend))),
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
    })
  }

  it.scoped("postgres: nodes starting at once on an empty database all migrate it, one after another", () =>
    Effect.gen(function*() {
      for (let round = 0; round < 3; round++) {
        const { schema, url } = yield* createScratchSchema("migrate")
        yield* Effect.addFinalizer(() => Effect.orDie(dropScratchSchema(schema)))
        const node = Effect.scoped(Layer.build(layerPg(Redacted.make(url))))
        yield* Effect.all(Array.from({ length: 4 }, () => node), { concurrency: "unbounded" })
      }
    }), 30_000)

  it.scoped("postgres: a node migrating one schema holds up no node on another schema of the database", () =>
    Effect.gen(function*() {
      const [busy, other] = yield* Effect.all([createScratchSchema("migrate"), createScratchSchema("migrate")])
      yield* Effect.addFinalizer(() => Effect.orDie(Effect.all([dropScratchSchema(busy.schema), dropScratchSchema(other.schema)])))
      // A node that holds its schema's migration lock (a long migration under way) for as long as the test runs.
      const sql = yield* PgClient.make({ url: Redacted.make(busy.url) })
      const connection = yield* sql.reserve
      yield* connection.executeRaw(`SELECT pg_advisory_lock(${MIGRATION_LOCK})`, [])
      const started = yield* Effect.either(
        Effect.timeout(Effect.disconnect(Effect.scoped(Layer.build(layerPg(Redacted.make(other.url))))), "10 seconds")
      )
      expect(started._tag).toBe("Right")
      // On its own schema, a node waits for it, and migrates once it is let go of.
      const waiting = yield* Effect.fork(Effect.scoped(Layer.build(layerPg(Redacted.make(busy.url)))))
      yield* eventuallyEffect(Effect.map(
        sql.unsafe<{ waiting: boolean }>(`SELECT EXISTS (SELECT 1 FROM pg_locks, (SELECT ${MIGRATION_LOCK} AS key) k
          WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
            AND (classid, objid) = (((key >> 32) & 4294967295)::oid, (key & 4294967295)::oid)) AS waiting`).pipe(Effect.orDie),
        ([row]) => expect(row?.waiting).toBe(true)
      ), 10_000)
      yield* connection.executeRaw(`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`, [])
      yield* Fiber.join(waiting)
    }).pipe(Effect.provide(Reactivity.layer)), 30_000)
})
