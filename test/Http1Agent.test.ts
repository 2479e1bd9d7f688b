/** The upstream HTTP/1.1 client against scripted servers: framing, keep-alive, timeouts, aborts, TLS. */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as net from "node:net"
import * as tls from "node:tls"
import { Http1Agent, type Http1Error, type Http1Request, type Http1Response } from "../src/inference/Http1Agent.js"
import * as UpstreamHttpClient from "../src/inference/UpstreamHttpClient.js"

/** A self-signed certificate for localhost and 127.0.0.1 (test only). */
const CERT = `-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUczR81Pa8SS/4e8/JHw74VJm0SCIwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyOTEzMTkyMFoYDzIxMjYxMTA1
MTMxOTIwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATo9a5YrivzVx6/V6eQi14wBIlHvI96oqVbKAWGabnIDokxbJV5QYdG
mtukr9amVWgsSHx62tvsXGtDsOJeskp/o28wbTAdBgNVHQ4EFgQUiblxOnrRIVaN
PX3ygCf0/Elx7S8wHwYDVR0jBBgwFoAUiblxOnrRIVaNPX3ygCf0/Elx7S8wDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAM8FDrm7YH85nV8qrcE8xLVJKljzF2YupmPlVxljaV+dAiEA
sRdSTQ5YHc1LwWXBbeXoBi7XfjtnXWA+v+th7uvfuRc=
-----END CERTIFICATE-----`
const KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnkOhFyWbFFBQnF1o
iO1yZfVXgpL7+RK/XH5cLkeWz7ChRANCAATo9a5YrivzVx6/V6eQi14wBIlHvI96
oqVbKAWGabnIDokxbJV5QYdGmtukr9amVWgsSHx62tvsXGtDsOJeskp/
-----END PRIVATE KEY-----`

interface Scripted {
  readonly url: string
  /** Connections accepted so far. */
  readonly connections: () => number
  /** Requests received so far (their heads and bodies as text). */
  readonly requests: Array<string>
  readonly close: () => Promise<void>
}

/**
 * A server that answers each request with `answer(n, socket)` (n counts requests on that connection from 1), after
 * reading the request's head and content-length body. `answer` writes whatever it likes, or nothing.
 */
const scriptedServer = (answer: (n: number, socket: net.Socket) => void, secure = false) =>
  Effect.acquireRelease(
    Effect.async<Scripted>((resume) => {
      let connections = 0
      const requests: Array<string> = []
      const sockets = new Set<net.Socket>()
      const onConnection = (socket: net.Socket) => {
        connections++
        sockets.add(socket)
        socket.on("close", () => sockets.delete(socket))
        socket.on("error", () => {})
        let buffered = Buffer.alloc(0)
        let n = 0
        socket.on("data", (chunk) => {
          buffered = Buffer.concat([buffered, chunk])
          for (;;) {
            const end = buffered.indexOf("\r\n\r\n")
            if (end < 0) return
            const head = buffered.toString("latin1", 0, end)
            const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0)
            if (buffered.length < end + 4 + length) return
            requests.push(buffered.toString("utf8", 0, end + 4 + length))
            buffered = buffered.subarray(end + 4 + length)
            answer(++n, socket)
          }
        })
      }
      const server = secure ? tls.createServer({ cert: CERT, key: KEY }, onConnection) : net.createServer(onConnection)
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as net.AddressInfo
        resume(Effect.succeed({
          url: `${secure ? "https" : "http"}://127.0.0.1:${port}`,
          connections: () => connections,
          requests,
          close: () =>
            new Promise<void>((done) => {
              for (const socket of sockets) socket.destroy()
              server.close(() => done())
            })
        }))
      })
    }),
    (server) => Effect.promise(() => server.close())
  )

const agentFor = (options: { timeoutMs?: number; tls?: tls.ConnectionOptions; maxBodyBytes?: number } = {}) =>
  Effect.acquireRelease(
    Effect.sync(() => new Http1Agent({ timeoutMs: options.timeoutMs ?? 5000, tls: options.tls, maxBodyBytes: options.maxBodyBytes ?? 1024 })),
    (agent) => Effect.sync(() => agent.close())
  )

const post = (path = "/v1/chat/completions", body: string | null = `{"model":"m"}`): Http1Request => ({
  method: "POST",
  path,
  headers: { "content-type": "application/json", authorization: "Bearer k" },
  body
})

const send = (agent: Http1Agent, origin: string, request = post()) =>
  Effect.async<Http1Response, Http1Error>((resume) => {
    agent.request(origin, request, (error, response) => resume(error ? Effect.fail(error) : Effect.succeed(response!)))
  })

/** Writes `text` in pieces of random sizes, each in its own turn, so the client sees it split anywhere. */
const writeInPieces = async (socket: net.Socket, text: string, seed: number) => {
  const bytes = Buffer.from(text)
  let state = seed
  for (let at = 0; at < bytes.length;) {
    state = (state * 1103515245 + 12345) % 2147483648
    const size = 1 + (state % 7)
    socket.write(bytes.subarray(at, at + size))
    at += size
    await new Promise((resolve) => setTimeout(resolve, 1))
  }
}

const json = `{"id":"chatcmpl-1","choices":[{"message":{"content":"héllo 😀"}}]}`

describe("Http1Agent", () => {
  it.scoped("sends the request as given and reads a content-length answer split anywhere", () =>
    Effect.gen(function*() {
      let seed = 1
      const server = yield* scriptedServer((_, socket) => {
        void writeInPieces(socket, `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: req_7\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`, seed++)
      })
      const agent = yield* agentFor()
      for (let i = 0; i < 3; i++) {
        const response = yield* send(agent, server.url)
        expect([response.status, response.headers["x-request-id"], response.body.toString()]).toEqual([200, "req_7", json])
      }
      expect(server.requests[0]).toBe(
        `POST /v1/chat/completions HTTP/1.1\r\nhost: ${server.url.slice(7)}\r\ncontent-type: application/json\r\n` +
          `authorization: Bearer k\r\ncontent-length: 13\r\n\r\n{"model":"m"}`
      )
      expect(server.connections()).toBe(1) // kept alive
    }))

  it.scoped("reads chunked answers (extensions, trailers) split anywhere, after skipping informational answers", () =>
    Effect.gen(function*() {
      const body = Buffer.from(json)
      const chunked = `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n` +
        `5;ext=1\r\n${body.subarray(0, 5)}\r\n${(body.length - 5).toString(16)}\r\n${body.subarray(5)}\r\n0\r\nX-Trailer: t\r\n\r\n`
      let seed = 7
      const server = yield* scriptedServer((_, socket) => void writeInPieces(socket, chunked, seed++))
      const agent = yield* agentFor()
      for (let i = 0; i < 3; i++) {
        const response = yield* send(agent, server.url)
        expect([response.status, response.headers["set-cookie"], response.body.toString()]).toEqual([201, "a=1, b=2", json])
      }
      expect(server.connections()).toBe(1)
    }))

  it.scoped("a body ended by the connection, and connection: close, are read whole and not reused", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((n, socket) => {
        if (n > 1) return
        const closing = server.connections() % 2 === 0
        socket.end(closing
          ? `HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok`
          : `HTTP/1.0 200 OK\r\n\r\nuntil the end`)
      })
      const agent = yield* agentFor()
      expect((yield* send(agent, server.url)).body.toString()).toBe("until the end")
      expect((yield* send(agent, server.url)).body.toString()).toBe("ok")
      expect(server.connections()).toBe(2)
    }))

  it.scoped("a kept-alive connection the server closed as the request went out: sent again on a new one", () =>
    Effect.gen(function*() {
      // Each connection answers its first request and drops at the second without a word (a keep-alive race).
      const server = yield* scriptedServer((n, socket) => {
        if (n === 1) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`)
        else socket.destroy()
      })
      const agent = yield* agentFor()
      for (let i = 0; i < 3; i++) expect((yield* send(agent, server.url)).body.toString()).toBe("ok")
      expect(server.connections()).toBe(3)
      expect(server.requests.length).toBe(5) // 3 answered, 2 dropped and sent again
    }))

  it.live("a kept-alive connection that drops a request long after it went out: an error, not sent twice", () =>
    Effect.gen(function*() {
      // The upstream may have been working on it (a model killed mid-generation): sending it again could run it twice.
      const server = yield* scriptedServer((n, socket) => {
        if (n === 1) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`)
        else setTimeout(() => socket.destroy(), 1200)
      })
      const agent = yield* agentFor()
      yield* send(agent, server.url)
      expect((yield* Effect.flip(send(agent, server.url))).code).toBe("CONNECTION_CLOSED")
      expect(server.requests.length).toBe(2)
    }).pipe(Effect.scoped))

  it.scoped("both framings at once: the transfer coding wins and the connection is not reused", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) =>
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`))
      const agent = yield* agentFor()
      for (let i = 0; i < 2; i++) expect((yield* send(agent, server.url)).body.toString()).toBe("ok")
      expect(server.connections()).toBe(2)
    }))

  it.scoped("an answer larger than the limit fails, whether announced or streamed", () =>
    Effect.gen(function*() {
      const big = "x".repeat(2000)
      const answers = [
        `HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n${big}`,
        `HTTP/1.1 200 OK\r\n\r\n${big}`,
        `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n${big}\r\n0\r\n\r\n`
      ]
      const server = yield* scriptedServer((_, socket) => socket.end(answers[server.connections() - 1]!))
      const agent = yield* agentFor({ maxBodyBytes: 1024 })
      for (let i = 0; i < answers.length; i++) {
        expect((yield* Effect.flip(send(agent, server.url))).code).toBe("BODY_TOO_LARGE")
      }
    }))

  it.live("an answer that passes the limit fails then, without waiting for its end", () =>
    Effect.gen(function*() {
      // Neither announced nor ended: 600-byte chunks, one every 20 ms, for as long as the connection lasts.
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`)
        const timer = setInterval(() => socket.write(`258\r\n${"y".repeat(600)}\r\n`), 20)
        socket.on("close", () => clearInterval(timer))
      })
      const agent = yield* agentFor({ maxBodyBytes: 1024, timeoutMs: 10_000 })
      const started = Date.now()
      expect((yield* Effect.flip(send(agent, server.url))).code).toBe("BODY_TOO_LARGE")
      expect(Date.now() - started).toBeLessThan(1000) // the second chunk passes the limit, after ~40 ms
    }).pipe(Effect.scoped))

  it.scoped("a large announced answer arriving in many pieces is read whole and exact", () =>
    Effect.gen(function*() {
      const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => String.fromCharCode(33 + (i * 7) % 90)).join(""))
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`)
        for (let at = 0; at < body.length; at += 40_000) socket.write(body.subarray(at, at + 40_000))
      })
      const agent = yield* agentFor({ maxBodyBytes: 1024 * 1024 })
      for (let i = 0; i < 2; i++) expect((yield* send(agent, server.url)).body.equals(body)).toBe(true)
      expect(server.connections()).toBe(1)
    }))

  it.scoped("a header that would split the request fails the call, without opening a connection", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(() => {})
      const agent = yield* agentFor()
      const error = yield* Effect.flip(send(agent, server.url, { ...post(), headers: { authorization: "Bearer k\r\nx-evil: 1" } }))
      expect(error.code).toBe("PROTOCOL")
      expect(server.connections()).toBe(0)
    }))

  it.scoped("a POST without a body says content-length: 0; the HttpClient's bytes are the body's own", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}`))
      const agent = yield* agentFor()
      yield* send(agent, server.url, { ...post(), body: null })
      expect(server.requests[0]).toContain("content-length: 0\r\n\r\n")
      const response = yield* UpstreamHttpClient.make(agent).get(`${server.url}/v1/models`)
      expect(new TextDecoder().decode(yield* response.arrayBuffer)).toBe(`{"a":1}`)
      expect(yield* response.json).toEqual({ a: 1 })
    }))

  it.scoped("a connection that fails after part of the answer is an error, not sent again", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial`)
        setTimeout(() => socket.destroy(), 20)
      })
      const agent = yield* agentFor()
      const error = yield* Effect.flip(send(agent, server.url))
      expect(error.code).toBe("CONNECTION_CLOSED")
      expect(server.requests.length).toBe(1)
    }))

  it.scoped("malformed answers are protocol errors", () =>
    Effect.gen(function*() {
      const answers = ["HTTP/2 200\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
      const server = yield* scriptedServer((_, socket) => socket.write(answers[server.connections() - 1]!))
      const agent = yield* agentFor()
      for (let i = 0; i < answers.length; i++) expect((yield* Effect.flip(send(agent, server.url))).code).toBe("PROTOCOL")
    }))

  it.live("the time limit bounds the whole exchange: an upstream that trickles its body times out too", () =>
    Effect.gen(function*() {
      // A byte every 30 ms of a 100-byte body: 3 s in all, never silent for long.
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n`)
        const timer = setInterval(() => socket.write("z"), 30)
        socket.on("close", () => clearInterval(timer))
      })
      const agent = yield* agentFor({ timeoutMs: 300 })
      const started = Date.now()
      const error = yield* Effect.flip(send(agent, server.url))
      expect(error.code).toBe("BODY_TIMEOUT")
      expect(Date.now() - started).toBeLessThan(1500)
    }).pipe(Effect.scoped))

  it.live("a silent upstream times out (headers), an upstream that stops mid-body too (body)", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => {
        if (server.connections() === 2) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc`)
      })
      const agent = yield* agentFor({ timeoutMs: 200 })
      const started = Date.now()
      expect((yield* Effect.flip(send(agent, server.url))).code).toBe("HEADERS_TIMEOUT")
      expect((yield* Effect.flip(send(agent, server.url))).code).toBe("BODY_TIMEOUT")
      expect(Date.now() - started).toBeLessThan(2000)
    }).pipe(Effect.scoped))

  it.live("aborting closes the request's connection and calls nobody back", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(() => {})
      const agent = yield* agentFor()
      let called = false
      const abort = agent.request(server.url, post(), () => (called = true))
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 50)))
      expect(server.requests.length).toBe(1)
      abort()
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 50)))
      expect(called).toBe(false)
      expect(server.connections()).toBe(1)
      // The server saw its connection go.
      const again = yield* send(agent, server.url, { ...post(), method: "GET", body: null }).pipe(Effect.timeout("100 millis"), Effect.option)
      expect(again._tag).toBe("None") // a new connection, which this server never answers either
      expect(server.connections()).toBe(2)
    }).pipe(Effect.scoped))

  it.scoped("speaks TLS to https origins", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`), true)
      const agent = yield* agentFor({ tls: { ca: CERT } })
      expect((yield* send(agent, server.url)).body.toString()).toBe("ok")
      const untrusted = yield* agentFor()
      expect((yield* Effect.flip(send(untrusted, server.url))).code).toBe("SOCKET")
    }))
})
