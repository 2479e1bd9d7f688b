/**
 * The `HttpClient` the Inference layer talks to the upstream with: an `@effect/platform` `HttpClient` built with
 * `HttpClient.makeWith` directly on `Http1Agent` (a lean keep-alive HTTP/1.1 client), answering with the whole body
 * already read.
 *
 * Why not `NodeHttpClient.layerUndici`: per call it creates an `AbortController`, registers the response with a
 * `FinalizationRegistry` and reads the body through a promise and a cached effect; at thousands of calls a second
 * that cost more than half the throughput (measured: 3.8k calls/s against 9.4k/s for undici alone), and undici's own
 * per-call machinery costs twice what `Http1Agent` does. Here a call is one `Effect.async`, interruption closes the
 * request's connection, and the time limit is the agent's (one deadline per attempt for the headers and the whole
 * body, swept by the agent's timer: no timer fiber per call).
 *
 * Inference answers are usually small JSON documents, so buffering them costs little; the agent refuses one larger
 * than `maxBodyBytes` as soon as it passes the limit (an `Http1Error` with code `BODY_TOO_LARGE` as the
 * `RequestError`'s cause). A large answer is held once as bytes, until its text is read: then only as text.
 */
import * as Cookies from "@effect/platform/Cookies"
import * as Headers from "@effect/platform/Headers"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as HttpIncomingMessage from "@effect/platform/HttpIncomingMessage"
import * as UrlParams from "@effect/platform/UrlParams"
import { Effect, Either, Inspectable, Layer, Option, Stream } from "effect"
import { Http1Agent, type Http1Error, type Http1Response } from "./Http1Agent.js"

const decoder = new TextDecoder()

/**
 * A response whose body has been read whole. Its bytes are dropped once decoded (`text`, `json`): the text is kept
 * instead, so a large answer is not held twice while it is parsed; the bytes asked for after that (`arrayBuffer`,
 * `stream`) are the text encoded again.
 */
class BufferedResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
  readonly [HttpClientResponse.TypeId]: HttpClientResponse.TypeId = HttpClientResponse.TypeId
  readonly [HttpIncomingMessage.TypeId]: HttpIncomingMessage.TypeId = HttpIncomingMessage.TypeId
  readonly headers: Headers.Headers
  readonly remoteAddress = Option.none<string>()
  readonly status: number
  private bytes: Uint8Array | undefined
  private decoded: string | undefined
  constructor(readonly request: HttpClientRequest.HttpClientRequest, response: Http1Response) {
    super()
    this.status = response.status
    // The agent's names are lower case and repeated headers joined, as `Headers.fromInput` would make them
    // (which copies every entry: thousands of responses a second).
    this.headers = Headers.unsafeFromRecord(response.headers)
    this.bytes = response.body
  }
  /** The body as text, decoded once; the bytes are let go then. */
  private textNow(): string {
    if (this.decoded === undefined) {
      this.decoded = decoder.decode(this.bytes)
      this.bytes = undefined
    }
    return this.decoded
  }
  /** The body's bytes (encoded again from the text once that was read). */
  private bytesNow(): Uint8Array {
    return this.bytes ?? Buffer.from(this.decoded!)
  }
  private decodeError(cause: unknown): HttpClientError.ResponseError {
    return new HttpClientError.ResponseError({ request: this.request, response: this, reason: "Decode", cause })
  }
  get cookies() {
    const header = this.headers["set-cookie"]
    return header === undefined ? Cookies.empty : Cookies.fromSetCookie(header.split(/,(?=[^;,]+=)/))
  }
  get text(): Effect.Effect<string> {
    return Effect.sync(() => this.textNow())
  }
  get json(): Effect.Effect<unknown, HttpClientError.ResponseError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({ try: () => (text === "" ? null : JSON.parse(text)), catch: (cause) => this.decodeError(cause) }))
  }
  get urlParamsBody(): Effect.Effect<UrlParams.UrlParams, HttpClientError.ResponseError> {
    return Effect.flatMap(this.text, (text) =>
      Effect.try({
        try: () => UrlParams.fromInput(new URLSearchParams(text)),
        catch: (cause) => this.decodeError(cause)
      }))
  }
  get arrayBuffer() {
    return Effect.sync(() => new Uint8Array(this.bytesNow()).buffer) // a copy: the body may be a view of a larger buffer
  }
  get stream() {
    return Stream.suspend(() => Stream.succeed(this.bytesNow()))
  }
  get formData(): Effect.Effect<FormData, HttpClientError.ResponseError> {
    return Effect.fail(this.decodeError("form-data response bodies are not supported by the upstream client"))
  }
  toJSON(): unknown {
    return { _id: "@effect/platform/HttpClientResponse", request: this.request.toJSON(), status: this.status }
  }
}

const requestBody = (body: HttpClientRequest.HttpClientRequest["body"]): string | Uint8Array | null | undefined => {
  switch (body._tag) {
    case "Empty":
      return null
    case "Uint8Array":
      return body.body
    case "Raw":
      return typeof body.body === "string" || body.body instanceof Uint8Array ? body.body : undefined
    default:
      return undefined
  }
}

/** Where a request goes, parsed once per URL for the usual request without query parameters or hash. */
type Target = Either.Either<{ readonly origin: string; readonly path: string }, Error>
const targetOf = (url: URL) => ({ origin: url.origin, path: url.pathname + url.search })

/** An `HttpClient` over `agent`. */
export const make = (agent: Http1Agent): HttpClient.HttpClient => {
  const targets = new Map<string, Target>()
  const target = (request: HttpClientRequest.HttpClientRequest): Target => {
    const plain = request.urlParams.length === 0 && Option.isNone(request.hash)
    const known = plain ? targets.get(request.url) : undefined
    if (known !== undefined) return known
    const parsed = Either.map(UrlParams.makeUrl(request.url, request.urlParams, request.hash), targetOf)
    if (plain && targets.size < 64) targets.set(request.url, parsed)
    return parsed
  }
  return HttpClient.makeWith<never, never, HttpClientError.HttpClientError, never>(
    Effect.flatMap((request) => {
      const url = target(request)
      const body = requestBody(request.body)
      if (url._tag === "Left" || body === undefined) {
        return Effect.fail(
          new HttpClientError.RequestError({
            request,
            reason: url._tag === "Left" ? "InvalidUrl" : "Encode",
            description: url._tag === "Left" ? url.left.message : `unsupported request body ${request.body._tag}`
          })
        )
      }
      return Effect.async<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((resume) => {
        const abort = agent.request(
          url.right.origin,
          { method: request.method, path: url.right.path, headers: request.headers, body },
          (error: Http1Error | undefined, response?: Http1Response) =>
            resume(
              error === undefined
                ? Effect.succeed(new BufferedResponse(request, response!))
                : Effect.fail(new HttpClientError.RequestError({ request, reason: "Transport", cause: error }))
            )
        )
        return Effect.sync(abort)
      })
    }),
    Effect.succeed
  )
}

export interface LayerOptions {
  /** Time limit of one attempt: from sending the request to the last byte of the answer. */
  readonly timeoutMs: number
  /** Largest answer body read; a larger one fails the request with `BODY_TOO_LARGE` as soon as it passes this. */
  readonly maxBodyBytes: number
}

/** A keep-alive `Http1Agent`, closed with the layer, under an `HttpClient`. */
export const layer = (options: LayerOptions): Layer.Layer<HttpClient.HttpClient> =>
  Layer.scoped(
    HttpClient.HttpClient,
    Effect.map(
      Effect.acquireRelease(
        Effect.sync(() => new Http1Agent({ timeoutMs: options.timeoutMs, maxBodyBytes: options.maxBodyBytes })),
        (agent) => Effect.sync(() => agent.close())
      ),
      make
    )
  )
