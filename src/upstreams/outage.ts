/**
 * An upstream's outages, for `Upstream.ts`: down (no call goes out, the batches using it pause), probed with
 * `GET /models` every `UPSTREAM_PROBE_INTERVAL`, then on trial once the probe is answered (below 500; or 5xx a few
 * times in a row: a blind trial) — one call at a time — and up again only once a call succeeds (or no call comes for
 * a few probe intervals). A probe's answer says the server is there, not that its calls work: a server that answers
 * `/models` and 503 to every call went up and down at each probe (97 lines in 140 s), sending a burst of calls each
 * time and halving its limit. Now the trial's calls fail (what takes it down again is the judge's: `judge.ts`), the
 * upstream is down again without a line (the same outage), and the probe goes on; the up line comes with the first
 * success.
 */
import { type Clock, Deferred, Duration, Effect, type Exit, type Scope } from "effect"
import type { Admission } from "./Admission.js"

/** Probe intervals a trial waits for a first call before it takes the upstream for up. */
export const IDLE_TRIAL_PROBES = 5
/** Probes answered 5xx in a row after which the upstream's calls get a trial anyway (a blind one: it may be there). */
export const FAILING_PROBES_BEFORE_TRIAL = 3

/**
 * What kind of trouble took an upstream down: unreachable (no connection), failing (its calls fail as an outage's
 * do: 5xx, timeouts), its key refused, its base URL missing the version path, its account's quota spent.
 * An outage that goes on for a kind not said yet in it says so (a server back with another key); the reasons'
 * texts vary within a kind.
 */
export type DownKind = "unreachable" | "failing" | "key" | "path" | "quota"

export interface Outage {
  /** No call goes out. */
  readonly isDown: () => boolean
  /** After a probe's answer, until a call succeeds: one call at a time, and an outage's failures take it down again. */
  readonly onTrial: () => boolean
  /**
   * On a trial the probe did not vouch for (it kept answering 5xx): a failing call says nothing new, and is the
   * outage's, not its request's.
   */
  readonly onBlindTrial: () => boolean
  /** Takes the upstream down for `reason` (said once per outage) and starts probing; nothing when it is down. */
  readonly markDown: (reason: string, kind: DownKind) => Effect.Effect<void>
  /** A call succeeded: ends a trial (the up line), or nothing; `undefined` when there is nothing to do. */
  readonly succeeded: () => Effect.Effect<void> | undefined
  /**
   * When the outage under way (down, or on trial since) began, epoch milliseconds, and the kind of trouble it was
   * last said to be; undefined when up.
   */
  readonly current: () => { readonly since: number; readonly kind: DownKind } | undefined
  /** Completes once calls may go out (at once when they may). */
  readonly awaitUp: Effect.Effect<void>
  /** Completes once it goes down. */
  readonly awaitDown: Effect.Effect<void>
}

export interface OutageOptions {
  readonly name: string
  readonly gate: Admission
  readonly probeInterval: Duration.Duration
  /** `GET /models`: its status when it answered. */
  readonly probe: Effect.Effect<Exit.Exit<number, unknown>>
  /** Runs a line or a fiber in the upstream's own log context. */
  readonly log: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

export const makeOutage = (options: OutageOptions): Effect.Effect<Outage, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { gate, log, name } = options
    const clock: Clock.Clock = yield* Effect.clock
    const scope = yield* Effect.scope
    let down = false
    let trial = false
    let downSince = 0
    let downKind: DownKind = "unreachable"
    let upSignal = yield* Deferred.make<void>()
    let downSignal = yield* Deferred.make<void>()
    yield* Deferred.succeed(upSignal, undefined)

    /** Trials in this outage: the first is said, the others only at debug level. */
    let trials = 0
    /** Which trial is on (a count of them all): an idle watch ends with its trial. */
    let trialSerial = 0
    /** Whether the trial on was started though the probe kept answering 5xx. */
    let blind = false
    /**
     * The probe answered with `status` (or kept answering 5xx: `blindly`): calls may go out, one at a time; the
     * paused batches resume.
     */
    const startTrial = (blindly: boolean, status: number) => Effect.gen(function*() {
      down = false
      trial = true
      blind = blindly
      gate.setTrial(true)
      gate.setDown(false)
      downSignal = yield* Deferred.make<void>()
      yield* Deferred.succeed(upSignal, undefined)
      // The idle watch starts before the line is logged, as probing does in `markDown`.
      yield* Effect.forkIn(Effect.interruptible(log(idleTrial(++trialSerial, gate.granted))), scope)
      // A 401 or 404 there says the server is there, not that its calls will work: said as it is.
      const answered = status < 300 ? "answers GET /models again" : `answers GET /models again, with status ${status}`
      const line = `Upstream ${name} ${blindly ? "is tried" : answered}: its calls go out one at a time until one succeeds`
      yield* Effect.annotateLogs(trials++ === 0 ? Effect.logInfo(line) : Effect.logDebug(line), "event", "upstream.trial")
    })

    /**
     * A trial that no call comes to (no batch needs the upstream, or no more: the last batch's calls failed, too few
     * in a row to take it down): after `IDLE_TRIAL_PROBES` probe intervals with no call let through (`granted` at
     * their start), none in flight and none waiting, nothing says it fails, and it is up (else its gauge would read
     * down for good). Several intervals: the batches that paused take a moment to send again. A trial call that
     * outlasts the intervals (a long generation), or calls held by a `Retry-After`, keep it on trial.
     */
    const idleTrial = (serial: number, granted: number) =>
      Effect.gen(function*() {
        for (;;) {
          yield* Effect.sleep(Duration.times(options.probeInterval, IDLE_TRIAL_PROBES))
          if (!trial || serial !== trialSerial) return
          if (gate.granted === granted && gate.inflight === 0 && gate.queued() === 0) return yield* succeeded() ?? Effect.void
          granted = gate.granted // calls came, or are still at it: watch the next intervals
        }
      })

    /**
     * The kinds of trouble this outage was said to go on for: a trial failing for a new one (an upstream back with
     * another key) says it; the same kind again only at debug level.
     */
    const saidKinds = new Set<DownKind>()
    /** Whether this outage's line about a probe answering 5xx was said (once per outage). */
    let saidProbeFails = false
    /**
     * Probes until `GET /models` answers below 500, then a trial (a 401 too: a key may call and not list, and a
     * trial's call refused with the key takes it down again, `judge.ts`). A server that answers it 5xx may be there:
     * after `FAILING_PROBES_BEFORE_TRIAL` such answers in a row its calls get a trial all the same (a gateway that
     * routes only the inference paths answers 502 there for good, and its batches stayed paused until they expired).
     * Such a trial's failing call is the outage's, sent again without counting (a proxy in front of a server that is
     * down answers 502 to everything: its batches must lose nothing).
     */
    const probing: Effect.Effect<void> = Effect.gen(function*() {
      let failingAnswers = 0
      for (;;) {
        yield* Effect.sleep(options.probeInterval)
        const answer = yield* options.probe
        if (answer._tag === "Success" && answer.value < 500) return yield* startTrial(false, answer.value)
        // In a row: no answer between says nothing is there.
        if (answer._tag === "Failure") {
          failingAnswers = 0
          // What it is now: a server killed mid-call went down "failing", and its probes find nothing there.
          downKind = "unreachable"
        }
        else if (++failingAnswers >= FAILING_PROBES_BEFORE_TRIAL) {
          if (!saidProbeFails) {
            saidProbeFails = true
            yield* Effect.logWarning(`Upstream ${name} answers GET /models with status ${answer.value}: its calls are tried instead`)
          }
          return yield* startTrial(true, answer.value)
        }
        yield* Effect.logDebug(`Upstream ${name} still down (${answer._tag === "Success" ? `status ${answer.value}` : "no answer"})`)
      }
    })

    const markDown = (reason: string, kind: DownKind) =>
      Effect.suspend(() => {
        if (down) return Effect.void
        const again = trial // the trial's calls failed: the same outage goes on
        down = true
        trial = false
        // Down first: leaving the trial lets the waiting calls out while the gate is still open.
        gate.setDown(true)
        gate.setTrial(false)
        if (!again) {
          downSince = clock.unsafeCurrentTimeMillis()
          trials = 0
          saidProbeFails = false
          saidKinds.clear()
        }
        downKind = kind
        const newKind = !saidKinds.has(kind)
        saidKinds.add(kind)
        const every = Duration.format(options.probeInterval)
        return Effect.gen(function*() {
          upSignal = yield* Deferred.make<void>()
          yield* Deferred.succeed(downSignal, undefined)
          // Probing starts before the down line is logged: a logger that throws (an embedder's) must not leave it
          // down for good.
          // Interruptible: a verdict (where an outage is noticed) runs uninterruptibly, and a fork inherits that.
          yield* Effect.forkIn(Effect.interruptible(log(probing)), scope)
          yield* log(
            again && newKind
              ? Effect.annotateLogs(
                Effect.logWarning(`Upstream ${name} is still down, for another reason (${reason}); batches using it stay paused, probing every ${every}`),
                "event",
                "upstream.still_down"
              )
              : again
              ? Effect.logDebug(`Upstream ${name} still failing after its probe answered (${reason}); probing every ${every}`)
              : Effect.annotateLogs(
                Effect.logWarning(`Upstream ${name} is down (${reason}); batches using it pause, probing every ${every}`),
                "event",
                "upstream.down"
              )
          )
        })
      })

    const succeeded = () => {
      if (!trial) return undefined
      trial = false
      gate.setTrial(false)
      const seconds = Math.round((clock.unsafeCurrentTimeMillis() - downSince) / 1000)
      return log(Effect.annotateLogs(
        Effect.logInfo(`Upstream ${name} is up again after ${seconds} s; paused batches resume`),
        { event: "upstream.up", down_s: seconds }
      ))
    }

    return {
      isDown: () => down,
      onTrial: () => trial,
      onBlindTrial: () => trial && blind,
      current: () => (down || trial ? { since: downSince, kind: downKind } : undefined),
      markDown,
      succeeded,
      awaitUp: Effect.suspend(() => Deferred.await(upSignal)),
      awaitDown: Effect.suspend(() => Deferred.await(downSignal))
    } satisfies Outage
  })
