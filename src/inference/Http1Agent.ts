/**
 * A lean HTTP/1.1 client for the upstream: keep-alive connections per origin (`http:` and `https:`), one request
 * at a time on each, the response read whole (up to `maxBodyBytes`, checked as the bytes arrive). It exists for
 * speed: inference calls are small JSON exchanges at thousands a second, and undici's general machinery (request
 * objects, header validation, a WebAssembly parser calling back per header, handler wrappers) cost ~60–75 µs of CPU
 * per call where this costs ~30 (measured against the simulator, the answer's JSON parse included in both). What it
 * does not do, the upstream does not need: pipelining, HTTP/2, proxies, compression (no `accept-encoding` is sent,
 * so none comes back), upgrades.
 *
 * This file holds the agent (a pool per origin, the deadline timer, aborting a request) and is where callers import
 * from: it re-exports the request, response and error types. The connections (requests written, keep-alive, the
 * resend on a keep-alive race) are in `Http1Connection.ts`; reading an answer (framing, size limit) is in
 * `Http1Response.ts`.
 *
 * Time: `timeoutMs` bounds a whole exchange, from sending the request to the answer's last byte, so an upstream
 * that trickles its body cannot hold a request longer than one that says nothing. One timer per agent checks the
 * deadlines (about once a second), not a timer per request.
 */
import type * as tls from "node:tls"
import { type Http1Callback, type Http1Request, Pool } from "./Http1Connection.js"
import { Http1Error } from "./Http1Response.js"

export type { Http1Callback, Http1Request } from "./Http1Connection.js"
export { Http1Error, type Http1Response } from "./Http1Response.js"

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
