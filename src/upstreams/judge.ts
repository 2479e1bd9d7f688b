/**
 * The verdict on each attempt at one upstream (for `Upstream.ts`), feeding its state back: the adaptive limit, the
 * `Retry-After` pauses of its `Admission`, and its outages (`outage.ts`):
 *
 *   answer 2xx/4xx          final; a success grows the limit; resets the run of failures
 *   429                     overload: limit halved, a wait asked for (`Retry-After`, or when a rate limit that ran
 *                           out resets: `askedWait`) pauses the whole upstream (said at most once a minute); sent
 *                           again (see below); at the floor with no wait asked, said (`judgeLines.ts`)
 *   503                     the same, and a failure in the run
 *   408, other 5xx          a failure in the run; retried (`INFERENCE_MAX_ATTEMPTS`)
 *   timeout                 overload and a failure in the run; retried
 *   connection lost         a failure in the run; retried
 *   never connected         the upstream is down (refused, DNS, TLS, proxy)
 *   401                     when `GET /models` answers 401 too, the key is refused: down, as an outage (a key revoked
 *                           mid-batch failed every line at full speed; its trials' calls refused so keep it down);
 *                           else a refusal of that request, or model: final, with a line, after one more call (once
 *                           per request, uncounted, unsaid: a key put right as the call went out)
 *   404                     before any success on that endpoint, not OpenAI's `model_not_found`, `GET /models`
 *                           answering 404 too and `GET /v1/models` a 2xx: the base URL lacks its `/v1`, down as above
 *                           (every line of a batch failed); after successes there, not about the model, and
 *                           `GET /models`, which answered a 2xx before, answering 404 too: the server there is no
 *                           longer the one it was (a route removed, an address moved), down as above (a server
 *                           back from an outage so failed the rest of a batch in 2 s), and with it answering, the
 *                           request sent once more, uncounted (a route put back as the call went out); else final,
 *                           with a line once
 *   403, 3xx                final; a line says what to check
 *   quota spent             (`quotaSpent`: OpenAI's `insufficient_quota`) down, as an outage: no call succeeds
 *                           until credit is added; its trials' calls refused so keep it down
 *
 * A run of `OUTAGE_AFTER` requests failing at their first attempt with no success between also takes it down: an
 * outage fails new requests too, while a request failing again (a retry) is its own trouble. The run's last failure
 * waits, while other calls are out, for one of them to succeed (not an outage then), all to fail, or a probe
 * interval: failures come back fast and successes slowly. So requests that always
 * fail (their bodies make the server fail) fail after their attempts instead of taking the upstream down, even when
 * they are all a batch has left to send (a batch's last lines: a soak trial saw 39 outages in 12 minutes that way).
 * A batch whose every line fails so is told apart once it took the upstream down (`batchBlame.ts`): its run took it
 * down, another batch's request succeeded since, and its requests make a run again with none of its own succeeding
 * between: it fails on its own, and its first-attempt failures make no outage (its lines fail after their attempts,
 * the other batches go on); a run of them asks `GET /models` instead, down when that answers 5xx or nothing. Any
 * outage ends that (a poison batch took the upstream shared with other projects down 20 times a minute).
 * While it is down no call goes out: the batches using it pause (their calls wait; none is failed, and only the
 * failures before the outage was noticed count as attempts) and a probe (`GET /models`, every
 * `UPSTREAM_PROBE_INTERVAL`) puts it on trial as soon as the server answers anything but a 5xx (or a few 5xx in a
 * row: a blind trial): one call at a time, up again at the first success of a call sent on trial (one sent before,
 * answered late, says nothing of the server now), down again when the trial's failures make a run as above, or at
 * any failure on a blind trial (whose failures count for nothing: a proxy in front of a server that is down answers
 * 502 to everything) (`outage.ts`). A retry's failure does not join the run there either: the
 * requests that always fail lead the queue once it is back, and took it down again and again.
 * An overload answer is sent again without counting as an attempt when it is the overload the limit answers (it
 * halved the limit, or its call was sent before a later overload signal), and for `SPARED_OVERLOADS` more of each
 * request's refusals, each sent again once one of this node's calls has ended there (or after `SPARED_WAIT`). Any
 * other counts, with its backoff, and every one at the floor: a request refused for good (a lasting "Model is
 * overloaded") fails after its attempts.
 */
import { type Clock, Deferred, Duration, Effect, Exit, FiberId, Option } from "effect"
import { aboutTheModel, askedWait, type UpstreamFailure, type UpstreamResponse } from "../inference/answers.js"
import type { FailureKind } from "../inference/UpstreamHttpClient.js"
import { saidWithin } from "../observability/saidWithin.js"
import type { AdaptiveLimit } from "./adaptiveLimit.js"
import type { Admission, Ticket } from "./Admission.js"
import { makeBatchBlame } from "./batchBlame.js"
import { makeJudgeLines, modelNotFound, quotaSpent, statusSaying } from "./judgeLines.js"
import { makeLimitLog } from "./limitLog.js"
import type { DownKind, Outage } from "./outage.js"
import type { UpstreamSpec } from "./UpstreamSpec.js"

/** Requests failing in a row (5xx, timeouts, lost connections, with no answer between) that make an outage. */
export const OUTAGE_AFTER = 5
/**
 * A request's refusals (429, 503) sent again without counting besides those the limit answers: in a storm a request
 * may be refused in several of its waves (sent again at once after halving the limit, while the server still holds
 * the calls sent before), and those are the overload's, not the request's; beyond them, a refusal counts.
 */
const SPARED_OVERLOADS = 3

/**
 * What one attempt gave: an answer (with the headers a retry reads), or no usable answer (`answer`: an answer no
 * line can keep; `status`: one with a status past HTTP's, judged as a 5xx).
 */
export type Attempt =
  | { readonly _tag: "Response"; readonly response: UpstreamResponse; readonly headers: Record<string, string | undefined> }
  | { readonly _tag: "Failure"; readonly failure: UpstreamFailure; readonly kind: FailureKind | "answer" | "status" }

/** A 429 or 503: the server turned the call away. */
export const isRefusal = (attempt: Attempt) =>
  attempt._tag === "Response" && (attempt.response.status === 429 || attempt.response.status === 503)

/** What to do after an attempt: keep its result, send again without counting an attempt, or retry (counted). */
export type Verdict = "final" | "again" | "retry"
/** `again` once a call in flight has ended, or after `SPARED_WAIT`: a spared refusal (see the header). */
export type Judged = Verdict | "again_after_a_call"

export interface JudgeOptions {
  readonly spec: UpstreamSpec
  readonly limit: AdaptiveLimit
  readonly gate: Admission
  readonly outage: Outage
  readonly clock: Clock.Clock
  /** Longest `Retry-After` pause honoured. */
  readonly maxPause: Duration.Duration
  /** How often a down upstream is probed; also the longest a run's last failure waits for the calls still out. */
  readonly probeInterval: Duration.Duration
  /** Where a call to `endpoint` goes (named in the misrouting line). */
  readonly urlFor: (endpoint: string) => string
  /** The status `GET /models` answers now, if any (one call at a time, its answer shared by those who asked meanwhile). */
  readonly modelsStatus: Effect.Effect<number | undefined>
  /** Whether `GET /models` ever answered a 2xx. */
  readonly modelsAnsweredWell: () => boolean
  /** Whether its base URL lacks the API's version path (`GET /models` 404, `GET /v1/models` 2xx). */
  readonly versionPathMissing: Effect.Effect<boolean>
  /** Runs a log line in the upstream's own context. */
  readonly log: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

export interface Judge {
  /**
   * The verdict on attempt number `n` (1 for the first; counted attempts only) of `ticket`'s request, its call sent
   * under the limit's `generation`, on trial or not (`sentOnTrial`): at once for the usual answer (thousands a
   * second), an effect when there is more to do.
   */
  readonly judge: (
    endpoint: string,
    ticket: Ticket,
    n: number,
    attempt: Attempt,
    generation: number,
    sentOnTrial: boolean
  ) => Verdict | Effect.Effect<Judged>
  /** Takes the upstream down; the run of failures ends with it (on trial, a new one starts). */
  readonly markDown: (reason: string, kind: DownKind, by?: string) => Effect.Effect<void>
  /** A call's permit was given back: held verdicts are reached once every call out is one of them. */
  readonly released: () => void
}

export const makeJudge = (
  { clock, gate, limit, log, maxPause, modelsAnsweredWell, modelsStatus, outage, probeInterval, spec, urlFor, versionPathMissing }: JudgeOptions
): Judge => {
  /** The requests (their tickets) failing at their first attempt since the last success: the run (`currentRun`). */
  const failingInRow = new Set<Ticket>()
  /** Whether the run began on trial. */
  let runOnTrial = false
  /**
   * The run, ended first when the trial it began on has ended: a trial that no call came to for a few intervals
   * ends up without a success (`outage.ts`), and its failures counted toward the next run. (Down and a success
   * end a run themselves.)
   */
  const currentRun = () => {
    if (runOnTrial !== outage.onTrial()) {
      failingInRow.clear()
      runOnTrial = !runOnTrial
    }
    return failingInRow
  }
  // --- a run's last failure, held while other calls are out -------------------------------------------------
  /** Successes so far: a held verdict tells by it whether one came while it waited. */
  let successes = 0
  /** Verdicts held (`heldRun`), each with its call still counted in flight. */
  let holding = 0
  /** Settled when a held verdict may be reached: a success came, or every call out is held (replaced then). */
  let decided = Deferred.unsafeMake<void>(FiberId.none)
  const decide = () => {
    const settled = decided
    decided = Deferred.unsafeMake<void>(FiberId.none)
    Deferred.unsafeDone(settled, Exit.void)
  }
  /** Whose failures are their batch's own (`batchBlame.ts`). */
  const blame = makeBatchBlame(() => clock.unsafeCurrentTimeMillis())
  /** Down for `reason`; `by`: the batch whose requests made the run that took it down. */
  const markDown = (reason: string, kind: DownKind, by?: string) =>
    Effect.suspend(() => {
      if (!outage.isDown()) blame.wentDown(by)
      failingInRow.clear()
      if (holding > 0) decide() // held verdicts: it is down
      return outage.markDown(reason, kind)
    })
  /** The lines of `misconfigured` (by kind and endpoint), of pauses and of the floor, each said at most every `every` ms. */
  const due = saidWithin()
  /** The endpoints that have answered a 2xx: a 404 there is no longer taken for a base URL without its `/v1`. */
  const answeredWell = new Set<string>()
  // --- the adaptive limit ------------------------------------------------------------------------------------
  const limitLog = makeLimitLog({ name: spec.name, limit, clock, due, log })
  /**
   * The requests whose overload signal decreased the limit: a request's retries, each started under the newer
   * generation, would otherwise halve it again and again (one flaky request took 64 to 16).
   */
  const decreasedBy = new WeakSet<Ticket>()
  /** Each request's refusals sent again without counting beyond those the limit answered (`SPARED_OVERLOADS`). */
  const overloadsSpared = new WeakMap<Ticket, number>()
  /**
   * The requests sent once more after a 401 or a 404 that `GET /models` did not confirm (`onceMore`): once each (a
   * request handed back and sent again is a new one), at any attempt, the last too (a request whose call was cut when
   * its server stopped met the key put right at its second).
   */
  const triedOnceMore = new WeakSet<Ticket>()
  /**
   * A refusal `GET /models` does not confirm: a request not yet sent once more so is sent again at once, uncounted
   * (`GET /models` answering, the key or route is right now), else `final`.
   */
  const onceMore = (ticket: Ticket, sentOnTrial: boolean, final: Effect.Effect<Verdict>): Effect.Effect<Verdict> => {
    if (triedOnceMore.has(ticket)) return final
    triedOnceMore.add(ticket)
    return Effect.as(succeeded(ticket, sentOnTrial), "again" as const)
  }
  const overloaded = (ticket: Ticket, generation: number, why: string) =>
    Effect.suspend(() => {
      const before = limit.current
      // Down or on trial, a failure is the outage's, not a sign of load: the calls sent before it was noticed and
      // failing after, or the trial's one call, would otherwise halve the limit the outage found.
      if (outage.isDown() || outage.onTrial() || decreasedBy.has(ticket) || !limit.overloaded(generation)) {
        return Effect.void
      }
      decreasedBy.add(ticket)
      return limitLog.decreased(before, why)
    })
  /**
   * A success: the run of failures ends, the limit may grow; a log line when it is to be said. It ends a trial only
   * if its call was sent on trial: one sent before the outage and answered late (a loaded machine, a slow answer)
   * said nothing of the server now, and brought a server answering 503 to every call up.
   */
  const succeededNow = (ticket: Ticket, sentOnTrial: boolean): Effect.Effect<void> | undefined => {
    if (failingInRow.size > 0) failingInRow.clear()
    blame.succeeded(ticket)
    successes++
    if (holding > 0) decide()
    const upAgain = sentOnTrial ? outage.succeeded() : undefined
    if (upAgain !== undefined) return upAgain
    return limit.succeeded(gate.inflight) ? limitLog.raised() : undefined
  }
  const succeeded = (ticket: Ticket, sentOnTrial: boolean) => Effect.suspend(() => succeededNow(ticket, sentOnTrial) ?? Effect.void)
  /**
   * A failure of `ticket`'s request that an outage's calls give too (a 5xx, a 408, a timeout, a lost connection), at
   * its attempt `n`: `again` when the upstream is (now) down, else `retry` (see the header).
   */
  const failed = (ticket: Ticket, n: number, reason: string): Effect.Effect<Verdict> =>
    // On trial now, whenever its call was sent: a call sent before that fails late takes the upstream down again a
    // probe interval sooner than the trial's own would (a success sent before ends no trial: `succeededNow`).
    Effect.suspend(() => {
      if (outage.isDown()) return Effect.succeed("again" as const)
      // A trial the probe did not vouch for: its failure is the outage's (down again, the same outage; not counted).
      if (outage.onBlindTrial()) return Effect.as(markDown(reason, "failing"), "again" as const)
      // A retry's failure is its request's own trouble: it neither makes an outage nor, on trial, remakes one.
      if (n > 1) return Effect.succeed("retry" as const)
      const run = `${OUTAGE_AFTER} requests failing in a row, the last: ${reason}`
      // A batch failing on its own: its failures make no outage; a run of them asks `GET /models` instead.
      if (blame.isSuspect(ticket)) return blame.suspectFailed(OUTAGE_AFTER) ? modelsVouch(run) : Effect.succeed("retry" as const)
      if (currentRun().add(ticket).size < OUTAGE_AFTER) return Effect.succeed("retry" as const)
      if (!blame.ownRun(failingInRow)) return heldRun(run)
      failingInRow.clear() // the run was that batch's: one failure of another's would make a run with it
      return modelsVouch(run)
    })
  /** `retry` when `GET /models` answers below 500; else down (a server failing everything, or gone). */
  const modelsVouch = (reason: string): Effect.Effect<Verdict> =>
    Effect.flatMap(modelsStatus, (status) =>
      status !== undefined && status < 500
        ? Effect.succeed("retry" as const)
        : Effect.as(markDown(`${reason}; GET /models answers ${status ?? "nothing"}`, "failing"), "again" as const))
  /**
   * A run of failures long enough for an outage, while other calls are out (sent before these failures came back):
   * one of them may yet succeed. Failures come back fast and successes slowly (a 503 at once, an answer in
   * seconds), and requests that always fail took the upstream down while the others were on their way. Held until a
   * success (not an outage: the request's own failure), every call out is held too (an outage), or a probe interval
   * passes (an outage: calls that hang). On trial, one call at a time: no other is out.
   */
  const heldRun = (reason: string): Effect.Effect<Verdict> =>
    Effect.suspend(() => {
      const by = blame.batchOf(failingInRow)
      if (outage.onTrial() || gate.inflight - holding <= 1) return Effect.as(markDown(reason, "failing", by), "again" as const)
      holding++
      const seen = successes
      const decision = decided
      if (gate.inflight === holding) decide()
      // Interruptible, though a verdict is not: else neither side of the race could be cut short (a quick decision
      // waited out the sleep, and a sleep that won waited for a decision that might never come).
      return Effect.interruptible(Effect.raceFirst(Deferred.await(decision), Effect.sleep(probeInterval))).pipe(
        Effect.ensuring(Effect.sync(() => void holding--)),
        Effect.flatMap(() => {
          if (successes !== seen) return Effect.succeed("retry" as const)
          return outage.isDown() ? Effect.succeed("again" as const) : Effect.as(markDown(reason, "failing", by), "again" as const)
        })
      )
    })
  const { misconfigured, pauseFor, refusedAtFloor, unusable } = makeJudgeLines({ clock, due, gate, log, maxPause, spec, urlFor }, answeredWell)

  // --- the verdict -------------------------------------------------------------------------------------------
  const judge: Judge["judge"] = (endpoint, ticket, n, attempt, generation, sentOnTrial) => {
    if (attempt._tag === "Failure") {
      // The server's log says where the call went; the line's message does not (`Upstream.ts`).
      const reason = attempt.failure.logged ?? attempt.failure.message
      switch (attempt.kind) {
        case "connect":
          return Effect.as(markDown(reason, "unreachable"), "again")
        case "timeout":
          return Effect.zipRight(overloaded(ticket, generation, "timeout"), failed(ticket, n, reason))
        case "transport":
        case "status":
          return failed(ticket, n, reason)
        default: // an answer, unusable: not the upstream's health
          return Effect.as(Effect.zipRight(succeeded(ticket, sentOnTrial), unusable(attempt.failure)), "final")
      }
    }
    const { headers, response } = attempt
    const status = response.status
    if (quotaSpent(response)) {
      // Sent before it went down (for this or another reason), or on trial: down (again), the call kept.
      if (outage.isDown()) return Effect.succeed("again" as const)
      return Effect.as(
        markDown(`its account may make no more calls: POST ${urlFor(endpoint)} answered ${statusSaying(response)}; ` +
          "add credit", "quota"),
        "again" as const
      )
    }
    if (isRefusal(attempt)) {
      const atFloor = limit.atFloor
      const before = limit.current
      // Sent before a later overload signal: the overload that signal answered, not a new one.
      const stale = generation !== limit.generation
      const repeat = currentRun().has(ticket)
      const asked = askedWait(status, headers, clock.unsafeCurrentTimeMillis())
      let alone = false // counted at the floor, no wait asked (`refusedAtFloor`)
      return pauseFor(status, asked).pipe(
        Effect.zipRight(overloaded(ticket, generation, `status ${status}`)),
        Effect.zipRight(status === 503 ? failed(ticket, n, statusSaying(response)) : Effect.succeed<Verdict>("retry")),
        Effect.map((verdict): Judged => {
          // Sent again without counting: a call the outage resends once the upstream is back, the overload the
          // limit answers, or one of the request's few spared refusals (see the header). Any other refusal counts,
          // with its backoff: a request halves the limit only once, so one refused alone never brings it to the
          // floor, and without counting it was resent for ever.
          if (verdict === "again" || outage.isDown()) return "again"
          // On trial, a request's first 503 at its first attempt is the outage's (five requests' in a row take the
          // upstream down again); its next ones, a retry's and any 429 count: one to four requests refused for good,
          // or retries, would loop.
          if (outage.onTrial()) return status === 503 && n === 1 && !repeat ? "again" : "retry"
          if (atFloor) {
            alone = Option.isNone(asked)
            return "retry"
          }
          if (stale || limit.current < before) return "again"
          const spared = overloadsSpared.get(ticket) ?? 0
          if (spared >= SPARED_OVERLOADS) return "retry"
          overloadsSpared.set(ticket, spared + 1)
          // Refused though the limit had room and stays as it is: the limit is above what the server takes
          // (this request halved it once already). Sent again at once, it finds the same calls there.
          return "again_after_a_call"
        }),
        Effect.tap(() => (alone ? refusedAtFloor(status, response) : Effect.void))
      )
    }
    if (status === 408 || status >= 500) return failed(ticket, n, statusSaying(response))
    if (status === 401 || status === 404 || status === 403 || (status >= 300 && status < 400)) {
      // Suspended: `misconfigured` marks its line as said when called.
      const final = Effect.suspend(() => Effect.as(Effect.zipRight(succeeded(ticket, sentOnTrial), misconfigured(endpoint, response, headers)), "final" as const))
      const misrouted = status === 404 && !answeredWell.has(endpoint) && !modelNotFound(response)
      // Not one about the model (vLLM's, Ollama's words), which is its request's: a typo'd model's 404s asked
      // GET /models again and again.
      const gone = status === 404 && answeredWell.has(endpoint) && !aboutTheModel(response) && modelsAnsweredWell()
      if (status !== 401 && !misrouted && !gone) return final
      if (outage.isDown()) return Effect.succeed("again" as const) // sent before it went down, for that reason or another
      // The upstream set up wrong, not the request: down, as in an outage, so that its batches lose nothing (a key
      // revoked mid-batch failed every line at full speed, a base URL without `/v1` every line of a batch).
      const down = (reason: string, kind: DownKind) => Effect.as(markDown(reason, kind), "again" as const)
      if (status === 401) {
        return Effect.flatMap(modelsStatus, (answered): Effect.Effect<Verdict> =>
          answered === 401
            ? down(`it refuses its key: POST ${urlFor(endpoint)} and GET /models answer 401; check its key (from ${spec.keyFrom ?? "its entry"})`, "key")
            // GET /models takes the key: one that lists and may not call, or one put right as the call went out (its
            // line failed with the 401 of a key already fixed): the request is sent once more.
            : onceMore(ticket, sentOnTrial, final))
      }
      if (gone) {
        return Effect.flatMap(modelsStatus, (answered): Effect.Effect<Verdict> =>
          answered === 404
            ? down(`POST ${urlFor(endpoint)} and GET /models answer 404, where they answered before: the server at ` +
              `${spec.baseUrl} is not the one that served them (a route removed, an address moved?)`, "failing")
            // GET /models answers: the request's own 404, or a route put back as the call went out (its line failed
            // with the 404 of a route already back): the request is sent once more.
            : onceMore(ticket, sentOnTrial, final))
      }
      return Effect.flatMap(versionPathMissing, (missing): Effect.Effect<Verdict> =>
        missing
          ? down(`its base URL lacks the API's version path: POST ${urlFor(endpoint)} and GET /models answer 404, ` +
            `GET ${spec.baseUrl}/v1/models answers; set it to ${spec.baseUrl}/v1 and restart`, "path")
          : final)
    }
    if (status < 300 && !answeredWell.has(endpoint)) answeredWell.add(endpoint)
    const said = succeededNow(ticket, sentOnTrial)
    return said === undefined ? "final" : Effect.as(said, "final")
  }

  const released = () => {
    if (holding > 0 && gate.inflight === holding) decide()
  }

  return { judge, markDown, released }
}
