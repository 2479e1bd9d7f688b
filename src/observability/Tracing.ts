/**
 * OpenTelemetry traces, exported over OTLP/HTTP: the layers (`TracingLive`, `layerWith`) and the batch work's root
 * span. Tracing is on only when the `OTEL_*` variables give an endpoint (`tracingSettings.ts`); off, no OpenTelemetry
 * module is even loaded (they are imported when the layer is built), and the code on the request path only tests a
 * constant.
 *
 * What is traced:
 * - every HTTP request, by `@effect/platform`'s server middleware (it continues an incoming W3C `traceparent`, or
 *   B3); here the span is named `{method} {route}` (`GET /v1/batches/:batch_id`) once the router has matched, and an
 *   incoming `traceparent` whose sampled flag is off is honoured (with tracing off, only a request that continues a
 *   caller's trace gets its span: `requestSpansOnlyInTraces`);
 * - a batch's work on this node: a root span `BatchRunner.batch` (`batch.id`) per drive, linked to the span that
 *   started it (the create or cancel request), with the phases `BatchRunner.validate`, `BatchRunner.run` (one per
 *   run of its slices) and `BatchRunner.finish` under it, and the storage spans under those;
 * - upstream calls, for a fraction of them (`upstreamCallSpans.ts`: the spans, and which calls get one).
 *
 * Unless the sampler is `always_on`, the heartbeat (every second, per node) is not traced, and the writes of outcome
 * groups (a span each ~20 requests, and its SQL) are sampled at the same fraction as upstream calls.
 */
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import type * as OtelApi from "@opentelemetry/api"
import type * as SdkTrace from "@opentelemetry/sdk-trace-base"
import { type ConfigError, Context, Effect, Layer, Option, Redacted, Runtime } from "effect"
import * as EffectTracer from "effect/Tracer"
import { AppConfig, nodeIdOfEnvironment } from "../Config.js"
import { isProbeRequest } from "../http/RequestLog.js"
import { routeOf } from "../http/Routes.js"
import { type TracingSettings, tracingSettings } from "./tracingSettings.js"
import { redactQuery } from "./redaction.js"
import { withoutCredentials } from "./urlText.js"
import { layerUpstreamCallTracing, makeFractionPicker } from "./upstreamCallSpans.js"

// --- batch work ---------------------------------------------------------------------------------------------------

/**
 * A batch's background work on this node, as the root of a trace of its own (`BatchRunner.batch`, `batch.id`),
 * linked to `starter`, the span that started it, when that one is sampled (the create or cancel request): the work
 * outlives the request, and a resumed batch has no request at all.
 */
export const batchWork = (id: string, starter: Option.Option<EffectTracer.AnySpan>) =>
<A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withSpan(self, "BatchRunner.batch", {
    root: true,
    captureStackTrace: false,
    attributes: { "batch.id": id },
    links: Option.isSome(starter) && starter.value.sampled ? [{ _tag: "SpanLink", span: starter.value, attributes: {} }] : []
  })

/**
 * The options of the spans of the reads clients poll (a batch, the lists of batches and files): no stack trace. A span
 * captures one when it is made, exported or not: 3.5 % of the server's CPU under `bench:load`.
 */
export const polledReadSpan = (attributes: Record<string, unknown> = {}) => ({ attributes, captureStackTrace: false })

// --- the layer ----------------------------------------------------------------------------------------------------

/** Root spans never traced unless the sampler is `always_on`: periodic work of every node, a trace a second. */
const UNTRACED_ROOTS: ReadonlySet<string> = new Set(["BatchRunner.heartbeat", "Webhooks.claimDue"])
/** Spans sampled at the upstream calls' fraction unless the sampler is `always_on`: a span per ~20 requests. */
const PER_GROUP_SPANS: ReadonlySet<string> = new Set(["BatchStore.recordOutcomes"])

/**
 * Tracing with `settings`: an OTLP/HTTP exporter (JSON or protobuf) behind a batch span processor, the sampler, and
 * Effect's tracer on the OpenTelemetry SDK. The SDK is loaded only here; its batch span processor reads the
 * standard `OTEL_BSP_*` variables, the exporter `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` and `…_COMPRESSION`. On
 * release the spans still queued are flushed (at most 5 s).
 */
export const layerWith = (settings: TracingSettings): Layer.Layer<never> =>
  Layer.unwrapEffect(Effect.flatMap(Effect.runtime<never>(), (runtime) => Effect.promise(async () => {
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
    const exporter = sayingFailures(
      new exporterModule.OTLPTraceExporter({ url: settings.url, headers: Redacted.value(settings.headers) }),
      withoutCredentials(settings.url),
      Runtime.runFork(runtime)
    )

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

    const processors: readonly [SdkTrace.SpanProcessor, SdkTrace.SpanProcessor] = [serverSpanConventions(api), new sdk.BatchSpanProcessor(exporter)]
    // OTEL_RESOURCE_ATTRIBUTES as read by `tracingSettings` (the platform's reader took `a=b=c` for no pair and left
    // values percent-encoded); `instanceId` is that one's when it sets one.
    const resource = Resource.layer({
      serviceName: settings.serviceName,
      attributes: {
        ...settings.resourceAttributes,
        ...(settings.instanceId === undefined ? {} : { "service.instance.id": settings.instanceId })
      }
    })
    const provider = NodeSdk.layerTracerProvider(processors, { sampler, shutdownTimeout: "5 seconds" }).pipe(
      Layer.provideMerge(resource)
    )
    const tracer = Layer.unwrapEffect(Effect.map(OtelTracer.make, (otel) => Layer.setTracer(leanTracer(otel, OtelTracer.OtelTraceFlags)))).pipe(
      Layer.provide(OtelTracer.layerTracer),
      Layer.provide(provider)
    )
    return Layer.merge(tracer, layerUpstreamCallTracing(settings.upstreamCalls))
  })))

/**
 * `exporter`, saying when its exports start failing (the collector down or refusing: those spans are dropped) and
 * when they go through again, once each: the SDK's own report goes to OpenTelemetry's diagnostic logger, silent
 * unless set.
 */
const sayingFailures = (
  exporter: SdkTrace.SpanExporter,
  url: string,
  say: (line: Effect.Effect<void>) => unknown
): SdkTrace.SpanExporter => {
  let failing = false
  return {
    export: (spans, done) =>
      exporter.export(spans, (result) => {
        const failed = result.code !== 0 // ExportResultCode.SUCCESS
        if (failed !== failing) {
          failing = failed
          const reason = (result.error?.message ?? "no reason given").split("\n")[0]
          const line = failed
            ? Effect.logWarning(`Traces could not be sent to ${url}: ${reason}; spans are dropped until it answers`)
            : Effect.logInfo(`Traces are sent to ${url} again`)
          say(Effect.annotateLogs(line, "event", failed ? "tracing.export_failed" : "tracing.export_resumed"))
        }
        done(result)
      }),
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve()
  }
}

/** Whether a request continues a caller's trace: it has the headers the platform's tracer reads (W3C, B3). */
const continuesTrace = (request: HttpServerRequest.HttpServerRequest): boolean => {
  const { headers } = request
  return headers.traceparent !== undefined || headers.b3 !== undefined || headers["x-b3-traceid"] !== undefined
}

/**
 * With tracing off, the platform's span per HTTP request only for a request that continues a caller's trace, so that
 * its log lines carry that trace's id (`trace_id`); a request of its own has its `request_id`. The span would go
 * nowhere, and making it (the URL parsed, every header recorded) cost 6–14 % of a GET's CPU.
 */
const requestSpansOnlyInTraces: Layer.Layer<never> = Layer.locallyScoped(
  HttpMiddleware.currentTracerDisabledWhen,
  (request) => !continuesTrace(request)
)

/**
 * No span for the probes' and scrapes' requests (`/v1/health`, `/v1/ready`, `/metrics`): a load balancer's probe a
 * second made a third of a node's traces. Their statements are untraced where they are made.
 */
const probesUntraced: Layer.Layer<never> = Layer.locallyScoped(HttpMiddleware.currentTracerDisabledWhen, isProbeRequest)

/**
 * Tracing as the `OTEL_*` variables say (see `tracingSettings`), or, when no endpoint is set, nothing but spans for
 * the requests that continue a caller's trace (above). Provide it to the application
 * (`AppLive.pipe(Layer.provide(TracingLive))`): everything built under it is traced.
 */
export const TracingLive: Layer.Layer<never, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.flatMap(tracingSettings, Option.match({
    onNone: () => Effect.succeed(requestSpansOnlyInTraces),
    // The node's id, from the app's configuration when it is built under one (the server's), else the environment's.
    onSome: (settings) =>
      Effect.map(Effect.serviceOption(AppConfig), (config) =>
        Layer.merge(
          layerWith({
            ...settings,
            instanceId: settings.instanceId ?? Option.getOrElse(Option.map(config, (c) => c.nodeId), () => nodeIdOfEnvironment())
          }),
          probesUntraced
        ))
  }))
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

/**
 * Names server spans `{method} {route}` (or `{method}` when no route matches), as the HTTP conventions ask. A request
 * refused before the router saw it (401, 403, 421) gets the route its path asked for, as its log line and metrics do.
 * The query's parameters named like credentials lose their values (`url.query`, `url.full`). And the span's status
 * is its answer's, as the conventions say of a server: an error for a 5xx (with `error.type`), unset below (Effect's
 * tracer said OK for any answer, a 500 included, and for a client gone a dump of the answer as the message).
 */
export const serverSpanConventions = (api: typeof OtelApi): SdkTrace.SpanProcessor => ({
  onStart: () => {},
  onEnding: (span) => {
    if (span.kind !== api.SpanKind.SERVER) return
    const query = span.attributes["url.query"]
    if (typeof query === "string") {
      const redacted = redactQuery(query)
      const full = span.attributes["url.full"]
      if (redacted !== query) {
        span.setAttribute("url.query", redacted)
        if (typeof full === "string") span.setAttribute("url.full", full.replace(`?${query}`, `?${redacted}`))
      }
    }
    const status = span.attributes["http.response.status_code"]
    if (typeof status === "number") {
      // Assigned (the SDK's span has it as a field; its type says read-only): `setStatus` keeps an OK once set.
      const { message } = span.status
      ;(span as { status: OtelApi.SpanStatus }).status = status < 500
        ? { code: api.SpanStatusCode.UNSET }
        : message === undefined ? { code: api.SpanStatusCode.ERROR } : { code: api.SpanStatusCode.ERROR, message }
      if (status >= 500 && span.attributes["error.type"] === undefined) span.setAttribute("error.type", String(status))
    }
    const method = span.attributes["http.request.method"]
    if (typeof method !== "string") return
    let route = span.attributes["http.route"]
    if (typeof route !== "string") {
      const path = span.attributes["url.path"]
      route = typeof path === "string" ? routeOf(path) : undefined
      if (route !== undefined) span.setAttribute("http.route", route)
    }
    span.updateName(route === undefined ? method : `${method} ${route}`)
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
