/**
 * A lean HTTP/1.1 client for the upstream: keep-alive connections per origin (`http:` and `https:`), one request
 * at a time on each, the response read whole (up to `maxBodyBytes`, checked as the bytes arrive). It exists for
 * speed: inference calls are small JSON exchanges at thousands a second, and undici's general machinery (request
 * objects, header validation, a WebAssembly parser calling back per header, handler wrappers) cost ~60–75 µs of CPU
 * per call where this costs ~30 (measured against the simulator, the answer's JSON parse included in both). What it
 * does not do, the upstream does not need: pipelining, HTTP/2, proxies, compression (no `accept-encoding` is sent,
 * so none comes back), upgrades.
 *
 * Responses are framed by `content-length`, `transfer-encoding: chunked` or the end of the connection, as RFC 9112
 * says; informational (1xx) responses are skipped. A connection is reused when the response allows it, and idle
 * connections are dropped before the server's advertised keep-alive timeout. A request whose reused connection
 * turns out to be closed at once, before any byte of the answer (the server timed it out as we sent), is sent again
 * once on a new connection, as browsers do; any other failure is the caller's to retry (a POST that may have
 * reached a model is never sent twice here).
 *
 * Time: `timeoutMs` bounds a whole exchange, from sending the request to the answer's last byte, so an upstream
 * that trickles its body cannot hold a request longer than one that says nothing. One timer per agent checks the
 * deadlines (about once a second), not a timer per request.
 *
 * Memory: an answer whose `content-length` is known and large is copied into one buffer of that size as it
 * arrives (the socket's chunks are dropped at once); a small one arriving in one chunk is not copied at all; a
 * chunked or close-delimited one is gathered in chunks and joined once at its end.
 */
import * as net from "node:net"
import * as tls from "node:tls"

export interface Http1Request {
  readonly method: string
  /** Path and query, e.g. `/v1/chat/completions`. */
  readonly path: string
  /** Header names in lower case; `host`, `content-length`, `connection` and `transfer-encoding` are set here. */
  readonly headers: Readonly<Record<string, string>>
  readonly body: string | Uint8Array | null
}

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

export type Http1Callback = (error: Http1Error | undefined, response?: Http1Response) => void

export interface Http1AgentOptions {
  /**
   * Longest time one exchange may take, from sending the request to the last byte of the answer (headers and
   * body; checked about every second, or twice per `timeoutMs` when that is shorter).
   */
  readonly timeoutMs: number
  /** How long an idle connection is kept when the server does not say (`keep-alive: timeout=N`). */
  readonly idleTimeoutMs?: number
  /** For `https:` origins, e.g. `ca` for a private certificate authority. */
  readonly tls?: tls.ConnectionOptions | undefined
  /**
   * The largest answer body read (default 256 MiB): one that announces more (`content-length`, a chunk size) fails
   * at once, one that sends more fails as soon as it passes the limit, with `BODY_TOO_LARGE`.
   */
  readonly maxBodyBytes?: number
}

const MAX_HEAD_BYTES = 64 * 1024
/**
 * How soon after sending a failure on a reused connection still counts as the keep-alive race (the server closed
 * the connection as the request went out), and so is sent again: later, the upstream may be working on it.
 */
const RACE_WINDOW_MS = 1000
/** Methods whose requests are sent with a `content-length` even without a body (some proxies insist). */
const bodyMethods = new Set(["POST", "PUT", "PATCH"])
/** Bodies announcing more bytes than this are copied into one buffer as they arrive instead of kept in chunks. */
const PREALLOCATE_BYTES = 64 * 1024
const CRLF = Buffer.from("\r\n")
const HEAD_END = Buffer.from("\r\n\r\n")

/** Header names whose values this client writes itself. */
const reserved = new Set(["host", "content-length", "connection", "transfer-encoding"])
const headerToken = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/
const badValue = /[\r\n\0]/

type Body =
  | { readonly _tag: "Length"; remaining: number }
  | { readonly _tag: "Chunked"; state: "size" | "data" | "dataEnd" | "trailers"; remaining: number }
  | { readonly _tag: "UntilClose" }

interface Exchange {
  readonly request: Http1Request
  readonly callback: Http1Callback
  /** Sent on a connection that had served a request before (see `Connection.served`). */
  readonly reused: boolean
  readonly sentAt: number
  /** When the whole exchange must be over (`performance.now()` time): the request's time limit. */
  readonly deadline: number
  /** Body bytes read so far. */
  received: number
  /** Whether any byte of the answer arrived. */
  answered: boolean
  status: number
  headers: Record<string, string>
  body: Body | undefined
  /** The body's bytes so far, when gathered in pieces (see `filled`). */
  chunks: Array<Buffer>
  /** The whole body's buffer, allocated at its announced size when that is large; filled up to `received`. */
  filled: Buffer | undefined
  keepAlive: boolean
  keepAliveMs: number | undefined
}

/** One socket to an origin, serving one exchange at a time. */
class Connection {
  readonly socket: net.Socket
  exchange: Exchange | undefined
  /** Bytes received and not yet parsed. */
  private pending: Buffer | undefined
  /** Served an exchange already: a failure before any answer may be a keep-alive race. */
  served = false
  idleUntil = 0
  closed = false

  constructor(readonly pool: Pool, url: URL) {
    const port = Number(url.port || (url.protocol === "https:" ? 443 : 80))
    const host = url.hostname.replace(/^\[|\]$/g, "")
    this.socket = url.protocol === "https:"
      ? tls.connect({ ...pool.tls, host, port, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ["http/1.1"] })
      : net.connect({ host, port })
    this.socket.setNoDelay(true)
    this.socket.setKeepAlive(true, 60_000)
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk))
    this.socket.on("end", () => this.onEnd())
    this.socket.on("error", (error) => this.fail(new Http1Error("SOCKET", error.message, { cause: error })))
    this.socket.on("close", () => this.fail(new Http1Error("CONNECTION_CLOSED", "The upstream closed the connection")))
  }

  send(exchange: Exchange) {
    this.exchange = exchange
    this.pending = undefined
    const { request } = exchange
    const head = `${request.method} ${request.path} HTTP/1.1\r\nhost: ${this.pool.host}\r\n${this.pool.headerBlock(request.headers)}`
    const body = request.body
    if (body === null) this.socket.write(bodyMethods.has(request.method) ? `${head}content-length: 0\r\n\r\n` : `${head}\r\n`)
    else if (typeof body === "string") this.socket.write(`${head}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
    else {
      this.socket.cork()
      this.socket.write(`${head}content-length: ${body.byteLength}\r\n\r\n`)
      this.socket.write(body)
      this.socket.uncork()
    }
  }

  /** Ends the connection, failing its exchange (if any) with `error`. */
  fail(error: Http1Error) {
    const exchange = this.exchange
    this.exchange = undefined
    this.close()
    if (exchange === undefined) return
    const race = exchange.reused && !exchange.answered && performance.now() - exchange.sentAt < RACE_WINDOW_MS &&
      (error.code === "SOCKET" || error.code === "CONNECTION_CLOSED")
    if (race) this.pool.dispatch(exchange.request, exchange.callback, false, exchange.deadline)
    else exchange.callback(error)
  }

  /** Destroys the socket (once) and takes the connection out of its pool. */
  private close() {
    if (this.closed) return
    this.closed = true
    this.socket.destroy()
    this.pool.forget(this)
  }

  private onEnd() {
    const exchange = this.exchange
    if (exchange?.body?._tag === "UntilClose") return this.complete(exchange, false)
    this.fail(new Http1Error("CONNECTION_CLOSED", "The upstream closed the connection before the end of the response"))
  }

  private onData(chunk: Buffer) {
    const exchange = this.exchange
    if (exchange === undefined) {
      // Bytes nobody asked for: the connection can no longer be trusted.
      return this.fail(new Http1Error("PROTOCOL", "The upstream sent data without a request"))
    }
    exchange.answered = true
    this.pending = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    try {
      this.parse(exchange)
    } catch (error) {
      this.fail(error instanceof Http1Error ? error : new Http1Error("PROTOCOL", String(error)))
    }
  }

  /** Consumes as much of `pending` as the exchange's state allows. */
  private parse(exchange: Exchange) {
    for (;;) {
      const data = this.pending
      if (data === undefined || this.exchange !== exchange) return
      const body = exchange.body
      if (body === undefined) {
        const end = data.indexOf(HEAD_END)
        if (end < 0) {
          if (data.length > MAX_HEAD_BYTES) throw new Http1Error("PROTOCOL", "The upstream's response head is too large")
          return
        }
        this.take(end + 4)
        this.readHead(exchange, data.toString("latin1", 0, end))
        continue
      }
      if (body._tag === "UntilClose") {
        this.collect(exchange, data)
        this.pending = undefined
        return
      }
      if (body._tag === "Length") {
        if (this.consume(exchange, body, data) === 0) return this.complete(exchange, exchange.keepAlive)
        continue
      }
      // Chunked: size line, data, CRLF, … a zero size, then trailer lines up to an empty one.
      if (body.state === "data") {
        if (this.consume(exchange, body, data) === 0) body.state = "dataEnd"
        continue
      }
      const lineEnd = data.indexOf(CRLF)
      if (lineEnd < 0) {
        if (data.length > MAX_HEAD_BYTES) throw new Http1Error("PROTOCOL", "A chunk line of the upstream's response is too long")
        return
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
        this.checkSize(exchange.received + body.remaining)
        body.state = body.remaining === 0 ? "trailers" : "data"
      } else if (line === "") {
        return this.complete(exchange, exchange.keepAlive)
      }
    }
  }

  /** Takes what `data` holds of the `remaining` bytes of a body or chunk into the answer; returns what is left. */
  private consume(exchange: Exchange, body: { remaining: number }, data: Buffer): number {
    const piece = data.length <= body.remaining ? data : data.subarray(0, body.remaining)
    this.collect(exchange, piece)
    this.take(piece.length)
    return (body.remaining -= piece.length)
  }

  private collect(exchange: Exchange, piece: Buffer) {
    const at = exchange.received
    exchange.received += piece.length
    this.checkSize(exchange.received)
    if (exchange.filled !== undefined) piece.copy(exchange.filled, at)
    else exchange.chunks.push(piece)
  }

  /** Fails the exchange (by throwing, see `parse`) when its answer has, or announces, more bytes than allowed. */
  private checkSize(bytes: number) {
    if (bytes > this.pool.maxBodyBytes) {
      throw new Http1Error("BODY_TOO_LARGE", `The upstream's answer is larger than ${this.pool.maxBodyBytes} bytes`)
    }
  }

  /** Drops the first `n` bytes of `pending`. */
  private take(n: number) {
    const data = this.pending!
    this.pending = n >= data.length ? undefined : data.subarray(n)
  }

  private readHead(exchange: Exchange, head: string) {
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
    exchange.status = status
    exchange.headers = headers
    const connection = headers["connection"]?.toLowerCase()
    exchange.keepAlive = statusLine[1] === "1" ? !/\bclose\b/.test(connection ?? "") : /\bkeep-alive\b/.test(connection ?? "")
    const timeout = /\btimeout=(\d+)/.exec(headers["keep-alive"] ?? "")
    exchange.keepAliveMs = timeout === null ? undefined : Number(timeout[1]) * 1000
    const coding = headers["transfer-encoding"]
    const length = headers["content-length"]
    if (exchange.request.method === "HEAD" || status === 204 || status === 304) {
      exchange.body = { _tag: "Length", remaining: 0 }
    } else if (coding !== undefined) {
      const chunked = /(^|,)\s*chunked\s*$/i.test(coding)
      exchange.body = chunked ? { _tag: "Chunked", state: "size", remaining: 0 } : { _tag: "UntilClose" }
      // Both framings at once: the transfer coding wins, and the connection is not trusted after (RFC 9112 §6.3).
      if (length !== undefined) exchange.keepAlive = false
    } else if (length !== undefined) {
      if (!/^\d{1,15}$/.test(length)) throw new Http1Error("PROTOCOL", `Invalid content-length from the upstream: ${length}`)
      const remaining = Number(length)
      this.checkSize(remaining)
      exchange.body = { _tag: "Length", remaining }
      // A large answer goes straight into one buffer of its size: no chunks held, no copy joining them at the end.
      if (remaining > PREALLOCATE_BYTES) exchange.filled = Buffer.allocUnsafeSlow(remaining)
    } else {
      exchange.body = { _tag: "UntilClose" }
    }
    if (exchange.body._tag === "UntilClose") exchange.keepAlive = false
    if (exchange.body._tag === "Length" && exchange.body.remaining === 0) this.complete(exchange, exchange.keepAlive)
  }

  private complete(exchange: Exchange, reusable: boolean) {
    this.exchange = undefined
    this.served = true
    const body = exchange.filled ?? (exchange.chunks.length === 1 ? exchange.chunks[0]! : Buffer.concat(exchange.chunks))
    exchange.chunks = []
    exchange.filled = undefined
    // Bytes beyond the answer mean the connection is out of step: it is not reused.
    if (reusable && this.pending === undefined && !this.closed) this.pool.release(this, exchange.keepAliveMs)
    else this.close()
    exchange.callback(undefined, { status: exchange.status, headers: exchange.headers, body })
  }
}

/** The connections to one origin. */
class Pool {
  readonly host: string
  private readonly idle: Array<Connection> = []
  readonly busy = new Set<Connection>()
  private readonly headerBlocks = new WeakMap<object, string>()

  constructor(
    private readonly url: URL,
    readonly timeoutMs: number,
    private readonly idleTimeoutMs: number,
    readonly maxBodyBytes: number,
    readonly tls: tls.ConnectionOptions | undefined
  ) {
    this.host = url.host
  }

  /** The request headers as written, checked and built once per headers object (requests share their template's). */
  headerBlock(headers: Readonly<Record<string, string>>): string {
    let block = this.headerBlocks.get(headers)
    if (block === undefined) {
      block = ""
      for (const name in headers) {
        const lower = name.toLowerCase()
        if (reserved.has(lower)) continue
        const value = headers[name]!
        if (!headerToken.test(lower) || badValue.test(value)) throw new Http1Error("PROTOCOL", `Invalid request header ${name}`)
        block += `${lower}: ${value}\r\n`
      }
      this.headerBlocks.set(headers, block)
    }
    return block
  }

  /**
   * Sends `request` on an idle connection (unless `mayReuse` is false) or a new one, to be over by `deadline`
   * (default: `timeoutMs` from now). When no connection can even be opened, `callback` gets the error on a later
   * tick and there is no connection to return.
   */
  dispatch(request: Http1Request, callback: Http1Callback, mayReuse = true, deadline?: number): Connection | undefined {
    const now = performance.now()
    let connection: Connection | undefined
    while (mayReuse && (connection = this.idle.pop()) !== undefined && connection.idleUntil <= now) {
      connection.fail(new Http1Error("CONNECTION_CLOSED", "idle too long")) // its server may have closed it by now
    }
    if (connection === undefined) {
      try {
        connection = new Connection(this, this.url)
      } catch (cause) {
        const error = new Http1Error("SOCKET", `Cannot connect to ${this.host}: ${String(cause)}`, { cause })
        queueMicrotask(() => callback(error))
        return undefined
      }
    }
    this.busy.add(connection)
    connection.send({
      request,
      callback,
      reused: connection.served,
      sentAt: now,
      deadline: deadline ?? now + this.timeoutMs,
      received: 0,
      answered: false,
      status: 0,
      headers: {},
      body: undefined,
      chunks: [],
      filled: undefined,
      keepAlive: false,
      keepAliveMs: undefined
    })
    return connection
  }

  release(connection: Connection, keepAliveMs: number | undefined) {
    this.busy.delete(connection)
    // A second before the server's own timeout, so that we never send on a connection it is closing.
    connection.idleUntil = performance.now() + (keepAliveMs === undefined ? this.idleTimeoutMs : Math.max(0, keepAliveMs - 1000))
    this.idle.push(connection)
  }

  forget(connection: Connection) {
    this.busy.delete(connection)
    const at = this.idle.indexOf(connection)
    if (at >= 0) this.idle.splice(at, 1)
  }

  /** Times out exchanges past their deadline (however much of the answer came) and drops idle connections past theirs. */
  sweep(now: number) {
    for (const connection of this.busy) {
      const exchange = connection.exchange
      if (exchange !== undefined && exchange.deadline <= now) {
        connection.fail(exchange.body === undefined
          ? new Http1Error("HEADERS_TIMEOUT", `The upstream did not answer within ${this.timeoutMs} ms`)
          : new Http1Error("BODY_TIMEOUT", `The upstream did not finish its answer within ${this.timeoutMs} ms`))
      }
    }
    for (const connection of [...this.idle]) {
      if (connection.idleUntil <= now) connection.fail(new Http1Error("CONNECTION_CLOSED", "idle too long"))
    }
  }

  close() {
    for (const connection of [...this.busy, ...this.idle]) connection.fail(new Http1Error("ABORTED", "The client was closed"))
  }
}

/** Connections to every origin asked for, until `close`. */
export class Http1Agent {
  private readonly pools = new Map<string, Pool>()
  private readonly timer: NodeJS.Timeout
  private readonly timeoutMs: number
  private readonly idleTimeoutMs: number
  private readonly tls: tls.ConnectionOptions | undefined
  private readonly maxBodyBytes: number
  private closed = false

  constructor(options: Http1AgentOptions) {
    this.tls = options.tls
    this.maxBodyBytes = options.maxBodyBytes ?? 256 * 1024 * 1024
    this.timeoutMs = options.timeoutMs
    this.idleTimeoutMs = options.idleTimeoutMs ?? 4000
    this.timer = setInterval(() => {
      const now = performance.now()
      for (const pool of this.pools.values()) pool.sweep(now)
    }, Math.min(1000, Math.max(10, this.timeoutMs / 2)))
    this.timer.unref()
  }

  /** The pool of `origin`, or why there cannot be one. */
  private poolOf(origin: string): Pool | Http1Error {
    if (this.closed) return new Http1Error("ABORTED", "The client was closed")
    let pool = this.pools.get(origin)
    if (pool === undefined) {
      let url: URL
      try {
        url = new URL(origin)
      } catch {
        return new Http1Error("PROTOCOL", `Invalid origin ${origin}`)
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") return new Http1Error("PROTOCOL", `Unsupported protocol ${url.protocol}`)
      pool = new Pool(url, this.timeoutMs, this.idleTimeoutMs, this.maxBodyBytes, this.tls)
      this.pools.set(origin, pool)
    }
    return pool
  }

  /**
   * Sends `request` to `origin` (`http://host:port` or `https://…`); `callback` gets the whole response or the
   * error, once, never before this returns. Returns a function that aborts the request (its connection is closed;
   * the callback is not called).
   */
  request(origin: string, request: Http1Request, callback: Http1Callback): () => void {
    const pool = this.poolOf(origin)
    let invalid: Http1Error | undefined = pool instanceof Http1Error ? pool : undefined
    if (invalid === undefined) {
      try {
        ;(pool as Pool).headerBlock(request.headers) // checked before a connection is taken
      } catch (error) {
        invalid = error as Http1Error
      }
    }
    if (invalid !== undefined) {
      const error = invalid
      let aborted = false
      queueMicrotask(() => aborted || callback(error))
      return () => (aborted = true)
    }
    return this.send(pool as Pool, request, callback)
  }

  private send(pool: Pool, request: Http1Request, callback: Http1Callback): () => void {
    let done = false
    let connection = pool.dispatch(request, (error, response) => {
      if (done) return
      done = true
      callback(error, response)
    })
    return () => {
      if (done) return
      done = true
      // The exchange may have moved to a new connection (a keep-alive race): find where it is now.
      if (connection?.exchange?.request !== request) connection = [...pool.busy].find((c) => c.exchange?.request === request)
      connection?.fail(new Http1Error("ABORTED", "The request was aborted"))
    }
  }

  close() {
    this.closed = true
    clearInterval(this.timer)
    for (const pool of this.pools.values()) pool.close()
    this.pools.clear()
  }
}
