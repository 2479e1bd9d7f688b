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

/**
 * The decoder of a body whose `content-type` names `charset` (JSON is UTF-8, but a server may say it wrote another:
 * read so, its letters were replacement characters in an output line counted a success); UTF-8 when it names none,
 * or one unknown here.
 */
const decoderFor = (contentType: string | undefined): InstanceType<typeof TextDecoder> => {
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(contentType ?? "")?.[1]
  if (charset === undefined || /^utf-?8$/i.test(charset)) return utf8
  try {
    return new TextDecoder(charset)
  } catch {
    return utf8
  }
}

/**
 * A response whose body has been read whole. Its bytes are dropped once decoded (`text`, `json`): the text is kept
 * instead, so a large answer is not held twice while it is parsed; the bytes asked for after that (`arrayBuffer`,
 * `stream`) are the text encoded again.
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
      this.decoded = decoderFor(this.headers["content-type"]).decode(this.bytes)
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
