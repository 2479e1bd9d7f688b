/**
 * The log of a periodic task's failures in a row: the first with its cause (`logFailure`), then at most one line a minute
 * while they go on (how many, for how long), and one line when the task works again. Why: during a database outage
 * the heartbeat and the webhook worker fail every second, and a stack trace a second each buried every other line.
 */
import { Cause, Clock, Effect } from "effect"
import { describeStorageFault, storageFault } from "../storage/Faults.js"

/** How often a run of failures that goes on is said again. */
export const FAILURE_RUN_REMINDER_MS = 60_000

export interface FailureRun {
  /** Logs a failure of the task, as above. */
  readonly failed: (cause: Cause.Cause<unknown>) => Effect.Effect<void>
  /** Ends a run of failures, if any, with a line saying so. */
  readonly succeeded: Effect.Effect<void>
}

/**
 * A task's failure, `message` its line: a storage fault (the database away, a full disk), which the server rides
 * out, at WARN in one line saying what the driver said (the cause, its stack repeated at each layer it went
 * through, ~15 KB, at debug level); anything else at ERROR with its cause.
 */
export const logFailure = (message: string, cause: Cause.Cause<unknown>): Effect.Effect<void> => {
  const fault = storageFault(cause)
  if (fault === undefined) return Effect.logError(message, cause)
  return Effect.zipRight(Effect.logWarning(`${message}: storage ${describeStorageFault(fault, cause)}`), Effect.logDebug(message, cause))
}

/** The failure log of `task` ("Heartbeat": "Heartbeat failed", "Heartbeat works again…"). */
export const makeFailureRun = (task: string): FailureRun => {
  let failures = 0
  let since = 0
  let saidAt = 0
  return {
    failed: (cause) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        if (failures++ === 0) {
          since = saidAt = now
          return logFailure(`${task} failed`, cause)
        }
        if (now - saidAt < FAILURE_RUN_REMINDER_MS) return Effect.void
        saidAt = now
        const fault = storageFault(cause)
        const last = fault === undefined ? Cause.pretty(cause).split("\n")[0] : `storage ${describeStorageFault(fault, cause)}`
        const line = `${task} still failing: ${failures} times in ${Math.round((now - since) / 1000)} s; the last: ${last}`
        return fault === undefined ? Effect.logError(line) : Effect.logWarning(line)
      }),
    succeeded: Effect.suspend(() => {
      if (failures === 0) return Effect.void
      const n = failures
      failures = 0
      return Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.logInfo(`${task} works again, after ${n} failure(s) in ${Math.round((now - since) / 1000)} s`))
    })
  }
}
