/**
 * The SQL layer: a `SqlClient` with every migration applied. SQLite (one file in `DATA_DIR`, WAL mode) is the
 * default; the store code only talks to `SqlClient`, so another dialect is another layer here, not a rewrite.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Migrator from "@effect/sql/Migrator"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Effect, Layer } from "effect"
import { mkdirSync } from "node:fs"
import * as Path from "node:path"
import { AppConfig } from "../Config.js"
import { migrations } from "./migrations.js"

/** Applies every pending migration to the `SqlClient` it is given. */
export const MigrationsLive = Layer.effectDiscard(
  Migrator.make({})({ loader: Migrator.fromRecord(migrations) }).pipe(Effect.withSpan("Sql.migrate"))
)

/**
 * WAL with `synchronous = NORMAL`: a commit is durable once it is in the write-ahead log, which survives a crash
 * or kill of the process (what "nothing lost on restart" protects against); only an OS crash or power loss can
 * drop the last commits. `FULL` would fsync on every commit and cap the runner at a few hundred writes a second.
 */
const SqlitePragmas = Layer.effectDiscard(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`PRAGMA synchronous = NORMAL`))

/** SQLite at `filename` (`:memory:` works too), migrated. */
export const layerSqlite = (filename: string): Layer.Layer<SqlClient.SqlClient, unknown> =>
  Layer.merge(MigrationsLive, SqlitePragmas).pipe(Layer.provideMerge(SqliteClient.layer({ filename })))

/** The database the configuration asks for: `DATA_DIR/batches.sqlite`. */
export const SqlLive: Layer.Layer<SqlClient.SqlClient, unknown, AppConfig> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const { dataDir } = yield* AppConfig
    yield* Effect.sync(() => mkdirSync(dataDir, { recursive: true }))
    return layerSqlite(Path.join(dataDir, "batches.sqlite"))
  })
)
