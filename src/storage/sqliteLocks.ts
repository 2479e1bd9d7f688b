/**
 * Another process's write lock on the SQLite file (an API-only node beside the one that runs the batches, an
 * operator's `sqlite3` session, a restore), waited for from a timer instead of in SQLite's busy handler. Why:
 * better-sqlite3 waits synchronously, so a lock held for seconds froze the event loop (`/v1/health` took 4–9 s, and
 * every request and batch of the node waited with it). Between two tries the node's one connection is let go, so
 * that what does not need the lock (the readiness check, reads, statements of a transaction already begun) goes on.
 */
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import { Duration, Effect, ExecutionStrategy, Exit, Schedule, Scope, Stream } from "effect"
import { wallClock } from "./wallClock.js"

/**
 * How long SQLite itself waits for a lock, blocking: a lock held for a single write (the other node's) is waited
 * out in place, as before, without the timer's round trip.
 */
export const SQLITE_BUSY_TIMEOUT_MS = 10

/** How long a statement waits for a lock in all: then it fails as before, unavailable storage (a 503, a batch waiting). */
const LOCK_PATIENCE = Duration.seconds(5)

/** Whether `error` is SQLite's "database is locked" (SQLITE_BUSY or an extended code of it), at its cause. */
export const isBusy = (error: unknown): boolean => {
  const code = (error as { cause?: { code?: unknown } } | undefined)?.cause?.code
  return typeof code === "string" && code.startsWith("SQLITE_BUSY")
}

/** 5, 10, 20… ms apart, at most 100, until `LOCK_PATIENCE` is over. */
const lockRetries = Schedule.exponential(Duration.millis(5)).pipe(
  Schedule.either(Schedule.spaced(Duration.millis(100))),
  Schedule.upTo(LOCK_PATIENCE)
)

/**
 * `attempt`, tried again while it meets another process's lock, on the wall clock (a test's `TestClock` would stop
 * the wait); the schedule is made only then (each statement paid for it: a third more time per statement). Safe: a
 * statement that met SQLITE_BUSY did nothing.
 */
const waitingOutLocks = <A, E>(attempt: Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.catchIf(attempt, isBusy, () => Effect.retry(attempt, { while: isBusy, schedule: lockRetries }).pipe(Effect.withClock(wallClock)))

/** The connection as `reserve` lends it, for the time of `use`. */
type Reserve = Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope>

/**
 * The connection for statements outside a transaction: each try reserves it for itself (waiting for a transaction
 * under way), so that the waits between tries leave it to others.
 */
export const lockWaitingConnection = (reserve: Reserve): SqlConnection.Connection => {
  const tried = <A>(use: (connection: SqlConnection.Connection) => Effect.Effect<A, SqlError>) =>
    waitingOutLocks(Effect.scoped(Effect.flatMap(reserve, use)))
  return {
    execute: (sql, params, transformRows) => tried((c) => c.execute(sql, params, transformRows)),
    executeRaw: (sql, params) => tried((c) => c.executeRaw(sql, params)),
    executeValues: (sql, params) => tried((c) => c.executeValues(sql, params)),
    executeUnprepared: (sql, params, transformRows) => tried((c) => c.executeUnprepared(sql, params, transformRows)),
    executeStream: (sql, params, transformRows) => Stream.unwrapScoped(Effect.map(reserve, (c) => c.executeStream(sql, params, transformRows)))
  }
}

/**
 * The connection of a transaction, reserved for its whole life and begun here with `begin` (`BEGIN IMMEDIATE`, which
 * takes the write lock): a try that meets another process's lock lets the connection go until the next. The
 * client's own `begin` that follows is then taken as done. The statements after it hold the lock: they never wait.
 */
export const lockWaitingTransaction = (reserve: Reserve, begin: string): Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope> =>
  Effect.flatMap(Effect.scope, (scope) =>
    waitingOutLocks(Effect.gen(function*() {
      const attempt = yield* Scope.fork(scope, ExecutionStrategy.sequential)
      const connection = yield* Scope.extend(reserve, attempt)
      // Let go however the begin ends but begun (a defect too, thrown as the statement is prepared: the client never
      // closes an acquisition that failed).
      yield* Effect.onExit(
        Effect.suspend(() => connection.executeUnprepared(begin, [], undefined)),
        (exit) => (Exit.isSuccess(exit) ? Effect.void : Scope.close(attempt, Exit.void))
      )
      let beginSkipped = false
      return {
        ...connection,
        executeUnprepared: (sql, params, transformRows) => {
          if (sql === begin && !beginSkipped) {
            beginSkipped = true
            return Effect.succeed([])
          }
          return connection.executeUnprepared(sql, params, transformRows)
        }
      } satisfies SqlConnection.Connection
    })))
