/**
 * The lines of an upstream's adaptive limit (for `judge.ts`): its decreases and raises, each said at most every
 * `LIMIT_LOG_INTERVAL_MS`, those not said counted in the next line; its floor at most once a minute (`warn`).
 */
import { type Clock, Effect } from "effect"
import { ONCE_A_MINUTE_MS } from "../observability/saidWithin.js"
import type { AdaptiveLimit } from "./adaptiveLimit.js"

/**
 * Changes of the limit are logged at most this often, decreases and increases each, the first after a quiet spell
 * at once (an upstream that refuses a call now and then keeps its limit moving: a soak's three nodes logged 8,600
 * such lines in 35 minutes); its floor at most once a minute (`warn`).
 */
const LIMIT_LOG_INTERVAL_MS = 10_000

export interface LimitLogOptions {
  readonly name: string
  readonly limit: AdaptiveLimit
  readonly clock: Clock.Clock
  /** Whether the line of `key` is due (said at most every `every` ms): the judge's, shared with its other lines. */
  readonly due: (key: string, now: number, every: number) => boolean
  readonly log: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

export const makeLimitLog = ({ clock, due, limit, log, name }: LimitLogOptions) => {
  let lastRaiseLog = Number.NEGATIVE_INFINITY
  let lastDecreaseLog = Number.NEGATIVE_INFINITY
  /** Decreases since the last one logged, not logged (`LIMIT_LOG_INTERVAL_MS`). */
  let unsaidDecreases = 0
  /** The lowest limit those decreases reached: the next line says it, a raise's too (it read as a rise from 128 to 9). */
  let unsaidLowest = Infinity

  /** The limit was decreased from `before` for `why`: its line, when due. */
  const decreased = (before: number, why: string): Effect.Effect<void> => {
    const now = clock.unsafeCurrentTimeMillis()
    // The limit doing its work is news, not a warning (a flaky server halved it 150 times a minute, 98 % of the
    // warnings); one at its floor, which cannot absorb more, is.
    const floor = limit.atFloor && due("floor", now, ONCE_A_MINUTE_MS)
    if (!floor && now - lastDecreaseLog < LIMIT_LOG_INTERVAL_MS) {
      unsaidDecreases++
      unsaidLowest = Math.min(unsaidLowest, limit.current)
      return Effect.void
    }
    const more = unsaidDecreases === 0 ? "" : `; ${unsaidDecreases} more since the last such line`
    unsaidDecreases = 0
    unsaidLowest = Infinity
    lastDecreaseLog = now
    const line = `Upstream ${name}: concurrency limit ${before} → ${limit.current} (${why}${more})`
    return log(floor ? Effect.logWarning(`${line}, its floor`) : Effect.logInfo(line))
  }

  /** The limit was raised: its line when due, else `undefined` (thousands of successes a second pass here). */
  const raised = (): Effect.Effect<void> | undefined => {
    const now = clock.unsafeCurrentTimeMillis()
    if (now - lastRaiseLog < LIMIT_LOG_INTERVAL_MS) return undefined
    lastRaiseLog = now
    const after = unsaidDecreases === 0
      ? ""
      : ` (after ${unsaidDecreases} decrease${unsaidDecreases === 1 ? "" : "s"} not said, down to ${unsaidLowest})`
    unsaidDecreases = 0
    unsaidLowest = Infinity
    return log(Effect.logInfo(`Upstream ${name}: concurrency limit raised to ${limit.current}${after}`))
  }

  return { decreased, raised }
}
