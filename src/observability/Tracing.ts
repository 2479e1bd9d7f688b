/**
 * OpenTelemetry traces, exported over OTLP/HTTP: on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and then configured by the standard `OTEL_*` variables (read here with
 * Effect's `Config`, so a wrong value stops the start with `Invalid configuration: …`). Off, nothing is built at all:
 * no OpenTelemetry module is even loaded (they are imported when the layer is built), and the code on the request path
 * only tests a constant.
 *
 * What is traced:
 * - every HTTP request, by `@effect/platform`'s server middleware (it continues an incoming W3C `traceparent`, or
 *   B3); here the span is named `{method} {route}` (`GET /v1/batches/:batch_id`) once the router has matched, and an
 *   incoming `traceparent` whose sampled flag is off is honoured;
 * - a batch's work on this node: a root span `BatchRunner.batch` (`batch.id`) per drive, linked to the span that
 *   started it (the create or cancel request), with the phases `BatchRunner.validate`, `BatchRunner.run` (one per
 *   run of its slices) and `BatchRunner.finish` under it, and the storage spans under those;
 * - upstream calls, one CLIENT span per call (retries included, as the GenAI conventions ask), named
 *   `{gen_ai.operation.name} {gen_ai.request.model}` and attributed by them: only a fraction of the calls
 *   (`TRACE_UPSTREAM_CALLS`, default 1 % — or all with `OTEL_TRACES_SAMPLER=always_on`), chosen before any span is
 *   made, so the calls that are not traced cost one test of a counter. A traced call carries its `traceparent` to the
 *   upstream (vLLM, for one, continues it).
 *
 * Unless the sampler is `always_on`, the heartbeat (every second, per node) is not traced, and the writes of outcome
 * groups (a span each ~20 requests, and its SQL) are sampled at the same fraction as upstream calls.
 */
import * as HttpTraceContext from "@effect/platform/HttpTraceContext"
import type * as OtelApi from "@opentelemetry/api"
import type * as SdkTrace from "@opentelemetry/sdk-trace-base"
import { Config, ConfigError, Context, Effect, Either, Layer, Option, Redacted } from "effect"
import * as EffectTracer from "effect/Tracer"

// --- settings ------------------------------------------------------------------------------------------------------

export type TracesSampler =
  | "always_on"
  | "always_off"
  | "traceidratio"
  | "parentbased_always_on"
  | "parentbased_always_off"
  | "parentbased_traceidratio"

const SAMPLERS: ReadonlyArray<TracesSampler> = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
]

export type OtlpProtocol = "http/protobuf" | "http/json"

export interface TracingSettings {
  /** Where spans are posted: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`. */
  readonly url: string
  readonly protocol: OtlpProtocol
  /** Sent with every export (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`: `name=value,…`, values percent-decoded). */
  readonly headers: Redacted.Redacted<Record<string, string>>
  readonly serviceName: string
  readonly sampler: TracesSampler
  /** The ratio of the `*traceidratio` samplers (`OTEL_TRACES_SAMPLER_ARG`, 0–1, default 1). */
  readonly samplerArg: number
  /** The fraction of upstream calls that get a span (`TRACE_UPSTREAM_CALLS`: `all`, `none` or 0–1). */
  readonly upstreamCalls: number
}

/** The default service name (`OTEL_SERVICE_NAME`). */
export const DEFAULT_SERVICE_NAME = "effect-openai-batch"
/** The default fraction of upstream calls traced when the sampler is not `always_on`. */
export const DEFAULT_UPSTREAM_CALLS = 0.01

/** An unset or empty variable is absent (environment templates often leave them empty). */
const optionalString = (name: string) =>
  Config.string(name).pipe(Config.option, Config.map(Option.filter((value) => value.trim() !== "")))

/** Variable `name`, when set, read by `parse` (its message names the variable in the `ConfigError`). */
const optional = <A>(name: string, parse: (text: string) => Either.Either<A, string>) =>
  optionalString(name).pipe(Config.mapOrFail((value) =>
    Option.match(value, {
      onNone: () => Either.right(Option.none<A>()),
      onSome: (text) =>
        Either.mapBoth(parse(text.trim()), { onLeft: (message) => ConfigError.InvalidData([name], message), onRight: Option.some })
    })
  ))

const httpUrl = (text: string): Either.Either<string, string> => {
  const url = URL.canParse(text) ? new URL(text) : undefined
  return url !== undefined && (url.protocol === "http:" || url.protocol === "https:")
    ? Either.right(text)
    : Either.left(`Expected an http:// or https:// URL, got '${text.slice(0, 64)}'`)
}

const protocolOf = (text: string): Either.Either<OtlpProtocol, string> =>
  text === "http/protobuf" || text === "http/json"
    ? Either.right(text)
    : Either.left(`Expected http/protobuf or http/json${text === "grpc" ? " (gRPC is not supported)" : ""}, got '${text.slice(0, 64)}'`)

/** `name=value,…` (W3C baggage form: values percent-encoded), as the OTLP exporter specification says. */
export const parseHeaders = (text: string): Either.Either<Record<string, string>, string> => {
  const headers: Record<string, string> = {}
  for (const entry of text.split(",")) {
    if (entry.trim() === "") continue
    const at = entry.indexOf("=")
    const name = at < 0 ? "" : entry.slice(0, at).trim()
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) return Either.left("Expected name=value pairs separated by commas")
    let value: string
    try {
      value = decodeURIComponent(entry.slice(at + 1).trim())
    } catch {
      return Either.left(`The value of header '${name}' has a broken percent-encoding`)
    }
    if (/[\r\n\0]/.test(value)) return Either.left(`The value of header '${name}' has a line break`)
    headers[name.toLowerCase()] = value
  }
  return Either.right(headers)
}

/** Headers may hold a key: read as redacted, and no message repeats a value. */
const headers = (name: string) =>
  Config.redacted(name).pipe(
    Config.option,
    Config.mapOrFail((value) =>
      Option.match(value, {
        onNone: () => Either.right<Record<string, string>>({}),
        onSome: (text) => Either.mapLeft(parseHeaders(Redacted.value(text)), (message) => ConfigError.InvalidData([name], message))
      })
    )
  )

const fraction = (text: string): Either.Either<number, string> => {
  const value = Number(text)
  return text !== "" && Number.isFinite(value) && value >= 0 && value <= 1
    ? Either.right(value)
    : Either.left(`Expected a number from 0 to 1, got '${text.slice(0, 64)}'`)
}

const samplerOf = (text: string): Either.Either<TracesSampler, string> => {
  const name = text.toLowerCase()
  return (SAMPLERS as ReadonlyArray<string>).includes(name)
    ? Either.right(name as TracesSampler)
    : Either.left(`Expected one of ${SAMPLERS.join(", ")}, got '${text.slice(0, 64)}'`)
}

const exporterOf = (text: string): Either.Either<"otlp" | "none", string> => {
  const name = text.toLowerCase()
  return name === "otlp" || name === "none" ? Either.right(name) : Either.left(`Expected otlp or none, got '${text.slice(0, 64)}'`)
}

const callsFraction = (text: string): Either.Either<number, string> => {
  const word = text.toLowerCase()
  if (word === "all" || word === "true") return Either.right(1)
  if (word === "none" || word === "false") return Either.right(0)
  return Either.mapLeft(fraction(text), () => `Expected all, none or a number from 0 to 1, got '${text.slice(0, 64)}'`)
}

/** `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, if any. */
const resourceServiceName = (attributes: string) =>
  Option.fromNullable(attributes.split(",").map((pair) => pair.split("=")).find(([key]) => key?.trim() === "service.name")?.[1]?.trim())
    .pipe(Option.filter((name) => name !== ""))

/**
 * The traces' settings from the standard `OTEL_*` variables; `None` when tracing is off (no endpoint,
 * `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`).
 */
export const tracingSettings: Config.Config<Option.Option<TracingSettings>> = Config.all({
  disabled: Config.boolean("OTEL_SDK_DISABLED").pipe(Config.withDefault(false)),
  exporter: optional("OTEL_TRACES_EXPORTER", exporterOf),
  tracesEndpoint: optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", httpUrl),
  endpoint: optional("OTEL_EXPORTER_OTLP_ENDPOINT", httpUrl),
  tracesProtocol: optional("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocolOf),
  protocol: optional("OTEL_EXPORTER_OTLP_PROTOCOL", protocolOf),
  tracesHeaders: headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
  headers: headers("OTEL_EXPORTER_OTLP_HEADERS"),
  serviceName: optionalString("OTEL_SERVICE_NAME"),
  resourceAttributes: Config.string("OTEL_RESOURCE_ATTRIBUTES").pipe(Config.withDefault("")),
  sampler: Config.map(optional("OTEL_TRACES_SAMPLER", samplerOf), Option.getOrElse((): TracesSampler => "parentbased_always_on")),
  samplerArg: Config.map(optional("OTEL_TRACES_SAMPLER_ARG", fraction), Option.getOrElse(() => 1)),
  upstreamCalls: optional("TRACE_UPSTREAM_CALLS", callsFraction)
}).pipe(Config.map((c): Option.Option<TracingSettings> => {
  const url = Option.orElse(c.tracesEndpoint, () => Option.map(c.endpoint, (base) => `${base.replace(/\/+$/, "")}/v1/traces`))
  if (c.disabled || Option.contains(c.exporter, "none") || Option.isNone(url)) return Option.none()
  const neverSampled = c.sampler === "always_off" || c.sampler === "parentbased_always_off" ||
    (c.sampler.endsWith("traceidratio") && c.samplerArg === 0)
  return Option.some({
    url: url.value,
    protocol: Option.getOrElse(Option.orElse(c.tracesProtocol, () => c.protocol), () => "http/protobuf" as const),
    headers: Redacted.make({ ...c.headers, ...c.tracesHeaders }),
    serviceName: Option.getOrElse(Option.orElse(c.serviceName, () => resourceServiceName(c.resourceAttributes)), () => DEFAULT_SERVICE_NAME),
    sampler: c.sampler,
    samplerArg: c.samplerArg,
    upstreamCalls: Option.getOrElse(c.upstreamCalls, () => (neverSampled ? 0 : c.sampler === "always_on" ? 1 : DEFAULT_UPSTREAM_CALLS))
  })
}))

// --- which upstream calls get a span ------------------------------------------------------------------------------

/**
 * How upstream calls are traced, read once when `Inference` is built: the fraction of calls that get a span. 0 (the
 * default, and what the service has without `TracingLive`): none, and nothing is done per call but one test.
 */
export class UpstreamCallTracing extends Context.Reference<UpstreamCallTracing>()("observability/UpstreamCallTracing", {
  defaultValue: (): { readonly fraction: number } => ({ fraction: 0 })
}) {}

/** Traces `fraction` of the upstream calls (for embedding: provide it beside your own tracer). */
export const layerUpstreamCallTracing = (fraction: number) => Layer.succeed(UpstreamCallTracing, { fraction })

/**
 * Picks `fraction` of the calls, evenly and deterministically (the first one, then one whenever the running share
 * falls behind): `undefined` when none is to be picked, so the caller tests only that.
 */
export const makeFractionPicker = (fraction: number): (() => boolean) | undefined => {
  if (!(fraction > 0)) return undefined
  if (fraction >= 1) return () => true
  let credit = 1 - fraction
  return () => {
    credit += fraction
    if (credit < 1) return false
    credit -= 1
    return true
  }
}

// --- upstream call spans (GenAI semantic conventions) -------------------------------------------------------------

/** `gen_ai.operation.name` of a batch endpoint: the conventions' names where one applies, else the path's. */
export const operationName = (endpoint: string): string => {
  switch (endpoint) {
    case "/v1/chat/completions":
    case "/v1/responses":
      return "chat"
    case "/v1/completions":
      return "text_completion"
    case "/v1/embeddings":
      return "embeddings"
    case "/v1/moderations":
      return "moderation"
    case "/v1/images/generations":
      return "image_generation"
    default:
      return endpoint.replace(/^\/v1\//, "").replace(/\//g, ".")
  }
}

/** What a call span says of its upstream: `gen_ai.provider.name` ("openai" for OpenAI's API, else the upstream's name) and the server. */
export interface UpstreamIdentity {
  readonly provider: string
  readonly address: string
  readonly port: number | undefined
}

export const upstreamIdentity = (name: string, baseUrl: string): UpstreamIdentity => {
  const url = URL.canParse(baseUrl) ? new URL(baseUrl) : undefined
  const address = url?.hostname.replace(/^\[|\]$/g, "") ?? baseUrl
  const port = url === undefined ? undefined : url.port !== "" ? Number(url.port) : url.protocol === "https:" ? 443 : 80
  return { provider: address === "api.openai.com" ? "openai" : name, address, port }
}

/** A traced call, as the retry loop sees it: the header that carries its context, and a note per attempt retried. */
export interface TracedCall {
  readonly traceparent: string
  readonly retried: (attempt: number, reason: string) => void
}

const isObject = (u: unknown): u is Record<string, any> => typeof u === "object" && u !== null && !Array.isArray(u)
const count = (u: unknown) => (typeof u === "number" && Number.isFinite(u) && u >= 0 ? Math.floor(u) : undefined)

/** The request's sampling parameters, from the body (parsed only for a traced call). */
const requestAttributes = (body: string): Record<string, unknown> => {
  let json: unknown
  try {
    json = JSON.parse(body)
  } catch {
    return {}
  }
  if (!isObject(json)) return {}
  const out: Record<string, unknown> = {}
  const maxTokens = json.max_completion_tokens ?? json.max_output_tokens ?? json.max_tokens
  if (typeof maxTokens === "number") out["gen_ai.request.max_tokens"] = maxTokens
  if (typeof json.temperature === "number") out["gen_ai.request.temperature"] = json.temperature
  if (typeof json.top_p === "number") out["gen_ai.request.top_p"] = json.top_p
  if (typeof json.seed === "number") out["gen_ai.request.seed"] = json.seed
  if (typeof json.n === "number" && json.n !== 1) out["gen_ai.request.choice.count"] = json.n
  return out
}

/**
 * A string-array attribute: Effect's span interface takes scalars only (it would print an array as text), so it is
 * set on the OpenTelemetry span underneath when there is one (the `span` field of `@effect/opentelemetry`'s spans).
 */
const arrayAttribute = (span: EffectTracer.Span, key: string, values: Array<string>) => {
  const otel = (span as { readonly span?: { readonly setAttribute?: (key: string, value: Array<string>) => unknown } }).span
  if (typeof otel?.setAttribute === "function") otel.setAttribute(key, values)
  else span.attribute(key, values.join(","))
}

/** What the answer says: its id, model, finish reasons and token usage (chat/completions and responses names). */
const answerAttributes = (span: EffectTracer.Span, status: number, json: unknown) => {
  span.attribute("http.response.status_code", status)
  if (!isObject(json)) return
  if (typeof json.id === "string") span.attribute("gen_ai.response.id", json.id)
  if (typeof json.model === "string") span.attribute("gen_ai.response.model", json.model)
  if (Array.isArray(json.choices)) {
    const reasons = json.choices.flatMap((c: unknown) => (isObject(c) && typeof c.finish_reason === "string" ? [c.finish_reason] : []))
    if (reasons.length > 0) arrayAttribute(span, "gen_ai.response.finish_reasons", reasons)
  }
  const usage = json.usage
  if (!isObject(usage)) return
  const input = count(usage.input_tokens ?? usage.prompt_tokens)
  const output = count(usage.output_tokens ?? usage.completion_tokens)
  if (input !== undefined) span.attribute("gen_ai.usage.input_tokens", input)
  if (output !== undefined) span.attribute("gen_ai.usage.output_tokens", output)
  const cached = count((usage.input_tokens_details ?? usage.prompt_tokens_details)?.cached_tokens)
  const reasoning = count((usage.output_tokens_details ?? usage.completion_tokens_details)?.reasoning_tokens)
  if (cached !== undefined && cached > 0) span.attribute("gen_ai.usage.cache_read.input_tokens", cached)
  if (reasoning !== undefined && reasoning > 0) span.attribute("gen_ai.usage.reasoning.output_tokens", reasoning)
}

/** A non-2xx answer, failed inside the span only, so that the span ends in error (the caller gets the answer). */
class ErrorAnswer<A> extends Error {
  constructor(readonly answer: A, status: number) {
    super(`The upstream answered ${status}`)
    this.name = "UpstreamErrorAnswer"
  }
}

/**
 * Runs one upstream call in a CLIENT span named and attributed by the GenAI semantic conventions; `run` gets the
 * `TracedCall` (its `traceparent`, a hook for retries). A failure ends the span in error with `error.type` = its
 * code; so does an answer with a status of 400 or more (`error.type` = the status).
 */
export const traceUpstreamCall = <A extends { readonly status: number; readonly json: unknown }, E extends { readonly code: string }>(
  upstream: UpstreamIdentity,
  endpoint: string,
  model: string | null | undefined,
  body: string,
  run: (call: TracedCall) => Effect.Effect<A, E>
): Effect.Effect<A, E> => {
  const operation = operationName(endpoint)
  const attributes: Record<string, unknown> = {
    "gen_ai.operation.name": operation,
    "gen_ai.provider.name": upstream.provider,
    "server.address": upstream.address,
    ...requestAttributes(body)
  }
  if (upstream.port !== undefined) attributes["server.port"] = upstream.port
  if (model != null) attributes["gen_ai.request.model"] = model
  const name = model == null ? operation : `${operation} ${model}`
  return Effect.useSpan(name, { kind: "client", attributes, captureStackTrace: false }, (span) => {
    const call: TracedCall = {
      traceparent: HttpTraceContext.toHeaders(span).traceparent,
      retried: (attempt, reason) => span.event("retry", BigInt(Date.now()) * 1_000_000n, { attempt, reason })
    }
    return Effect.matchEffect(run(call), {
      onFailure: (failure) => {
        span.attribute("error.type", failure.code)
        return Effect.fail(failure)
      },
      onSuccess: (answer) => {
        answerAttributes(span, answer.status, answer.json)
        if (answer.status < 400) return Effect.succeed(answer)
        span.attribute("error.type", String(answer.status))
        return Effect.fail(new ErrorAnswer(answer, answer.status))
      }
    })
  }).pipe(Effect.catchIf((e): e is ErrorAnswer<A> => e instanceof ErrorAnswer, (e) => Effect.succeed(e.answer))) as Effect.Effect<A, E>
}

// --- batch work ---------------------------------------------------------------------------------------------------

/**
 * A batch's background work on this node, as the root of a trace of its own (`BatchRunner.batch`, `batch.id`),
 * linked to the span that started it when that one is sampled (the create or cancel request): the work outlives the
 * request, and a resumed batch has no request at all.
 */
export const batchWork = (id: string) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.option(Effect.currentParentSpan), (starter) =>
    Effect.withSpan(self, "BatchRunner.batch", {
      root: true,
      captureStackTrace: false,
      attributes: { "batch.id": id },
      links: Option.isSome(starter) && starter.value.sampled ? [{ _tag: "SpanLink", span: starter.value, attributes: {} }] : []
    }))

// --- the layer ----------------------------------------------------------------------------------------------------

/** Root spans never traced unless the sampler is `always_on`: periodic work of every node, a trace a second. */
const UNTRACED_ROOTS: ReadonlySet<string> = new Set(["BatchRunner.heartbeat"])
/** Spans sampled at the upstream calls' fraction unless the sampler is `always_on`: a span per ~20 requests. */
const PER_GROUP_SPANS: ReadonlySet<string> = new Set(["BatchStore.recordOutcomes"])

/**
 * Tracing with `settings`: an OTLP/HTTP exporter (JSON or protobuf) behind a batch span processor, the sampler, and
 * Effect's tracer on the OpenTelemetry SDK. The SDK is loaded only here; its batch span processor reads the
 * standard `OTEL_BSP_*` variables, the exporter `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` and `…_COMPRESSION`. On
 * release the spans still queued are flushed (at most 5 s).
 */
export const layerWith = (settings: TracingSettings): Layer.Layer<never> =>
  Layer.unwrapEffect(Effect.promise(async () => {
    const [api, sdk, NodeSdk, Resource, OtelTracer, exporterModule] = await Promise.all([
      import("@opentelemetry/api"),
      import("@opentelemetry/sdk-trace-base"),
      import("@effect/opentelemetry/NodeSdk"),
      import("@effect/opentelemetry/Resource"),
      import("@effect/opentelemetry/Tracer"),
      settings.protocol === "http/json"
        ? import("@opentelemetry/exporter-trace-otlp-http")
        : import("@opentelemetry/exporter-trace-otlp-proto")
    ])
    const exporter = new exporterModule.OTLPTraceExporter({ url: settings.url, headers: Redacted.value(settings.headers) })

    const ratio = new sdk.TraceIdRatioBasedSampler(settings.samplerArg)
    const base: SdkTrace.Sampler = {
      always_on: () => new sdk.AlwaysOnSampler(),
      always_off: () => new sdk.AlwaysOffSampler(),
      traceidratio: () => ratio,
      parentbased_always_on: () => new sdk.ParentBasedSampler({ root: new sdk.AlwaysOnSampler() }),
      parentbased_always_off: () => new sdk.ParentBasedSampler({ root: new sdk.AlwaysOffSampler() }),
      parentbased_traceidratio: () => new sdk.ParentBasedSampler({ root: ratio })
    }[settings.sampler]()
    const sampler = settings.sampler === "always_on" ? base : rulesSampler(api, sdk, base, settings.upstreamCalls)

    const processors: readonly [SdkTrace.SpanProcessor, SdkTrace.SpanProcessor] = [routeNames(api), new sdk.BatchSpanProcessor(exporter)]
    const resource = Resource.layerFromEnv({ "service.name": settings.serviceName })
    const provider = NodeSdk.layerTracerProvider(processors, { sampler, shutdownTimeout: "5 seconds" }).pipe(
      Layer.provideMerge(resource)
    )
    const tracer = Layer.unwrapEffect(Effect.map(OtelTracer.make, (otel) => Layer.setTracer(leanTracer(otel, OtelTracer.OtelTraceFlags)))).pipe(
      Layer.provide(OtelTracer.layerTracer),
      Layer.provide(provider)
    )
    return Layer.merge(tracer, layerUpstreamCallTracing(settings.upstreamCalls))
  }))

/**
 * Tracing as the `OTEL_*` variables say (see `tracingSettings`), or nothing at all when no endpoint is set. Provide it
 * to the application (`AppLive.pipe(Layer.provide(TracingLive))`): everything built under it is traced.
 */
export const TracingLive: Layer.Layer<never, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(tracingSettings, Option.match({ onNone: () => Layer.empty, onSome: layerWith }))
)

/**
 * Effect's OpenTelemetry tracer without its per-step context hook: that one puts the current span in
 * OpenTelemetry's own context around every run of every fiber (a new context object each time), for libraries
 * instrumented by OpenTelemetry itself, of which this service has none. Also honours an incoming parent whose sampled
 * flag is off (the platform's `traceparent` reader gives it as `sampled: false`, which the OpenTelemetry tracer reads
 * only from its own flags tag).
 */
const leanTracer = <I>(
  otel: EffectTracer.Tracer,
  flagsTag: Context.Tag<I, OtelApi.TraceFlags>
): EffectTracer.Tracer =>
  EffectTracer.make({
    span: (name, parent, context, links, startTime, kind, options) => {
      const p = parent._tag === "Some" ? parent.value : undefined
      if (p !== undefined && p._tag === "ExternalSpan" && !p.sampled && Option.isNone(Context.getOption(p.context, flagsTag))) {
        parent = Option.some(EffectTracer.externalSpan({ ...p, context: Context.add(p.context, flagsTag, 0) as Context.Context<never> }))
      }
      return otel.span(name, parent, context, links, startTime, kind, options)
    },
    // Effect's own (native) tracer's hook, the same function: the runtime calls it at every step of every fiber,
    // and one target at that call site keeps it as cheap as with tracing off.
    context: nativeContext
  })

/** The context hook of Effect's native tracer (what a runtime without a tracer of its own has). */
const nativeContext: EffectTracer.Tracer["context"] = Effect.runSync(Effect.tracer).context

/** Names server spans `{method} {route}` (or `{method}` when no route matched), as the HTTP conventions ask. */
const routeNames = (api: typeof OtelApi): SdkTrace.SpanProcessor => ({
  onStart: () => {},
  onEnding: (span) => {
    if (span.kind !== api.SpanKind.SERVER) return
    const method = span.attributes["http.request.method"]
    if (typeof method !== "string") return
    const route = span.attributes["http.route"]
    span.updateName(typeof route === "string" ? `${method} ${route}` : method)
  },
  onEnd: () => {},
  forceFlush: () => Promise.resolve(),
  shutdown: () => Promise.resolve()
})

/**
 * `base`, after the rules that keep a busy node's traces readable: no trace of the heartbeat, outcome-group writes at
 * `fraction`, and nothing under a local span that was not sampled (so that a span left out takes its children with
 * it, whatever `base` would say of them).
 */
const rulesSampler = (
  api: typeof OtelApi,
  sdk: typeof SdkTrace,
  base: SdkTrace.Sampler,
  fraction: number
): SdkTrace.Sampler => {
  const groups = makeFractionPicker(fraction)
  const drop: SdkTrace.SamplingResult = { decision: sdk.SamplingDecision.NOT_RECORD }
  return {
    shouldSample: (context, traceId, name, kind, attributes, links) => {
      const parent = api.trace.getSpanContext(context)
      if (parent === undefined || !api.isSpanContextValid(parent)) {
        if (UNTRACED_ROOTS.has(name)) return drop
      } else if (!parent.isRemote && (parent.traceFlags & api.TraceFlags.SAMPLED) === 0) {
        return drop
      }
      if (PER_GROUP_SPANS.has(name) && !(groups?.() ?? false)) return drop
      return base.shouldSample(context, traceId, name, kind, attributes, links)
    },
    toString: () => `BatchRules{${base.toString()}}`
  }
}
