/**
 * The `HttpClient` the Inference layer talks to the upstream with: an `@effect/platform` `HttpClient` built with
 * `HttpClient.makeWith` directly on undici's `dispatch` API, answering with the whole body already read.
 *
 * Why `dispatch` and not `NodeHttpClient.layerUndici` (or undici's `request()`): those add per call an
 * `AbortController`, a body `Readable` and promises, and the platform a span, a `FinalizationRegistry` entry and a
 * cached body effect. Here a call is one `Effect.async` and one small handler object, in undici's classic
 * `onConnect`/`onHeaders`/`onData`/`onComplete`/`onError` form, which it runs without the wrapper it puts around
 * the newer `onRequestStart`… form. Measured (2 shared cores, the simulator in another process, 50,000 POSTs at
 * concurrency 32, alternating runs; calls/s and this process's CPU per call): at no latency this client
 * 6.6–7.8k/s (122–148 µs), `request()` without Effect 6.3–6.6k/s (146–155 µs), `layerUndici` 2.2–2.6k/s
 * (417–498 µs), the hand-written HTTP/1.1 client it replaced 7.3–8.6k/s (88–106 µs); at 20 ms latency all are
 * bound by it (1.3–1.46k/s), at 177–208 µs per call here, 109–134 for the old client.
 *
 * Time: `timeoutMs` bounds a whole attempt, from dispatch to the answer's last byte, so an upstream trickling its
 * body cannot hold a call longer than a silent one (undici's own headers/body timeouts are idle timers; they are
 * turned off per request). One interval timer per client sweeps the calls in flight, and runs only while there are
 * some. An answer is refused (its connection closed) as soon as it passes `maxBodyBytes`, or announces more.
 *
 * Memory: a large answer reserves its bytes in the node's `AnswerMemory` before its body is read; while it waits
 * for room, its connection is paused and its time limit stopped (the wait is this node's, not the upstream's).
 *
 * Proxies: `dispatcher` is undici's `EnvHttpProxyAgent` (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, lower-case too)
 * when a proxy variable is set: `http:` calls go to the proxy in absolute form, `https:` ones through a `CONNECT`
 * tunnel. With none set it is a plain `Agent`: `EnvHttpProxyAgent` would still parse each call's origin as a URL and
 * read `NO_PROXY` from the environment (~3 µs) before handing the call to an `Agent` like it.
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as UrlParams from "@effect/platform/UrlParams"
import { Effect, Either, Layer, Option, type Scope } from "effect"
import { Agent, type Dispatcher, EnvHttpProxyAgent } from "undici"
import { type AnswerHold, type AnswerMemory, currentAnswerHold, FREE_BYTES } from "./answerMemory.js"
import { BufferedResponse } from "./bufferedResponse.js"

export interface ClientOptions {
  /** Time limit of one attempt: from sending the request to the last byte of the answer. */
  readonly timeoutMs: number
  /** Largest answer body read; a larger one fails the call as soon as it passes (or announces) more. */
  readonly maxBodyBytes: number
  /** The node's bound on answer bytes in memory (`answerMemory.ts`), shared by its clients; none: unbounded. */
  readonly memory?: AnswerMemory | undefined
}

/** What went wrong with a failed call (an `HttpClientError` from this client), as `failureKind` tells. */
export type FailureKind =
  | "connect" // the request never reached the upstream (refused, DNS, connect timeout, TLS, a proxy refusing)
  | "timeout" // the whole-attempt deadline passed
  | "too_large" // the answer passed maxBodyBytes
  | "transport" // the connection failed after the request was sent (reset, closed mid-answer, bad framing)

/**
 * The families (codes seen with undici 7.30). "connect" is whatever fails before undici calls `onConnect`, just
 * before it writes the request on a socket whose TCP, TLS and proxy tunnel are up, so nothing was sent:
 * `ECONNREFUSED`, `ENOTFOUND`/`EAI_AGAIN`, `UND_ERR_CONNECT_TIMEOUT`, certificate errors (`DEPTH_ZERO_SELF_SIGNED_CERT`,
 * `ERR_TLS_CERT_ALTNAME_INVALID`…), `ERR_SSL_*` or `ECONNRESET` during the handshake, a proxy's non-200 answer to
 * `CONNECT` (`UND_ERR_ABORTED`), a header undici will not send (`UND_ERR_INVALID_ARG`); also, whenever they come,
 * the `NEVER_SENT` codes (a non-tunnelling proxy's 407 is an `UND_ERR_INVALID_ARG` after `onConnect`). What fails
 * after `onConnect` is "transport", as the upstream may have acted on the request: `UND_ERR_SOCKET` ("other side
 * closed"), `ECONNRESET`, an `HTTPParserError` (bad framing), `UND_ERR_RES_CONTENT_LENGTH_MISMATCH`.
 */
const NEVER_SENT =
  /^(?:ECONNREFUSED|ENOTFOUND|EAI_\w+|UND_ERR_(?:CONNECT_TIMEOUT|PRX_TLS|INVALID_ARG)|ERR_TLS_CERT_ALTNAME_INVALID|\w*CERT\w*|UNABLE_TO_\w+)$/
const kindOf = (code: unknown, sent: boolean): FailureKind =>
  !sent || (typeof code === "string" && NEVER_SENT.test(code)) ? "connect" : "transport"

/** The cause of a `RequestError` from this client: the failure's kind, and what undici said as its `cause`. */
class UpstreamCallError extends Error {
  constructor(readonly kind: FailureKind, message: string, cause?: unknown) {
    super(message, { cause })
    this.name = "UpstreamCallError"
  }
}

const KINDS: ReadonlySet<unknown> = new Set<FailureKind>(["connect", "timeout", "too_large", "transport"])

/**
 * The kind of a failed call: its cause's `kind` (an `UpstreamCallError`, or a test double shaped like one). Any
 * other failure (a `ResponseError`: an answer that does not decode; a request that could not be built; another
 * client's error) is "transport": retried and counted, never taken for an outage on its own — "connect" pauses
 * every batch using the upstream, so it is said only when known.
 */
export const failureKind = (error: HttpClientError.HttpClientError): FailureKind => {
  const kind = (error.cause as { readonly kind?: unknown } | undefined)?.kind
  return error._tag === "RequestError" && KINDS.has(kind) ? kind as FailureKind : "transport"
}

/** What `Headers.unsafeFromRecord` gives a record (no `Object.prototype`), set at creation: cheaper than after. */
const HEADERS_PROTO: object = Object.getPrototypeOf(Headers.empty)
const EMPTY = Buffer.alloc(0)
/** Bodies announcing more bytes than this are copied into one buffer of that size as they arrive. */
const PREALLOCATE_BYTES = 64 * 1024

type Resume = (effect: Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>) => void

/**
 * What a call needs of its client: its options, and the calls in flight its sweep times out (`track` adds one and
 * starts the sweep).
 */
type Limits = ClientOptions & { readonly inflight: Set<Call>; readonly track: (call: Call) => void }

/**
 * One call: undici's handler, and the call's entry in its client's deadline sweep. Whatever comes after the call
 * is settled (an answer, an error, a timeout, an interruption) is ignored: undici may call on after an abort, and
 * its non-tunnelling proxy wrapper calls `onComplete` after `onError` on a 407.
 */
class Call implements Dispatcher.DispatchHandler {
  done = false
  /** Handed to a connection (`onConnect`): bytes of the request may have reached the upstream. */
  sent = false
  private abortRequest: ((error?: Error) => void) | undefined
  private status = 0
  private headers: Headers.Headers = Headers.empty
  private received = 0
  private chunks: Array<Buffer> = []
  /** The body's one buffer, when its announced size is large; filled up to `received`. */
  private filled: Buffer | undefined
  deadline: number
  /** The body's announced size (`content-length`; 0 when none). */
  private announced = 0
  /** Bytes reserved in the node's answer memory for this answer. */
  private reserved = 0
  /** Waiting for `reserved`: the wait's callback, and what resumes the paused connection. */
  private awaitingMemory: (() => void) | undefined
  private resumeReading: (() => void) | undefined

  constructor(readonly limits: Limits, readonly request: HttpClientRequest.HttpClientRequest, readonly resume: Resume,
    private readonly hold: AnswerHold | undefined) {
    hold?.release() // the request's earlier attempt: its answer is let go
    this.deadline = performance.now() + limits.timeoutMs
    limits.track(this)
  }

  onConnect(abort: (error?: Error) => void) {
    // Settled (interrupted, timed out) while waiting for a connection: throwing here makes undici drop the request
    // unsent and keep the connection, where `abort` would close it.
    if (this.done) throw new Error("The call was settled before it was sent")
    this.sent = true
    this.abortRequest = abort
  }

  onHeaders(status: number, raw: Array<Buffer>, resume: () => void): boolean {
    if (this.done || status < 200) return true // informational answers are skipped
    this.resumeReading = resume
    const headers: Record<string, string> = Object.create(HEADERS_PROTO)
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toString("latin1").toLowerCase()
      const value = raw[i + 1]!.toString("latin1")
      const prior = headers[name]
      headers[name] = prior === undefined ? value : `${prior}, ${value}` // repeated headers joined, as before
    }
    this.status = status
    this.headers = headers as Headers.Headers
    const bodiless = this.request.method === "HEAD" || status === 204 || status === 304
    const length = bodiless ? 0 : Number(headers["content-length"] ?? 0)
    if (length > this.limits.maxBodyBytes) return this.tooLarge()
    this.announced = length
    // Paused until reserved (a proxy's wrapper ignores this answer: then the first chunk past FREE_BYTES pauses).
    if (length > FREE_BYTES && !this.reserve(length)) return false
    this.allocate()
    return true
  }

  /** One buffer for a body announcing a large size, once its bytes may be held (none came yet). */
  private allocate() {
    if (this.announced > PREALLOCATE_BYTES && this.received === 0) this.filled = Buffer.allocUnsafeSlow(this.announced)
  }

  onData(chunk: Buffer): boolean {
    if (this.done) return true
    const at = this.received
    this.received += chunk.length
    if (this.received > this.limits.maxBodyBytes) return this.tooLarge()
    if (this.filled !== undefined) chunk.copy(this.filled, at)
    else this.chunks.push(chunk)
    // No size announced: past the free bytes, it may be as large as an answer may be.
    return this.received > FREE_BYTES && this.reserved === 0 ? this.reserve(this.limits.maxBodyBytes) : true
  }

  /**
   * Reserves `bytes` of the node's answer memory: true to read on; false to pause the connection until they are
   * reserved, its time limit stopped meanwhile.
   */
  private reserve(wanted: number): boolean {
    const memory = this.limits.memory
    if (memory === undefined) return true
    if (this.awaitingMemory !== undefined) return false
    const bytes = Math.min(wanted, memory.budget) // an answer larger than the budget takes all of it
    const left = this.deadline - performance.now()
    const granted = () => {
      this.awaitingMemory = undefined
      this.reserved = bytes
      if (this.done) return this.giveBack()
      this.deadline = performance.now() + Math.max(left, 0)
      this.limits.track(this)
      this.allocate()
      // Not at once: this runs where another call gave bytes back, maybe in its connection's callback, where undici
      // refuses to resume another connection.
      setImmediate(() => {
        if (!this.done) this.resumeReading?.()
      })
    }
    if (memory.reserve(bytes, granted)) {
      this.reserved = bytes
      return true
    }
    this.awaitingMemory = granted
    this.limits.inflight.delete(this)
    return false
  }

  /** Gives back the answer's reservation (or its place in the queue for one). */
  private giveBack() {
    const memory = this.limits.memory
    if (memory === undefined) return
    if (this.awaitingMemory !== undefined && memory.cancel(this.awaitingMemory)) this.awaitingMemory = undefined
    if (this.reserved > 0) memory.release(this.reserved)
    this.reserved = 0
  }

  onComplete() {
    if (this.settle()) return
    const chunks = this.chunks
    const body = this.filled?.subarray(0, this.received) ??
      (chunks.length === 1 ? chunks[0]! : chunks.length === 0 ? EMPTY : Buffer.concat(chunks, this.received))
    this.chunks = []
    this.filled = undefined
    // The request's hold keeps the answer's bytes until it is stored (before the fiber resumes to store it).
    const memory = this.limits.memory
    if (this.hold !== undefined && memory !== undefined && this.awaitingMemory === undefined) {
      const kept = Math.min(this.reserved, this.received) // a reservation for no announced size: what came
      this.hold.keep(memory, kept)
      this.reserved -= kept
    }
    this.resume(Effect.succeed(new BufferedResponse(this.request, this.status, this.headers, body)))
    this.giveBack()
  }

  onError(error: Error) {
    const code = (error as { code?: unknown }).code
    this.fail(kindOf(code, this.sent), typeof code === "string" ? `${error.message} (${code})` : error.message, error)
  }

  private tooLarge(): true {
    this.fail("too_large", `The upstream's answer is larger than ${this.limits.maxBodyBytes} bytes`)
    return true
  }
  timeout() { this.fail("timeout", `The upstream did not answer in full within ${this.limits.timeoutMs} ms`) }

  /** Fails the call; one failed here (not by undici) has its request aborted, closing its connection. */
  private fail(kind: FailureKind, description: string, undiciError?: Error) {
    if (this.settle()) return
    const cause = new UpstreamCallError(kind, description, undiciError)
    this.chunks = []
    this.filled = undefined
    const error = new HttpClientError.RequestError({ request: this.request, reason: "Transport", description, cause })
    this.resume(Effect.fail(error))
    if (undiciError === undefined) this.abortRequest?.(cause)
    this.giveBack()
  }

  /** Interruption: the request is aborted now, or dropped when undici hands it to a connection (`onConnect`). */
  interrupt() {
    if (this.settle()) return
    this.abortRequest?.()
    this.giveBack()
  }

  /**
   * Marks the call done (true when it already was) and takes it out of the sweep. Its reservation is given back
   * (`giveBack`) after its fiber is resumed, so that nothing a release sets off can keep it from resuming.
   */
  private settle(): boolean {
    if (this.done) return true
    this.done = true
    this.limits.inflight.delete(this)
    return false
  }
}

/** The body as undici takes it; `undefined` for one this client does not send (a stream, form data). */
const requestBody = (body: HttpClientRequest.HttpClientRequest["body"]): string | Uint8Array | null | undefined =>
  body._tag === "Empty" ? null : body._tag === "Uint8Array" ? body.body
  : body._tag === "Raw" && (typeof body.body === "string" || body.body instanceof Uint8Array) ? body.body
  : undefined

/** Where a request goes, parsed once per URL for the usual request without query parameters or hash. */
type Target = Either.Either<{ readonly origin: string; readonly path: string }, Error>
const targetOf = (url: URL) => ({ origin: url.origin, path: url.pathname + url.search })

/** Request headers as undici's flat list, once per headers object (a list: `ProxyAgent` adds `host` to objects). */
const headerLists = new WeakMap<Headers.Headers, Array<string>>()
const headerList = (headers: Headers.Headers): Array<string> => {
  let list = headerLists.get(headers)
  if (list === undefined) {
    list = []
    for (const name in headers) list.push(name, headers[name]!)
    headerLists.set(headers, list)
  }
  return list
}

/** An `HttpClient` over `dispatcher` with these limits (several clients may share one dispatcher). */
export const make = (dispatcher: Dispatcher, options: ClientOptions): HttpClient.HttpClient => {
  // A sweep looks at every call: one that waited for answer memory is back with the time it had left, out of the
  // order the others came in. The timer runs only while calls are in flight.
  let timer: NodeJS.Timeout | undefined
  const sweep = () => {
    const now = performance.now()
    for (const call of inflight) {
      if (call.deadline <= now) call.timeout()
    }
    if (inflight.size === 0) {
      clearInterval(timer)
      timer = undefined
    }
  }
  const period = Math.min(1000, Math.max(10, options.timeoutMs / 4))
  const inflight = new Set<Call>()
  const track = (call: Call) => {
    inflight.add(call)
    if (timer === undefined) (timer = setInterval(sweep, period)).unref()
  }
  const limits: Limits = { ...options, inflight, track }

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
        const [reason, description] = url._tag === "Left"
          ? ["InvalidUrl", url.left.message] as const
          : ["Encode", `unsupported request body ${request.body._tag}`] as const
        return Effect.fail(new HttpClientError.RequestError({ request, reason, description }))
      }
      return Effect.withFiberRuntime<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((fiber) =>
        Effect.async<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>((resume) => {
          const call = new Call(limits, request, resume, fiber.getFiberRef(currentAnswerHold))
          const { origin, path } = url.right
          const headers = headerList(request.headers)
          try { // no idle timeouts (0): the sweep's deadline bounds the whole attempt instead
            dispatcher.dispatch({ origin, path, method: request.method, headers, body, headersTimeout: 0, bodyTimeout: 0 }, call)
          } catch (error) {
            call.onError(error as Error)
          }
          return Effect.sync(() => call.interrupt())
        }))
    }),
    Effect.succeed
  )
}

/** The proxies upstream calls go through. */
export interface Proxies {
  readonly http: string | undefined
  readonly https: string | undefined
  readonly noProxy: string
}

/**
 * The proxies of `env` as undici's `EnvHttpProxyAgent` reads them (the lower-case variable first; `https:` calls go
 * through the `http:` proxy when no other is set); undefined when there is none.
 */
export const proxiesOf = (env: Record<string, string | undefined>): Proxies | undefined => {
  const http = (env.http_proxy ?? env.HTTP_PROXY) || undefined
  const https = (env.https_proxy ?? env.HTTPS_PROXY) || http
  return http === undefined && https === undefined ? undefined : { http, https, noProxy: env.no_proxy ?? env.NO_PROXY ?? "" }
}

/**
 * The shared dispatcher, keep-alive (undici's defaults: idle connections kept 4 s, or as the server's `keep-alive`
 * says less 1 s): `EnvHttpProxyAgent` when a proxy variable is set, else `Agent`. Destroyed when the scope closes.
 */
export const dispatcher: Effect.Effect<Dispatcher, never, Scope.Scope> = Effect.acquireRelease(
  Effect.sync((): Dispatcher =>
    proxiesOf(process.env) !== undefined
      ? new EnvHttpProxyAgent({ proxyTunnel: false }) // plain `http:` calls in absolute form, as curl sends them
      : new Agent()
  ),
  (dispatcher) => Effect.promise(() => dispatcher.destroy())
)

/** `dispatcher` and `make`, as a layer. */
export const layer = (options: ClientOptions): Layer.Layer<HttpClient.HttpClient> =>
  Layer.scoped(HttpClient.HttpClient, Effect.map(dispatcher, (d) => make(d, options)))
