/**
 * The OpenAI-compatible upstreams: sends one request body to an endpoint of the upstream serving the batch's model
 * (`upstreams/UpstreamSpec.ts`: the first whose models name it, or `"*"`, among those open to the batch's project)
 * and returns the upstream's status and JSON body as they are. Each upstream's calls pass its admission
 * (`upstreams/Upstream.ts`: adaptive concurrency shared by every batch on the node, `Retry-After` pauses, outages
 * that pause instead of failing); a request's retries are `sending.ts`'s: 408/5xx, timeouts and lost connections
 * with exponential backoff and jitter, honouring `Retry-After`, never waiting past the caller's deadline;
 * interrupting the caller aborts the HTTP request.
 *
 * Each attempt is bounded in time (the upstream's `timeout`, else `INFERENCE_TIMEOUT`, from sending to the answer's
 * last byte) and in size (`INFERENCE_MAX_RESPONSE_BYTES`, refused as soon as the answer passes it). A 2xx answer
 * must be a JSON object; one that is not (HTML, empty, `null`, an array…) is an `UpstreamFailure`.
 */
import type * as HttpClient from "@effect/platform/HttpClient"
import { HttpClient as HttpClientTag } from "@effect/platform/HttpClient"
import { type ConfigError, Context, Duration, Effect, Layer, Option } from "effect"
import { AppConfig } from "../Config.js"
import type { BatchEndpoint } from "../domain/Batches.js"
import { requestId } from "../domain/Ids.js"
import { escapeLineSeparators } from "../domain/Json.js"
import { Metrics } from "../observability/Metrics.js"
import { makeFractionPicker, UpstreamCallTracing } from "../observability/upstreamCallSpans.js"
import { makeUpstream, type UpstreamState } from "../upstreams/Upstream.js"
import { upstreamSpecs } from "../upstreams/upstreamsFile.js"
import { admits, servesAnyModel, shadowedModels, type UpstreamSpec } from "../upstreams/UpstreamSpec.js"
import { type HandedBack, type UpstreamFailure, type UpstreamResponse, vouchedFor } from "./answers.js"
import { AnswerMemory } from "./answerMemory.js"
import { makeRouteTable, notReachedYet } from "./routeTable.js"
import { makeRouteWait, unroutedWarning } from "./routeWait.js"
import { bounded } from "./boundedClient.js"
import { makeSend, type SendOptions } from "./sending.js"
import * as UpstreamHttpClient from "./UpstreamHttpClient.js"

export type { AttemptsUsed, SendOptions } from "./sending.js"
export { compactJson, type HandBack, HandedBack, retryAfterMillis, UpstreamFailure, type UpstreamResponse } from "./answers.js"

/** An upstream as `GET /v1/upstreams` tells of it. */
export interface UpstreamReport extends UpstreamState {
  readonly name: string
  readonly models: ReadonlyArray<string>
  readonly servesAnyModel: boolean
}

/** The models batches may name. */
export interface ModelList {
  /** Each model with the upstream serving it (`owned_by` in `GET /v1/models`). */
  readonly data: ReadonlyArray<{ readonly id: string; readonly ownedBy: string }>
  /** False while an upstream serving any model (`"*"`) gives no list: a model not in `data` may be served too. */
  readonly complete: boolean
}

/**
 * What routes take (`project`: the batch's; an upstream's `projects` may leave it out): the upstream serving
 * `model` for `project`.
 */
export interface InferenceShape {
  readonly send: (
    endpoint: BatchEndpoint,
    body: string,
    options?: SendOptions
  ) => Effect.Effect<UpstreamResponse, UpstreamFailure | HandedBack>
  /** Every model of every upstream. */
  readonly models: Effect.Effect<ModelList>
  /** The models of the upstreams open to `project` (optional: `models` stands for it without). */
  readonly modelsOf?: (project: string) => Effect.Effect<ModelList>
  /** Completes once the upstream serving `model` is up (at once when it is); while none serves it, once one does. */
  readonly reachable: (model: string | null, project?: string) => Effect.Effect<void>
  /** Completes when the upstream serving `model` goes down, or none serves it any more (never for one that stays up). */
  readonly unreachable: (model: string | null, project?: string) => Effect.Effect<void>
  /**
   * Whether the upstream serving `model` is down now (or none serves it): what `reachable` and `unreachable` tell,
   * without waiting. Optional: without it, a batch is told its upstream went down only when `unreachable` completes.
   */
  readonly isDown?: (model: string | null, project?: string) => boolean
  /**
   * Whether the upstream serving `model` holds every call now though it is up (a `Retry-After` pause, its server's
   * queue at `max_waiting` with none of this node's calls in it): a batch running on it then gives its batch permit
   * to one that can use it.
   * Optional: never held without it.
   */
  readonly isHeld?: (model: string | null, project?: string) => boolean
  /**
   * The upstreams open to `project` (every upstream when undefined: an operator's view), each with the models it
   * serves there (as `modelsOf` gives them) and its state now (optional: none for an `Inference` that answers
   * without upstreams).
   */
  readonly upstreamsOf?: (project: string | undefined) => Effect.Effect<ReadonlyArray<UpstreamReport>>
  /** The name of the upstream serving `model` now (the metrics' `upstream` label); undefined when none does. */
  readonly upstreamName?: (model: string | null, project?: string) => string | undefined
  /**
   * The upstreams requests go to, as configured (the listening line names them); none for an `Inference` that
   * answers without one (scripted, replayed, an app's own).
   */
  readonly upstreams?: ReadonlyArray<UpstreamSpec>
}

export class Inference extends Context.Tag("Inference")<Inference, InferenceShape>() {}

/** The Inference over the configured upstreams, each with the `HttpClient` that `clientFor` gives it. */
export const makeWith = (clientFor: (spec: UpstreamSpec) => HttpClient.HttpClient) =>
  Effect.gen(function*() {
    const config = yield* AppConfig
    const specs = yield* upstreamSpecs(config)
    for (const { by, models, upstream } of shadowedModels(specs)) {
      yield* Effect.logWarning(
        `Upstream ${upstream} names ${models.map((m) => `'${m}'`).join(", ")}, which ${by.join(", ")} (before it in ` +
          `the file) name${by.length === 1 ? "s" : ""} too: the first one serves ${models.length === 1 ? "it" : "them"}, ` +
          `${upstream} never does`
      )
    }
    const routeWait = makeRouteWait({
      upstreams: () => upstreams,
      route: (model, project) => route(model, project),
      probeInterval: config.upstreamProbeInterval,
      scope: yield* Effect.scope
    })
    const listChanged = () => {
      routes.forget()
      routeWait.listChanged()
    }
    const upstreams = yield* Effect.forEach(specs, (spec) =>
      makeUpstream(spec, {
        http: clientFor(spec),
        maxResponseBytes: config.inferenceMaxResponseBytes,
        probeInterval: config.upstreamProbeInterval,
        maxPause: config.inferenceRetryMaxDelay,
        listChanged
      }))
    /** Which calls get a span (`observability/upstreamCallSpans.ts`); undefined when none does: a call then costs one test. */
    const pickTraced = makeFractionPicker((yield* UpstreamCallTracing).fraction)
    const send = makeSend({ config, route: (model, project) => route(model, project), pickTraced })

    const routes = makeRouteTable(upstreams, specs)
    const route = routes.route
    /**
     * Completes once the upstream serving `model` is up. A batch whose model no upstream serves any more (the
     * upstreams file changed since it was validated, a `"*"` upstream's list lost it) waits, as in an outage, rather
     * than fail its lines: until an upstream's list has it, the server restarts with a file that names it, or it
     * expires.
     */
    const reachable = (model: string | null, project?: string) =>
      Effect.zipRight(
        listsKnown,
        Effect.suspend(() => {
          const upstream = route(model, project)
          if (upstream !== undefined) return upstream.awaitUp
          return Effect.logWarning(unroutedWarning(model, specs, project)).pipe(
            Effect.annotateLogs("event", "batch.model_unrouted"),
            Effect.zipRight(routeWait.routed(model, project)),
            Effect.flatMap((u) => u.awaitUp)
          )
        })
      )
    /** Every upstream serving any model has had its start-up probe: their lists are known when they give one. */
    const listsKnown = Effect.forEach(upstreams, (u) => (servesAnyModel(u.spec) ? u.started : Effect.void), {
      discard: true
    })

    /** The models of the upstreams open to `project`, or of every upstream. */
    const modelsOf = (project?: string) => Effect.gen(function*() {
      const open = project === undefined ? upstreams : upstreams.filter((u) => admits(u.spec, project))
      yield* Effect.forEach(open, (u) => (servesAnyModel(u.spec) ? u.refreshListed() : Effect.void), {
        concurrency: "unbounded",
        discard: true
      })
      const data: Array<{ id: string; ownedBy: string }> = []
      const seen = new Set<string>()
      let complete = true
      for (const u of open) {
        const listed = servesAnyModel(u.spec) ? u.listed() : Option.some([])
        if (Option.isNone(listed)) complete = false
        for (const id of [...u.spec.models.filter((m) => m !== "*"), ...Option.getOrElse(listed, () => [])]) {
          if (seen.has(id)) continue
          seen.add(id)
          // A `"*"` upstream earlier in the file, never reached yet, takes the model's requests until its list is
          // known: named as theirs (the list named the later one, while every batch of the model went to it).
          const routed = route(id, project)
          data.push({ id, ownedBy: routed !== undefined && notReachedYet(routed) ? routed.spec.name : u.spec.name })
        }
      }
      return { data, complete }
    })

    const upstreamsOf = (project: string | undefined) =>
      Effect.map(modelsOf(project), ({ data }) =>
        upstreams.filter((u) => project === undefined || admits(u.spec, project)).map((u) => ({
          name: u.spec.name,
          models: data.filter((m) => m.ownedBy === u.spec.name).map((m) => m.id),
          servesAnyModel: servesAnyModel(u.spec),
          ...u.state()
        })))

    return Inference.of({
      send: vouchedFor(send),
      models: modelsOf(),
      modelsOf,
      upstreamsOf,
      reachable,
      // Routed when it runs, as reachable; a route lost (no upstream serves the model any more) is as good as down.
      unreachable: (model, project) =>
        Effect.suspend(() => {
          const upstream = route(model, project)
          return upstream === undefined ? Effect.void : Effect.raceFirst(upstream.awaitDown, routeWait.unrouted(model, project))
        }),
      // No upstream serving it is as good as down: a batch waiting for a route takes no permit meanwhile.
      isDown: (model, project) => route(model, project)?.isDown() ?? true,
      isHeld: (model, project) => route(model, project)?.admission.held() ?? false,
      upstreamName: (model, project) => route(model, project)?.spec.name,
      upstreams: specs
    })
  })

/**
 * The Inference over the configured upstreams, all through the `HttpClient` in context (tests script it), each call
 * held to its upstream's time limit and `INFERENCE_MAX_RESPONSE_BYTES` as the live client holds its own.
 */
export const make = Effect.flatMap(
  Effect.zip(HttpClientTag, AppConfig),
  ([http, config]) =>
    makeWith((spec) => bounded(http, { timeoutMs: Duration.toMillis(spec.timeout), maxBodyBytes: config.inferenceMaxResponseBytes }))
)

/**
 * `make` as a layer: the real routing, probes, retries and outage handling over an `HttpClient` you give (a test's
 * fake that answers, refuses connections, or returns 429s), where `InferenceScripted` skips all of them.
 */
export const InferenceOverHttpClient: Layer.Layer<Inference, ConfigError.ConfigError, AppConfig | HttpClient.HttpClient> =
  Layer.scoped(Inference, make)

/**
 * The configured upstreams over undici (`UpstreamHttpClient.ts`): one keep-alive dispatcher (honouring
 * `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`), a client per upstream with its time limit and `INFERENCE_MAX_RESPONSE_BYTES`.
 * Fails with a `ConfigError` when the upstreams file is wrong.
 */
export const InferenceLive: Layer.Layer<Inference, ConfigError.ConfigError, AppConfig> = Layer.scoped(
  Inference,
  Effect.gen(function*() {
    const config = yield* AppConfig
    const dispatcher = yield* UpstreamHttpClient.dispatcher
    const memory = new AnswerMemory(config.inferenceMaxBufferedBytes) // one for the node: every upstream's answers
    const untrack = (yield* Metrics).answerMemory(() => memory.used)
    yield* Effect.addFinalizer(() => Effect.sync(untrack))
    return yield* makeWith((spec) =>
      UpstreamHttpClient.make(dispatcher, {
        timeoutMs: Duration.toMillis(spec.timeout),
        maxBodyBytes: config.inferenceMaxResponseBytes,
        memory
      })
    )
  })
)

/**
 * One request as a scripted upstream sees it: the batch's endpoint, the line's body as JSON text, and the send's
 * options (its model, its attempts so far, its hand-back).
 */
export interface ScriptedRequest {
  readonly endpoint: BatchEndpoint
  readonly body: string
  readonly options: SendOptions
}

/**
 * A scripted upstream (the test layer of `Inference`), for tests and for apps that embed the service: `answer`
 * gives each request's outcome, with no network; `models`, when given, is what it lists (a batch naming another
 * model then fails validation with `model_not_found`). `scriptedAnswer` builds an answer.
 */
export const InferenceScripted = (
  answer: (request: ScriptedRequest) => Effect.Effect<UpstreamResponse, UpstreamFailure | HandedBack>,
  models?: ReadonlyArray<string>
): Layer.Layer<Inference> =>
  Layer.succeed(
    Inference,
    Inference.of({
      send: (endpoint, body, options = {}) => answer({ endpoint, body, options }),
      models: Effect.succeed({
        data: (models ?? []).map((id) => ({ id, ownedBy: "scripted" })),
        complete: models !== undefined
      }),
      reachable: () => Effect.void,
      unreachable: () => Effect.never,
      upstreamName: () => "scripted"
    })
  )

/** An answer with `status` and the JSON object `body`, as a scripted upstream gives it. */
export const scriptedAnswer = (status: number, body: object): UpstreamResponse => ({
  status,
  text: escapeLineSeparators(JSON.stringify(body)),
  json: body,
  requestId: requestId()
})
