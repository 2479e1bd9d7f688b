/**
 * One upstream on this node: its calls pass its `Admission` (adaptive limit, `Retry-After` pauses, load-aware
 * holding, outages), and each attempt's result is judged here, feeding that state back:
 *
 *   answer 2xx/4xx          final; a success grows the limit; resets the run of failures
 *   429                     overload: limit halved, `Retry-After` pauses the whole upstream; sent again (see below)
 *   503                     the same, and a failure in the run
 *   408, other 5xx          a failure in the run; retried (`INFERENCE_MAX_ATTEMPTS`)
 *   timeout                 overload and a failure in the run; retried
 *   connection lost         a failure in the run; retried
 *   never connected         the upstream is down (refused, DNS, TLS, proxy)
 *
 * A run of failures of `OUTAGE_AFTER` different requests with no success between also takes it down; one request's
 * own retries count once, so a request that keeps failing alone (its body makes the server fail) fails after its
 * attempts instead of taking the upstream down again and again. While it is down no call goes out: the batches using
 * it pause (their calls wait; none is failed, and only the failures before the outage was noticed count as attempts)
 * and a probe (`GET /models`, every `UPSTREAM_PROBE_INTERVAL`) puts it on trial as soon as the server answers
 * anything but a 5xx: one call at a time, up again at the first success, down again at a failure (`outage.ts`).
 * An overload answer is sent again without counting as an attempt when it is the overload the limit answers (it
 * halved the limit, or its call was sent before a later overload signal), and for `SPARED_OVERLOADS` more of each
 * request's refusals, each sent again once one of this node's calls has ended there (or after `SPARED_WAIT`). Any
 * other counts, with its backoff, and every one at the floor: a request refused for good (a spent quota) fails
 * after its attempts.
 */
import * as HttpBody from "@effect/platform/HttpBody"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Deferred, Duration, Effect, FiberRef, HashMap, List, LogLevel, Option, Redacted, type Scope } from "effect"
import { BatchEndpoint } from "../domain/Batches.js"
import { requestId } from "../domain/Ids.js"
import { currentAnswerHold } from "../inference/answerMemory.js"
import { asJsonBody, type HandedBack, retryAfterMillis, unlessHandedBack, UpstreamFailure, type UpstreamResponse } from "../inference/answers.js"
import { type FailureKind, failureKind } from "../inference/UpstreamHttpClient.js"
import { Admission, openGauge, type Ticket } from "./Admission.js"
import { AdaptiveLimit } from "./adaptiveLimit.js"
import { makeLoadWatch } from "./loadWatch.js"
import { makeOutage } from "./outage.js"
import { Metrics } from "../observability/Metrics.js"
import { startUpReport } from "./startUpReport.js"
import type { UpstreamSpec } from "./UpstreamSpec.js"

/** Requests failing in a row (5xx, timeouts, lost connections, with no answer between) that make an outage. */
export const OUTAGE_AFTER = 5
/**
 * A request's refusals (429, 503) sent again without counting besides those the limit answers: in a storm a request
 * may be refused in several of its waves (sent again at once after halving the limit, while the server still holds
 * the calls sent before), and those are the overload's, not the request's; beyond them, a refusal counts.
 */
const SPARED_OVERLOADS = 3
/** The longest a spared refusal waits for a call of this node's to end before it is sent again. */
const SPARED_WAIT = Duration.seconds(1)
/** Increases of the limit are logged at most this often (decreases always). */
const RAISE_LOG_INTERVAL_MS = 1000

/** What one attempt gave: an answer (with the headers a retry reads), or no usable answer. */
export type Attempt =
  | { readonly _tag: "Response"; readonly response: UpstreamResponse; readonly headers: Record<string, string | undefined> }
  | { readonly _tag: "Failure"; readonly failure: UpstreamFailure; readonly kind: FailureKind | "answer" }

/** A 429 or 503: the server turned the call away. */
const isRefusal = (attempt: Attempt) =>
  attempt._tag === "Response" && (attempt.response.status === 429 || attempt.response.status === 503)

/** What to do after an attempt: keep its result, send again without counting an attempt, or retry (counted). */
export type Verdict = "final" | "again" | "retry"
/** `again` once a call in flight has ended, or after `SPARED_WAIT`: a spared refusal (see the header). */
type Judged = Verdict | "again_after_a_call"

export interface Upstream {
  readonly spec: UpstreamSpec
  readonly admission: Admission
  /**
   * One attempt, in `ticket`'s turn, and what to do next; a traced call sends its `traceparent` along. `HandedBack`
   * when the ticket's caller wanted the request back while it waited for a permit, or after a spared refusal, while
   * it waited to send it again (that refusal counts for nothing).
   */
  readonly attempt: (endpoint: BatchEndpoint, body: string, ticket: Ticket, traceparent?: string) =>
    Effect.Effect<readonly [Attempt, Verdict], HandedBack>
  /** The model ids its `GET /models` listed last (none before it answered). */
  readonly listed: () => Option.Option<ReadonlyArray<string>>
  /** Completes once the start-up probe has had its answer (or none): its list is known if it gives one. */
  readonly started: Effect.Effect<void>
  /** Asks its `GET /models` again (at most every 30 s). */
  readonly refreshListed: Effect.Effect<void>
  readonly isDown: () => boolean
  /** Completes once it is up (at once when it is). */
  readonly awaitUp: Effect.Effect<void>
  /** Completes once it goes down. */
  readonly awaitDown: Effect.Effect<void>
}

export interface UpstreamOptions {
  readonly http: HttpClient.HttpClient
  readonly maxResponseBytes: number
  readonly probeInterval: Duration.Duration
  /** Longest `Retry-After` pause honoured. */
  readonly maxPause: Duration.Duration
  /** Told when its `GET /models` gave a (new) list: routes by model may change. */
  readonly listChanged: () => void
}

const LIST_TTL_MS = 30_000

export const makeUpstream = (spec: UpstreamSpec, options: UpstreamOptions): Effect.Effect<Upstream, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { http } = options
    const clock = yield* Effect.clock
    const scope = yield* Effect.scope
    const limit = new AdaptiveLimit(spec.minConcurrency, spec.maxConcurrency)
    let admission: Admission | undefined
    const pump = () => admission?.pump()
    const gauge = yield* Option.match(spec.loadAware, {
      onNone: () => Effect.succeed(openGauge),
      onSome: ({ maxWaiting, metricsUrl }) => makeLoadWatch({ upstream: spec.name, metricsUrl, maxWaiting, http, changed: pump })
    })
    admission = new Admission(limit, clock, gauge)
    const gate = admission
    const metrics = yield* Metrics
    const observeAttempt = metrics.attempts(spec.name)
    /** Its own log context: lines about the upstream are not the batch's that happened to notice (nor its spans). */
    const log = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      effect.pipe(
        Effect.locally(FiberRef.currentLogAnnotations, HashMap.make(["upstream", spec.name] as [string, unknown])),
        Effect.locally(FiberRef.currentLogSpan, List.empty())
      )

    const authorized = (request: HttpClientRequest.HttpClientRequest) =>
      HttpClientRequest.setHeaders(
        Option.match(spec.apiKey, {
          onNone: () => request,
          onSome: (key) => HttpClientRequest.bearerToken(request, Redacted.value(key))
        }),
        spec.headers
      )
    const urlFor = (endpoint: string) => `${spec.baseUrl}${endpoint.replace(/^\/v1/, "")}`
    // One request per endpoint, built at its first call: a call only adds its body.
    const templates = new Map<string, HttpClientRequest.HttpClientRequest>()
    const templateFor = (endpoint: BatchEndpoint) => {
      let template = templates.get(endpoint)
      if (template === undefined) {
        template = authorized(HttpClientRequest.post(urlFor(endpoint)).pipe(HttpClientRequest.setHeader("content-type", "application/json")))
        templates.set(endpoint, template)
      }
      return template
    }

    /**
     * `GET /models`, listing what it answered when it could (`None` when it did not answer at all). The upstream's
     * own call, not a request's, though a request's call may set it off: its answer is no request's to hold.
     */
    let listed = Option.none<ReadonlyArray<string>>()
    let listedAt = 0
    const modelsRequest = http.get(`${spec.baseUrl}/models`, { headers: authorized(HttpClientRequest.get("")).headers })
    const askModels = Effect.locally(currentAnswerHold, undefined)(modelsRequest.pipe(
      Effect.flatMap((res) =>
        Effect.map(res.text, (text) => {
          listedAt = clock.unsafeCurrentTimeMillis() // asked: not again before LIST_TTL_MS, list or not
          if (res.status === 200) {
            try {
              const data = JSON.parse(text)?.data
              if (Array.isArray(data)) {
                listed = Option.some(data.flatMap((m) => (typeof m?.id === "string" ? [m.id as string] : [])))
                options.listChanged()
              }
            } catch {
              // not a model list: nothing learned
            }
          }
          return res.status
        })
      ),
      Effect.timeout(Duration.min(spec.timeout, Duration.seconds(10))),
      Effect.exit
    ))

    // --- up and down -------------------------------------------------------------------------------------------
    const outage = yield* makeOutage({ name: spec.name, gate, probeInterval: options.probeInterval, probe: askModels, log })
    /** The requests (their tickets: one per request, its retries included) failing since the last success. */
    const failingInRow = new Set<Ticket>()
    /** Takes the upstream down; the run of failures ends with it (on trial, a new one starts). */
    const markDown = (reason: string) =>
      Effect.suspend(() => {
        failingInRow.clear()
        return outage.markDown(reason)
      })
    const untrack = metrics.upstream(spec.name, {
      inflight: () => gate.inflight,
      limit: () => limit.current,
      up: () => !outage.isDown() && !outage.onTrial()
    })
    yield* Effect.addFinalizer(() => Effect.sync(untrack))

    // --- the adaptive limit ------------------------------------------------------------------------------------
    let lastRaiseLog = 0
    /**
     * The requests whose overload signal decreased the limit: a request's retries, each started under the newer
     * generation, would otherwise halve it again and again (one flaky request took 64 to 16).
     */
    const decreasedBy = new WeakSet<Ticket>()
    /** Each request's refusals sent again without counting beyond those the limit answered (`SPARED_OVERLOADS`). */
    const overloadsSpared = new WeakMap<Ticket, number>()
    const overloaded = (ticket: Ticket, generation: number, why: string) =>
      Effect.suspend(() => {
        const before = limit.current
        // Down or on trial, a failure is the outage's, not a sign of load: the calls sent before it was noticed and
        // failing after, or the trial's one call, would otherwise halve the limit the outage found.
        if (outage.isDown() || outage.onTrial() || decreasedBy.has(ticket) || !limit.overloaded(generation)) {
          return Effect.void
        }
        decreasedBy.add(ticket)
        return log(Effect.logWarning(`Upstream ${spec.name}: concurrency limit ${before} → ${limit.current} (${why})`))
      })
    /** A success: the run of failures ends, the limit may grow; a log line when it is to be said. */
    const succeededNow = (): Effect.Effect<void> | undefined => {
      if (failingInRow.size > 0) failingInRow.clear()
      const upAgain = outage.succeeded()
      if (upAgain !== undefined) return upAgain
      if (!limit.succeeded(gate.inflight)) return undefined
      const now = clock.unsafeCurrentTimeMillis()
      if (limit.current < limit.ceiling && now - lastRaiseLog < RAISE_LOG_INTERVAL_MS) return undefined
      lastRaiseLog = now
      return log(Effect.logInfo(`Upstream ${spec.name}: concurrency limit raised to ${limit.current}`))
    }
    const succeeded = Effect.suspend(() => succeededNow() ?? Effect.void)
    /** A failure of `ticket`'s request in the run; `again` when the upstream is (now) down, else `retry`. */
    const failedInRow = (ticket: Ticket, reason: string): Effect.Effect<Verdict> =>
      Effect.suspend(() => {
        if (outage.isDown()) return Effect.succeed("again" as const)
        if (failingInRow.add(ticket).size < OUTAGE_AFTER) return Effect.succeed("retry" as const)
        return Effect.as(markDown(`${OUTAGE_AFTER} requests failing in a row, the last: ${reason}`), "again" as const)
      })
    const pauseFor = (headers: Record<string, string | undefined>) =>
      Option.match(retryAfterMillis(headers, clock.unsafeCurrentTimeMillis()), {
        onNone: () => Effect.void,
        onSome: (ms) =>
          gate.pauseUntil(clock.unsafeCurrentTimeMillis() + Math.min(ms, Duration.toMillis(options.maxPause)))
      })

    // --- one attempt -------------------------------------------------------------------------------------------
    const reported404 = new Set<string>()
    const answeredWell = new Set<string>()
    /** A 404 before any success on that endpoint: most likely a base URL without its `/v1`; said once. */
    const misrouted = (endpoint: string, response: UpstreamResponse) => {
      const code = (response.json as { error?: { code?: unknown } })?.error?.code
      if (answeredWell.has(endpoint) || reported404.has(endpoint) || code === "model_not_found") return Effect.void
      reported404.add(endpoint)
      return log(Effect.logError(
        `Upstream ${spec.name} answered 404 to POST ${urlFor(endpoint)}: it does not serve that path. Check its base ` +
          `URL (${spec.baseUrl}): it must include the API's version path, as in http://host:8000/v1.`
      ))
    }

    /** The verdict on an attempt: at once for the usual answer (thousands a second), an effect when there is more to do. */
    const judge = (endpoint: string, ticket: Ticket, attempt: Attempt, generation: number): Verdict | Effect.Effect<Judged> => {
      if (attempt._tag === "Failure") {
        switch (attempt.kind) {
          case "connect":
            return Effect.as(markDown(attempt.failure.message), "again")
          case "timeout":
            return Effect.zipRight(overloaded(ticket, generation, "timeout"), failedInRow(ticket, attempt.failure.message))
          case "transport":
            return failedInRow(ticket, attempt.failure.message)
          default:
            return Effect.as(succeeded, "final") // an answer, unusable: not the upstream's health
        }
      }
      const { headers, response } = attempt
      const status = response.status
      if (isRefusal(attempt)) {
        const atFloor = limit.atFloor
        const before = limit.current
        // Sent before a later overload signal: the overload that signal answered, not a new one.
        const stale = generation !== limit.generation
        const repeat = failingInRow.has(ticket)
        return pauseFor(headers).pipe(
          Effect.zipRight(overloaded(ticket, generation, `status ${status}`)),
          Effect.zipRight(status === 503 ? failedInRow(ticket, "status 503") : Effect.succeed<Verdict>("retry")),
          Effect.map((verdict): Judged => {
            // Sent again without counting: a call the outage resends once the upstream is back, the overload the
            // limit answers, or one of the request's few spared refusals (see the header). Any other refusal counts,
            // with its backoff: a request halves the limit only once, so one refused alone never brings it to the
            // floor, and without counting it was resent for ever.
            if (verdict === "again" || outage.isDown()) return "again"
            // On trial, a request's first 503 is the outage's (five requests' in a row take the upstream down
            // again); its next ones, and any 429, count: one to four requests refused for good would loop.
            if (outage.onTrial()) return status === 503 && !repeat ? "again" : "retry"
            if (atFloor) return "retry"
            if (stale || limit.current < before) return "again"
            const spared = overloadsSpared.get(ticket) ?? 0
            if (spared >= SPARED_OVERLOADS) return "retry"
            overloadsSpared.set(ticket, spared + 1)
            // Refused though the limit had room and stays as it is: the limit is above what the server takes
            // (this request halved it once already). Sent again at once, it finds the same calls there.
            return "again_after_a_call"
          })
        )
      }
      if (status === 408 || status >= 500) return failedInRow(ticket, `status ${status}`)
      if (status === 404) return Effect.as(Effect.zipRight(succeeded, misrouted(endpoint, response)), "final" as const)
      if (status < 300 && !answeredWell.has(endpoint)) answeredWell.add(endpoint)
      const log = succeededNow()
      return log === undefined ? "final" : Effect.as(log, "final")
    }

    const noAnswer = (error: Parameters<typeof failureKind>[0]): Attempt => {
      const kind = failureKind(error)
      const message = kind === "too_large"
        ? `The upstream's answer is larger than ${options.maxResponseBytes} bytes (INFERENCE_MAX_RESPONSE_BYTES).`
        : kind === "timeout"
        ? `The upstream did not answer in full within ${Duration.format(spec.timeout)}.`
        : `Upstream request failed: ${error.message}`
      const code = kind === "too_large" ? "upstream_response_too_large" : kind === "timeout" ? "upstream_timeout" : "upstream_unreachable"
      return { _tag: "Failure", kind, failure: new UpstreamFailure({ code, message }) }
    }
    const answered = (res: HttpClientResponse.HttpClientResponse, text: string): Attempt => {
      const body = asJsonBody(res.status, text, res.headers)
      if (body instanceof UpstreamFailure) return { _tag: "Failure", kind: "answer", failure: body }
      const response = { status: res.status, text: body.text, json: body.json, requestId: res.headers["x-request-id"] ?? requestId() }
      return { _tag: "Response", response, headers: res.headers }
    }

    const release = Effect.sync(() => gate.release())
    const releaseOnInterrupt = () => release
    const attempt = (endpoint: BatchEndpoint, body: string, ticket: Ticket, traceparent?: string) => {
      const template = traceparent === undefined ? templateFor(endpoint) : HttpClientRequest.setHeader(templateFor(endpoint), "traceparent", traceparent)
      const request = HttpClientRequest.setBody(template, HttpBody.raw(body))
      const call = Effect.matchEffect(http.execute(request), {
        onFailure: (error) => Effect.succeed(noAnswer(error)),
        onSuccess: (res) =>
          Effect.match(res.text, { onFailure: noAnswer, onSuccess: (text) => answered(res, text) })
      })
      // The permit is given back however the call ends; the verdict is reached before, while the call still counts.
      // Only the wait for a permit, the call itself and a spared refusal's wait are interruptible: the release on
      // interruption is in place before the call starts, and a verdict (which may take the upstream down) always
      // runs to its end.
      return Effect.uninterruptibleMask((restore) => {
        const granted = gate.tryAcquire(ticket) // the usual case: a permit at once, no effect to wait on
        const permit = granted === undefined ? restore(unlessHandedBack(gate.acquire(ticket), ticket.handBack, () => gate.release())) : Effect.succeed(granted)
        return Effect.flatMap(permit, (generation) => {
          const sent = performance.now()
          return Effect.flatMap(Effect.onInterrupt(restore(call), releaseOnInterrupt), (result) => {
            observeAttempt(ticket.model, (performance.now() - sent) / 1000)
            const verdict = judge(endpoint, ticket, result, generation)
            if (typeof verdict === "string") {
              gate.release()
              return Effect.succeed([result, verdict] as const)
            }
            // Released even if the verdict dies (an embedder's logger that throws): a lost permit is lost for good.
            const judged = Effect.ensuring(verdict, Effect.sync(() => gate.release(!isRefusal(result))))
            return Effect.flatMap(judged, (v) => {
              if (v !== "again_after_a_call") return Effect.succeed([result, v] as const)
              // At most SPARED_WAIT: this node's calls say nothing of other clients' at the server.
              const room = Effect.race(gate.callEnded(), Effect.sleep(SPARED_WAIT))
              return Effect.as(restore(unlessHandedBack(room, ticket.handBack)), [result, "again"] as const)
            })
          })
        })
      })
    }

    // --- start-up probe ----------------------------------------------------------------------------------------
    const startUp = Effect.gen(function*() {
      const report = startUpReport(spec, yield* askModels, listed)
      if (report._tag === "Down") return yield* markDown(report.reason)
      for (const { level, message } of report.lines) yield* Effect.logWithLevel(LogLevel.fromLiteral(level), message)
    })
    const started = yield* Deferred.make<void>()
    yield* Effect.forkIn(log(Effect.ensuring(startUp, Deferred.succeed(started, undefined))), scope)

    return {
      spec,
      admission: gate,
      attempt,
      listed: () => listed,
      started: Deferred.await(started),
      refreshListed: Effect.suspend(() =>
        clock.unsafeCurrentTimeMillis() - listedAt < LIST_TTL_MS || outage.isDown() ? Effect.void : Effect.asVoid(askModels)
      ),
      isDown: outage.isDown,
      awaitUp: outage.awaitUp,
      awaitDown: outage.awaitDown
    } satisfies Upstream
  })
