/** Waiting for a time of the clock (a batch's `expires_at`), not for a span: see `untilClockReads`. */
import { Clock, Duration, Effect } from "effect"

/** The longest sleep between two readings of the clock. */
const STEP_MS = 60_000

/**
 * Completes once the clock reads `atMs` (or later): slept in steps of at most a minute, the clock read again after
 * each. Why: a sleep runs on the monotonic clock, so a wall clock stepped forward (NTP, a VM resumed: Linux's
 * monotonic clock does not count a suspend) left a batch running past its `expires_at` (stepped 25 h ahead, it
 * completed an hour after it, no line expired).
 */
export const untilClockReads = (atMs: number): Effect.Effect<void> =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    now >= atMs ? Effect.void : Effect.zipRight(Effect.sleep(Duration.millis(Math.min(atMs - now, STEP_MS))), untilClockReads(atMs)))
