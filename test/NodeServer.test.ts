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
import { Agent } from "node:http"
import { AppConfig } from "../src/Config.js"
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
})
