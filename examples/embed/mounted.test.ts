/**
 * An app that mounts the batch API under a prefix of a router of its own (`ApiApp`), beside its own routes: the
 * official client works at `<server>/openai/v1`, and the service's checks, bounds and request ids come with it.
 */
import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { expect, it, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import {
  ApiApp,
  ApiAppLive,
  ApiMountPath,
  AppConfig,
  InferenceScripted,
  makeNodeServer,
  makeServices,
  scriptedAnswer,
  ServerLifecycleLive
} from "effect-openai-batch"
import { request } from "node:http"
import OpenAI from "openai"

const fakeUpstream = InferenceScripted(() =>
  Effect.succeed(scriptedAnswer(200, {
    object: "chat.completion",
    choices: [{ index: 0, message: { role: "assistant", content: "hi" } }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
  })), ["fake-model"])

// The app's router: a route of its own, and the whole batch API under /openai.
const served = Layer.unwrapEffect(Effect.map(ApiApp, (api) =>
  HttpServer.serve(HttpRouter.empty.pipe(
    HttpRouter.get("/hello", HttpServerResponse.text("hello")),
    HttpRouter.mountApp("/openai", api)
  ))))

const app = served.pipe(
  Layer.provide(ApiAppLive),
  Layer.provide(makeServices({ inference: fakeUpstream })),
  Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
  Layer.provide(AppConfig.layerTest({ maxJsonBodyBytes: 1024 })),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

const serverUrl = Effect.map(HttpServer.HttpServer, (server) => HttpServer.formatAddress(server.address))

layer(app, { excludeTestServices: true })("the batch API mounted under /openai", (it) => {
  it.effect("runs a batch through the official client at /openai/v1, beside the app's own route", () =>
    Effect.gen(function*() {
      const url = yield* serverUrl
      const openai = new OpenAI({ baseURL: `${url}/openai/v1`, apiKey: "unused", maxRetries: 0 })
      const line = JSON.stringify({
        custom_id: "a",
        method: "POST",
        url: "/v1/chat/completions",
        body: { model: "fake-model", messages: [{ role: "user", content: "hello" }] }
      })
      const done = yield* Effect.promise(async () => {
        const file = await openai.files.create({ file: new File([line], "input.jsonl"), purpose: "batch" })
        let batch = await openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
        while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
          await new Promise((resolve) => setTimeout(resolve, 20))
          batch = await openai.batches.retrieve(batch.id)
        }
        return batch
      })
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 1, completed: 1, failed: 0 }])
      const hello = yield* Effect.promise(() => fetch(`${url}/hello`))
      expect(yield* Effect.promise(() => hello.text())).toBe("hello")
    }))

  it.effect("keeps the service's checks: Host, body bounds, request ids and the error envelope", () =>
    Effect.gen(function*() {
      const url = yield* serverUrl
      // Without keys the service answers only to loopback names: a rebinding page's Host is refused.
      // (With node:http: fetch sends its own Host whatever it is given.)
      const foreign = yield* Effect.promise(() =>
        new Promise<number>((resolve, reject) =>
          request(`${url}/openai/v1/files`, { headers: { host: "evil.example" } }, (res) => {
            res.resume()
            resolve(res.statusCode!)
          }).on("error", reject).end()
        ))
      expect(foreign).toBe(421)
      const big = yield* Effect.promise(() =>
        fetch(`${url}/openai/v1/batches`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ input_file_id: "file-x", endpoint: "/v1/chat/completions", completion_window: "24h", metadata: { a: "x".repeat(2000) } })
        }))
      expect(big.status).toBe(413)
      expect(big.headers.get("x-request-id")).toMatch(/^req_/)
      const body = (yield* Effect.promise(() => big.json())) as { error: object }
      expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"])
      // A path the API lacks is said as the client sent it, prefix and all.
      const missing = yield* Effect.promise(() => fetch(`${url}/openai/v1/nope`))
      expect(missing.status).toBe(404)
      expect(((yield* Effect.promise(() => missing.json())) as { error: { message: string } }).error.message).toBe("Invalid URL (GET /openai/v1/nope)")
    }))
})

it.live("does not start on a server listening beyond loopback without keys, as HttpLive does not", () =>
  Effect.gen(function*() {
    const exposed = served.pipe(
      Layer.provide(ApiAppLive),
      Layer.provide(makeServices({ inference: fakeUpstream })),
      Layer.provideMerge(makeNodeServer({ host: "0.0.0.0", port: 0, shutdownTimeout: "1 second" })),
      Layer.provide(AppConfig.layerTest()),
      Layer.provide(Logger.minimumLogLevel(LogLevel.None))
    )
    const refused = yield* Effect.scoped(Layer.build(exposed)).pipe(
      Effect.as("started"),
      Effect.catchAll((error) => Effect.succeed(String(error)))
    )
    expect(refused).toContain("The server listens on 0.0.0.0, not a loopback address")
  }))

it.live("with ServerLifecycleLive and ApiMountPath, the listening and shutdown lines name the mounted addresses", () =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    yield* Effect.scoped(Layer.build(ServerLifecycleLive.pipe(
      Layer.provide(served),
      Layer.provide(ApiAppLive),
      Layer.provide(makeServices({ inference: fakeUpstream })),
      Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
      Layer.provide(AppConfig.layerTest()),
      Layer.provide(Layer.succeed(ApiMountPath, "/openai")), // where `served` mounts it
      Layer.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => lines.push(String(message)))))
    )))
    expect(lines).toContainEqual(expect.stringMatching(/the SDKs' base URL is http:\/\/127\.0\.0\.1:\d+\/openai\/v1, the dashboard http:\/\/127\.0\.0\.1:\d+\/openai\/ui\/$/))
    expect(lines).toContainEqual(expect.stringContaining("Shutting down: /openai/v1/ready answers 503"))
  }))
