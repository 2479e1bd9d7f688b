/**
 * On SQLite, one process per database file runs batches. The node that runs them frees every lease and webhook
 * claim when it starts (`WorkLeases.releaseAfterRestart`: whatever held one before is gone), so a second one would
 * take them from the first while it works: requests sent twice, webhooks delivered twice. A node that runs batches
 * therefore holds an exclusive lock on `<database file>.runner-lock` (`fileLock.ts`: a restart never finds it
 * stale). A second such node waits for it as long as a predecessor's orderly stop takes (`SHUTDOWN_DELAY`, `SHUTDOWN_TIMEOUT` and 5 s), trying
 * again every 250 ms, then fails to start and says what to do instead. API-only nodes (`MAX_CONCURRENT_BATCHES=0`)
 * hold no lock: they only look whether one is held, to warn when none runs the batches. PostgreSQL needs none (its
 * leases are per node), nor does an in-memory SQLite database (no other process can open it).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { existsSync } from "node:fs"
import { Data, Duration, Effect, Layer } from "effect"
import { AppConfig, runsBatches } from "../Config.js"
import { holdFileLock, patienceFor, sqliteFileOf } from "./fileLock.js"

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

/**
 * Holds the lock of `database` for as long as the scope lasts, once another process lets go of it within `patience`.
 */
const holdLock = (database: string, patience: Duration.Duration) =>
  holdFileLock(lockFileOf(database), patience, {
    waiting: `Another process runs batches on ${database}; waiting up to ${Duration.format(patience)} for it to stop`,
    refused: () => new BatchesRunElsewhere({ database })
  })

/**
 * Whether a process that runs batches holds the lock of `database` now (or may: its file cannot be opened), the lock
 * taken and let go of at once, never waited for (a node that runs batches starting at that moment waits a retry,
 * 250 ms, for it). No lock file: none ever ran, and none is made here (made by this node's user, a runner of another
 * user sharing `DATA_DIR` could not open it).
 */
export const runnerHoldsLock = (database: string): Effect.Effect<boolean> =>
  !existsSync(lockFileOf(database)) ? Effect.succeed(false) : Effect.scoped(holdFileLock(lockFileOf(database), Duration.zero, { waiting: "", refused: () => "held" as const })).pipe(
    Effect.as(false),
    // Refused: held. A lock file that cannot be opened at all says nothing either way: no warning, no failed start.
    Effect.catchAllCause(() => Effect.succeed(true))
  )

/** Said by an API-only node that finds no process running batches on its SQLite file: its batches would sit unsaid. */
const noRunnerLine = (database: string) =>
  `No process runs batches on ${database} now (none holds ${lockFileOf(database)}): batches created here wait until ` +
  "one starts on it with MAX_CONCURRENT_BATCHES of 1 or more"

/**
 * Takes the lock when this node runs batches on a SQLite file, for the layer's lifetime (see above); an API-only
 * node warns when no process holds it.
 */
export const SqliteRunnerLockLive: Layer.Layer<never, BatchesRunElsewhere, SqlClient.SqlClient | AppConfig> = Layer
  .scopedDiscard(
    Effect.gen(function*() {
      const config = yield* AppConfig
      const database = yield* sqliteFileOf(yield* SqlClient.SqlClient)
      if (database === undefined) return
      if (runsBatches(config)) return yield* holdLock(database, patienceFor(config))
      if (!(yield* runnerHoldsLock(database))) {
        yield* Effect.logWarning(noRunnerLine(database)).pipe(Effect.annotateLogs("event", "server.no_batch_runner"))
      }
    })
  )
