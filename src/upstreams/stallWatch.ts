/**
 * An upstream that takes calls and answers none (a server wedged with its socket open): its calls wait for their
 * time limit (`INFERENCE_TIMEOUT`, 10 minutes by default) before anything else says so, and a batch's window full of
 * them looked idle, without a line. Said once per stall (`upstream.stalled`, `WARN`), once calls are out and none
 * ended for `stallAfter`, and its end (`upstream.stall_ended`) at the next look after one ends or none is out; looked at every
 * quarter of `stallAfter`, 10 s at most.
 */
import { type Clock, Duration, Effect, Schedule, type Scope } from "effect"

/** A stall is said after no call ended for half the calls' time limit, 2 minutes at most (a long generation may take that). */
export const stallAfter = (timeout: Duration.Duration): number => Math.min(Duration.toMillis(timeout) / 2, 120_000)

export interface StallWatchOptions {
  readonly name: string
  /** The calls out now. */
  readonly inflight: () => number
  /** The calls' time limit. */
  readonly timeout: Duration.Duration
  readonly clock: Clock.Clock
  readonly log: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

/** Starts the watch in the current scope; `ended` is told each time a call ends, answered or not. */
export const startStallWatch = ({ clock, inflight, log, name, timeout }: StallWatchOptions): Effect.Effect<{ readonly ended: () => void }, never, Scope.Scope> =>
  Effect.gen(function*() {
    const after = stallAfter(timeout)
    let lastEnded = clock.unsafeCurrentTimeMillis()
    /** When the stall said began (the last call ended then), while one is said. */
    let stalledSince: number | undefined
    let wasIdle = true
    const check = Effect.suspend(() => {
      const now = clock.unsafeCurrentTimeMillis()
      // Ended by a call's end, or by none being out any more (cancelled, interrupted).
      const over = stalledSince === undefined ? undefined : lastEnded > stalledSince ? "answered" : inflight() === 0 ? "no_call_out" : undefined
      if (over !== undefined) {
        const how = over === "answered"
          ? `a call ended, after ${Math.round((lastEnded - stalledSince!) / 1000)} s without one`
          : "no call is out any more"
        stalledSince = undefined
        return log(Effect.annotateLogs(Effect.logInfo(`Upstream ${name}: ${how}`), { event: "upstream.stall_ended", reason: over }))
      }
      // Idle, nothing is waited for: the time counts from the first call out seen.
      if (inflight() === 0) {
        wasIdle = true
        return Effect.void
      }
      if (wasIdle) {
        wasIdle = false
        lastEnded = Math.max(lastEnded, now)
      }
      if (stalledSince !== undefined || now - lastEnded < after) return Effect.void
      stalledSince = lastEnded
      const seconds = Math.round((now - lastEnded) / 1000)
      return log(Effect.annotateLogs(
        Effect.logWarning(
          `Upstream ${name}: ${inflight()} calls out and none ended for ${seconds} s; each waits up to ${Duration.format(timeout)} (its timeout: INFERENCE_TIMEOUT, or the upstream's own) before it is tried again`
        ),
        { event: "upstream.stalled", inflight: inflight(), silent_s: seconds }
      ))
    })
    yield* Effect.forkScoped(Effect.repeat(check, Schedule.spaced(Duration.millis(Math.max(100, Math.min(after / 4, 10_000))))))
    return {
      ended: () => {
        lastEnded = clock.unsafeCurrentTimeMillis()
      }
    }
  })
