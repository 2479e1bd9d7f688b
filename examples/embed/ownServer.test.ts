/**
 * An app that serves the batch API on a Node server of its own, beside a route of its own: the route is behind the
 * same API key check (unless the app names it in `PublicPaths`), and a request sent while the app is still starting
 * is answered once it has started. An `HttpApi` of the app's own is mounted on the same router; served as a second
 * app beside `HttpLive`, it stops the start. With `ServerLifecycleLive` on top, the shutdown drains as `npm start`'s.
 */
import { HttpApi, HttpApiBuilder, HttpApiEndpoint, HttpApiGroup, HttpServer, HttpServerResponse } from "@effect/platform"
import { expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Layer, Logger, LogLevel, Option, Redacted, Schema, Scope } from "effect"
import {
  AppConfig,
  BatchStore,
  CurrentCaller,
  HttpLive,
  InferenceScripted,
  makeNodeServer,
  makeServices,
  PublicPaths,
  scriptedAnswer,
  ServerLifecycleLive
} from "effect-openai-batch"
import { createServer } from "node:http"

// The upstream is not this file's subject: a scripted one, so that nothing calls the default upstream's address
// (127.0.0.1:8000), where a model server of the machine's may listen.
const services = makeServices({ inference: InferenceScripted(() => Effect.succeed(scriptedAnswer(200, {}))) })

const hello = HttpApiBuilder.Router.use((router) => router.get("/hello", HttpServerResponse.text("hello")))

it.live("the API and a route of the app's own on the app's Node server, behind the API key", () =>
  Effect.gen(function*() {
    const server = createServer()
    let early: Promise<string> | undefined
    // Built once the socket listens, before the app's handler is attached: a request sent then waits for it.
    const requestWhileStarting = Layer.effectDiscard(Effect.gen(function*() {
      const url = HttpServer.formatAddress((yield* HttpServer.HttpServer).address)
      early = fetch(`${url}/hello`, { headers: { authorization: "Bearer sk-app" }, signal: AbortSignal.timeout(5_000) })
        .then((res) => res.text(), (e) => String(e))
      yield* Effect.sleep("200 millis")
    }))
    const context = yield* Layer.build(HttpLive.pipe(
      Layer.provide(hello),
      Layer.provide(services),
      Layer.provide(requestWhileStarting),
      Layer.provideMerge(makeNodeServer({ server, host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
      Layer.provide(AppConfig.layerTest({ apiKeys: [Redacted.make("sk-app")] })),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
    ))
    const url = HttpServer.formatAddress((yield* Effect.provide(HttpServer.HttpServer, context)).address)
    expect(yield* Effect.promise(() => early!)).toBe("hello")
    const withKey = yield* Effect.promise(() => fetch(`${url}/hello`, { headers: { authorization: "Bearer sk-app" } }))
    expect([withKey.status, yield* Effect.promise(() => withKey.text())]).toEqual([200, "hello"])
    expect((yield* Effect.promise(() => fetch(`${url}/hello`))).status).toBe(401)
    const files = yield* Effect.promise(() => fetch(`${url}/v1/files`, { headers: { authorization: "Bearer sk-app" } }))
    expect(files.status).toBe(200)
  }).pipe(Effect.scoped), 20_000)

it.live("the app's PublicPaths are served without a key, exactly those; a path of the service's own stops the start", () =>
  Effect.gen(function*() {
    const pages = HttpApiBuilder.Router.use((router) =>
      Effect.all([
        router.get("/healthz", HttpServerResponse.text("fine")),
        router.get("/account", HttpServerResponse.text("private")),
        router.get("/ui/mine", HttpServerResponse.text("mine")) // beside the dashboard's files, no public one
      ]))
    const app = (publicPaths: ReadonlyArray<string>) =>
      HttpLive.pipe(
        Layer.provide(pages),
        Layer.provide(Layer.succeed(PublicPaths, new Set(publicPaths))),
        Layer.provide(services),
        Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
        Layer.provide(AppConfig.layerTest({ apiKeys: [Redacted.make("sk-app")] })),
        Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
      )
    const context = yield* Layer.build(app(["/healthz"]))
    const url = HttpServer.formatAddress((yield* Effect.provide(HttpServer.HttpServer, context)).address)
    const status = (path: string) => Effect.promise(() => fetch(`${url}${path}`).then((res) => res.status))
    expect(yield* status("/healthz")).toBe(200)
    // Not its neighbours, nor the app's other routes, nor the API.
    for (const path of ["/healthz/", "/account", "/ui/mine", "/v1/files"]) expect([path, yield* status(path)]).toEqual([path, 401])

    const refused = yield* Effect.exit(Effect.scoped(Layer.build(app(["/v1/files"]))))
    expect(String(refused)).toContain("PublicPaths: '/v1/files' is one of the service's own")
  }).pipe(Effect.scoped), 20_000)

/** An `HttpApi` of the app's own: who calls, and how many batches its project has (the library's `BatchStore`). */
class Account extends HttpApiGroup.make("account")
  .add(HttpApiEndpoint.get("me", "/app/me").addSuccess(Schema.Struct({ project: Schema.String, batches: Schema.Number }))) {}
class AppApi extends HttpApi.make("app").add(Account) {}

it.live("an HttpApi of the app's own, mounted on HttpLive's router: behind the key, its handlers using the library's services", () =>
  Effect.gen(function*() {
    const accountLive = HttpApiBuilder.group(AppApi, "account", (handlers) =>
      // The library's services are taken here, once, and used by the handlers (which may need none of their own).
      Effect.map(BatchStore, (batches) =>
        handlers.handle("me", () =>
          Effect.gen(function*() {
            const caller = yield* Effect.serviceOption(CurrentCaller)
            const project = Option.match(caller, { onNone: () => "default", onSome: (c) => c.project })
            const page = yield* Effect.orDie(batches.list({ visibility: { project }, limit: 100 }))
            return { project, batches: page.data.length }
          }))))
    const appApi = HttpApiBuilder.httpApp.pipe(
      Effect.provide(Layer.mergeAll(
        HttpApiBuilder.api(AppApi).pipe(Layer.provide(accountLive)),
        HttpApiBuilder.Router.Live,
        HttpApiBuilder.Middleware.layer
      ))
    )
    const mounted = HttpApiBuilder.Router.use((router) =>
      Effect.flatMap(appApi, (app) => router.mountApp("/app", app, { includePrefix: true })))
    const served = <E, R>(api: Layer.Layer<never, E, R>) =>
      Layer.build(api.pipe(
        Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "1 second" })),
        Layer.provide(AppConfig.layerTest({ apiKeys: [Redacted.make("sk-app:team")] })),
        Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
      ))
    const context = yield* served(HttpLive.pipe(Layer.provide(mounted), Layer.provide(services)))
    const url = HttpServer.formatAddress((yield* Effect.provide(HttpServer.HttpServer, context)).address)
    const me = yield* Effect.promise(() => fetch(`${url}/app/me`, { headers: { authorization: "Bearer sk-app" } }))
    expect([me.status, yield* Effect.promise(() => me.json())]).toEqual([200, { project: "team", batches: 0 }])
    expect((yield* Effect.promise(() => fetch(`${url}/app/me`))).status).toBe(401)

    // Served beside HttpLive, a second app would answer every request too, without the key check: refused.
    const beside = HttpApiBuilder.serve().pipe(Layer.provide(HttpApiBuilder.api(AppApi).pipe(Layer.provide(accountLive))))
    const refused = yield* Effect.exit(Effect.scoped(served(Layer.merge(HttpLive, beside).pipe(Layer.provide(services)))))
    expect(String(refused)).toContain("This server already serves an app")
  }).pipe(Effect.scoped), 20_000)

it.live("ServerLifecycleLive on top: at shutdown /v1/ready turns 503 while the server still serves, and the line says the server's timeout", () =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      // On top of HttpLive (provided to it, not merged beside it): released first, so readiness turns 503 before
      // the server stops accepting.
      ServerLifecycleLive.pipe(
        Layer.provide(HttpLive),
        Layer.provide(services),
        Layer.provideMerge(makeNodeServer({ host: "127.0.0.1", port: 0, shutdownTimeout: "5 seconds" })),
        Layer.provide(AppConfig.layerTest({ shutdownDelay: Duration.seconds(1) })),
        Layer.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => lines.push(String(message)))))
      ),
      scope
    )
    const url = HttpServer.formatAddress((yield* Effect.provide(HttpServer.HttpServer, context)).address)
    const ready = () => fetch(`${url}/v1/ready`).then((res) => res.status, () => 0)
    expect(yield* Effect.promise(ready)).toBe(200)
    const stopping = yield* Effect.fork(Scope.close(scope, Exit.void))
    yield* Effect.sleep("300 millis")
    expect(yield* Effect.promise(ready)).toBe(503) // still served, not ready
    yield* Fiber.join(stopping)
    expect(yield* Effect.promise(ready)).toBe(0) // no longer served
    expect(lines).toContainEqual(expect.stringContaining("still serving for 1s, then no new connection; open requests get 5s to finish"))
  }), 20_000)
