/**
 * `GET /metrics`: this node's metrics (`observability/Metrics.ts`, on `observability/metricsRegistry.ts`) in
 * Prometheus' text format, and the HTTP figures every request adds to them (`httpMetrics`).
 *
 * Where they are served:
 *
 * - without `METRICS_PORT`, on the main port (`metricsRoute`): with API keys configured only to an operator key
 *   (`ADMIN_API_KEYS`, `admin:` lines of the keys file): no key or an unknown one gets the 401 of `secure`, a
 *   project's key a 403 (the route is documented: its existence is no secret, the key lacks the right). Without
 *   keys it is open like every route (the server then serves loopback only);
 * - with `METRICS_PORT`, on a listener of its own on `HOST` (`MetricsServerLive`), without a key (without keys
 *   configured, loopback `Host` names only, as on the main port), and not on the main port (404 there).
 *
 * `batch_batches_active` is counted in the database at each scrape, and the space of `DATA_DIR`'s file system read
 * (`batch_data_dir_*_bytes`, when the SQLite database or local file bytes are there); each is bounded by a timeout
 * and left out when it does not answer, rather than stale.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import type * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Data, Duration, Effect, Layer, Option, Runtime } from "effect"
import { createServer, type IncomingHttpHeaders, type ServerResponse } from "node:http"
import { Auth, CurrentCaller } from "../auth/Auth.js"
import { BatchStore } from "../batches/BatchStore.js"
import { AppConfig, fileStorageOf } from "../Config.js"
import { ErrorBody, unauthorized } from "../domain/Errors.js"
import { Metrics, type MetricsShape } from "../observability/Metrics.js"
import { makeDiskSpace } from "../storage/diskSpace.js"
import { CONTENT_TYPE } from "../observability/metricsRegistry.js"
import { envelope } from "./EarlyAnswer.js"
import { METRICS_PATH, requestTarget, routeOf } from "./Routes.js"
import { headersOf, isLoopbackHost, keyProblem } from "./Security.js"

/** The `route` label of a request no route matched. */
export const UNMATCHED = "unmatched"

/**
 * Server middleware: counts each request (`batch_http_requests_total`) and its time until the response is ready
 * (`batch_http_request_duration_seconds`), labelled with the route its path matches (`routeOf`), else `unmatched`:
 * never a raw path, so label values stay bounded. `/metrics` is a route only where it is served (`servesMetrics`:
 * not on the main port when `METRICS_PORT` is set).
 */
export const httpMetrics = (metrics: MetricsShape, servesMetrics = true) => {
  return <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
    Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
      const started = performance.now()
      return Effect.onExit(app, (exit) =>
        Effect.sync(() => {
          const matched = routeOf(requestTarget(request).path)
          const route = matched === undefined || (matched === METRICS_PATH && !servesMetrics) ? UNMATCHED : matched
          const status = HttpServerError.exitResponse(exit).status
          metrics.httpRequest(request.method, route, status, (performance.now() - started) / 1000)
        }))
    })
}

/** How long a scrape waits for the database's count of active batches (the disk's space: `storage/diskSpace.ts`). */
const SCRAPE_READ_TIMEOUT = Duration.seconds(5)

/** The metrics text, the active batches counted now (left out when the database does not answer in time). */
export const makeScrape = Effect.gen(function*() {
  const metrics = yield* Metrics
  const store = yield* BatchStore
  const config = yield* AppConfig
  // DATA_DIR holds the SQLite database, and the file bytes unless they are stored in the database.
  const usesDataDir = Option.isNone(config.databaseUrl) || fileStorageOf(config) === "local"
  const disk = usesDataDir ? makeDiskSpace(config.dataDir) : Effect.succeed(undefined)
  // Disconnected: a Postgres statement is never interrupted (`storage/Sql.ts`), so the scrape answers at the timeout
  // while the count ends in the background.
  const active = store.activeByStatus.pipe(
    Effect.withTracerEnabled(false), // a scrape's, every few seconds: not a trace each
    Effect.disconnect,
    Effect.timeoutFail({ duration: SCRAPE_READ_TIMEOUT, onTimeout: () => "timed out" }),
    Effect.catchAllCause((cause) =>
      Effect.as(Effect.logWarning("Metrics: the active batches could not be counted", cause), undefined)
    )
  )
  return Effect.flatMap(Effect.all([active, disk], { concurrency: 2 }), ([counts, space]) => metrics.render(counts, space))
})

/** The 403 of a project's key asking for the metrics. */
const operatorsOnly = () =>
  envelope(
    {
      error: new ErrorBody({
        message: "The metrics are served to operator keys only (ADMIN_API_KEYS, or an admin: line of API_KEYS_FILE).",
        type: "invalid_request_error",
        param: null,
        code: "insufficient_permissions"
      })
    },
    403
  )

/** `GET /metrics` on the main port, unless `METRICS_PORT` gives them a port of their own. */
export const metricsRoute = HttpApiBuilder.Router.use((router) =>
  Effect.gen(function*() {
    const { metricsPort } = yield* AppConfig
    if (Option.isSome(metricsPort)) return
    const auth = yield* Auth
    const scrape = yield* makeScrape
    const served = Effect.map(scrape, (text) => HttpServerResponse.text(text, { contentType: CONTENT_TYPE }))
    yield* router.get(
      METRICS_PATH,
      Effect.flatMap(Effect.all([Effect.serviceOption(CurrentCaller), Effect.serviceOption(HttpServerRequest.HttpServerRequest)]), ([caller, request]) => {
        if (!auth.required || Option.exists(caller, (c) => c.admin)) return served
        // `secure` has checked the key and provided the caller; served without it, no caller is no key.
        return Effect.succeed(
          Option.isSome(caller)
            ? operatorsOnly()
            : envelope(unauthorized(keyProblem(headersOf(request))), 401, { "www-authenticate": "Bearer" })
        )
      })
    )
  })
)

/** `METRICS_PORT` could not be listened on (the error of Node's `listen`: its `code`, `address` and `port`). */
export class MetricsListenFailed extends Data.TaggedError("MetricsListenFailed")<{ readonly cause: Error }> {}

/**
 * Whether a request was sent by a web page's script (any origin): browsers say so in `Sec-Fetch-Site` (`none` for an
 * address typed in) and `Origin`, a scraper never does. The metrics port needs no key, and a page whose name was
 * rebound to the server's address reads it as its own origin, so its `Host` tells nothing.
 */
const fromAWebPage = (headers: IncomingHttpHeaders) =>
  headers.origin !== undefined || (headers["sec-fetch-site"] !== undefined && headers["sec-fetch-site"] !== "none")

/**
 * The metrics on `METRICS_PORT` (nothing without it): a small Node HTTP listener of its own on `HOST` answering
 * `GET /metrics` (and `HEAD`) without a key, 404 on any other path, 403 to a web page's script; closed with the app.
 */
export const MetricsServerLive = Layer.scopedDiscard(
  Effect.gen(function*() {
    const config = yield* AppConfig
    if (Option.isNone(config.metricsPort)) return
    const scrape = yield* makeScrape
    const run = Runtime.runPromise(yield* Effect.runtime<never>())
    const loopbackOnly = !(yield* Auth).required && !config.allowUnauthenticated
    const plain = (res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}) => {
      res.writeHead(status, { "content-type": "text/plain; charset=utf-8", ...headers })
      res.end(text)
    }
    const server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0]
      if (loopbackOnly && !isLoopbackHost(req.headers.host)) return plain(res, 421, "This server answers only for localhost.\n")
      if (fromAWebPage(req.headers)) return plain(res, 403, "The metrics are for scrapers: a web page's request gets none.\n")
      if (path !== METRICS_PATH) return plain(res, 404, `Not found; the metrics are at ${METRICS_PATH}.\n`)
      if (req.method !== "GET" && req.method !== "HEAD") return plain(res, 405, "Method not allowed.\n", { allow: "GET, HEAD" })
      run(scrape).then(
        (text) => {
          res.writeHead(200, { "content-type": CONTENT_TYPE, "content-length": Buffer.byteLength(text) })
          res.end(req.method === "HEAD" ? undefined : text)
        },
        () => plain(res, 500, "The metrics could not be gathered.\n")
      )
    })
    const port = config.metricsPort.value
    yield* Effect.acquireRelease(
      Effect.async<void, MetricsListenFailed>((resume) => {
        const failed = (error: Error) => resume(Effect.fail(new MetricsListenFailed({ cause: error })))
        server.once("error", failed)
        server.listen(port, config.host, () => {
          server.off("error", failed)
          resume(Effect.void)
        })
      }),
      () =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeAllConnections()
        })
    )
    const address = server.address()
    const bound = typeof address === "object" && address !== null ? address.port : port
    const host = config.host.includes(":") ? `[${config.host}]` : config.host
    yield* Effect.logInfo(`Metrics served at http://${host}:${bound}${METRICS_PATH}`)
  })
)
