/**
 * One upstream on this node: its calls pass its `Admission` (adaptive limit, `Retry-After` pauses, load-aware
 * holding, outages), and each attempt's result is judged (`judge.ts`), feeding that state back. Also its model list
 * (`GET /models`, asked at start, by the probe and at most every 30 s on request) and its start-up report.
 */
import * as HttpBody from "@effect/platform/HttpBody"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Context, Deferred, Duration, Effect, Exit, FiberId, FiberRef, HashMap, List, LogLevel, Option, Redacted, type Scope, Tracer } from "effect"
import { identity } from "effect/Function"
import { BatchEndpoint } from "../domain/Batches.js"
import { requestId } from "../domain/Ids.js"
import { currentAnswerHold } from "../inference/answerMemory.js"
import { asJsonBody, type HandedBack, unlessHandedBack, UpstreamFailure } from "../inference/answers.js"
import { currentRequestWritten, failureKind } from "../inference/UpstreamHttpClient.js"
import { Admission, openGauge, type Permit, type Ticket } from "./Admission.js"
import { AdaptiveLimit } from "./adaptiveLimit.js"
import { type Attempt, isRefusal, makeJudge, type Verdict } from "./judge.js"
import { transportFailureText } from "./failureText.js"
import { makeLoadWatch, sameOrigin } from "./loadWatch.js"
import { type DownKind, makeOutage } from "./outage.js"
import { Metrics } from "../observability/Metrics.js"
import { upstreamSecrets, withoutSecrets } from "../observability/redaction.js"
import { listedModels, MAX_LISTED_MODELS } from "./modelList.js"
import { startStallWatch } from "./stallWatch.js"
import { startUpReport } from "./startUpReport.js"
import type { UpstreamSpec } from "./UpstreamSpec.js"

/** The longest a spared refusal (`judge.ts`) waits for a call of this node's to end before it is sent again. */
const SPARED_WAIT = Duration.seconds(1)

export interface Upstream {
  readonly spec: UpstreamSpec
  readonly admission: Admission
  /**
   * Attempt number `n` (1 for the first; counted attempts only) of `ticket`'s request, in its turn, and what to do
   * next; a traced call sends its `traceparent` along. `HandedBack` when the ticket's caller wanted the request back
   * while it waited for a permit, or after a spared refusal, while it waited to send it again (that refusal counts
   * for nothing).
   */
  readonly attempt: (endpoint: BatchEndpoint, body: string, ticket: Ticket, n: number, traceparent?: string) =>
    Effect.Effect<readonly [Attempt, Verdict], HandedBack>
  /** The model ids its `GET /models` listed last (none before it answered). */
  readonly listed: () => Option.Option<ReadonlyArray<string>>
  /** Whether its `GET /models` was ever answered (a list or not: a gateway may answer 404 there). */
  readonly modelsAnswered: () => boolean
  /** Completes once the start-up probe has had its answer (or none): its list is known if it gives one. */
  readonly started: Effect.Effect<void>
  /**
   * Asks its `GET /models` again, unless asked within `maxAgeMs` (30 s when not given) or down (its probe asks); one
   * asking at a time, the others waiting for its answer.
   */
  readonly refreshListed: (maxAgeMs?: number) => Effect.Effect<void>
  /**
   * Its list asked again for a call it answered 404 about the call's model: once the last list is `RELIST_AFTER_MS`
   * old (waiting till then: a list asked just before the server swapped its model says nothing of it).
   */
  readonly relisted: Effect.Effect<void>
  readonly isDown: () => boolean
  /** How it is now, as `GET /v1/upstreams` tells (`UpstreamState` there). */
  readonly state: () => UpstreamState
  /** Completes once it is up (at once when it is). */
  readonly awaitUp: Effect.Effect<void>
  /** Completes once it goes down. */
  readonly awaitDown: Effect.Effect<void>
}

/** An upstream's state on this node: its calls go out (`up`), are held (`paused`), go one at a time after an outage (`recovering`), or none do (`down`). */
export interface UpstreamState {
  readonly state: "up" | "paused" | "recovering" | "down"
  /** When the outage under way began (epoch milliseconds), and what kind of trouble it is. */
  readonly outage: { readonly since: number; readonly kind: DownKind } | undefined
  readonly limit: number
  readonly inflight: number
  readonly waiting: number
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
/** How often a 404 about a model may have the list asked again: once a second, however many calls it answered so. */
const RELIST_AFTER_MS = 1_000

export const makeUpstream = (spec: UpstreamSpec, options: UpstreamOptions): Effect.Effect<Upstream, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { http } = options
    const clock = yield* Effect.clock
    const scope = yield* Effect.scope
    const limit = new AdaptiveLimit(spec.minConcurrency, spec.maxConcurrency)
    let admission: Admission | undefined
    const pump = () => admission?.pump()
    const metrics = yield* Metrics
    const observeAttempt = metrics.attempts(spec.name)
    /**
     * Its own log context: lines about the upstream are not the batch's that happened to notice, nor in its log spans
     * or its trace (their `trace_id` named that batch; the probes it forks were spans of that batch's trace).
     */
    const log = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      effect.pipe(
        Effect.locally(FiberRef.currentLogAnnotations, HashMap.make(["upstream", spec.name] as [string, unknown])),
        Effect.locally(FiberRef.currentLogSpan, List.empty()),
        Effect.locallyWith(FiberRef.currentContext, Context.omit(Tracer.ParentSpan))
      )

    // What its answers must not quote back into a project's lines or the logs.
    const secrets = upstreamSecrets(Option.getOrUndefined(Option.map(spec.apiKey, Redacted.value)), spec.headers)
    const authorized = (request: HttpClientRequest.HttpClientRequest) =>
      HttpClientRequest.setHeaders(
        Option.match(spec.apiKey, {
          onNone: () => request,
          onSome: (key) => HttpClientRequest.bearerToken(request, Redacted.value(key))
        }),
        spec.headers
      )
    const gauge = yield* Option.match(spec.loadAware, {
      onNone: () => Effect.succeed(openGauge),
      onSome: ({ maxWaiting, metricsUrl }) =>
        makeLoadWatch({
          upstream: spec.name,
          metricsUrl,
          maxWaiting,
          http,
          // The key goes only where its calls go: to the base URL's own origin.
          authorize: sameOrigin(metricsUrl, spec.baseUrl) ? authorized : identity,
          changed: pump
        })
    })
    admission = new Admission(limit, clock, gauge)
    const gate = admission
    const urlFor = (endpoint: string) => `${spec.baseUrl}${endpoint.replace(/^\/v1/, "")}`
    // One request per endpoint, built at its first call: a call only adds its body.
    const templates = new Map<string, HttpClientRequest.HttpClientRequest>()
    const templateFor = (endpoint: BatchEndpoint) => {
      let template = templates.get(endpoint)
      if (template === undefined) {
        template = authorized(HttpClientRequest.post(urlFor(endpoint)).pipe(
          HttpClientRequest.setHeaders({ "content-type": "application/json", "accept-encoding": "identity" })
        ))
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
    let modelsAnswered = false
    /** Whether `GET /models` ever answered a 2xx: a 404 there since says the server is not the one it was. */
    let modelsAnsweredWell = false
    /** Settled when the `refreshListed` under way has its answer; when that began (an answer may never come). */
    let asking: Deferred.Deferred<void> | undefined
    let askedAt = 0
    const probeHeaders = authorized(HttpClientRequest.get("").pipe(HttpClientRequest.setHeader("accept-encoding", "identity"))).headers
    /** A probe's `GET` of `path` under the base URL, read by `read`: with the key, held by no answer hold, 10 s at most. */
    const probeGet = <A, E>(path: string, read: (res: HttpClientResponse.HttpClientResponse) => Effect.Effect<A, E>) =>
      Effect.locally(currentAnswerHold, undefined)(http.get(`${spec.baseUrl}${path}`, { headers: probeHeaders }).pipe(
        Effect.flatMap(read),
        Effect.timeout(Duration.min(spec.timeout, Duration.seconds(10)))
      ))
    /** Whether the list's cut was said (again once a list fits). */
    let warnedTooMany = false
    const askModels = probeGet("/models", (res) =>
      Effect.flatMap(res.text, (text) => {
        listedAt = clock.unsafeCurrentTimeMillis() // asked: not again before LIST_TTL_MS, list or not
        modelsAnswered = true
        if (res.status >= 200 && res.status < 300) modelsAnsweredWell = true
        const models = res.status === 200 ? listedModels(text) : undefined // else nothing learned
        if (models === undefined) return Effect.succeed(res.status)
        listed = Option.some(models.ids)
        options.listChanged()
        const cut = models.total > MAX_LISTED_MODELS
        const say = cut && !warnedTooMany
        warnedTooMany = cut
        return say
          ? Effect.as(log(Effect.logWarning(
            `Upstream ${spec.name} lists ${models.total} models at GET /models: the first ${MAX_LISTED_MODELS} are kept`
          )), res.status)
          : Effect.succeed(res.status)
      })).pipe(Effect.exit)

    // --- up and down -------------------------------------------------------------------------------------------
    const outage = yield* makeOutage({ name: spec.name, gate, probeInterval: options.probeInterval, probe: askModels, log })
    // Calls refused together ask once: the answer of the call in flight is theirs (not kept after: a key revoked
    // right after an answer would have failed the lines of a cached one).
    let modelsCheck: Deferred.Deferred<number | undefined> | undefined
    const modelsStatus = Effect.suspend(() => {
      if (modelsCheck !== undefined) return Deferred.await(modelsCheck)
      const check = Deferred.unsafeMake<number | undefined>(FiberId.none)
      modelsCheck = check
      return Effect.map(askModels, (answer) => (answer._tag === "Success" ? answer.value : undefined)).pipe(
        Effect.onExit((exit) => {
          modelsCheck = undefined
          return Deferred.succeed(check, Exit.isSuccess(exit) ? exit.value : undefined)
        })
      )
    })
    /**
     * Whether the base URL lacks the API's version path: its `GET /models` answers 404 and `GET /v1/models` a 2xx. Its
     * calls' 404s are then the path's, not their requests' (a gateway without `/models` answers those too).
     */
    const versionPathMissing = Effect.flatMap(modelsStatus, (status) =>
      status !== 404
        ? Effect.succeed(false)
        : probeGet("/v1/models", (res) => Effect.as(res.text, res.status >= 200 && res.status < 300)).pipe(
          Effect.orElseSucceed(() => false)
        ))
    const { judge, markDown, released } = makeJudge({
      spec,
      limit,
      gate,
      outage,
      clock,
      maxPause: options.maxPause,
      probeInterval: options.probeInterval,
      urlFor,
      log,
      modelsStatus,
      modelsAnsweredWell: () => modelsAnsweredWell,
      versionPathMissing
    })
    const stalls = yield* startStallWatch({ name: spec.name, inflight: () => gate.inflight, timeout: spec.timeout, clock, log })
    const untrack = metrics.upstream(spec.name, {
      inflight: () => gate.inflight,
      limit: () => limit.current,
      up: () => !outage.isDown() && !outage.onTrial()
    })
    yield* Effect.addFinalizer(() => Effect.sync(untrack))

    // --- one attempt -------------------------------------------------------------------------------------------
    const noAnswer = (error: Parameters<typeof failureKind>[0]): Attempt => {
      const kind = failureKind(error)
      const code = kind === "too_large" ? "upstream_response_too_large" : kind === "timeout" ? "upstream_timeout" : "upstream_unreachable"
      if (kind === "too_large" || kind === "timeout") {
        const message = kind === "too_large"
          ? `The upstream's answer is larger than ${options.maxResponseBytes} bytes (INFERENCE_MAX_RESPONSE_BYTES).`
          : `The upstream did not answer in full within ${Duration.format(spec.timeout)}.`
        return { _tag: "Failure", kind, failure: new UpstreamFailure({ code, message }) }
      }
      // The client's message names the URL (an upstream's address, a gateway's deployment ids): logged, not in the
      // line a project reads.
      const message = `Upstream request failed: ${transportFailureText(error)}.`
      return { _tag: "Failure", kind, failure: new UpstreamFailure({ code, message, logged: `Upstream request failed: ${error.message}` }) }
    }
    const answered = (res: HttpClientResponse.HttpClientResponse, text: string): Attempt => {
      // Past HTTP's statuses (600, 999): no answer to keep, as an app's own inference's is not (`checkedAnswers.ts`),
      // but the upstream's health judged as by a 5xx (retried; an outage when every call answers so).
      if (res.status > 599) {
        const message = `The upstream answered with status ${res.status}, which HTTP does not have (100–599).`
        return { _tag: "Failure", kind: "status", failure: new UpstreamFailure({ code: "invalid_upstream_response", message }) }
      }
      // An error's text only: a completion that says what a header says (a model's name) is kept as it came.
      const kept = res.status >= 200 && res.status < 300 ? text : withoutSecrets(text, secrets)
      const body = asJsonBody(res.status, kept, res.headers)
      if (body instanceof UpstreamFailure) return { _tag: "Failure", kind: "answer", failure: body }
      const response = { status: res.status, text: body.text, json: body.json, requestId: res.headers["x-request-id"] ?? requestId() }
      return { _tag: "Response", response, headers: res.headers }
    }

    /** Only the load-aware dispatch's calls say when they are written (`loadWatch.ts`): a hot path's ops spared. */
    const loadAware = Option.isSome(spec.loadAware)
    /** A permit given back (`freedRoom` false for a refused call), told to the judge (a held run may be reached). */
    const giveBack = (permit: Permit, freedRoom = true) => {
      gate.release(permit, freedRoom)
      released()
    }
    const attempt = (endpoint: BatchEndpoint, body: string, ticket: Ticket, n: number, traceparent?: string) => {
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
        // Not under `restore`: the wait is interruptible inside, and the permit must reach this fiber uninterruptibly.
        const permitted = granted === undefined ? gate.acquire(ticket) : Effect.succeed(granted)
        return Effect.flatMap(permitted, (permit) => {
          const sent = performance.now()
          const sentOnTrial = outage.onTrial()
          stalls.sent()
          const counted = loadAware ? Effect.locally(call, currentRequestWritten, permit.call.written) : call
          return Effect.flatMap(Effect.onInterrupt(restore(counted), () => Effect.sync(() => giveBack(permit))), (result) => {
            // Released even if what is told of the call throws (an embedder's metrics) or the verdict cannot be made (a
            // bug of ours): a lost permit is lost for good.
            let verdict: ReturnType<typeof judge>
            try {
              observeAttempt(ticket.model, (performance.now() - sent) / 1000)
              stalls.ended(result._tag === "Failure" && result.kind !== "answer" && result.kind !== "status" && result.kind !== "too_large" ? "no_answer" : "answered")
              verdict = judge(endpoint, ticket, n, result, permit.generation, sentOnTrial)
            } catch (defect) {
              giveBack(permit)
              return Effect.die(defect)
            }
            if (typeof verdict === "string") {
              giveBack(permit)
              return Effect.succeed([result, verdict] as const)
            }
            // Released even if the verdict dies (an embedder's logger that throws): a lost permit is lost for good.
            const judged = Effect.ensuring(verdict, Effect.sync(() => giveBack(permit, !isRefusal(result))))
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
      if (report._tag === "Down") return yield* markDown(report.reason, "unreachable")
      for (const { level, message } of report.lines) yield* Effect.logWithLevel(LogLevel.fromLiteral(level), message)
    })
    const started = yield* Deferred.make<void>()
    yield* Effect.forkIn(log(Effect.ensuring(startUp, Deferred.succeed(started, undefined))), scope)

    /** Asks `GET /models`, or waits for the ask under way: a window of calls answered 404 together asks once. */
    const ask = Effect.suspend(() => {
      if (asking !== undefined) return Deferred.await(asking)
      const answered = Deferred.unsafeMake<void>(FiberId.none)
      asking = answered
      askedAt = clock.unsafeCurrentTimeMillis()
      return Effect.asVoid(askModels).pipe(Effect.ensuring(Effect.sync(() => {
        asking = undefined
        Deferred.unsafeDone(answered, Exit.void)
      })))
    })
    const refreshListed = (maxAgeMs = LIST_TTL_MS) =>
      Effect.suspend(() => (clock.unsafeCurrentTimeMillis() - listedAt < maxAgeMs || outage.isDown() ? Effect.void : ask))
    /**
     * A list asked at `since` or after (a 404's: an ask begun before may answer with the model the server just
     * dropped; and a timer firing a millisecond early found the last list under a second old, and asked none).
     */
    const askedSince = (since: number): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (outage.isDown()) return Effect.void
        if (asking === undefined) return askedAt >= since ? Effect.void : ask
        return askedAt >= since ? Deferred.await(asking) : Effect.zipRight(Deferred.await(asking), askedSince(since))
      })

    return {
      spec,
      admission: gate,
      attempt,
      listed: () => listed,
      modelsAnswered: () => modelsAnswered,
      started: Deferred.await(started),
      refreshListed,
      relisted: Effect.suspend(() => {
        const since = clock.unsafeCurrentTimeMillis()
        // From the last ask, answered or not: a `GET /models` that times out is not asked again at once.
        const wait = Math.max(listedAt, askedAt) + RELIST_AFTER_MS - since
        return Effect.zipRight(wait > 0 ? Effect.sleep(Duration.millis(wait)) : Effect.void, askedSince(since))
      }),
      isDown: outage.isDown,
      state: () => ({
        state: outage.isDown() ? "down" : outage.onTrial() ? "recovering" : gate.held() ? "paused" : "up",
        outage: outage.current(),
        limit: limit.current,
        inflight: gate.inflight,
        waiting: gate.queued()
      }),
      awaitUp: outage.awaitUp,
      awaitDown: outage.awaitDown
    } satisfies Upstream
  })
