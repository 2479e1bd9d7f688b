/**
 * The log of a periodic task's failures in a row: the first at ERROR with its cause, then at most one line a minute
 * while they go on (how many, for how long), and one line when the task works again. Why: during a database outage
 * the heartbeat and the webhook worker fail every second, and a stack trace a second each buried every other line.
 */
import { Cause, Clock, Effect } from "effect"

/** How often a run of failures that goes on is said again. */
export const FAILURE_RUN_REMINDER_MS = 60_000

export interface FailureRun {
  /** Logs a failure of the task, as above. */
  readonly failed: (cause: Cause.Cause<unknown>) => Effect.Effect<void>
  /** Ends a run of failures, if any, with a line saying so. */
  readonly succeeded: Effect.Effect<void>
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
          return Effect.logError(`${task} failed`, cause)
        }
        if (now - saidAt < FAILURE_RUN_REMINDER_MS) return Effect.void
        saidAt = now
        const last = Cause.pretty(cause).split("\n")[0]
        return Effect.logError(`${task} still failing: ${failures} times in ${Math.round((now - since) / 1000)} s; the last: ${last}`)
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
