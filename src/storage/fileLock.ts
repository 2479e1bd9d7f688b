/**
 * An exclusive lock on a file for as long as a scope lasts, taken by SQLite: a connection of its own to the file,
 * in exclusive locking mode, keeps the lock it took until it is closed. The operating system lets go of it when the
 * process ends, even killed, so a restart never finds it stale. Used for what one process at a time may do on a
 * SQLite database (`SqliteRunnerLock.ts`, `NodeIdLock.ts`).
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { Clock, Duration, Effect, Either, type Scope } from "effect"
import type { AppConfigShape } from "../Config.js"
import { sqliteFile } from "./ReadConnection.js"
import { isBusy } from "./sqliteLocks.js"
import { wallClock } from "./wallClock.js"

/**
 * The file of the SQLite database `sql` is on, which other processes may open too; undefined on another database
 * or one in memory (no other process can open it).
 */
export const sqliteFileOf = (sql: SqlClient.SqlClient): Effect.Effect<string | undefined> =>
  sql.onDialectOrElse({
    sqlite: () => Effect.map(Effect.orDie(sqliteFile(sql)), (file) => (file === "" ? undefined : file)),
    orElse: () => Effect.succeed(undefined)
  })

/**
 * How long a process waits for a lock: as long as a predecessor's orderly stop takes (`SHUTDOWN_DELAY`, `SHUTDOWN_TIMEOUT`
 * and 5 s for the handlers it cut), its release held up by nothing.
 */
export const patienceFor = (config: Pick<AppConfigShape, "shutdownDelay" | "shutdownTimeout">) =>
  Duration.sum(Duration.sum(config.shutdownDelay, config.shutdownTimeout), Duration.seconds(5))

/** How often a process waiting for a lock tries again. */
export const LOCK_RETRY_EVERY = Duration.millis(250)

/**
 * Holds the lock on `file` for as long as the scope lasts, once another process lets go of it within `patience`
 * (a predecessor stopping); `waiting` is logged when it has to wait, and `refused` is the failure when the other
 * keeps it.
 */
export const holdFileLock = <E>(
  file: string,
  patience: Duration.Duration,
  messages: { readonly waiting: string; readonly refused: () => E }
): Effect.Effect<void, E, Scope.Scope> =>
  Effect.gen(function*() {
    // Its own connection, closed with the scope: closing it (or the process ending) is what lets go of the lock.
    const lock = yield* SqliteClient.make({ filename: file, disableWAL: true })
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
      if ((yield* Clock.currentTimeMillis) >= deadline) return yield* Effect.fail(messages.refused())
      if (attempt === 0) yield* Effect.logWarning(messages.waiting)
      yield* Effect.sleep(LOCK_RETRY_EVERY)
    }
  }).pipe(Effect.catchTag("SqlError", Effect.die), Effect.provide(Reactivity.layer), Effect.withClock(wallClock))
