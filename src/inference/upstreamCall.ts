/**
 * One upstream call on undici's `dispatch` API (`UpstreamHttpClient.ts` makes them): its handler, which reads the
 * answer into one buffer, holds the call to its time limit and the answer to its size limit, and reserves the
 * answer's bytes in the node's `AnswerMemory`; and what a failed call's error says of it (`failureKind`).
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Effect, FiberRef } from "effect"
import type { Dispatcher } from "undici"
import { type AnswerHold, type AnswerMemory, FREE_BYTES } from "./answerMemory.js"
import { BufferedResponse } from "./bufferedResponse.js"
import { connectionHint } from "./connectionHints.js"
import type { Proxies } from "./proxies.js"

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

/** A failed call of `request` as `failureKind` reads it: a `RequestError` whose cause says its `kind`. */
export const callFailure = (
  request: HttpClientRequest.HttpClientRequest,
  kind: FailureKind,
  description: string,
  undiciError?: Error
) =>
  new HttpClientError.RequestError({
    request,
    reason: "Transport",
    description,
    cause: new UpstreamCallError(kind, description, undiciError)
  })

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

/**
 * Told when the current fiber's call has its request written to the connection (undici's `onRequestSent`), if set:
 * the load-aware dispatch counts a call on top of a reading of the server's queue until then (`loadWatch.ts`).
 */
export const currentRequestWritten: FiberRef.FiberRef<(() => void) | undefined> = FiberRef.unsafeMake<(() => void) | undefined>(undefined)

type Resume = (effect: Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>) => void

/**
 * What a call needs of its client: its options, and the calls in flight its sweep times out (`track` adds one and
 * starts the sweep).
 */
export type Limits = ClientOptions & {
  readonly inflight: Set<Call>
  readonly track: (call: Call) => void
  /** The proxies calls go through, if any. */
  readonly proxies: Proxies | undefined
}

/**
 * One call: undici's handler, and the call's entry in its client's deadline sweep. Whatever comes after the call
 * is settled (an answer, an error, a timeout, an interruption) is ignored: undici may call on after an abort, and
 * its non-tunnelling proxy wrapper calls `onComplete` after `onError` on a 407.
 */
export class Call implements Dispatcher.DispatchHandler {
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
    private readonly hold: AnswerHold | undefined, private readonly written: (() => void) | undefined) {
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

  onRequestSent() {
    this.written?.()
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
    const hint = connectionHint(error, this.request.url, this.limits.proxies, Boolean(process.env.NODE_EXTRA_CA_CERTS))
    this.fail(kindOf(code, this.sent), `${error.message}${typeof code === "string" ? ` (${code})` : ""}${hint}`, error)
  }

  private tooLarge(): true {
    this.fail("too_large", `The upstream's answer is larger than ${this.limits.maxBodyBytes} bytes`)
    return true
  }
  timeout() { this.fail("timeout", `The upstream did not answer in full within ${this.limits.timeoutMs} ms`) }

  /** Fails the call; one failed here (not by undici) has its request aborted, closing its connection. */
  private fail(kind: FailureKind, description: string, undiciError?: Error) {
    if (this.settle()) return
    const error = callFailure(this.request, kind, description, undiciError)
    this.chunks = []
    this.filled = undefined
    this.resume(Effect.fail(error))
    if (undiciError === undefined) this.abortRequest?.(error.cause as Error)
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
