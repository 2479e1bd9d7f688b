/**
 * A start that another process refuses (its node's id held; on SQLite, the batches run by another process) leaves
 * the database's schema as it was: the locks are taken before the migrations. Migrated first, a new release started
 * beside a running old one was refused after it had moved the schema on, and the old one could not start again.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Layer, Option } from "effect"
import * as Path from "node:path"
import { StorageLive } from "../src/Layers.js"
import { NodeIdLockLive } from "../src/storage/NodeIdLock.js"
import { SqliteRunnerLockLive } from "../src/storage/SqliteRunnerLock.js"
import { migrations } from "../src/storage/migrations.js"
import { MIGRATIONS_TABLE, runMigrations } from "../src/storage/migrationsTable.js"
import { backends, configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

/** The migrations an earlier release knew: all but the last. */
const earlier = Object.fromEntries(Object.entries(migrations).slice(0, -1))

describe.concurrent("a start refused by another process", () => {
  for (const backend of backends) {
    it.live(`${backend}: leaves the schema as it was`, () =>
      Effect.gen(function*() {
        const { path } = yield* TestDataDir
        const { url } = yield* TestDatabase
        const client: Layer.Layer<SqlClient.SqlClient, unknown> = Option.isNone(url)
          ? SqliteClient.layer({ filename: Path.join(path, "batches.sqlite") })
          : PgClient.layer({ url: url.value })
        const sql = yield* Effect.provide(SqlClient.SqlClient, yield* Layer.build(Layer.orDie(client)))
        yield* runMigrations(earlier).pipe(Effect.provideService(SqlClient.SqlClient, sql))
        const applied = Effect.map(sql<{ name: string }>`SELECT name FROM ${sql(MIGRATIONS_TABLE)}`, (rows) => rows.length)
        const before = yield* applied

        // The earlier release runs, holding its locks (its node id; on SQLite, the batches' runner lock), under the
        // node id the new one is started with.
        const config = configFor({
          nodeId: "same-node",
          leaseTtl: Duration.seconds(1),
          heartbeatInterval: Duration.millis(200),
          shutdownTimeout: Duration.millis(100),
          shutdownDelay: Duration.zero
        })
        const locks = Layer.merge(NodeIdLockLive, SqliteRunnerLockLive)
        yield* Layer.build(locks.pipe(Layer.provide(Layer.merge(Layer.succeed(SqlClient.SqlClient, sql), config))))

        const refused = yield* Effect.exit(Effect.scoped(Layer.build(StorageLive.pipe(Layer.provide(config)))))
        // Refused by a lock (the node's id; on SQLite the runner's may come first: both are taken side by side).
        const why = Exit.isFailure(refused) ? Cause.failureOption(refused.cause) : Option.none()
        expect(Option.map(why, (e) => (e as { _tag: string })._tag)).toEqual(Option.some(expect.stringMatching(/^(NodeIdInUse|BatchesRunElsewhere)$/)))
        expect(yield* applied).toBe(before) // nothing migrated
      }).pipe(Effect.scoped, Effect.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))), 30_000)
  }
})
