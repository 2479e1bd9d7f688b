/**
 * A small forward HTTP proxy for tests: `CONNECT` tunnels (for `https:` targets) and absolute-form requests (plain
 * `http:` ones, e.g. `GET http://host/path`), recording what it saw. With `refuse`, it answers every `CONNECT` and
 * request with that status instead (a proxy denying access).
 */
import { Effect } from "effect"
import * as http from "node:http"
import * as net from "node:net"

export interface TestProxy {
  /** `http://127.0.0.1:port`, for `HTTP_PROXY` / `HTTPS_PROXY`. */
  readonly url: string
  /** The `host:port` of each `CONNECT`, in order. */
  readonly connects: Array<string>
  /** The absolute URL of each plain request, in order. */
  readonly requests: Array<string>
  /** Stops listening and ends every connection and tunnel. */
  readonly close: () => Promise<void>
}

export interface TestProxyOptions {
  /** Answer every `CONNECT` and request with this status (e.g. 403, 407, 502) instead of forwarding it. */
  readonly refuse?: number
}

/** Starts a proxy on a random local port. */
export const startProxy = (options: TestProxyOptions = {}): Promise<TestProxy> => {
  const connects: Array<string> = []
  const requests: Array<string> = []
  const sockets = new Set<net.Socket>()
  const track = (socket: net.Socket) => {
    sockets.add(socket)
    socket.on("close", () => sockets.delete(socket))
    socket.on("error", () => socket.destroy())
  }
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? "")
    if (options.refuse !== undefined) return void res.writeHead(options.refuse, { "content-length": "0" }).end()
    let target: URL
    try {
      target = new URL(req.url ?? "")
    } catch {
      return void res.writeHead(400, { "content-length": "0" }).end()
    }
    const headers = { ...req.headers }
    delete headers["proxy-connection"]
    delete headers["proxy-authorization"]
    const upstream = http.request(target, { method: req.method, headers, agent: false }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    upstream.on("error", () => (res.headersSent ? res.destroy() : res.writeHead(502, { "content-length": "0" }).end()))
    req.pipe(upstream)
  })
  server.on("connection", track)
  server.on("connect", (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const authority = req.url ?? ""
    connects.push(authority)
    if (options.refuse !== undefined) {
      return void client.end(`HTTP/1.1 ${options.refuse} Refused\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`)
    }
    const colon = authority.lastIndexOf(":")
    const host = authority.slice(0, colon).replace(/^\[|\]$/g, "")
    const upstream = net.connect(Number(authority.slice(colon + 1)), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n")
      if (head.length > 0) upstream.write(head)
      upstream.pipe(client)
      client.pipe(upstream)
    })
    track(upstream)
    upstream.on("error", () => client.destroy())
    upstream.on("close", () => client.destroy())
    client.on("close", () => upstream.destroy())
  })
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      resolve({
        url: `http://127.0.0.1:${port}`,
        connects,
        requests,
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy()
            server.close(() => done())
          })
      })
    })
  )
}

/** A proxy for the scope of a test, closed with it. */
export const testProxy = (options: TestProxyOptions = {}) =>
  Effect.acquireRelease(Effect.promise(() => startProxy(options)), (proxy) => Effect.promise(() => proxy.close()))
