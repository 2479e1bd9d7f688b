/**
 * On SQLite, one process per database file runs batches. The node that runs them frees every lease and webhook
 * claim when it starts (`WorkLeases.releaseAfterRestart`: whatever held one before is gone), so a second one would
 * take them from the first while it works: requests sent twice, webhooks delivered twice. A node that runs batches
 * therefore holds an exclusive lock on `<database file>.runner-lock`, a SQLite file of its own locked by SQLite:
 * the operating system lets go of it when the process ends, even killed, so a restart never finds it stale. A
 * second such node waits for it as long as a predecessor may take to stop (`SHUTDOWN_TIMEOUT` and 5 s), trying
 * again every 250 ms, then fails to start and says what to do instead. API-only nodes (`MAX_CONCURRENT_BATCHES=0`)
 * take no lock; PostgreSQL needs none (its leases are per node), nor does an in-memory SQLite database (no other
 * process can open it).
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Clock, Data, Duration, Effect, Either, Layer } from "effect"
import { AppConfig, runsBatches } from "../Config.js"
import { sqliteFile } from "./ReadConnection.js"

/** Another process runs batches on this SQLite database. */
export class BatchesRunElsewhere extends Data.TaggedError("BatchesRunElsewhere")<{ readonly database: string }> {
  override get message() {
    return `Another process runs batches on the SQLite database ${this.database} (it holds ${lockFileOf(this.database)}). ` +
      "One process per SQLite file runs batches: start this one with MAX_CONCURRENT_BATCHES=0 to serve the API beside " +
      "it, or use PostgreSQL (DATABASE_URL) to run batches on several nodes."
  }
}

/** The lock file of a SQLite database file. */
export const lockFileOf = (database: string) => `${database}.runner-lock`

/** Whether `error` is SQLite's "database is locked" (SQLITE_BUSY or an extended code of it), at its cause. */
const isBusy = (error: unknown) => {
  const code = (error as { cause?: { code?: unknown } } | undefined)?.cause?.code
  return typeof code === "string" && code.startsWith("SQLITE_BUSY")
}

/** How often a node waiting for the lock tries again. */
const RETRY_EVERY = Duration.millis(250)

/** Holds the lock of `database` for as long as the scope lasts, once another process lets go of it within `patience`. */
const holdLock = (database: string, patience: Duration.Duration) =>
  Effect.gen(function*() {
    // Its own connection, closed with the scope: closing it (or the process ending) is what lets go of the lock.
    const lock = yield* SqliteClient.make({ filename: lockFileOf(database), disableWAL: true })
    // Tried again from a timer, not waited for by SQLite: its busy timeout would block the event loop meanwhile.
    yield* lock`PRAGMA busy_timeout = 0`
    // In exclusive locking mode a connection keeps the locks it took: the lock outlives the transaction.
    yield* lock`PRAGMA locking_mode = EXCLUSIVE`
    const take = Effect.zipRight(lock`BEGIN EXCLUSIVE`, lock`COMMIT`)
    const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(patience)
    for (let attempt = 0;; attempt++) {
      const taken = yield* Effect.either(take)
      if (Either.isRight(taken)) return
      if (!isBusy(taken.left)) return yield* Effect.die(taken.left)
      if ((yield* Clock.currentTimeMillis) >= deadline) return yield* new BatchesRunElsewhere({ database })
      if (attempt === 0) {
        yield* Effect.logWarning(
          `Another process runs batches on ${database}; waiting up to ${Duration.format(patience)} for it to stop`
        )
      }
      yield* Effect.sleep(RETRY_EVERY)
    }
  }).pipe(Effect.catchTag("SqlError", Effect.die), Effect.provide(Reactivity.layer))

/** The file of the SQLite database `sql` is on; undefined on another database, "" for an in-memory one. */
const sqliteFileOf = (sql: SqlClient.SqlClient) =>
  sql.onDialectOrElse({ sqlite: () => sqliteFile(sql), orElse: () => Effect.succeed(undefined) })

/** Takes the lock when this node runs batches on a SQLite file, for the layer's lifetime (see above). */
export const SqliteRunnerLockLive: Layer.Layer<never, BatchesRunElsewhere, SqlClient.SqlClient | AppConfig> = Layer
  .scopedDiscard(
    Effect.gen(function*() {
      const config = yield* AppConfig
      if (!runsBatches(config)) return
      const database = yield* Effect.orDie(sqliteFileOf(yield* SqlClient.SqlClient))
      if (database === undefined || database === "") return
      yield* holdLock(database, Duration.sum(config.shutdownTimeout, Duration.seconds(5)))
    })
  )
