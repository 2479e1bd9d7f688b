/**
 * What `Http1Agent` answers with, and how an answer is read from a connection's bytes: the response, the error
 * that stands for no response, and `ResponseReader`, which turns the bytes into a response. The reader knows
 * nothing of sockets, pools or time: the connection feeds it what arrives and acts on what it says.
 *
 * Framing: a response head (status line and headers, at most 64 KiB) and a body framed by `content-length`,
 * `transfer-encoding: chunked` or the end of the connection, as RFC 9112 says; informational (1xx) responses are
 * skipped. The body is checked against `maxBodyBytes` as its bytes arrive, and as soon as its size is announced.
 *
 * Memory: an answer whose `content-length` is known and large is copied into one buffer of that size as it
 * arrives (the socket's chunks are dropped at once); a small one arriving in one chunk is not copied at all; a
 * chunked or close-delimited one is gathered in chunks and joined once at its end.
 */

export interface Http1Response {
  readonly status: number
  /** Names in lower case; repeated headers joined with `, `. */
  readonly headers: Record<string, string>
  readonly body: Buffer
}

/**
 * Why a request got no response; `code` says which kind: timeouts end in `TIMEOUT` (`HEADERS_TIMEOUT`: no answer
 * within the time limit; `BODY_TIMEOUT`: an answer begun but not finished within it), `BODY_TOO_LARGE` is an answer
 * that has or announces more than `maxBodyBytes`.
 */
export class Http1Error extends Error {
  constructor(
    readonly code:
      | "HEADERS_TIMEOUT"
      | "BODY_TIMEOUT"
      | "BODY_TOO_LARGE"
      | "CONNECTION_CLOSED"
      | "PROTOCOL"
      | "ABORTED"
      | "SOCKET",
    message: string,
    options?: { readonly cause?: unknown }
  ) {
    super(message, options)
    this.name = "Http1Error"
  }
}

const MAX_HEAD_BYTES = 64 * 1024
/** Bodies announcing more bytes than this are copied into one buffer as they arrive instead of kept in chunks. */
const PREALLOCATE_BYTES = 64 * 1024
const CRLF = Buffer.from("\r\n")
const HEAD_END = Buffer.from("\r\n\r\n")

/** How the body is framed, and how far it has been read. */
export type Body =
  | { readonly _tag: "Length"; remaining: number }
  | { readonly _tag: "Chunked"; state: "size" | "data" | "dataEnd" | "trailers"; remaining: number }
  | { readonly _tag: "UntilClose" }

/** One answer as it is being read: part of the connection's exchange, so that reading allocates nothing more. */
export interface ResponseState {
  readonly request: { readonly method: string }
  /** Body bytes read so far. */
  received: number
  status: number
  headers: Record<string, string>
  /** Unset until the (final) head has been read. */
  body: Body | undefined
  /** The body's bytes so far, when gathered in pieces (see `filled`). */
  chunks: Array<Buffer>
  /** The whole body's buffer, allocated at its announced size when that is large; filled up to `received`. */
  filled: Buffer | undefined
  /** Whether the connection may serve another request after this answer, as its head says. */
  keepAlive: boolean
  /** The server's idle timeout (`keep-alive: timeout=N`), if it says. */
  keepAliveMs: number | undefined
}

/** The answer read into `state` as a response; its pieces are let go. */
export const responseOf = (state: ResponseState): Http1Response => {
  const body = state.filled ?? (state.chunks.length === 1 ? state.chunks[0]! : Buffer.concat(state.chunks))
  state.chunks = []
  state.filled = undefined
  return { status: state.status, headers: state.headers, body }
}

/** Reads the answers of one connection, one at a time, from the bytes it receives. */
export class ResponseReader {
  /** Bytes received and not yet parsed; any left after an answer mean the connection is out of step. */
  pending: Buffer | undefined

  constructor(readonly maxBodyBytes: number) {}

  /**
   * Adds `chunk` and consumes as much of the bytes as `state` allows; true when the answer is complete (a close-
   * delimited one completes at the connection's end). Throws an `Http1Error` when the bytes are not a valid answer
   * or a larger one than allowed.
   */
  read(state: ResponseState, chunk: Buffer): boolean {
    this.pending = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    for (;;) {
      const data = this.pending
      const body = state.body
      if (body === undefined) {
        if (data === undefined) return false
        const end = data.indexOf(HEAD_END)
        if (end < 0) {
          if (data.length > MAX_HEAD_BYTES) throw new Http1Error("PROTOCOL", "The upstream's response head is too large")
          return false
        }
        this.take(end + 4)
        this.readHead(state, data.toString("latin1", 0, end))
        continue
      }
      if (body._tag === "Length") {
        if (body.remaining === 0) return true
        if (data === undefined) return false
        if (this.consume(state, body, data) === 0) return true
        continue
      }
      if (data === undefined) return false
      if (body._tag === "UntilClose") {
        this.collect(state, data)
        this.pending = undefined
        return false
      }
      // Chunked: size line, data, CRLF, … a zero size, then trailer lines up to an empty one.
      if (body.state === "data") {
        if (this.consume(state, body, data) === 0) body.state = "dataEnd"
        continue
      }
      const lineEnd = data.indexOf(CRLF)
      if (lineEnd < 0) {
        if (data.length > MAX_HEAD_BYTES) throw new Http1Error("PROTOCOL", "A chunk line of the upstream's response is too long")
        return false
      }
      const line = data.toString("latin1", 0, lineEnd)
      this.take(lineEnd + 2)
      if (body.state === "dataEnd") {
        if (line !== "") throw new Http1Error("PROTOCOL", "A chunk of the upstream's response does not end with CRLF")
        body.state = "size"
      } else if (body.state === "size") {
        const size = /^([0-9a-fA-F]{1,12})[ \t]*(;.*)?$/.exec(line)
        if (size === null) throw new Http1Error("PROTOCOL", "Invalid chunk size in the upstream's response")
        body.remaining = parseInt(size[1]!, 16)
        this.checkSize(state.received + body.remaining)
        body.state = body.remaining === 0 ? "trailers" : "data"
      } else if (line === "") {
        return true
      }
    }
  }

  /** Takes what `data` holds of the `remaining` bytes of a body or chunk into the answer; returns what is left. */
  private consume(state: ResponseState, body: { remaining: number }, data: Buffer): number {
    const piece = data.length <= body.remaining ? data : data.subarray(0, body.remaining)
    this.collect(state, piece)
    this.take(piece.length)
    return (body.remaining -= piece.length)
  }

  private collect(state: ResponseState, piece: Buffer) {
    const at = state.received
    state.received += piece.length
    this.checkSize(state.received)
    if (state.filled !== undefined) piece.copy(state.filled, at)
    else state.chunks.push(piece)
  }

  /** Fails the answer (by throwing) when it has, or announces, more bytes than allowed. */
  private checkSize(bytes: number) {
    if (bytes > this.maxBodyBytes) {
      throw new Http1Error("BODY_TOO_LARGE", `The upstream's answer is larger than ${this.maxBodyBytes} bytes`)
    }
  }

  /** Drops the first `n` bytes of `pending`. */
  private take(n: number) {
    const data = this.pending!
    this.pending = n >= data.length ? undefined : data.subarray(n)
  }

  /** Reads a response head into `state`, and how its body is framed; an informational one leaves `body` unset. */
  private readHead(state: ResponseState, head: string) {
    const lines = head.split("\r\n")
    const statusLine = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0]!)
    if (statusLine === null) throw new Http1Error("PROTOCOL", `Invalid status line from the upstream: ${lines[0]!.slice(0, 100)}`)
    const status = Number(statusLine[2])
    const headers: Record<string, string> = {}
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!
      const colon = line.indexOf(":")
      if (colon <= 0) throw new Http1Error("PROTOCOL", "Invalid header line from the upstream")
      const name = line.slice(0, colon).trim().toLowerCase()
      const value = line.slice(colon + 1).trim()
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
    }
    if (status < 200) return // informational: the real answer follows
    state.status = status
    state.headers = headers
    const connection = headers["connection"]?.toLowerCase()
    state.keepAlive = statusLine[1] === "1" ? !/\bclose\b/.test(connection ?? "") : /\bkeep-alive\b/.test(connection ?? "")
    const timeout = /\btimeout=(\d+)/.exec(headers["keep-alive"] ?? "")
    state.keepAliveMs = timeout === null ? undefined : Number(timeout[1]) * 1000
    const coding = headers["transfer-encoding"]
    const length = headers["content-length"]
    if (state.request.method === "HEAD" || status === 204 || status === 304) {
      state.body = { _tag: "Length", remaining: 0 }
    } else if (coding !== undefined) {
      const chunked = /(^|,)\s*chunked\s*$/i.test(coding)
      state.body = chunked ? { _tag: "Chunked", state: "size", remaining: 0 } : { _tag: "UntilClose" }
      // Both framings at once: the transfer coding wins, and the connection is not trusted after (RFC 9112 §6.3).
      if (length !== undefined) state.keepAlive = false
    } else if (length !== undefined) {
      if (!/^\d{1,15}$/.test(length)) throw new Http1Error("PROTOCOL", `Invalid content-length from the upstream: ${length}`)
      const remaining = Number(length)
      this.checkSize(remaining)
      state.body = { _tag: "Length", remaining }
      // A large answer goes straight into one buffer of its size: no chunks held, no copy joining them at the end.
      if (remaining > PREALLOCATE_BYTES) state.filled = Buffer.allocUnsafeSlow(remaining)
    } else {
      state.body = { _tag: "UntilClose" }
    }
    if (state.body._tag === "UntilClose") state.keepAlive = false
  }
}
