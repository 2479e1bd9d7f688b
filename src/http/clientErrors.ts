/**
 * Requests Node refuses before any handler sees them (a request line or headers over 16 KiB, headers that did not
 * arrive within the headers' timeout, bytes that are not HTTP, an `Expect` other than `100-continue`) answered in
 * OpenAI's error envelope, as every other refusal, instead of Node's bare status line; then the connection is
 * closed, as Node does; an HTTP/1.1 request without `Host` (or with two), which Node refuses (or not) itself; and
 * the requests Node passes on that the app must not read as it would a plain one (`refuseAmbiguous`, `CONNECT`).
 */
import { type IncomingMessage, maxHeaderSize, type Server, type ServerResponse } from "node:http"
import type { Duplex } from "node:stream"
import { ErrorBody } from "../domain/Errors.js"
import { requestId } from "../domain/Ids.js"

/** Status, reason phrase, `code` and message of what Node's parser or timers reported (`error.code`). */
const refusalOf = (code: string | undefined, maxHeaderKiB: number): readonly [number, string, string, string] => {
  switch (code) {
    case "HPE_HEADER_OVERFLOW":
      return [431, "Request Header Fields Too Large", "request_header_fields_too_large", `The request line and headers are larger than ${maxHeaderKiB} KiB.`]
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return [413, "Payload Too Large", "request_too_large", "The body's chunk extensions are too large."]
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return [408, "Request Timeout", "request_timeout", "The request's headers did not all arrive in time."]
    default:
      return [400, "Bad Request", "invalid_http_request", `The request is not valid HTTP/1.1 (${code ?? "unknown"}).`]
  }
}

const envelope = (code: string, message: string, type = "invalid_request_error") =>
  JSON.stringify({ error: new ErrorBody({ message, type, param: null, code }) })
/** With a request id as on every other answer (none was read: the request never reached a handler), to quote in a report. */
const refusalHeaders = (body: string) => ({
  "content-type": "application/json",
  "content-length": String(Buffer.byteLength(body)),
  "x-request-id": requestId()
})
/** The whole answer, written to a socket whose request Node could not parse (or handed over). */
const refusal = (status: number, reason: string, code: string, message: string, extra: Record<string, string> = {}) => {
  const body = envelope(code, message)
  const headers = Object.entries({ ...refusalHeaders(body), ...extra }).map(([name, value]) => `${name}: ${value}\r\n`).join("")
  return `HTTP/1.1 ${status} ${reason}\r\n${headers}connection: close\r\n\r\n${body}`
}

export const answerClientErrors = (server: Server): void => {
  const maxHeaderKiB = Math.round(((server as { maxHeaderSize?: number }).maxHeaderSize ?? maxHeaderSize) / 1024)
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) => {
    // As Node's own handler: no answer once a response on this connection has begun (it would be cut into it).
    // And none to a connection that sent nothing (opened ahead of use, then timed out): its client may be sending
    // its first request just now, and would read the 408 as that request's answer.
    const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage
    const silent = (socket as { bytesRead?: number }).bytesRead === 0
    if (socket.writable && !silent && inFlight?.headersSent !== true && error.code !== "ECONNRESET") {
      socket.write(refusal(...refusalOf(error.code, maxHeaderKiB)))
    }
    socket.destroy(error)
  })
  // Node's own answer to an unknown expectation is a bare 417 (it emits this event instead when it is listened to;
  // a server given with a listener of its own keeps it).
  if (server.listenerCount("checkExpectation") === 0) {
    server.on("checkExpectation", (_request: IncomingMessage, response: ServerResponse) => {
      answerDirectly(response, 417, "expectation_failed", "The Expect header's only supported value is 100-continue.")
    })
  }
  refuseAmbiguous(server)
  // Node hands a `CONNECT` (a proxy's tunnel) to this event's listeners, and without one closes the connection
  // unanswered. The socket is then the listener's: Node has taken its own error listener and timeouts off it, so it
  // is closed once answered (ended alone, it stayed half open for as long as its client kept its side).
  if (server.listenerCount("connect") === 0) {
    server.on("connect", (_request: IncomingMessage, socket: Duplex) => {
      refuseOn(socket, refusal(405, "Method Not Allowed", "method_not_allowed", "CONNECT is not supported: this server is not a proxy.", { allow: "GET, HEAD, POST, DELETE" }))
    })
  }
}

/** Writes `answer` on a socket Node handed over (a `CONNECT`'s, an upgrade's), then closes it. */
const refuseOn = (socket: Duplex, answer: string) => {
  socket.on("error", () => socket.destroy())
  socket.end(answer, () => socket.destroy())
}

/** An answer in the envelope, written by Node's own response (no handler took the request); the connection closes. */
export const answerDirectly = (
  response: ServerResponse,
  status: number,
  code: string,
  message: string,
  type?: string,
  extra: Record<string, string> = {}
) => {
  const body = envelope(code, message, type)
  response.writeHead(status, { ...refusalHeaders(body), ...extra, connection: "close" }).end(body)
}

/**
 * Requests that a proxy in front and this server could read differently get a 400 in the envelope, stopped where
 * the server emits them, before any listener (the platform's, `holdEarlyRequests`') sees them:
 * - an HTTP/1.1 request without `Host`, and any with more than one (RFC 9112 §3.2): Node's own check, whose answer
 *   has no body, is turned off. An HTTP/1.0 one needs none (health checks such as HAProxy's send none). Node keeps
 *   the first of several `Host` headers: which one a proxy routed by is not known;
 * - more than one `Authorization`: Node keeps the first, a proxy that checked the key may have read the last;
 * - more than one `Content-Type`: the same, for a firewall that judged the body by the last;
 * - a `Transfer-Encoding` other than `chunked` (`gzip, chunked`): Node takes the chunks apart and leaves the rest
 *   undone, so the body read would not be the one sent.
 */
const refuseAmbiguous = (server: Server) => {
  ;(server as { requireHostHeader?: boolean }).requireHostHeader = false
  const emit = server.emit
  server.emit = function(this: Server, event: string | symbol, ...args: Array<unknown>): boolean {
    if (event === "request") {
      const [request, response] = args as [IncomingMessage, ServerResponse]
      const refused = ambiguity(request)
      if (refused !== undefined) {
        answerDirectly(response, 400, "invalid_http_request", refused)
        return true
      }
    }
    // A request asking for an upgrade (`Connection: Upgrade`) comes here instead, and the platform serves it as any
    // other: the same checks, or adding that header passed them.
    if (event === "upgrade") {
      const [request, socket] = args as [IncomingMessage, Duplex]
      const refused = ambiguity(request)
      if (refused !== undefined) {
        refuseOn(socket, refusal(400, "Bad Request", "invalid_http_request", refused))
        return true
      }
    }
    return Reflect.apply(emit, this, [event, ...args]) as boolean
  } as Server["emit"]
}

/** Why `request` is refused (see `refuseAmbiguous`), or undefined. */
const ambiguity = (request: IncomingMessage): string | undefined => {
  if (request.httpVersion === "1.1" && request.headers.host === undefined) {
    return "The request has no Host header, which HTTP/1.1 requires."
  }
  const raw = request.rawHeaders
  if (countNamed(raw, "host") > 1) return "The request has more than one Host header."
  if (countNamed(raw, "authorization") > 1) return "The request has more than one Authorization header."
  if (countNamed(raw, "content-type") > 1) return "The request has more than one Content-Type header."
  const coding = request.headers["transfer-encoding"]
  if (coding !== undefined && coding.trim().toLowerCase() !== "chunked") {
    return `The request's Transfer-Encoding '${coding.slice(0, 64)}' is not supported: send the body as it is, chunked or with a Content-Length.`
  }
  return undefined
}

/** How many of `raw`'s headers (name, value, name, value…) are named `name` (lower case). */
const countNamed = (raw: ReadonlyArray<string>, name: string) => {
  let count = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === name.length && raw[i]!.toLowerCase() === name) count++
  return count
}
