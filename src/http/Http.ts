/**
 * The HTTP application: the API with its handlers, the error envelope, the OpenAPI document and docs page, behind
 * the security middleware (Host, Origin and key checks, CORS). It needs the services the handlers use, `Auth` and
 * an `HttpServer`; `main.ts` (or an embedding app) provides them.
 */
import * as Headers from "@effect/platform/Headers"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import type * as HttpApp from "@effect/platform/HttpApp"
import type * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import { Context, Effect, Layer, Option } from "effect"
import { Auth } from "../auth/Auth.js"
import { AppConfig, exposedWithoutKeys } from "../Config.js"
import { Metrics } from "../observability/Metrics.js"
import { CREDENTIAL_NAME } from "../observability/redaction.js"
import { requestsFirst } from "../Scheduler.js"
import { dashboardRoute } from "../ui/DashboardHttp.js"
import { OpenAIApi } from "./Api.js"
import { BatchesHttpLive } from "./BatchesHttp.js"
import { docsRoute } from "./Docs.js"
import { FilesHttpLive } from "./FilesHttp.js"
import { HealthHttpLive } from "./HealthHttp.js"
import { httpMetrics, metricsRoute } from "./MetricsHttp.js"
import { ModelsHttpLive } from "./ModelsHttp.js"
import { UploadsHttpLive } from "./UploadsHttp.js"
import { ErrorEnvelopeLive, sdkHeaders } from "./Middleware.js"
import { Budget, holderOf } from "./holding.js"
import { BodyPatience, boundBodies } from "./RequestBody.js"
import { requestLog } from "./RequestLog.js"
import { AuthenticatedLive, securityMiddleware } from "./Security.js"
import { servedInTurn } from "./servedInTurn.js"
import { WebhooksHttpLive } from "./WebhooksHttp.js"

/** The API with every group implemented (requires the services the handlers use, and `Auth`). */
export const ApiLive = HttpApiBuilder.api(OpenAIApi).pipe(
  Layer.provide([HealthHttpLive, ModelsHttpLive, FilesHttpLive, BatchesHttpLive, WebhooksHttpLive, UploadsHttpLive, ErrorEnvelopeLive]),
  Layer.provide(AuthenticatedLive)
)

/**
 * Refuses to serve beyond loopback when the `Auth` in use asks for no key: judged on where `server` listens, not
 * only on `HOST`: an app's own server (`makeNodeServer({ host })`, one without a host: every interface) may bind
 * elsewhere, and a `Host: localhost` sent from afar passes the Host check.
 */
const refuseExposedServer = (server: HttpServer.HttpServer) =>
  Effect.gen(function*() {
    if (server.address._tag !== "TcpAddress") return
    const exposed = exposedWithoutKeys(yield* AppConfig, (yield* Auth).required, server.address.hostname)
    if (Option.isSome(exposed)) return yield* Effect.fail(exposed.value)
  })

/**
 * `ApiLive` plus `/openapi.json`, `/docs`, the `/ui` dashboard (`ui/DashboardHttp.ts`) and `/metrics`
 * (`MetricsHttp.ts`; each request counted there), as one `HttpApp`: inside `requestLog` (the request id, one log
 * line per request), behind `secure` (inside `sdkHeaders`, so its refusals carry an `x-request-id` too; outside
 * `boundBodies`, so a body is read only once the caller is known), with request bodies bounded by `maxJsonBodyBytes`
 * each and `maxJsonBodiesBytes` together (cut when they stall or crawl: `BodyPatience`), and at most
 * `maxUploadsAtOnce` uploads (a project held to its share of both where keys name several). No CORS header unless
 * `CORS_ORIGINS` says.
 */
const wrappedApp = Effect.gen(function*() {
  const { maxJsonBodiesBytes, maxJsonBodyBytes, maxUploadsAtOnce, metricsPort } = yield* AppConfig
  const secure = yield* securityMiddleware
  const measured = httpMetrics(yield* Metrics, Option.isNone(metricsPort))
  // A project's share of the JSON bodies, and what it may take of their reserve, hold one whole body.
  const jsonBodies = new Budget(maxJsonBodiesBytes, maxJsonBodyBytes)
  const holder = holderOf(yield* Auth)
  const bodies = boundBodies(maxJsonBodyBytes, jsonBodies, new Budget(maxUploadsAtOnce), holder)
  return <E, R>(app: HttpApp.Default<E, R>) => servedInTurn(requestLog(measured(sdkHeaders(secure(bodies(app))))))
})

/** What `wrappedApp` is made of: the API, its other routes, and the router they are served by. */
const withRoutes = <A, E, R>(layer: Layer.Layer<A, E, R>) =>
  layer.pipe(
    // The server spans record the request headers: others carry keys too (Azure's `api-key`, proxies, gateways).
    Layer.locallyWith(Headers.currentRedactedNames, (names) => [...names, CREDENTIAL_NAME]),
    Layer.provide(docsRoute("/docs")),
    Layer.provide(dashboardRoute),
    Layer.provide(metricsRoute),
    Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
    Layer.provide(ApiLive)
  )

/**
 * The whole app `HttpLive` serves, as an `HttpApp`, for an app that serves it on a router of its own, under a
 * prefix if it likes (`HttpRouter.mountApp("/openai", app)`): the same checks of each request, bounds, logs and
 * metrics; where the server listens is checked when one is in the layer's context. Its handlers keep the priority
 * of the server's fibers (`HttpLive` runs them ahead of the batches' work), and each request is given the body
 * patience on its way in (`HttpLive` puts it in its server's context once).
 */
export class ApiApp extends Context.Tag("ApiApp")<ApiApp, HttpApp.Default<never, HttpRouter.HttpRouter.DefaultServices>>() {}

/** `ApiApp`, on the services `HttpLive` needs (but an `HttpServer`). */
export const ApiAppLive = withRoutes(Layer.effect(
  ApiApp,
  Effect.gen(function*() {
    const { minBodyRate, stallTimeout } = yield* AppConfig
    const server = yield* Effect.serviceOption(HttpServer.HttpServer)
    if (Option.isSome(server)) yield* refuseExposedServer(server.value)
    const wrap = yield* wrappedApp
    const app = wrap(yield* HttpApiBuilder.httpApp)
    return Effect.provideService(app, BodyPatience, { stall: stallTimeout, minRate: minBodyRate })
  })
).pipe(Layer.provide([HttpApiBuilder.Router.Live, HttpApiBuilder.Middleware.layer])))

/**
 * Serves the whole app (`wrappedApp`) on whatever `HttpServer` is provided. Its handlers run at `REQUEST_PRIORITY`
 * (on `SchedulerLive`'s scheduler, ahead of the batches' work).
 */
export const HttpLive = requestsFirst(withRoutes(Layer.unwrapEffect(Effect.gen(function*() {
  const { minBodyRate, stallTimeout } = yield* AppConfig
  yield* refuseExposedServer(yield* HttpServer.HttpServer)
  const wrap = yield* wrappedApp
  return HttpApiBuilder.serve(wrap).pipe(
    // In every request's context from the start (provided per request, it copied the context and the fiber's references).
    Layer.provide(Layer.succeed(BodyPatience, { stall: stallTimeout, minRate: minBodyRate }))
  )
}))))
