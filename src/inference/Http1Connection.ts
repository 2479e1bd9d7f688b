/**
 * The connections of `Http1Agent` to one origin (`Pool`) and each connection (`Connection`): a socket (`net` or
 * `tls`) serving one exchange at a time, the request written whole, the answer read by a `ResponseReader`.
 *
 * A connection is reused when the response allows it, and idle connections are dropped before the server's
 * advertised keep-alive timeout. A request whose reused connection turns out to be closed at once, before any byte
 * of the answer (the server timed it out as we sent), is sent again once on a new connection, as browsers do; any
 * other failure is the caller's to retry (a POST that may have reached a model is never sent twice here).
 *
 * Nothing here keeps time on its own: each exchange carries its deadline, and the agent's timer calls `Pool.sweep`.
 */
import * as net from "node:net"
import * as tls from "node:tls"
import { Http1Error, type Http1Response, ResponseReader, responseOf, type ResponseState } from "./Http1Response.js"

export interface Http1Request {
  readonly method: string
  /** Path and query, e.g. `/v1/chat/completions`. */
  readonly path: string
  /** Header names in lower case; `host`, `content-length`, `connection` and `transfer-encoding` are set here. */
  readonly headers: Readonly<Record<string, string>>
  readonly body: string | Uint8Array | null
}

export type Http1Callback = (error: Http1Error | undefined, response?: Http1Response) => void

/**
 * How soon after sending a failure on a reused connection still counts as the keep-alive race (the server closed
 * the connection as the request went out), and so is sent again: later, the upstream may be working on it.
 */
const RACE_WINDOW_MS = 1000
/** Methods whose requests are sent with a `content-length` even without a body (some proxies insist). */
const bodyMethods = new Set(["POST", "PUT", "PATCH"])

/** Header names whose values this client writes itself. */
const reserved = new Set(["host", "content-length", "connection", "transfer-encoding"])
const headerToken = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/
const badValue = /[\r\n\0]/

/** One request and its answer as it is read (one object per request: the reader's state is part of it). */
interface Exchange extends ResponseState {
  readonly request: Http1Request
  readonly callback: Http1Callback
  /** Sent on a connection that had served a request before (see `Connection.served`). */
  readonly reused: boolean
  readonly sentAt: number
  /** When the whole exchange must be over (`performance.now()` time): the request's time limit. */
  readonly deadline: number
  /** Whether any byte of the answer arrived. */
  answered: boolean
}

/** One socket to an origin, serving one exchange at a time. */
class Connection {
  readonly socket: net.Socket
  exchange: Exchange | undefined
  private readonly reader: ResponseReader
  /** Served an exchange already: a failure before any answer may be a keep-alive race. */
  served = false
  idleUntil = 0
  closed = false

  constructor(readonly pool: Pool, url: URL) {
    this.reader = new ResponseReader(pool.maxBodyBytes)
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
    this.reader.pending = undefined
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
    try {
      if (this.reader.read(exchange, chunk)) this.complete(exchange, exchange.keepAlive)
    } catch (error) {
      this.fail(error instanceof Http1Error ? error : new Http1Error("PROTOCOL", String(error)))
    }
  }

  private complete(exchange: Exchange, reusable: boolean) {
    this.exchange = undefined
    this.served = true
    const response = responseOf(exchange)
    // Bytes beyond the answer mean the connection is out of step: it is not reused.
    if (reusable && this.reader.pending === undefined && !this.closed) this.pool.release(this, exchange.keepAliveMs)
    else this.close()
    exchange.callback(undefined, response)
  }
}
/** The connections to one origin. */
export class Pool {
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
