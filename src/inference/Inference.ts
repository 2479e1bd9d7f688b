/**
 * The OpenAI-compatible upstream: sends one request body to an endpoint and returns the upstream's status and JSON
 * body as they are. Retries 408/429/5xx, timeouts and network failures with exponential backoff and jitter,
 * honouring `Retry-After`, never waiting past the caller's deadline; interrupting the caller aborts the HTTP request.
 *
 * Each attempt is bounded in time (`INFERENCE_TIMEOUT`, from sending to the answer's last byte: an upstream that
 * trickles its body times out like a silent one) and in size (`INFERENCE_MAX_RESPONSE_BYTES`, refused as soon as
 * the answer passes it). A 2xx answer must be a JSON object; one that is not (HTML, empty, `null`, an array…) is
 * an `UpstreamFailure`, not a response.
 */
import * as HttpBody from "@effect/platform/HttpBody"
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Clock, Context, Duration, Effect, Layer, Option, Random, Redacted } from "effect"
import { AppConfig } from "../Config.js"
import { BatchEndpoint } from "../domain/Batches.js"
import { requestId } from "../domain/Ids.js"
import { asJsonBody, retryAfterMillis, UpstreamFailure, type UpstreamResponse } from "./answers.js"
import * as UpstreamHttpClient from "./UpstreamHttpClient.js"

export { compactJson, retryAfterMillis, UpstreamFailure, type UpstreamResponse } from "./answers.js"

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

const isRetryableStatus = (status: number) => status === 408 || status === 429 || status >= 500

/**
 * What the upstream client's error code says, somewhere in the cause chain (`Http1Error`: timeouts end in TIMEOUT,
 * an oversize answer is `BODY_TOO_LARGE`).
 */
const failureKind = (error: unknown): "timeout" | "too_large" | undefined => {
  for (let e: any = error, depth = 0; e != null && depth < 5; e = e.cause, depth++) {
    if (typeof e.code !== "string") continue
    if (e.code === "BODY_TOO_LARGE") return "too_large"
    if (/TIMEOUT/.test(e.code)) return "timeout"
  }
  return undefined
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
  const maxResponseBytes = config.inferenceMaxResponseBytes
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

  const answered = (res: HttpClientResponse.HttpClientResponse, text: string): UpstreamResponse | UpstreamFailure => {
    const body = asJsonBody(res.status, text, res.headers)
    if (body instanceof UpstreamFailure) return body
    return { status: res.status, text: body.text, json: body.json, requestId: res.headers["x-request-id"] ?? requestId() }
  }

  const unanswered = (error: HttpClientError.HttpClientError): UpstreamFailure => {
    const kind = failureKind(error)
    if (kind === "too_large") {
      return new UpstreamFailure({
        code: "upstream_response_too_large",
        message: `The upstream's answer is larger than ${maxResponseBytes} bytes (INFERENCE_MAX_RESPONSE_BYTES).`
      })
    }
    if (kind === "timeout") {
      return new UpstreamFailure({
        code: "upstream_timeout",
        message: `The upstream did not answer in full within ${Duration.format(timeout)}.`
      })
    }
    return new UpstreamFailure({ code: "upstream_unreachable", message: `Upstream request failed: ${error.message}` })
  }

  /** Failures worth another attempt: a timeout or a network failure (the same answer would come again otherwise). */
  const isTransient = (failure: UpstreamFailure) =>
    failure.code === "upstream_timeout" || failure.code === "upstream_unreachable"

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
      const failed = (error: HttpClientError.HttpClientError) => {
        const failure = unanswered(error)
        return isTransient(failure) ? retry({ _tag: "Failure", failure }, n) : Effect.fail(failure)
      }
      return Effect.matchEffect(http.execute(request), {
        onFailure: failed,
        onSuccess: (res) =>
          Effect.matchEffect(res.text, {
            onFailure: failed,
            onSuccess: (text) => {
              const response = answered(res, text)
              if (response instanceof UpstreamFailure) return Effect.fail(response)
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

/**
 * The HTTP upstream at `INFERENCE_BASE_URL`, over `Http1Agent`: `INFERENCE_TIMEOUT` bounds each attempt (headers and
 * body), `INFERENCE_MAX_RESPONSE_BYTES` each answer.
 */
export const InferenceLive: Layer.Layer<Inference, never, AppConfig> = Layer.effect(Inference, make).pipe(
  Layer.provide(Layer.unwrapEffect(
    Effect.map(AppConfig, (config) =>
      UpstreamHttpClient.layer({
        timeoutMs: Duration.toMillis(config.inferenceTimeout),
        maxBodyBytes: config.inferenceMaxResponseBytes
      }))
  ))
)

/** One request as a scripted upstream sees it: the batch's endpoint and the line's body, as JSON text. */
export interface ScriptedRequest {
  readonly endpoint: BatchEndpoint
  readonly body: string
}

/**
 * A scripted upstream (the test layer of `Inference`), for tests and for apps that embed the service: `answer`
 * gives each request's outcome, with no network; `models`, when given, is what it lists (a batch naming another
 * model then fails validation with `model_not_found`). `scriptedAnswer` builds an answer.
 */
export const InferenceScripted = (
  answer: (request: ScriptedRequest) => Effect.Effect<UpstreamResponse, UpstreamFailure>,
  models?: ReadonlyArray<string>
): Layer.Layer<Inference> =>
  Layer.succeed(
    Inference,
    Inference.of({
      send: (endpoint, body) => answer({ endpoint, body }),
      models: Effect.succeed(models === undefined ? Option.none() : Option.some(new Set(models)))
    })
  )

/** An answer with `status` and the JSON object `body`, as a scripted upstream gives it. */
export const scriptedAnswer = (status: number, body: object): UpstreamResponse => ({
  status,
  text: JSON.stringify(body),
  json: body,
  requestId: requestId()
})
