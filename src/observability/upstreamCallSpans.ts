/**
 * Upstream call spans, made by `Inference` on the request path (the layer in `Tracing.ts` only says how many): one
 * CLIENT span per call (retries included, each retried attempt an event, as the GenAI semantic conventions ask),
 * named `{gen_ai.operation.name} {gen_ai.request.model}` and attributed by those conventions. Only a fraction of the
 * calls get one (`TRACE_UPSTREAM_CALLS`, default 1 % — or all with `OTEL_TRACES_SAMPLER=always_on`), chosen before
 * any span is made, so the calls that are not traced cost one test of a counter. A traced call carries its
 * `traceparent` to the upstream (vLLM, for one, continues it).
 */
import * as HttpTraceContext from "@effect/platform/HttpTraceContext"
import { Context, Effect, Layer } from "effect"
import type * as EffectTracer from "effect/Tracer"
import { usageOf } from "../batches/usage.js"
import { isJsonObject } from "../domain/Json.js"

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

/** The request's sampling parameters, from the body (parsed only for a traced call). */
const requestAttributes = (body: string): Record<string, unknown> => {
  let json: unknown
  try {
    json = JSON.parse(body)
  } catch {
    return {}
  }
  if (!isJsonObject(json)) return {}
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
  if (!isJsonObject(json)) return
  if (typeof json.id === "string") span.attribute("gen_ai.response.id", json.id)
  if (typeof json.model === "string") span.attribute("gen_ai.response.model", json.model)
  if (Array.isArray(json.choices)) {
    const reasons = json.choices.flatMap((c: unknown) => (isJsonObject(c) && typeof c.finish_reason === "string" ? [c.finish_reason] : []))
    if (reasons.length > 0) arrayAttribute(span, "gen_ai.response.finish_reasons", reasons)
  }
  if (!isJsonObject(json.usage)) return
  const usage = usageOf(json)
  span.attribute("gen_ai.usage.input_tokens", usage.input)
  span.attribute("gen_ai.usage.output_tokens", usage.output)
  if (usage.cached > 0) span.attribute("gen_ai.usage.cache_read.input_tokens", usage.cached)
  if (usage.reasoning > 0) span.attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoning)
}

/** A non-2xx answer, failed inside the span only, so that the span ends in error (the caller gets the answer). */
class ErrorAnswer<A> extends Error {
  constructor(readonly answer: A, status: number) {
    super(`The upstream answered ${status}`)
    this.name = "UpstreamErrorAnswer"
  }
}

/**
 * A failure, failed inside the span with its code alone: its message may quote the upstream's answer (an HTML page,
 * a body that is no JSON object: the answer's text itself), and no prompt or answer goes in a span.
 */
class FailureInSpan<E> extends Error {
  constructor(readonly failure: E, code: string) {
    super(`The upstream call failed: ${code}`)
    this.name = "UpstreamCallFailed"
  }
}

/** A request handed back unsent (its batch's turn ended), passed out of the span as a success so that it ends OK. */
class HandedBackInSpan<E> {
  constructor(readonly failure: E) {}
}

/**
 * Runs one upstream call in a CLIENT span named and attributed by the GenAI semantic conventions; `run` gets the
 * `TracedCall` (its `traceparent`, a hook for retries). A failure ends the span in error with `error.type` = its
 * code; so does an answer with a status of 400 or more (`error.type` = the status). A request handed back
 * (`HandedBack`: nothing failed, it is sent again at its batch's next turn) ends the span OK, with an event.
 */
export const traceUpstreamCall = <
  A extends { readonly status: number; readonly json: unknown },
  E extends { readonly _tag: string; readonly code?: string }
>(
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
      onFailure: (failure): Effect.Effect<A | HandedBackInSpan<E>, FailureInSpan<E> | ErrorAnswer<A>> => {
        if (failure._tag === "HandedBack") {
          span.event("handed back", BigInt(Date.now()) * 1_000_000n)
          return Effect.succeed(new HandedBackInSpan(failure))
        }
        const code = failure.code ?? failure._tag
        span.attribute("error.type", code)
        return Effect.fail(new FailureInSpan(failure, code))
      },
      onSuccess: (answer) => {
        answerAttributes(span, answer.status, answer.json)
        if (answer.status < 400) return Effect.succeed(answer)
        span.attribute("error.type", String(answer.status))
        return Effect.fail(new ErrorAnswer(answer, answer.status))
      }
    })
  }).pipe(
    Effect.catchIf((e): e is ErrorAnswer<A> => e instanceof ErrorAnswer, (e) => Effect.succeed(e.answer)),
    Effect.catchIf((e): e is FailureInSpan<E> => e instanceof FailureInSpan, (e) => Effect.fail(e.failure)),
    Effect.flatMap((result) => (result instanceof HandedBackInSpan ? Effect.fail(result.failure) : Effect.succeed(result)))
  ) as Effect.Effect<A, E>
}
