/**
 * One log line per HTTP request, and the request's id. The id is the caller's `x-request-id` when it is a sane one
 * (bounded, safe characters: it goes into logs and a response header as it is), else a fresh `req_…`; every line
 * logged while the request is served carries it as `request_id`, and `sdkHeaders` echoes it in the response.
 *
 * The line is written once the response is (status, duration, the route pattern its path matches rather than the
 * path with its ids, and the caller's project once `secure` knows it). Health and readiness probes and metrics
 * scrapes are logged at debug level: a line every few seconds would drown the rest.
 */
import type * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import type * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Cause, Effect, Exit, FiberRef, HashMap, LogLevel, Option } from "effect"
import { requestId } from "../domain/Ids.js"
import { echo } from "../domain/Text.js"
import { requestTarget, routedPath, routeOf } from "./Routes.js"
import { sentTarget } from "./sentTarget.js"

/** An incoming `x-request-id` taken as is: 1–128 letters, digits and `- _ . : + / = @`. */
const SANE_REQUEST_ID = /^[A-Za-z0-9._:+/=@-]{1,128}$/

/** The request's id: the caller's `x-request-id` when sane, else a new one. */
export const requestIdFrom = (header: string | undefined): string =>
  header !== undefined && SANE_REQUEST_ID.test(header) ? header : requestId()

/**
 * What is known of the request being served: its id, and the caller's project once authenticated (`noteProject`
 * writes it in place: the object is the request's own, made by `requestLog`).
 */
export interface RequestInfo {
  readonly id: string
  project: string | undefined
}

/** The request being served (set by `requestLog`; undefined outside it). */
export const currentRequest: FiberRef.FiberRef<RequestInfo | undefined> = FiberRef.unsafeMake<RequestInfo | undefined>(
  undefined
)

/** Records the caller's project for the request line (`secure` calls it once the key is checked). */
export const noteProject = (project: string): Effect.Effect<void> =>
  Effect.map(FiberRef.get(currentRequest), (info) => {
    if (info !== undefined) info.project = project
  })

/**
 * Polled every few seconds (probes of load balancers and orchestrators, Prometheus scrapes): their lines are debug.
 * Only as probes ask (GET, HEAD): another method there is not a probe, and its line stays at info; so is a probe
 * refused (401, 403: a scraper's key wrong, or someone trying keys; 421: a name this server does not serve) or sent
 * where nothing answers it (404: a scrape of the main port once `METRICS_PORT` serves the metrics).
 */
const POLLED: ReadonlySet<string> = new Set(["/v1/health", "/v1/ready", "/metrics"])
/** A probe's statuses logged at info all the same. */
const SAID_OF_PROBES: ReadonlySet<number> = new Set([401, 403, 404, 421])
const isProbe = (method: string, path: string) => (method === "GET" || method === "HEAD") && POLLED.has(routedPath(path))

/** A probe's or a scrape's request (`POLLED`), as the server reads its target. */
export const isProbeRequest = (request: HttpServerRequest.HttpServerRequest): boolean =>
  isProbe(request.method, requestTarget(request).path)

export interface RequestLine {
  readonly method: string
  /** The route pattern the path matches (`/v1/batches/:batch_id`, `routeOf`); undefined when none does. */
  readonly route: string | undefined
  /** The path as the router reads it, without its query. */
  readonly path: string
  readonly status: number
  readonly durationMs: number
  readonly project: string | undefined
  /** Who sent a key refused (401, 403): an operator sees who is guessing keys. Other lines do without it. */
  readonly clientAddress?: string | undefined
}

/** The message and fields of a request's line. */
const requestLine = (line: RequestLine) => ({
  message: `${line.method} ${line.route ?? line.path} ${line.status} ${line.durationMs} ms`,
  fields: {
    event: "http.request",
    method: line.method,
    ...(line.route === undefined ? {} : { route: line.route }),
    path: line.path,
    status: line.status,
    duration_ms: line.durationMs,
    ...(line.project === undefined ? {} : { project: line.project }),
    ...(line.clientAddress === undefined ? {} : { client_address: line.clientAddress })
  }
})

/**
 * The request's line, built only when its level is logged (a probe's debug line usually is not), from the fiber's
 * state read directly rather than through Effect steps: written as a chain of steps (timed, exit, the current span,
 * the line), this middleware took ~40 % of a `/v1/health`'s CPU and a third of a single batch's GET.
 */
const writeLine = <E>(
  request: HttpServerRequest.HttpServerRequest,
  exit: Exit.Exit<HttpServerResponse.HttpServerResponse, E>,
  started: number
) =>
  Effect.withFiberRuntime<void>((fiber) => {
    const { path } = requestTarget(request)
    // The line's path as the client sent it (under a mount, with its prefix); the route as the router read it.
    const sentPath = sentTarget(request).split("?")[0]!
    // A fault no handler turned into an answer (outside the API's routes: /metrics, /docs) is logged with its cause;
    // an interruption is not one, nor the response it was answered with (a client gone: 499, a shutdown: 503).
    const [response, rest] = Exit.isFailure(exit)
      ? HttpServerError.causeResponseStripped(exit.cause)
      : [exit.value, Option.none<Cause.Cause<E>>()]
    const fault = Option.isSome(rest) && !Cause.isInterruptedOnly(rest.value) ? rest.value : undefined
    // Another 5xx answered is a warning; a 503 or 507 (busy, draining, storage away: said apart, throttled) is not.
    const status = response.status
    const level = fault !== undefined
      ? LogLevel.Error
      : isProbe(request.method, path) && !SAID_OF_PROBES.has(status)
      ? LogLevel.Debug
      : status >= 500 && status !== 503 && status !== 507
      ? LogLevel.Warning
      : LogLevel.Info
    if (LogLevel.lessThan(level, fiber.getFiberRef(FiberRef.currentMinimumLogLevel))) return Effect.void
    const { fields, message } = requestLine({
      method: request.method,
      route: routeOf(path),
      path: echo(sentPath),
      status: response.status,
      durationMs: Math.round((performance.now() - started) * 10) / 10,
      project: fiber.getFiberRef(currentRequest)?.project,
      clientAddress: status === 401 || status === 403 ? Option.getOrUndefined(request.remoteAddress) : undefined
    })
    return Effect.annotateLogs(Effect.logWithLevel(level, message, ...(fault === undefined ? [] : [fault])), fields)
  })

/**
 * Server middleware: the request id for everything inside, and the request's line once it is answered. The id is set
 * on the request's fiber rather than scoped to `app`: server middleware runs on a fiber of the request's own (the
 * platform forks one per request), which ends with it, and scoping each value costs ~20 runtime steps.
 */
export const requestLog = <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const id = requestIdFrom(request.headers["x-request-id"])
    const started = performance.now()
    return FiberRef.set(currentRequest, { id, project: undefined }).pipe(
      Effect.zipRight(FiberRef.update(FiberRef.currentLogAnnotations, HashMap.set<string, unknown>("request_id", id))),
      Effect.zipRight(Effect.onExit(app, (exit) => writeLine(request, exit, started)))
    )
  })
