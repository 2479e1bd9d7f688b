/**
 * The API handed web `Request`s in process (`ApiApp` as a web handler: no socket, no port), as an app's own tests
 * or an edge runtime would. A web request carries no `Host` header (it may not set one): its URL says where it went,
 * so a server without keys serves `localhost` there and refuses any other name, as over a socket.
 */
import { Etag, HttpApp, type HttpRouter } from "@effect/platform"
import { NodeContext, NodeHttpPlatform } from "@effect/platform-node"
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import { AppConfig } from "../src/Config.js"
import { ApiApp, ApiAppLive } from "../src/http/Http.js"
import { InferenceScripted, scriptedAnswer } from "../src/inference/Inference.js"
import { makeServices } from "../src/Layers.js"

const app = ApiAppLive.pipe(
  Layer.provide(makeServices({ inference: InferenceScripted(() => Effect.succeed(scriptedAnswer(200, {})), ["fake-model"]) })),
  Layer.provideMerge(Layer.mergeAll(NodeContext.layer, NodeHttpPlatform.layer, Etag.layerWeak)),
  Layer.provide(AppConfig.layerTest()),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

layer(app, { excludeTestServices: true })("the API handed web requests in process", (it) => {
  it.effect("serves one addressed to localhost without keys, and refuses another name (421)", () =>
    Effect.gen(function*() {
      const handler = HttpApp.toWebHandlerRuntime(yield* Effect.runtime<HttpRouter.HttpRouter.DefaultServices>())(yield* ApiApp)
      const local = yield* Effect.promise(() => handler(new Request("http://localhost/v1/models")))
      expect(local.status).toBe(200)
      expect(yield* Effect.promise(() => local.json())).toMatchObject({ object: "list", data: [{ id: "fake-model" }] })
      const elsewhere = yield* Effect.promise(() => handler(new Request("http://evil.example/v1/models")))
      expect(elsewhere.status).toBe(421)
    }))
})
