/**
 * The Node HTTP server `npm start` runs (`NodeServerLive`): idle keep-alive connections outlive those of the clients
 * and proxies in front of it, so none of them reuses a connection the server is closing (Node's default kept them
 * 5 s, Python's httpx keeps its own 5 s, load balancers 60 s); a request sent while the app is still starting is
 * answered once it has started.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { Agent, createServer, request as httpRequest } from "node:http"
import { AppConfig } from "../src/Config.js"
import { holdEarlyRequests } from "../src/http/holdEarlyRequests.js"
import { NodeServerLive } from "../src/Layers.js"
import { rawRequest } from "./support/RawHttp.js"
import { baseUrl } from "./support/TestApp.js"

const server = HttpServer.serve(HttpServerResponse.text("ok")).pipe(
  Layer.provideMerge(NodeServerLive),
  Layer.provide(AppConfig.layerWith({ host: "127.0.0.1", port: 0 }))
)

describe("the node server", () => {
  layer(server, { excludeTestServices: true })((it) => {
    it.effect("an idle keep-alive connection is still served after 6 s, and the server says it keeps them 65 s", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        // One socket, destroyed however the test ends.
        const agent = yield* Effect.acquireRelease(
          Effect.sync(() => new Agent({ keepAlive: true, maxSockets: 1 })),
          (agent) => Effect.sync(() => agent.destroy())
        )
        const first = yield* rawRequest(base, { method: "GET", path: "/", agent })
        expect(first.status).toBe(200)
        expect(first.headers["keep-alive"]).toBe("timeout=65")
        yield* Effect.sleep("6 seconds") // past Node's default of 5 s
        const second = yield* rawRequest(base, { method: "GET", path: "/", agent })
        expect(second.status).toBe(200)
        expect(second.reusedSocket).toBe(true)
      }).pipe(Effect.scoped), 20_000)
  })

  it.scopedLive("a request sent after the socket listens but before the app's handler is attached is answered once it is", () =>
    Effect.gen(function*() {
      let early: Promise<number | string> | undefined
      // Built between the server and the app's handler: sends a request and lets it arrive with no handler there.
      const requestWhileStarting = Layer.effectDiscard(Effect.gen(function*() {
        const url = HttpServer.formatAddress((yield* HttpServer.HttpServer).address)
        early = fetch(url, { signal: AbortSignal.timeout(5_000) }).then((res) => res.status, (e) => String(e))
        yield* Effect.sleep("300 millis")
      }))
      yield* Layer.build(HttpServer.serve(HttpServerResponse.text("ok")).pipe(
        Layer.provide(requestWhileStarting),
        Layer.provideMerge(NodeServerLive),
        Layer.provide(AppConfig.layerWith({ host: "127.0.0.1", port: 0 }))
      ))
      expect(yield* Effect.promise(() => early!)).toBe(200)
    }), 20_000)

  it.scopedLive("a held request whose client left meanwhile is not handed to the handler; the others are, in order", () =>
    Effect.gen(function*() {
      const server = yield* Effect.acquireRelease(
        Effect.async<ReturnType<typeof createServer>>((resume) => {
          const server = createServer()
          holdEarlyRequests(server)
          server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.sync(() => server.closeAllConnections()).pipe(Effect.zipRight(Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
        })))
      )
      const { port } = server.address() as { port: number }
      const send = (path: string) => {
        const req = httpRequest({ host: "127.0.0.1", port, path })
        req.on("error", () => {})
        req.end()
        return req
      }
      send("/first")
      const gone = send("/gone")
      send("/last")
      yield* Effect.sleep("200 millis") // all three held
      gone.destroy()
      yield* Effect.sleep("100 millis")
      const handled: Array<string> = []
      server.on("request", (req, res) => {
        handled.push(req.url!)
        res.end()
      })
      yield* Effect.sleep("100 millis")
      expect(handled).toEqual(["/first", "/last"])
    }))
})
