/**
 * An upstream that takes calls and answers none (a server wedged with its socket open): its calls wait for their
 * time limit (`INFERENCE_TIMEOUT`, 10 minutes by default) before anything else says so, and a batch's window full of
 * them looked idle, without a line. Said once per stall (`upstream.stalled`, `WARN`), once calls are out and none
 * was answered for `stallAfter` (counted from the last answer, or from the first call out after none was), and its
 * end (`upstream.stall_ended`: `answered`, or `no_call_out` once none was out for `stallAfter`, after a cancel or the
 * upstream taken down) at the next look; looked at every quarter of `stallAfter`, 10 s at most. A call that ends
 * without an answer (its timeout, a lost connection) ends no stall: with a short timeout, each call made two lines,
 * tried again and again.
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

/** How a call ended: with an answer, or with none (its timeout, a lost connection). */
export type CallEnd = "answered" | "no_answer"

export interface StallWatch {
  /** A call went out (its permit granted): with none out before, the silence counts from now. */
  readonly sent: () => void
  readonly ended: (how: CallEnd) => void
}

/** Starts the watch in the current scope. */
export const startStallWatch = ({ clock, inflight, log, name, timeout }: StallWatchOptions): Effect.Effect<StallWatch, never, Scope.Scope> =>
  Effect.gen(function*() {
    const after = stallAfter(timeout)
    /** When the last call ended with an answer, or calls went out after none was (the silence's start). */
    let quietSince = clock.unsafeCurrentTimeMillis()
    /** When the last call was answered. */
    let answeredAt = Number.NEGATIVE_INFINITY
    /** When the stall said began, while one is said. */
    let stalledSince: number | undefined
    /** Since when no call is out, while a stall is said (a retry's backoff between two calls is no end). */
    let idleSince: number | undefined
    /** The stall's end, at `now`: a call answered, or none out for `after` (a cancel, the upstream taken down). */
    const endOf = (now: number): "answered" | "no_call_out" | undefined => {
      if (answeredAt > stalledSince!) return "answered"
      if (inflight() > 0) {
        idleSince = undefined
        return undefined
      }
      idleSince ??= now
      return now - idleSince >= after ? "no_call_out" : undefined
    }
    const check = Effect.suspend(() => {
      const now = clock.unsafeCurrentTimeMillis()
      if (stalledSince !== undefined) {
        const over = endOf(now)
        if (over === undefined) return Effect.void
        const silent = Math.round((answeredAt - stalledSince) / 1000)
        const how = over === "answered" ? `a call was answered, after ${silent} s without an answer` : "no call is out any more"
        stalledSince = undefined
        idleSince = undefined
        return log(Effect.annotateLogs(Effect.logInfo(`Upstream ${name}: ${how}`), { event: "upstream.stall_ended", reason: over }))
      }
      if (inflight() === 0 || now - quietSince < after) return Effect.void
      stalledSince = quietSince
      const seconds = Math.round((now - quietSince) / 1000)
      return log(Effect.annotateLogs(
        Effect.logWarning(
          `Upstream ${name}: ${inflight()} ${inflight() === 1 ? "call" : "calls"} out and none answered for ${seconds} s; each waits up to ${Duration.format(timeout)} (its timeout: INFERENCE_TIMEOUT, or the upstream's own) before it is tried again`
        ),
        { event: "upstream.stalled", inflight: inflight(), silent_s: seconds }
      ))
    })
    yield* Effect.forkScoped(Effect.repeat(check, Schedule.spaced(Duration.millis(Math.max(100, Math.min(after / 4, 10_000))))))
    return {
      sent: () => {
        if (inflight() <= 1) quietSince = clock.unsafeCurrentTimeMillis()
      },
      ended: (how) => {
        if (how !== "answered") return
        answeredAt = clock.unsafeCurrentTimeMillis()
        quietSince = answeredAt
      }
    }
  })
