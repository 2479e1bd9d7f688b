/**
 * The `HttpClient` the Inference layer talks to the upstream with: an `@effect/platform` `HttpClient` built with
 * `HttpClient.makeWith` directly on undici's dispatcher API, answering with the whole body already read.
 *
 * Why not `NodeHttpClient.layerUndici`: per call it creates an `AbortController`, registers the response with a
 * `FinalizationRegistry` and reads the body through a promise and a cached effect; at thousands of calls a second
 * that costs more than half the throughput (measured: 3.8k calls/s against 9.4k/s for undici alone). Here a call
 * is one `Effect.async`, interruption aborts through undici's own controller, and header/body timeouts are undici's
 * (no timer fiber per call). Inference answers are small JSON documents, so buffering them costs nothing.
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
import type { IncomingHttpHeaders } from "node:http"
import { Agent, type Dispatcher } from "undici"

const decoder = new TextDecoder()

/**
 * undici's response headers as platform `Headers`, in place: its names are already lower case, and repeated
 * headers are joined as `Headers.fromInput` would (which copies every entry: thousands of responses a second).
 */
const asHeaders = (headers: IncomingHttpHeaders): Headers.Headers => {
  for (const name in headers) {
    const value = headers[name]
    if (Array.isArray(value)) headers[name] = value.join(", ")
    else if (value === undefined) delete headers[name]
  }
  return Headers.unsafeFromRecord(headers as Record<string, string>)
}

/** A response whose body has been read whole. */
class BufferedResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
  readonly [HttpClientResponse.TypeId]: HttpClientResponse.TypeId = HttpClientResponse.TypeId
  readonly [HttpIncomingMessage.TypeId]: HttpIncomingMessage.TypeId = HttpIncomingMessage.TypeId
  readonly headers: Headers.Headers
  readonly remoteAddress = Option.none<string>()
  constructor(
    readonly request: HttpClientRequest.HttpClientRequest,
    readonly status: number,
    headers: IncomingHttpHeaders,
    readonly body: Uint8Array
  ) {
    super()
    this.headers = asHeaders(headers)
  }
  private decodeError(cause: unknown): HttpClientError.ResponseError {
    return new HttpClientError.ResponseError({ request: this.request, response: this, reason: "Decode", cause })
  }
  get cookies() {
    const header = this.headers["set-cookie"]
    return header === undefined ? Cookies.empty : Cookies.fromSetCookie(header.split(/,(?=[^;,]+=)/))
  }
  get text(): Effect.Effect<string> {
    return Effect.sync(() => decoder.decode(this.body))
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
    return Effect.sync(() => this.body.slice().buffer as ArrayBuffer)
  }
  get stream() {
    return Stream.succeed(this.body)
  }
  get formData(): Effect.Effect<FormData, HttpClientError.ResponseError> {
    return Effect.fail(this.decodeError("form-data response bodies are not supported by the upstream client"))
  }
  toJSON(): unknown {
    return { _id: "@effect/platform/HttpClientResponse", request: this.request.toJSON(), status: this.status }
  }
}

type Resume = (effect: Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>) => void

/**
 * Collects one response and resumes the calling fiber with it. undici keeps a connection's finished requests (and
 * their handlers) queued until 256 have piled up, so once done the handler lets go of everything it held: the
 * body, the headers and the fiber it resumed would otherwise live on and reach the old generation.
 */
class BufferingHandler implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined
  private aborted = false
  private status = 0
  private headers: IncomingHttpHeaders = {}
  private chunks: Array<Buffer> = []
  constructor(private request: HttpClientRequest.HttpClientRequest | undefined, private resume: Resume | undefined) {}
  abort() {
    this.aborted = true
    this.controller?.abort(new Error("interrupted"))
  }
  private finish(effect: Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>) {
    const resume = this.resume
    this.request = undefined
    this.resume = undefined
    this.controller = undefined
    this.headers = {}
    this.chunks = []
    resume?.(effect)
  }
  onRequestStart(controller: Dispatcher.DispatchController) {
    this.controller = controller
    if (this.aborted) controller.abort(new Error("interrupted"))
  }
  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders) {
    this.status = statusCode
    this.headers = headers
  }
  onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer) {
    this.chunks.push(chunk)
  }
  onResponseEnd() {
    const bytes = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks)
    this.finish(Effect.succeed(new BufferedResponse(this.request!, this.status, this.headers, bytes)))
  }
  onResponseError(_c: Dispatcher.DispatchController, cause: Error) {
    this.finish(Effect.fail(new HttpClientError.RequestError({ request: this.request!, reason: "Transport", cause })))
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

/** An `HttpClient` over `dispatcher` with header and body timeouts of `timeoutMs` each. */
/** Where a request goes, parsed once per URL for the usual request without query parameters or hash. */
type Target = Either.Either<{ readonly origin: string; readonly path: string }, Error>
const targetOf = (url: URL) => ({ origin: url.origin, path: url.pathname + url.search })

export const make = (dispatcher: Dispatcher, timeoutMs: number): HttpClient.HttpClient => {
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
        const handler = new BufferingHandler(request, resume)
        dispatcher.dispatch({
          origin: url.right.origin,
          path: url.right.path,
          method: request.method,
          headers: request.headers,
          body,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs
        }, handler)
        return Effect.sync(() => handler.abort())
      })
    }),
    Effect.succeed
  )
}

/** A keep-alive undici agent, closed with the layer, under an `HttpClient` with `timeoutMs` timeouts. */
export const layer = (timeoutMs: number): Layer.Layer<HttpClient.HttpClient> =>
  Layer.scoped(
    HttpClient.HttpClient,
    Effect.map(
      Effect.acquireRelease(
        Effect.sync(() => new Agent({ keepAliveTimeout: 30_000 })),
        (agent) => Effect.promise(() => agent.destroy())
      ),
      (agent) => make(agent, timeoutMs)
    )
  )
