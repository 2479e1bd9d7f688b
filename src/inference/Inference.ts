/**
 * The OpenAI-compatible upstream: sends one request body to an endpoint and returns the upstream's status and JSON
 * body as they are. Retries 429/5xx/network failures with exponential backoff and jitter, honouring `Retry-After`,
 * never waiting past the caller's deadline; interrupting the caller aborts the HTTP request.
 */
import * as HttpBody from "@effect/platform/HttpBody"
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Clock, Context, Data, Duration, Effect, Layer, Option, Random, Redacted } from "effect"
import { AppConfig } from "../Config.js"
import { BatchEndpoint } from "../domain/Batches.js"
import { requestId } from "../domain/Ids.js"
import * as UpstreamHttpClient from "./UpstreamHttpClient.js"

export interface UpstreamResponse {
  readonly status: number
  /** The upstream body as JSON text (a non-JSON body is wrapped in an OpenAI error envelope). */
  readonly text: string
  /** The same body, parsed. */
  readonly json: unknown
  readonly requestId: string
}

/** No response could be had: network failure or timeout, after every attempt. */
export class UpstreamFailure extends Data.TaggedError("UpstreamFailure")<{
  readonly code: "upstream_unreachable" | "upstream_timeout"
  readonly message: string
}> {}

export interface SendOptions {
  /** Epoch milliseconds after which no retry is scheduled (the batch's `expires_at`). */
  readonly deadline?: number | undefined
}

export interface InferenceShape {
  readonly send: (
    endpoint: BatchEndpoint,
    body: string,
    options?: SendOptions
  ) => Effect.Effect<UpstreamResponse, UpstreamFailure>
  /** Model ids the upstream lists at `GET /models`; none when it does not answer that. */
  readonly models: Effect.Effect<Option.Option<ReadonlySet<string>>>
}

export class Inference extends Context.Tag("Inference")<Inference, InferenceShape>() {}

/** `Retry-After` (seconds or an HTTP date) or `retry-after-ms`, in milliseconds. */
export const retryAfterMillis = (headers: Record<string, string | undefined>, now: number): Option.Option<number> => {
  const ms = Number(headers["retry-after-ms"])
  if (headers["retry-after-ms"] !== undefined && Number.isFinite(ms) && ms >= 0) return Option.some(ms)
  const value = headers["retry-after"]
  if (value === undefined) return Option.none()
  const seconds = Number(value)
  if (Number.isFinite(seconds) && seconds >= 0) return Option.some(seconds * 1000)
  const date = Date.parse(value)
  return Number.isNaN(date) ? Option.none() : Option.some(Math.max(0, date - now))
}

const isRetryableStatus = (status: number) => status === 408 || status === 429 || status >= 500

/**
 * The upstream's body as one line of JSON text (it is embedded as is in a JSONL line, so a pretty-printed body is
 * compacted); anything else is wrapped so output lines always hold a JSON object.
 */
const asJsonBody = (status: number, text: string): { text: string; json: unknown } => {
  try {
    const json = JSON.parse(text)
    if (typeof json === "object" && json !== null) {
      return { text: /[\r\n]/.test(text) ? JSON.stringify(json) : text, json }
    }
  } catch {
    // not JSON
  }
  const json = {
    error: {
      message: text.length > 0 ? text.slice(0, 4096) : `Upstream answered ${status} with an empty body.`,
      type: status >= 500 ? "server_error" : "upstream_error",
      param: null,
      code: null
    }
  }
  return { text: JSON.stringify(json), json }
}

/** The upstream client reports its header and body timeouts with codes ending in TIMEOUT, somewhere in the cause chain. */
const isTimeout = (error: unknown): boolean => {
  for (let e: any = error, depth = 0; e != null && depth < 5; e = e.cause, depth++) {
    if (typeof e.code === "string" && /TIMEOUT/.test(e.code)) return true
  }
  return false
}

/** What one attempt gave: an answer (with the headers a retry reads), or no answer at all. */
type Attempt =
  | {
    readonly _tag: "Response"
    readonly response: UpstreamResponse
    readonly headers: Record<string, string | undefined>
  }
  | { readonly _tag: "Failure"; readonly failure: UpstreamFailure }

export const make = Effect.gen(function*() {
  const config = yield* AppConfig
  const http = yield* HttpClient.HttpClient
  const base = config.inferenceBaseUrl
  const timeout = config.inferenceTimeout
  const baseDelay = Duration.toMillis(config.inferenceRetryBaseDelay)
  const maxDelay = Duration.toMillis(config.inferenceRetryMaxDelay)

  /** `/v1/chat/completions` → `<base>/chat/completions` (the base URL carries the `/v1`). */
  const urlFor = (endpoint: BatchEndpoint) => `${base}${endpoint.replace(/^\/v1/, "")}`

  // One request per endpoint, built once (URL, JSON content type, credentials): a call only adds its body.
  const templates = new Map(BatchEndpoint.literals.map((endpoint) => {
    const request = HttpClientRequest.post(urlFor(endpoint)).pipe(
      HttpClientRequest.setHeader("content-type", "application/json")
    )
    return [
      endpoint,
      Option.match(config.inferenceApiKey, {
        onNone: () => request,
        onSome: (key) => HttpClientRequest.bearerToken(request, Redacted.value(key))
      })
    ] as const
  }))

  const answered = (res: HttpClientResponse.HttpClientResponse, text: string): UpstreamResponse => ({
    status: res.status,
    ...asJsonBody(res.status, text),
    requestId: res.headers["x-request-id"] ?? requestId()
  })

  const unanswered = (error: HttpClientError.HttpClientError): UpstreamFailure =>
    isTimeout(error)
      ? new UpstreamFailure({
        code: "upstream_timeout",
        message: `The upstream did not answer within ${Duration.format(timeout)}.`
      })
      : new UpstreamFailure({ code: "upstream_unreachable", message: `Upstream request failed: ${error.message}` })

  /** How long to wait before attempt `n + 1`: `Retry-After` when the upstream said, else exponential with jitter. */
  const retryDelay = (result: Attempt, n: number) =>
    Effect.map(Random.nextRange(0.8, 1.2), (jitter) => {
      const backoff = Math.min(maxDelay, baseDelay * 2 ** (n - 1) * jitter)
      if (result._tag === "Failure") return backoff
      return Math.min(maxDelay, Option.getOrElse(retryAfterMillis(result.headers, Date.now()), () => backoff))
    })

  const send = (endpoint: BatchEndpoint, body: string, options: SendOptions = {}) => {
    const request = HttpClientRequest.setBody(templates.get(endpoint)!, HttpBody.raw(body))
    /** After attempt `n` gave `result`: wait and try again, unless attempts or time (the deadline) are used up. */
    const retry = (result: Attempt, n: number): Effect.Effect<UpstreamResponse, UpstreamFailure> => {
      const final = result._tag === "Failure" ? Effect.fail(result.failure) : Effect.succeed(result.response)
      if (n >= config.inferenceMaxAttempts) return final
      return Effect.gen(function*() {
        const delay = yield* retryDelay(result, n)
        const now = yield* Clock.currentTimeMillis
        if (options.deadline !== undefined && now + delay > options.deadline) return yield* final
        yield* Effect.sleep(Duration.millis(delay))
        return yield* loop(n + 1)
      })
    }
    // The usual case, an answer that needs no retry, is kept to a few steps: thousands of calls run a second.
    const loop = (n: number): Effect.Effect<UpstreamResponse, UpstreamFailure> => {
      const failed = (error: HttpClientError.HttpClientError) => retry({ _tag: "Failure", failure: unanswered(error) }, n)
      return Effect.matchEffect(http.execute(request), {
        onFailure: failed,
        onSuccess: (res) =>
          Effect.matchEffect(res.text, {
            onFailure: failed,
            onSuccess: (text) => {
              const response = answered(res, text)
              return isRetryableStatus(response.status)
                ? retry({ _tag: "Response", response, headers: res.headers }, n)
                : Effect.succeed(response)
            }
          })
      })
    }
    return loop(1)
  }

  const models = http.get(`${base}/models`).pipe(
    Effect.flatMap((res): Effect.Effect<unknown, unknown> => (res.status === 200 ? res.json : Effect.fail(res.status))),
    Effect.map((json) => {
      const data = (json as { data?: unknown }).data
      if (!Array.isArray(data)) return Option.none<ReadonlySet<string>>()
      const ids = data.flatMap((m) => (typeof m?.id === "string" ? [m.id as string] : []))
      return Option.some<ReadonlySet<string>>(new Set(ids))
    }),
    Effect.timeout(Duration.seconds(10)),
    Effect.orElseSucceed(() => Option.none<ReadonlySet<string>>()),
    Effect.withSpan("Inference.models")
  )

  return Inference.of({ send, models })
})

/** The HTTP upstream at `INFERENCE_BASE_URL`, over `Http1Agent`. */
export const InferenceLive: Layer.Layer<Inference, never, AppConfig> = Layer.effect(Inference, make).pipe(
  Layer.provide(Layer.unwrapEffect(
    Effect.map(AppConfig, (config) => UpstreamHttpClient.layer(Duration.toMillis(config.inferenceTimeout)))
  ))
)
