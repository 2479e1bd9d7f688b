/**
 * Riding out a server that is away for a while (restarting, the connection lost, overloaded): a call that fails for
 * a reason that may pass (`CliFailure.transient`: a refused or lost connection, a timeout, a 408, 429 or 5xx) is
 * made again after about 1 s, 2 s, 4 s … and then every 30 s (±20 % jitter, so that the watchers of a restarted
 * server do not all come back at the same moment), until `retryFor` has passed since its first failure (0: never).
 * The user is told once when the trouble starts and once when it is over, not at each try. Any other failure (a 404:
 * the batch is gone; a 401) ends at once.
 */
import { Duration, Effect, Schedule } from "effect"
import { type CliFailure, failed } from "./failure.js"
import { duration } from "./progress.js"

export interface Patience {
  /** How long to keep trying, from the first failure. */
  readonly retryFor: Duration.Duration
  /** Writes a note (ending a live progress line first, when one is drawn). */
  readonly tell: (line: string) => Effect.Effect<void>
}

/** Long enough for a server's restart or a network's hiccup; short enough that a CI job does not hang for hours. */
export const DEFAULT_RETRY_FOR = Duration.minutes(10)

const backoff = Schedule.exponential("1 second").pipe(Schedule.union(Schedule.spaced("30 seconds")), Schedule.jittered)

/** `effect`, made again while it fails for a reason that may pass; `afterGivingUp` ends the message if it never works. */
export const patiently = <A, R>(effect: Effect.Effect<A, CliFailure, R>, patience: Patience, afterGivingUp: string) =>
  Effect.suspend(() => {
    const limit = Duration.toMillis(patience.retryFor)
    if (limit <= 0) return effect
    const forHowLong = duration(limit / 1000)
    let troubleSince: number | undefined
    return effect.pipe(
      Effect.tapError((e) => {
        if (e.transient === undefined || troubleSince !== undefined) return Effect.void
        troubleSince = Date.now()
        return patience.tell(`server unavailable (${e.transient}); retrying for up to ${forHowLong}…`)
      }),
      Effect.retry({ schedule: backoff, while: (e) => e.transient !== undefined && Date.now() - troubleSince! < limit }),
      Effect.tap(() => (troubleSince === undefined ? Effect.void : patience.tell("reconnected"))),
      Effect.mapError((e) =>
        e.transient === undefined ? e : failed(`${e.message}\nGave up after retrying for ${forHowLong} (--retry-for). ${afterGivingUp}`)
      )
    )
  })
