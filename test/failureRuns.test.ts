/** A periodic task's failures in a row, logged once, then once a minute while they go on, then when it works again. */
import { expect, it } from "@effect/vitest"
import { Cause, Effect, Logger, TestClock } from "effect"
import { SqlError } from "@effect/sql/SqlError"
import { FAILURE_RUN_REMINDER_MS, makeFailureRun } from "../src/observability/failureRuns.js"

/** The lines logged (level, message, whether with a cause), and the logger that records them. */
const recorded = () => {
  const lines: Array<string> = []
  const logger = Logger.replace(Logger.defaultLogger, Logger.make(({ cause, logLevel, message }) =>
    void lines.push(`${logLevel.label} ${String(message)}${Cause.isEmpty(cause) ? "" : " +cause"}`)))
  return { lines, logger }
}

it.effect("a run of failures: the first with its cause, a reminder a minute, a line when it works again", () =>
  Effect.gen(function*() {
    const { lines, logger } = recorded()
    const run = makeFailureRun("Heartbeat")
    yield* Effect.gen(function*() {
      yield* run.succeeded // no run yet: nothing said
      for (let second = 0; second < 150; second++) {
        yield* run.failed(Cause.fail(new Error(`connection refused ${second}`)))
        yield* TestClock.adjust("1 second")
      }
      yield* run.succeeded
      yield* run.succeeded
    }).pipe(Effect.provide(logger))
    expect(FAILURE_RUN_REMINDER_MS).toBe(60_000)
    expect(lines).toEqual([
      "ERROR Heartbeat failed +cause",
      "ERROR Heartbeat still failing: 61 times in 60 s; the last: Error: connection refused 60",
      "ERROR Heartbeat still failing: 121 times in 120 s; the last: Error: connection refused 120",
      "INFO Heartbeat works again, after 150 failure(s) in 150 s"
    ])
  }))

it.effect("a run of storage faults (the database away) is said at WARN, in one line with what the driver said", () =>
  Effect.gen(function*() {
    const { lines, logger } = recorded()
    const run = makeFailureRun("Heartbeat")
    const refused = (second: number) =>
      new SqlError({ message: "Failed to execute statement", cause: Object.assign(new Error(`connect ECONNREFUSED 10.0.0.5:5432 (${second})`), { code: "ECONNREFUSED" }) })
    yield* Effect.gen(function*() {
      for (let second = 0; second < 61; second++) {
        yield* run.failed(Cause.fail(refused(second)))
        yield* TestClock.adjust("1 second")
      }
    }).pipe(Effect.provide(logger))
    expect(lines).toEqual([
      "WARN Heartbeat failed: storage unavailable (connect ECONNREFUSED 10.0.0.5:5432 (0))",
      "WARN Heartbeat still failing: 61 times in 60 s; the last: storage unavailable (connect ECONNREFUSED 10.0.0.5:5432 (60))"
    ])
  }))
