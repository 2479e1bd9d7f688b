/**
 * Another process's write lock on the SQLite file (an API-only node beside the one that runs the batches, an
 * operator's `sqlite3` session, a restore), waited for from a timer instead of in SQLite's busy handler. Why:
 * better-sqlite3 waits synchronously, so a lock held for seconds froze the event loop (`/v1/health` took 4–9 s, and
 * every request and batch of the node waited with it).
 */
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { Duration, Effect, Schedule } from "effect"
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
 * A statement that met another process's lock, tried again once it may be free, on the wall clock (a test's
 * `TestClock` would stop the wait). Safe: a statement that met SQLITE_BUSY did nothing (the write lock is taken at
 * `BEGIN IMMEDIATE`; a COMMIT that met it may be tried again, SQLite's documentation says), and the connection stays
 * reserved meanwhile, so nothing else runs on it in between.
 */
const waitingOutLocks = <A, E>(statement: Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.retry(statement, { while: isBusy, schedule: lockRetries }).pipe(Effect.withClock(wallClock))

/** `connection`, whose statements wait for another process's lock without blocking the event loop. */
export const waitOutLocks = (connection: SqlConnection.Connection): SqlConnection.Connection => ({
  ...connection,
  execute: (sql, params, transformRows) => waitingOutLocks(connection.execute(sql, params, transformRows)),
  executeRaw: (sql, params) => waitingOutLocks(connection.executeRaw(sql, params)),
  executeValues: (sql, params) => waitingOutLocks(connection.executeValues(sql, params)),
  executeUnprepared: (sql, params, transformRows) => waitingOutLocks(connection.executeUnprepared(sql, params, transformRows))
})
