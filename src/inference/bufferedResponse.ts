/**
 * The answer of an upstream call (`UpstreamHttpClient.ts`), its body read whole: an `HttpClientResponse` over bytes
 * already in hand.
 */
import * as Cookies from "@effect/platform/Cookies"
import type * as Headers from "@effect/platform/Headers"
import * as HttpClientError from "@effect/platform/HttpClientError"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import * as HttpIncomingMessage from "@effect/platform/HttpIncomingMessage"
import * as UrlParams from "@effect/platform/UrlParams"
import { Effect, Inspectable, Option, Stream } from "effect"

const utf8 = new TextDecoder()
const strictUtf8 = new TextDecoder("utf-8", { fatal: true })

/**
 * The decoder of the charset a `content-type` names, when it is not UTF-8 and is known here; else undefined.
 */
const declaredDecoder = (contentType: string | undefined): InstanceType<typeof TextDecoder> | undefined => {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(contentType ?? "")?.[1]
  if (charset === undefined || /^utf-?8$/i.test(charset)) return undefined
  try {
    return new TextDecoder(charset)
  } catch {
    return undefined
  }
}

/**
 * A body as text. JSON is UTF-8 (RFC 8259), and bytes that are UTF-8 are read so whatever the label says (a server
 * that labels its UTF-8 `charset=iso-8859-1` would be garbled); bytes that are not, in the charset the
 * `content-type` names (Latin-1 read as UTF-8 gave replacement characters in an output line counted a success), and
 * UTF-16 when named (its ASCII is valid UTF-8 too). Else UTF-8 with replacement characters.
 */
const decodedBody = (bytes: Uint8Array | undefined, contentType: string | undefined): string => {
  const declared = declaredDecoder(contentType)
  if (declared === undefined) return utf8.decode(bytes)
  if (declared.encoding.startsWith("utf-16")) return declared.decode(bytes)
  try {
    return strictUtf8.decode(bytes)
  } catch {
    return declared.decode(bytes)
  }
}

/**
 * A response whose body has been read whole. Its bytes are dropped once decoded (`text`, `json`): the text is kept
 * instead, so a large answer is not held twice while it is parsed; the bytes asked for after that (`arrayBuffer`,
 * `stream`) are the text encoded again, in UTF-8 (whatever charset the answer was in).
 */
export class BufferedResponse extends Inspectable.Class implements HttpClientResponse.HttpClientResponse {
  readonly [HttpClientResponse.TypeId]: HttpClientResponse.TypeId = HttpClientResponse.TypeId
  readonly [HttpIncomingMessage.TypeId]: HttpIncomingMessage.TypeId = HttpIncomingMessage.TypeId
  readonly remoteAddress = Option.none<string>()
  private decoded: string | undefined
  constructor(readonly request: HttpClientRequest.HttpClientRequest, readonly status: number,
    readonly headers: Headers.Headers, private bytes: Uint8Array | undefined) {
    super()
  }
  /** The body as text, decoded once; the bytes are let go then. */
  private textNow(): string {
    if (this.decoded === undefined) {
      this.decoded = decodedBody(this.bytes, this.headers["content-type"])
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
      Effect.try({ try: () => UrlParams.fromInput(new URLSearchParams(text)), catch: (cause) => this.decodeError(cause) }))
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
