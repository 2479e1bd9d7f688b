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
import { Clock, Context, Data, Duration, Effect, Layer, Option, Random, Redacted } from "effect"
import { AppConfig } from "../Config.js"
import { BatchEndpoint } from "../domain/Batches.js"
import { requestId } from "../domain/Ids.js"
import * as UpstreamHttpClient from "./UpstreamHttpClient.js"

export interface UpstreamResponse {
  readonly status: number
  /**
   * The upstream body as one line of JSON text, always an object: as sent, with a pretty-printed body's whitespace
   * taken out (strings and numbers kept byte for byte). A non-2xx body that is not a JSON object is wrapped in an
   * OpenAI error envelope.
   */
  readonly text: string
  /** The same body, parsed. */
  readonly json: unknown
  readonly requestId: string
}

/**
 * No usable response could be had:
 * - `upstream_unreachable`: a network failure, after every attempt;
 * - `upstream_timeout`: no complete answer within `INFERENCE_TIMEOUT` (headers and body), after every attempt;
 * - `upstream_response_too_large`: an answer larger than `INFERENCE_MAX_RESPONSE_BYTES` (not retried);
 * - `invalid_upstream_response`: a 2xx answer whose body is not a JSON object (not retried).
 */
export class UpstreamFailure extends Data.TaggedError("UpstreamFailure")<{
  readonly code: "upstream_unreachable" | "upstream_timeout" | "upstream_response_too_large" | "invalid_upstream_response"
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

const isJsonWhitespace = (c: number) => c === 32 || c === 10 || c === 13 || c === 9

/**
 * `text` (valid JSON) without the whitespace between its tokens: strings, numbers and escapes are kept as written,
 * byte for byte (re-serializing would turn `123456789012345678901234567890` into `1.2345678901234568e+29`). One pass;
 * strings are skipped with `indexOf`, so a long string costs next to nothing. Text that is not JSON is not made
 * valid, but nothing in it is lost except whitespace outside what look like strings.
 */
export const compactJson = (text: string): string => {
  const n = text.length
  const parts: Array<string> = []
  let start = 0 // where the text kept since the last whitespace begins
  let i = 0
  while (i < n) {
    const c = text.charCodeAt(i)
    if (c === 34) {
      // A string: its end is the next quote not escaped, i.e. after an even run of backslashes.
      let from = i + 1
      for (;;) {
        const quote = text.indexOf("\"", from)
        if (quote < 0) {
          i = n
          break
        }
        let backslash = quote - 1
        while (text.charCodeAt(backslash) === 92) backslash--
        if ((quote - 1 - backslash) % 2 === 0) {
          i = quote + 1
          break
        }
        from = quote + 1
      }
    } else if (isJsonWhitespace(c)) {
      if (i > start) parts.push(text.slice(start, i))
      do i++
      while (i < n && isJsonWhitespace(text.charCodeAt(i)))
      start = i
    } else {
      i++
    }
  }
  if (start === 0) return text
  if (start < n) parts.push(text.slice(start))
  return parts.join("")
}

/** The first `max` characters of `text` for a message: whitespace runs as one space, no surrogate pair cut. */
const excerpt = (text: string, max = 200): string => {
  const flat = text.slice(0, max * 4).replace(/[\s\u0000-\u001f\u007f]+/g, " ").trim()
  if (flat.length <= max && text.length <= max * 4) return flat
  const code = flat.charCodeAt(max - 1)
  return `${flat.slice(0, code >= 0xd800 && code <= 0xdbff ? max - 1 : max)}…`
}

/** `text` parsed, when it is a JSON object (not an array); else undefined. */
const parseObject = (text: string): object | undefined => {
  try {
    const json = JSON.parse(text)
    return typeof json === "object" && json !== null && !Array.isArray(json) ? json : undefined
  } catch {
    return undefined // not JSON
  }
}

/**
 * The upstream's body as one line of JSON text holding an object (it is embedded as is in a JSONL line, so a
 * pretty-printed body is compacted, only when it has a line break: the usual compact body is used as it came).
 * A 2xx answer that is not a JSON object is an `invalid_upstream_response`; any other status's is wrapped in an
 * OpenAI error envelope, so that error lines always hold an object too.
 */
const asJsonBody = (
  status: number,
  text: string,
  headers: Record<string, string | undefined>
): { text: string; json: unknown } | UpstreamFailure => {
  const parsed = parseObject(text)
  if (parsed !== undefined) return { text: /[\r\n]/.test(text) ? compactJson(text) : text, json: parsed }
  if (status >= 200 && status < 300) {
    const contentType = headers["content-type"]
    const type = contentType === undefined ? "" : ` (content-type ${excerpt(contentType, 100)})`
    return new UpstreamFailure({
      code: "invalid_upstream_response",
      message: text.length === 0
        ? `The upstream answered ${status}${type} with an empty body, not a JSON object.`
        : `The upstream answered ${status}${type} with a body that is not a JSON object: ${excerpt(text)}`
    })
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
