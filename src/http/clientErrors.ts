/**
 * Requests Node refuses before any handler sees them (a request line or headers over 16 KiB, headers that did not
 * arrive within the headers' timeout, bytes that are not HTTP) answered in OpenAI's error envelope, as every other
 * refusal, instead of Node's bare status line; then the connection is closed, as Node does.
 */
import { maxHeaderSize, type Server } from "node:http"
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

export const answerClientErrors = (server: Server): void => {
  const maxHeaderKiB = Math.round(((server as { maxHeaderSize?: number }).maxHeaderSize ?? maxHeaderSize) / 1024)
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) => {
    // As Node's own handler: no answer once a response on this connection has begun (it would be cut into it).
    // And none to a connection that sent nothing (opened ahead of use, then timed out): its client may be sending
    // its first request just now, and would read the 408 as that request's answer.
    const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage
    const silent = (socket as { bytesRead?: number }).bytesRead === 0
    if (socket.writable && !silent && inFlight?.headersSent !== true && error.code !== "ECONNRESET") {
      const [status, reason, code, message] = refusalOf(error.code, maxHeaderKiB)
      const body = JSON.stringify({ error: new ErrorBody({ message, type: "invalid_request_error", param: null, code }) })
      // A request id as on every other answer (none was read: the request never parsed), to quote in a report.
      socket.write(
        `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
          `x-request-id: ${requestId()}\r\nconnection: close\r\n\r\n${body}`
      )
    }
    socket.destroy(error)
  })
}
