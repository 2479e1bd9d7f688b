/** The upstream HttpClient (undici's dispatch API) against scripted servers: framing, keep-alive, limits, aborts, TLS, proxies. */
import * as HttpBody from "@effect/platform/HttpBody"
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Option } from "effect"
import { readFileSync } from "node:fs"
import * as net from "node:net"
import * as tls from "node:tls"
import { Agent, type Dispatcher, EnvHttpProxyAgent } from "undici"
import { defaults } from "../src/Config.js"
import { connectionHint } from "../src/inference/connectionHints.js"
import { proxiedCall, proxiesOf, proxyProblem, unmatchedNoProxy } from "../src/inference/proxies.js"
import * as UpstreamHttpClient from "../src/inference/UpstreamHttpClient.js"
import { listeningLine } from "../src/observability/Lifecycle.js"
import { freePort } from "./support/ServerProcess.js"
import { testProxy } from "./support/Proxy.js"

/** A self-signed certificate for localhost and 127.0.0.1 (test only). */
const CERT = readFileSync(new URL("./fixtures/tls/localhost.crt", import.meta.url), "utf8")
const KEY = readFileSync(new URL("./fixtures/tls/localhost.key", import.meta.url), "utf8")

interface Scripted {
  readonly url: string
  /** Connections accepted so far (an aborted request's client connects again at once: undici 7.30). */
  readonly connections: () => number
  /** Connections that have ended so far. */
  readonly closed: () => number
  /** Requests received so far (their heads and bodies as text). */
  readonly requests: Array<string>
}

/**
 * A server that answers each request with `answer(n, socket)` (n counts requests on that connection from 1), after
 * reading the request's head and content-length body. `answer` writes whatever it likes, or nothing.
 */
const scriptedServer = (answer: (n: number, socket: net.Socket) => void, secure = false) =>
  Effect.acquireRelease(
    Effect.async<Scripted & { readonly close: () => Promise<void> }>((resume) => {
      let connections = 0
      let closed = 0
      const requests: Array<string> = []
      const sockets = new Set<net.Socket>()
      const onConnection = (socket: net.Socket) => {
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
      server.on("tlsClientError", () => {})
      // Counted as TCP connections, so that a TLS handshake the client gives up is one too.
      server.on("connection", (socket: net.Socket) => {
        connections++
        sockets.add(socket)
        socket.on("close", () => (closed++, sockets.delete(socket)))
        socket.on("error", () => {})
      })
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address() as net.AddressInfo
        resume(Effect.succeed({
          url: `${secure ? "https" : "http"}://127.0.0.1:${port}`,
          connections: () => connections,
          closed: () => closed,
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

const ok = (_: number, socket: net.Socket) => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok`)

/** A dispatcher for the test's scope (the module's own, or one given), destroyed with it. */
const scopedDispatcher = (make?: () => Dispatcher) =>
  make === undefined
    ? UpstreamHttpClient.dispatcher
    : Effect.acquireRelease(Effect.sync(make), (d) => Effect.promise(() => d.destroy()))

const clientFor = (options: { timeoutMs?: number; maxBodyBytes?: number; dispatcher?: () => Dispatcher } = {}) =>
  Effect.map(scopedDispatcher(options.dispatcher), (d) =>
    UpstreamHttpClient.make(d, { timeoutMs: options.timeoutMs ?? 5000, maxBodyBytes: options.maxBodyBytes ?? 1024 }))

/**
 * Connections that back-to-back calls use at most: undici's pool opens a second one when a call comes in the turn
 * its previous answer ended (it releases the connection a turn later), then reuses both.
 */
const SEQUENTIAL_CONNECTIONS = 2

const json = `{"id":"chatcmpl-1","choices":[{"message":{"content":"héllo 😀"}}]}`

/** A POST as Inference sends it (a template's headers, a raw body). */
const post = (client: HttpClient.HttpClient, base: string, body: string | null = `{"model":"m"}`) =>
  client.execute(
    HttpClientRequest.post(`${base}/v1/chat/completions`).pipe(
      HttpClientRequest.setHeader("content-type", "application/json"),
      HttpClientRequest.bearerToken("k"),
      body === null ? (r) => r : HttpClientRequest.setBody(HttpBody.raw(body))
    )
  )
const bodyOf = (client: HttpClient.HttpClient, base: string) => Effect.flatMap(post(client, base), (r) => r.text)
/** The kind and message of the failure of a call. */
const failureOf = <A>(call: Effect.Effect<A, HttpClientError.HttpClientError>) =>
  Effect.map(Effect.flip(call), (error) => ({ kind: UpstreamHttpClient.failureKind(error), message: error.message }))

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
const waitUntil = (condition: () => boolean, ms = 2000) =>
  Effect.promise(async () => {
    for (const end = Date.now() + ms; !condition() && Date.now() < end;) await new Promise((r) => setTimeout(r, 5))
    return condition()
  })

describe("UpstreamHttpClient", () => {
  it.scoped("sends the request as given, reads an answer split anywhere, keeps the connection alive", () =>
    Effect.gen(function*() {
      let seed = 1
      const server = yield* scriptedServer((_, socket) => {
        void writeInPieces(socket, `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: req_7\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`, seed++)
      })
      const client = yield* clientFor()
      for (let i = 0; i < 3; i++) {
        const response = yield* post(client, server.url)
        expect([response.status, response.headers["x-request-id"], response.headers["content-type"], yield* response.text])
          .toEqual([200, "req_7", "application/json", json])
      }
      const [head, body] = server.requests[0]!.split("\r\n\r\n")
      const lines = head!.split("\r\n")
      expect(lines[0]).toBe("POST /v1/chat/completions HTTP/1.1")
      expect(lines).toEqual(expect.arrayContaining([`host: ${server.url.slice(7)}`, "content-type: application/json", "authorization: Bearer k", "content-length: 13"]))
      expect(body).toBe(`{"model":"m"}`)
      expect(server.connections()).toBeLessThanOrEqual(SEQUENTIAL_CONNECTIONS) // kept alive
    }))

  it.scoped("tells the caller once its request is written, before its answer, directly or through a proxy; never when refused", () =>
    Effect.gen(function*() {
      const written: Array<string> = []
      let answer: (() => void) | undefined
      const server = yield* scriptedServer((_, socket) => {
        written.push(`server has it (${written.length} told)`)
        answer = () => ok(0, socket)
      })
      const told = (name: string) => Effect.locally(UpstreamHttpClient.currentRequestWritten, () => written.push(name))
      const proxy = yield* testProxy()
      for (const dispatcher of [() => new Agent(), () => new EnvHttpProxyAgent({ httpProxy: proxy.url, noProxy: "", proxyTunnel: false })]) {
        written.length = 0
        const client = yield* clientFor({ dispatcher })
        const call = yield* Effect.fork(told("written")(bodyOf(client, server.url)))
        expect(yield* waitUntil(() => answer !== undefined)).toBe(true)
        expect(written).toEqual(["written", "server has it (1 told)"]) // told as it was written, before any answer
        answer!()
        answer = undefined
        expect(yield* Fiber.join(call)).toBe("ok")
        expect(written).toHaveLength(2) // once
      }
      expect(proxy.requests).toHaveLength(1)
      const client = yield* clientFor()
      written.length = 0
      yield* Effect.flip(told("written")(post(client, `http://127.0.0.1:${yield* Effect.promise(freePort)}`)))
      expect(written).toEqual([])
    }))

  it.scoped("reads chunked answers (extensions, trailers) after skipping informational ones; repeated headers joined", () =>
    Effect.gen(function*() {
      const body = Buffer.from(json)
      const chunked = `HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n` +
        `5;ext=1\r\n${body.subarray(0, 5)}\r\n${(body.length - 5).toString(16)}\r\n${body.subarray(5)}\r\n0\r\nX-Trailer: t\r\n\r\n`
      let seed = 7
      const server = yield* scriptedServer((_, socket) => void writeInPieces(socket, chunked, seed++))
      const client = yield* clientFor()
      for (let i = 0; i < 3; i++) {
        const response = yield* post(client, server.url)
        expect([response.status, response.headers["set-cookie"], yield* response.text]).toEqual([201, "a=1, b=2", json])
        expect(response.cookies.cookies).toHaveProperty("b")
      }
      expect(server.connections()).toBeLessThanOrEqual(SEQUENTIAL_CONNECTIONS)
    }))

  it.scoped("a body ended by the connection, and connection: close, are read whole and not reused", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((n, socket) => {
        if (n > 1) return
        socket.end(server.connections() % 2 === 0
          ? `HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok`
          : `HTTP/1.0 200 OK\r\n\r\nuntil the end`)
      })
      const client = yield* clientFor()
      expect(yield* bodyOf(client, server.url)).toBe("until the end")
      expect(yield* bodyOf(client, server.url)).toBe("ok")
      expect(server.connections()).toBe(2)
    }))

  it.live("an idle kept-alive connection the server closed is not used again", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => {
        ok(0, socket)
        setTimeout(() => socket.end(), 30) // the server's idle timeout, shorter than the client's
      })
      const client = yield* clientFor()
      expect(yield* bodyOf(client, server.url)).toBe("ok")
      yield* waitUntil(() => server.closed() >= 1)
      expect(yield* bodyOf(client, server.url)).toBe("ok")
      expect([server.connections(), server.requests.length]).toEqual([2, 2])
    }).pipe(Effect.scoped))

  it.scoped("an answer larger than the limit fails, whether announced, chunked or ended by the connection", () =>
    Effect.gen(function*() {
      const big = "x".repeat(2000)
      const answers = [
        `HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n${big}`,
        `HTTP/1.1 200 OK\r\n\r\n${big}`,
        `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n${big}\r\n0\r\n\r\n`
      ]
      const server = yield* scriptedServer((_, socket) => socket.end(answers[server.requests.length - 1]!))
      const client = yield* clientFor({ maxBodyBytes: 1024 })
      for (let i = 0; i < answers.length; i++) {
        expect(yield* failureOf(post(client, server.url))).toEqual({
          kind: "too_large",
          message: expect.stringContaining("larger than 1024 bytes")
        })
      }
    }))

  it.live("an answer that passes the limit fails then, without waiting for its end, and its connection is closed", () =>
    Effect.gen(function*() {
      // Neither announced nor ended: 600-byte chunks, one every 20 ms, for as long as the connection lasts.
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`)
        const timer = setInterval(() => socket.write(`258\r\n${"y".repeat(600)}\r\n`), 20)
        socket.on("close", () => clearInterval(timer))
      })
      const client = yield* clientFor({ maxBodyBytes: 1024, timeoutMs: 10_000 })
      const started = Date.now()
      expect((yield* failureOf(post(client, server.url))).kind).toBe("too_large")
      expect(Date.now() - started).toBeLessThan(1000) // the second chunk passes the limit, after ~40 ms
      expect(yield* waitUntil(() => server.closed() >= 1)).toBe(true)
    }).pipe(Effect.scoped))

  it.scoped("a large announced answer arriving in many pieces is read whole and exact", () =>
    Effect.gen(function*() {
      const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => String.fromCharCode(33 + (i * 7) % 90)).join(""))
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`)
        for (let at = 0; at < body.length; at += 40_000) socket.write(body.subarray(at, at + 40_000))
      })
      const client = yield* clientFor({ maxBodyBytes: 1024 * 1024 })
      for (let i = 0; i < 3; i++) {
        const response = yield* post(client, server.url)
        expect(Buffer.from(yield* response.arrayBuffer).equals(body)).toBe(true)
      }
      expect(server.connections()).toBeLessThanOrEqual(SEQUENTIAL_CONNECTIONS)
    }))

  it.scoped("a POST without a body says content-length: 0; the bytes read after the text are the body's own", () =>
    Effect.gen(function*() {
      const text = `{"a":"héllo 😀"}`
      const server = yield* scriptedServer((_, socket) => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`))
      const client = yield* clientFor()
      const response = yield* post(client, server.url, null)
      expect(server.requests[0]).toContain("content-length: 0\r\n")
      expect(yield* response.json).toEqual({ a: "héllo 😀" }) // the bytes are dropped here…
      expect(new TextDecoder().decode(yield* response.arrayBuffer)).toBe(text) // …and encoded again
    }))

  it.scoped("a HEAD answer's content-length announces no body: none read, none held against the limit", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n`))
      const client = yield* clientFor({ maxBodyBytes: 1024 })
      const response = yield* client.execute(HttpClientRequest.head(`${server.url}/v1/models`))
      expect([response.status, response.headers["content-length"], yield* response.text]).toEqual([200, "100000", ""])
    }))

  it.scoped("a header that would split the request fails the call without opening a connection", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(ok)
      const client = yield* clientFor()
      const failure = yield* failureOf(client.execute(
        HttpClientRequest.post(`${server.url}/v1/x`).pipe(HttpClientRequest.setHeader("authorization", "Bearer k\r\nx-evil: 1"))
      ))
      expect(failure.kind).toBe("connect") // never sent
      expect(server.connections()).toBe(0)
    }))

  it.scoped("malformed answers and connections failing mid-answer are transport errors, sent once", () =>
    Effect.gen(function*() {
      const answers = [
        (s: net.Socket) => s.write("HTTP/2 200\r\n\r\n"),
        (s: net.Socket) => s.write("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
        (s: net.Socket) => s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        // Both framings at once (a smuggling risk): refused, where the old client let the transfer coding win.
        (s: net.Socket) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        (s: net.Socket) => (s.write(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial`), setTimeout(() => s.destroy(), 20)),
        (s: net.Socket) => (s.write(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial`), setTimeout(() => s.resetAndDestroy(), 20)),
        (s: net.Socket) => s.destroy(),
        (s: net.Socket) => s.resetAndDestroy()
      ]
      const server = yield* scriptedServer((_, socket) => answers[server.requests.length - 1]!(socket))
      const client = yield* clientFor()
      const failures = []
      for (let i = 0; i < answers.length; i++) failures.push(yield* failureOf(post(client, server.url)))
      expect(failures.map((f) => f.kind)).toEqual(answers.map(() => "transport"))
      expect(failures[4]!.message).toContain("UND_ERR_SOCKET")
      expect(failures[5]!.message).toContain("ECONNRESET")
      expect(server.requests.length).toBe(answers.length)
    }))

  it.live("the time limit bounds the whole attempt: an upstream that trickles its body times out too", () =>
    Effect.gen(function*() {
      // A byte every 30 ms of a 100-byte body: 3 s in all, never silent for long.
      const server = yield* scriptedServer((_, socket) => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n`)
        const timer = setInterval(() => socket.write("z"), 30)
        socket.on("close", () => clearInterval(timer))
      })
      const client = yield* clientFor({ timeoutMs: 300 })
      const started = Date.now()
      expect(yield* failureOf(post(client, server.url))).toEqual({ kind: "timeout", message: expect.stringContaining("within 300 ms") })
      expect(Date.now() - started).toBeGreaterThanOrEqual(290)
      expect(Date.now() - started).toBeLessThan(1000)
      expect(yield* waitUntil(() => server.closed() >= 1)).toBe(true) // its connection is closed
    }).pipe(Effect.scoped))

  it.live("a silent upstream times out, an upstream that stops mid-body too", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((_, socket) => {
        if (server.connections() === 2) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc`)
      })
      const client = yield* clientFor({ timeoutMs: 200 })
      const started = Date.now()
      expect((yield* failureOf(post(client, server.url))).kind).toBe("timeout")
      expect((yield* failureOf(post(client, server.url))).kind).toBe("timeout")
      expect(Date.now() - started).toBeLessThan(1500)
    }).pipe(Effect.scoped))

  it.live("interrupting a call aborts its request: the upstream sees the connection close", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(() => {})
      const client = yield* clientFor()
      const fiber = yield* Effect.fork(post(client, server.url))
      expect(yield* waitUntil(() => server.requests.length === 1)).toBe(true)
      yield* Fiber.interrupt(fiber)
      expect(yield* waitUntil(() => server.closed() >= 1)).toBe(true)
    }).pipe(Effect.scoped))

  it.live("a call interrupted before it had a connection is dropped unsent; the connection is kept", () =>
    Effect.gen(function*() {
      // A relay that holds each connection 300 ms before joining it to the TLS server: the handshake waits that long.
      const server = yield* scriptedServer(ok, true)
      const relay = yield* Effect.acquireRelease(
        Effect.promise(() =>
          new Promise<net.Server>((resolve) => {
            const relay = net.createServer((socket) => {
              socket.on("error", () => {})
              socket.pause()
              setTimeout(() => {
                const upstream = net.connect(Number(new URL(server.url).port), "127.0.0.1", () => {
                  socket.pipe(upstream).pipe(socket)
                  socket.resume()
                })
                upstream.on("error", () => socket.destroy())
                socket.on("close", () => upstream.destroy())
              }, 300)
            })
            relay.listen(0, "127.0.0.1", () => resolve(relay))
          })
        ),
        (relay) => Effect.promise(() => new Promise((done) => relay.close(done)))
      )
      const client = yield* clientFor({ dispatcher: () => new Agent({ connect: { ca: CERT } }) })
      const url = `https://127.0.0.1:${(relay.address() as net.AddressInfo).port}`
      const fiber = yield* Effect.fork(post(client, url))
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 100)))
      const started = Date.now()
      yield* Fiber.interrupt(fiber)
      expect(Date.now() - started).toBeLessThan(50) // at once, not when the connection is made
      expect(yield* waitUntil(() => server.connections() === 1)).toBe(true)
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 200)))
      expect([server.requests.length, server.closed()]).toEqual([0, 0])
      expect(yield* bodyOf(client, url)).toBe("ok") // on that connection
      expect(server.connections()).toBe(1)
    }).pipe(Effect.scoped))

  it.scoped("speaks TLS to https origins the dispatcher trusts", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer(ok, true)
      const trusting = yield* clientFor({ dispatcher: () => new Agent({ connect: { ca: CERT } }) })
      for (let i = 0; i < 3; i++) expect(yield* bodyOf(trusting, server.url)).toBe("ok")
      expect(server.connections()).toBeLessThanOrEqual(SEQUENTIAL_CONNECTIONS)
      const untrusting = yield* clientFor()
      // What the hint says depends on it (a machine may set it for every process).
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          const saved = process.env.NODE_EXTRA_CA_CERTS
          delete process.env.NODE_EXTRA_CA_CERTS
          return saved
        }),
        (saved) => Effect.sync(() => void (saved === undefined ? undefined : (process.env.NODE_EXTRA_CA_CERTS = saved)))
      )
      expect(yield* failureOf(post(untrusting, server.url))).toEqual({
        kind: "connect",
        message: expect.stringMatching(/DEPTH_ZERO_SELF_SIGNED_CERT\); its TLS certificate is signed by a CA this server does not trust: for a private CA, start the server with NODE_EXTRA_CA_CERTS/)
      })
    }))

  it.scoped("failureKind: refused, unknown name, connect timeout, TLS name mismatch, a proxy refusing are connect failures", () =>
    Effect.gen(function*() {
      const client = yield* clientFor({ timeoutMs: 10_000 })
      const refused = yield* failureOf(post(client, `http://127.0.0.1:${yield* Effect.promise(freePort)}`))
      expect(refused).toEqual({ kind: "connect", message: expect.stringContaining("ECONNREFUSED") })
      const unknown = yield* failureOf(post(client, "http://upstream.invalid"))
      expect(unknown).toEqual({ kind: "connect", message: expect.stringMatching(/ENOTFOUND|EAI_AGAIN/) })

      const silent = yield* scriptedServer(() => {}) // accepts, never speaks TLS
      const impatient = yield* clientFor({ dispatcher: () => new Agent({ connect: { timeout: 100 } }) })
      const handshake = yield* failureOf(post(impatient, silent.url.replace("http:", "https:")))
      expect(handshake).toEqual({ kind: "connect", message: expect.stringContaining("UND_ERR_CONNECT_TIMEOUT") })

      const server = yield* scriptedServer(ok, true)
      const trusting = yield* clientFor({ dispatcher: () => new Agent({ connect: { ca: CERT, servername: "elsewhere.test" } }) })
      const mismatch = yield* failureOf(post(trusting, server.url.replace("127.0.0.1", "localhost")))
      expect(mismatch).toEqual({ kind: "connect", message: expect.stringContaining("ERR_TLS_CERT_ALTNAME_INVALID") })

      const proxy = yield* testProxy({ refuse: 403 })
      const proxied = yield* clientFor({
        dispatcher: () => new EnvHttpProxyAgent({ httpProxy: proxy.url, httpsProxy: proxy.url, noProxy: "", proxyTunnel: false })
      })
      expect(yield* failureOf(post(proxied, "https://upstream.test"))).toEqual({ kind: "connect", message: expect.stringContaining("(403)") })
      expect(proxy.connects).toEqual(["upstream.test:443"])
      const auth = yield* testProxy({ refuse: 407 })
      const unauthorized = yield* clientFor({
        dispatcher: () => new EnvHttpProxyAgent({ httpProxy: auth.url, noProxy: "", proxyTunnel: false })
      })
      expect(yield* failureOf(post(unauthorized, "http://upstream.test"))).toEqual({
        kind: "connect",
        message: expect.stringMatching(/407.*; the proxy refused its credentials: check the user and password in HTTPS_PROXY or HTTP_PROXY/)
      })
    }))

  it.scoped("a proxy that is down or refuses a tunnel is named as the proxy, not taken for the upstream", () =>
    Effect.gen(function*() {
      const port = yield* Effect.promise(freePort)
      yield* proxyVariables({ HTTP_PROXY: `http://user:secret@127.0.0.1:${port}` })
      const client = yield* clientFor()
      for (const upstream of ["http://upstream.test", "https://upstream.test"]) {
        const down = yield* failureOf(post(client, upstream))
        expect(down).toEqual({ kind: "connect", message: expect.stringContaining(`ECONNREFUSED 127.0.0.1:${port} (ECONNREFUSED); that is the proxy (http://127.0.0.1:${port}, from HTTPS_PROXY or HTTP_PROXY), not the upstream`) })
        expect(down.message).not.toContain("secret")
      }
      const proxy = yield* testProxy({ refuse: 403 })
      yield* proxyVariables({ HTTPS_PROXY: proxy.url })
      const refused = yield* failureOf(post(yield* clientFor(), "https://upstream.test"))
      expect(refused.message).toContain(`(403) !== 200 when HTTP Tunneling (UND_ERR_ABORTED); the proxy at ${proxy.url.replace(/\/$/, "")} refused the connection (its answer, 403, not the upstream's)`)
    }))

  it("connectionHint: a certificate an http: upstream's call meets is its proxy's; an unrelated refusal gets no hint", () => {
    const proxies = { http: "https://proxy.corp:8443", https: "https://proxy.corp:8443", noProxy: "" }
    const untrusted = Object.assign(new Error("unable to verify the first certificate"), { code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE" })
    expect(connectionHint(untrusted, "http://10.0.0.5:8000/v1/models", proxies)).toMatch(/^; the proxy's \(https:\/\/proxy\.corp:8443\) TLS certificate/)
    // Behind an https: proxy an https: upstream's failure may be either's; without one, the upstream's.
    expect(connectionHint(untrusted, "https://10.0.0.5/v1/models", proxies)).toMatch(/^; its or the proxy's \(https:\/\/proxy\.corp:8443\) TLS certificate/)
    expect(connectionHint(untrusted, "https://10.0.0.5/v1/models", undefined)).toMatch(/^; its TLS certificate .*: for a private CA, start the server with NODE_EXTRA_CA_CERTS/)
    expect(connectionHint(untrusted, "https://10.0.0.5/v1/models", undefined, true)).toMatch(/: the file NODE_EXTRA_CA_CERTS names does not hold that CA/)
    // A proxy's own answer to CONNECT: a 5xx is its failing to reach the upstream, another a refusal.
    const tunnel = (status: number) => new Error(`Proxy response (${status}) !== 200 when HTTP Tunneling`)
    expect(connectionHint(tunnel(503), "https://10.0.0.5/v1/models", proxies)).toBe(
      "; the proxy at https://proxy.corp:8443 could not reach the upstream (its answer, 503): is the upstream up, and reachable from the proxy?"
    )
    expect(connectionHint(tunnel(403), "https://10.0.0.5/v1/models", proxies)).toBe("; the proxy at https://proxy.corp:8443 refused the connection (its answer, 403, not the upstream's)")
    const refused = Object.assign(new Error("connect ECONNREFUSED 10.0.0.5:8000"), { code: "ECONNREFUSED", address: "10.0.0.5", port: 8000 })
    expect(connectionHint(refused, "http://10.0.0.5:8000/v1/models", proxies)).toBe("")
    expect(connectionHint(refused, "http://10.0.0.5:8000/v1/models", undefined)).toBe("")
    // A proxy named by host: the refusal comes from the address it resolved to, at its port.
    const atProxy = Object.assign(new Error("connect ECONNREFUSED 10.1.1.1:8443"), { code: "ECONNREFUSED", address: "10.1.1.1", port: 8443 })
    expect(connectionHint(atProxy, "http://10.0.0.5:8000/v1/models", proxies)).toBe("; that is the proxy (https://proxy.corp:8443, from HTTPS_PROXY or HTTP_PROXY), not the upstream")
    const unresolved = Object.assign(new Error("getaddrinfo ENOTFOUND proxy.corp"), { code: "ENOTFOUND", hostname: "proxy.corp" })
    expect(connectionHint(unresolved, "http://10.0.0.5:8000/v1/models", proxies)).toMatch(/^; that is the proxy/)
    expect(unmatchedNoProxy({ HTTP_PROXY: "http://p:1", NO_PROXY: "localhost, 10.0.0.0/8,.corp" })).toEqual(["10.0.0.0/8"])
    expect(unmatchedNoProxy({ NO_PROXY: "10.0.0.0/8" })).toEqual([]) // no proxy: nothing to say
    // A call NO_PROXY sends straight names no proxy, whatever failed.
    expect(connectionHint(atProxy, "http://10.0.0.5:8000/v1/models", { ...proxies, noProxy: "10.0.0.5" })).toBe("")
  })

  it("proxiedCall reads NO_PROXY as undici's EnvHttpProxyAgent does: a host and its subdomains, an optional port, * for none", () => {
    const cases: ReadonlyArray<readonly [string, string, boolean]> = [
      ["http://gpu.corp:8000/v1", "", true],
      ["http://gpu.corp:8000/v1", "gpu.corp", false],
      ["http://a.gpu.corp/v1", "gpu.corp", false], // a subdomain
      ["http://notgpu.corp/v1", "gpu.corp", true], // not one
      ["http://a.gpu.corp/v1", "*.gpu.corp", false],
      ["http://a.gpu.corp/v1", ".gpu.corp", false],
      ["http://GPU.Corp:8000/v1", "gpu.CORP", false],
      ["http://gpu.corp:8000/v1", "gpu.corp:8000", false],
      ["http://gpu.corp:8001/v1", "gpu.corp:8000", true],
      ["http://gpu.corp/v1", "gpu.corp:80", false], // the scheme's port
      ["https://gpu.corp/v1", "gpu.corp:443", false],
      ["http://10.0.0.5/v1", "10.0.0.0/8", true], // a range: undici's rule matches none (warned of at start)
      ["http://[::1]:8000/v1", "[::1]", false],
      ["http://anything/v1", "*", false],
      ["http://anything/v1", "localhost, other.corp\tgpu", true]
    ]
    for (const [url, noProxy, proxied] of cases) expect([url, noProxy, proxiedCall(new URL(url), noProxy)]).toEqual([url, noProxy, proxied])
  })

  it.scoped("without proxy variables the dispatcher is a plain Agent; a lower-case one counts too", () =>
    Effect.gen(function*() {
      const plain = yield* Effect.scoped(Effect.zipRight(proxyVariables({}), UpstreamHttpClient.dispatcher))
      expect(plain).toBeInstanceOf(Agent)
      const proxied = yield* Effect.scoped(
        Effect.zipRight(proxyVariables({ https_proxy: "http://127.0.0.1:9" }), UpstreamHttpClient.dispatcher)
      )
      expect(proxied).toBeInstanceOf(EnvHttpProxyAgent)
    }))

  it("the proxies are read as undici reads them, and the listening line names them without their credentials", () => {
    expect(proxiesOf({})).toBeUndefined()
    expect(proxiesOf({ HTTP_PROXY: "" })).toBeUndefined()
    // https calls go through the http proxy when no other is set; the lower-case variable wins.
    expect(proxiesOf({ HTTP_PROXY: "http://p:3128", NO_PROXY: "localhost" }))
      .toEqual({ http: "http://p:3128", https: "http://p:3128", noProxy: "localhost" })
    expect(proxiesOf({ https_proxy: "http://low:1", HTTPS_PROXY: "http://up:2" })).toEqual({ http: undefined, https: "http://low:1", noProxy: "" })
    const line = listeningLine("http://127.0.0.1:8321", defaults, false, [], Option.none(), proxiesOf({ HTTPS_PROXY: "http://user:secret@proxy.internal:3128" }))
    expect(line.fields.proxy).toEqual({ http: null, https: "http://proxy.internal:3128/", no_proxy: "" })
    expect(line.message).toContain("upstream calls through http://proxy.internal:3128/")
    expect(JSON.stringify(line)).not.toContain("secret")
    expect(listeningLine("http://127.0.0.1:8321", defaults, false, [], Option.none(), undefined).fields.proxy).toBeNull()
  })

  it("a proxy variable undici cannot use is a ConfigError naming it, without its value (it may hold a password)", () => {
    const said = (env: Record<string, string>) => String(proxyProblem(env) ?? "")
    for (const ok of [{}, { HTTP_PROXY: "" }, { HTTP_PROXY: "http://proxy.corp:3128" }, { https_proxy: "https://u:p%25w@proxy:443/" }, { HTTPS_PROXY: "socks5://proxy.corp:1080" }]) {
      expect(proxyProblem(ok)).toBeUndefined()
    }
    expect(said({ HTTP_PROXY: "proxy.corp:3128" })).toMatch(/^\(Invalid data at HTTP_PROXY: "Expected a URL starting with http:\/\/, https:\/\/ or socks5:\/\//)
    expect(said({ HTTPS_PROXY: "ftp://proxy.corp:21" })).toContain("Invalid data at HTTPS_PROXY")
    const badPassword = said({ https_proxy: "http://u:SECRET%ZZ@127.0.0.1:1", HTTPS_PROXY: "http://fine:1" })
    expect(badPassword).toContain("Invalid data at https_proxy: \"Its user name or password is not percent-encoded")
    expect(badPassword).not.toContain("SECRET")
    // The variable undici reads is the one checked: an empty lower-case one hides the upper-case one, as there.
    expect(proxyProblem({ http_proxy: "", HTTP_PROXY: "nonsense" })).toBeUndefined()
  })

  it.effect("the dispatcher is not made with a proxy variable undici cannot use", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Effect.zipRight(proxyVariables({ http_proxy: "proxy.corp:3128" }), UpstreamHttpClient.dispatcher)))
      expect(String(error)).toContain("Invalid data at http_proxy")
    }))

  it.live("clients sharing a dispatcher keep their own time limits; the layer gives a client too", () =>
    Effect.gen(function*() {
      const server = yield* scriptedServer((n, socket) => setTimeout(() => ok(n, socket), 300))
      const dispatcher = yield* UpstreamHttpClient.dispatcher
      const quick = UpstreamHttpClient.make(dispatcher, { timeoutMs: 100, maxBodyBytes: 1024 })
      const patient = UpstreamHttpClient.make(dispatcher, { timeoutMs: 5000, maxBodyBytes: 1024 })
      const [early, late] = yield* Effect.all([failureOf(post(quick, server.url)), bodyOf(patient, server.url)], {
        concurrency: 2
      })
      expect([early.kind, late]).toEqual(["timeout", "ok"])
      const layered = yield* Effect.provide(
        Effect.flatMap(HttpClient.HttpClient, (client) => bodyOf(client, server.url)),
        UpstreamHttpClient.layer({ timeoutMs: 5000, maxBodyBytes: 1024 })
      )
      expect(layered).toBe("ok")
    }).pipe(Effect.scoped))

  it.scoped("HTTP_PROXY / HTTPS_PROXY: http calls go to the proxy in absolute form, https ones through CONNECT", () =>
    Effect.gen(function*() {
      const proxy = yield* testProxy()
      const plain = yield* scriptedServer(ok)
      const secure = yield* scriptedServer(ok, true)
      yield* proxyVariables({ HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url })
      const dispatcher = yield* UpstreamHttpClient.dispatcher
      expect(dispatcher).toBeInstanceOf(EnvHttpProxyAgent)
      const client = UpstreamHttpClient.make(dispatcher, { timeoutMs: 5000, maxBodyBytes: 1024 })
      for (let i = 0; i < 2; i++) expect(yield* bodyOf(client, plain.url)).toBe("ok")
      expect(proxy.requests).toEqual([`${plain.url}/v1/chat/completions`, `${plain.url}/v1/chat/completions`])
      // The tunnel reaches the https server, whose certificate this dispatcher does not trust.
      expect((yield* failureOf(post(client, secure.url))).message).toContain("DEPTH_ZERO_SELF_SIGNED_CERT")
      expect(proxy.connects).toEqual([secure.url.slice(8)])
      expect(secure.connections()).toBe(1)
      // The same through a dispatcher that trusts it: the call succeeds through the tunnel, kept alive.
      const trusting = UpstreamHttpClient.make(
        yield* scopedDispatcher(() => new EnvHttpProxyAgent({ proxyTunnel: false, requestTls: { ca: CERT } })),
        { timeoutMs: 5000, maxBodyBytes: 1024 }
      )
      for (let i = 0; i < 3; i++) expect(yield* bodyOf(trusting, secure.url)).toBe("ok")
      expect(proxy.connects.length).toBeLessThanOrEqual(1 + SEQUENTIAL_CONNECTIONS)
      expect(new Set(proxy.connects)).toEqual(new Set([secure.url.slice(8)]))
      expect(proxy.requests.length).toBe(2) // the https calls were not sent in the clear
    }))
})

/** Sets exactly these proxy variables (the others unset, lower-case ones included) for the scope. */
const proxyVariables = (values: Partial<Record<"HTTP_PROXY" | "HTTPS_PROXY" | "http_proxy" | "https_proxy", string>>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const names = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"] as const
      const saved = names.map((name) => [name, process.env[name]] as const)
      for (const name of names) delete process.env[name]
      Object.assign(process.env, values)
      return saved
    }),
    (saved) =>
      Effect.sync(() => {
        for (const [name, value] of saved) {
          if (value === undefined) delete process.env[name]
          else process.env[name] = value
        }
      })
  )
