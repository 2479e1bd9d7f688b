/**
 * Who may reach the API, and from where. One server middleware (`secure`) answers, in this order:
 *
 * 1. **Host**: without API keys (and without `ALLOW_UNAUTHENTICATED`) only loopback names are served, so a page
 *    whose DNS name was rebound to 127.0.0.1 (`Host: evil.example:8321`) gets nothing, not even the health check.
 * 2. **Origin**: a browser request from another web origin is refused unless `CORS_ORIGINS` lists it. Browsers send
 *    `Origin` on every cross-origin request but simple GETs, so a hostile page cannot make a logged-in or local
 *    user's browser upload a file (a multipart form post needs no preflight) or cancel a batch (a bodiless POST);
 *    listed origins get their CORS headers on every answer, errors included, and their preflights approved.
 * 3. **Key**: with keys configured, every route but `/v1/health`, `/v1/ready`, `/docs`, `/openapi.json`, the
 *    `/ui` dashboard and an embedding app's `PublicPaths` needs `Authorization: Bearer <key>`, unknown routes
 *    included (a 401 rather than a 404 tells a stranger nothing); the caller is provided to the handlers as
 *    `CurrentCaller` (through the `Authenticated` API middleware, which every group but health declares).
 * 4. **Rate**: with `MAX_REQUESTS_PER_MINUTE_PER_PROJECT`, a project's requests beyond its rate get a 429
 *    (`requestRates.ts`).
 *
 * Its answers are OpenAI error envelopes; `sdkHeaders` (outside it) adds their `x-request-id`.
 */
import * as HttpApiMiddleware from "@effect/platform/HttpApiMiddleware"
import * as HttpApiSecurity from "@effect/platform/HttpApiSecurity"
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { Auth, type AuthShape, type Caller, CurrentCaller, localCaller } from "../auth/Auth.js"
import { AppConfig, isLoopbackName } from "../Config.js"
import { invalidRequest, unauthorized, UnauthorizedSchema } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { DASHBOARD_HEADERS, isDashboardPath, isUnderDashboard } from "../ui/DashboardHttp.js"
import { answer, envelope } from "./EarlyAnswer.js"
import { noteProject } from "./RequestLog.js"
import { RequestRates } from "./requestRates.js"
import { requestTarget, routedPath } from "./Routes.js"

/** Routes anyone may read: liveness, readiness and the API's description. */
export const PUBLIC_PATHS: ReadonlySet<string> = new Set(["/v1/health", "/v1/ready", "/docs", "/openapi.json"])

/**
 * …and the dashboard's page and files (`ui/DashboardHttp.ts`), which hold no data: the page's API calls need a key.
 * As the router reads the path (`/v1/health/` is served as `/v1/health`: a probe written so got a 401).
 */
const isPublicPath = (path: string) => PUBLIC_PATHS.has(routedPath(path)) || isDashboardPath(path)

/**
 * Paths of an embedding app's own routes that need no key (a page of its own, a login): exact paths, as requested
 * (`/healthz`; not `/HEALTHZ`, `/healthz/`, nor anything below it, which need a key). None of the service's paths.
 */
export class PublicPaths extends Context.Reference<PublicPaths>()("PublicPaths", {
  defaultValue: (): ReadonlySet<string> => new Set()
}) {}

/** Why `path` cannot be one of `PublicPaths`: the service's own, or not a plain path. */
const publicPathProblem = (path: string): string | undefined =>
  !/^\/[A-Za-z0-9._~\-/]*$/.test(path) || path.includes("//") || /(^|\/)\.\.?(\/|$)/.test(path)
    ? "is not a plain path"
    : /^\/v1(\/|$)/i.test(path) || path.toLowerCase() === "/metrics" || isPublicPath(path.toLowerCase())
    ? "is one of the service's own (they are public, or need a key, as the service says)"
    : undefined

/** Request headers a listed origin may send: the SDKs' own (`x-stainless-*` are added as a preflight asks). */
const ALLOWED_HEADERS = ["authorization", "content-type", "openai-organization", "openai-project", "idempotency-key"]
/**
 * Response headers a listed origin's scripts may read (the SDKs read these; `x-last-line` and `x-next-after`, the
 * results extension's).
 */
const EXPOSED_HEADERS = "x-request-id, x-should-retry, retry-after, retry-after-ms, x-last-line, x-next-after, " +
  "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests"
const ALLOWED_METHODS = "GET, POST, DELETE"

export interface SecurityOptions {
  readonly auth: AuthShape
  /** Exact origins whose browser requests are served, with CORS headers (`CORS_ORIGINS`). */
  readonly corsOrigins: ReadonlyArray<string>
  /** Serve only loopback `Host` names: no keys and no `ALLOW_UNAUTHENTICATED`. */
  readonly loopbackOnly: boolean
  /** The app's own paths served without a key (`PublicPaths`). */
  readonly publicPaths?: ReadonlySet<string>
  /** Each project's request rate (`MAX_REQUESTS_PER_MINUTE_PER_PROJECT`); none: not limited. */
  readonly rates?: RequestRates | undefined
}

/** The name in a `Host` header (`[::1]` keeps its brackets), without the port; undefined when malformed. */
const hostName = (host: string): string | undefined => {
  const match = /^(\[[0-9a-fA-F:.]*\]|[^:[\]]*)(?::\d{1,5})?$/.exec(host)
  return match === null || match[1] === "" ? undefined : match[1]
}

/** Whether a `Host` header names this machine's loopback interface (`localhost`, `127.x.x.x`, `[::1]`, any port). */
export const isLoopbackHost = (host: string | undefined): boolean => {
  const name = host === undefined ? undefined : hostName(host)
  return name !== undefined && isLoopbackName(name)
}

/**
 * Whether `origin` is the origin the request was addressed to (the docs page calling its own server). Its scheme is
 * not compared: behind a proxy that ends TLS, the page's origin is `https://` and the request reaches this server
 * as plain HTTP; no other origin can hold the same host and port.
 */
const sameOrigin = (origin: string, host: string | undefined) =>
  host !== undefined && URL.canParse(origin) && new URL(origin).host === host.toLowerCase()

/** The key of an `Authorization: Bearer <key>` header; "" when there is none. */
const bearerKey = (authorization: string | undefined): string => {
  const match = authorization === undefined ? null : /^Bearer +(\S+) *$/i.exec(authorization)
  return match === null ? "" : match[1]!
}

/**
 * A `Host` that is not a loopback name while the server runs without keys. 421 Misdirected Request (RFC 9110
 * §15.5.20) says what happened: the request reached a server that does not answer for that authority. A 403 would
 * say the resource exists and this caller may not have it; here no resource is served under that name at all, and
 * the SDKs do not retry a 421.
 */
const misdirected = (host: string | undefined) =>
  envelope(
    invalidRequest(
      `This server does not answer for the host '${echo(host ?? "")}': without API keys it serves only localhost, 127.x.x.x and [::1].`,
      null,
      "misdirected_request"
    ),
    421
  )

/** A browser request from an origin `CORS_ORIGINS` does not list (including its preflight). */
const foreignOrigin = (origin: string) =>
  envelope(
    invalidRequest(
      `Requests from the web origin '${echo(origin)}' are not allowed; CORS_ORIGINS lists the origins that are.`,
      null,
      "origin_not_allowed"
    ),
    403
  )

/** Headers other gateways and APIs take a key in (LiteLLM's, Azure's, Anthropic's): named when a key is there. */
const OTHER_KEY_HEADERS = ["x-litellm-api-key", "api-key", "x-api-key"]

/**
 * What was wrong with the key a request sent (never the key): an unknown key gets OpenAI's words; a missing one,
 * where to put it, a key in another gateway's header included (it read as a wrong key, and sent a migrating user to
 * rotate keys).
 */
export const keyProblem = (headers: Readonly<Record<string, string | undefined>>): string => {
  const authorization = headers.authorization ?? ""
  if (bearerKey(authorization) !== "") return "Incorrect API key provided."
  if (authorization.trim() !== "") return "The Authorization header holds no Bearer key: send Authorization: Bearer YOUR_KEY."
  const elsewhere = OTHER_KEY_HEADERS.find((name) => headers[name] !== undefined)
  return elsewhere === undefined
    ? "You didn't provide an API key: send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY)."
    : `This server reads the API key from the Authorization header (Authorization: Bearer YOUR_KEY), not from ${elsewhere}.`
}

/** A request's headers, if there is one (none: read as no key). */
export const headersOf = (request: Option.Option<HttpServerRequest.HttpServerRequest>) =>
  Option.match(request, { onNone: () => ({}), onSome: (r) => r.headers })

/** The 401 of a missing or unknown key, in OpenAI's envelope. */
const unauthenticated = (headers: Readonly<Record<string, string | undefined>>) =>
  envelope(unauthorized(keyProblem(headers)), 401, { "www-authenticate": "Bearer" })

/** The approval of a listed origin's preflight: its method and headers, the SDKs' `x-stainless-*` included. */
const preflight = (origin: string, request: HttpServerRequest.HttpServerRequest) => {
  const asked = (request.headers["access-control-request-headers"] ?? "").split(",").map((h) => h.trim().toLowerCase())
  const headers = [...ALLOWED_HEADERS, ...asked.filter((h) => /^x-stainless-[a-z0-9-]+$/.test(h))]
  return HttpServerResponse.empty({
    status: 204,
    headers: {
      "access-control-allow-origin": origin,
      "access-control-allow-methods": ALLOWED_METHODS,
      "access-control-allow-headers": [...new Set(headers)].join(", "),
      "access-control-max-age": "600",
      ...(request.headers["access-control-request-private-network"] === "true"
        ? { "access-control-allow-private-network": "true" }
        : {}),
      vary: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    }
  })
}

const isPreflight = (request: HttpServerRequest.HttpServerRequest) =>
  request.method === "OPTIONS" && request.headers["access-control-request-method"] !== undefined

/** `Vary: Origin` on every answer when CORS is configured, and the CORS headers on those to a listed origin. */
const corsHeaders = (origin: string | undefined) =>
  HttpApp.appendPreResponseHandler((_request, response) =>
    Effect.succeed(HttpServerResponse.setHeaders(
      response,
      origin === undefined
        ? { vary: "Origin" }
        : { vary: "Origin", "access-control-allow-origin": origin, "access-control-expose-headers": EXPOSED_HEADERS }
    ))
  )

/** Server middleware: the Host, Origin and key checks above, then `app` with the request's `CurrentCaller`. */
export const secure = (options: SecurityOptions) => {
  const listed: ReadonlySet<string> = new Set(options.corsOrigins)
  const { auth, rates } = options
  return <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> => {
    /** `app` served to `caller` (named in the request's log line), within its project's rate when one is set. */
    const serveTo = (request: HttpServerRequest.HttpServerRequest, caller: Caller): HttpApp.Default<E, R> => {
      const served = Effect.zipRight(noteProject(caller.project), Effect.provideService(app, CurrentCaller, caller))
      if (rates === undefined || caller.admin) return served
      return Effect.clockWith((clock) => {
        const check = rates.take(caller.project, clock.unsafeCurrentTimeMillis())
        if (!check.allowed) return Effect.zipRight(noteProject(caller.project), answer(request, rates.refusal(check)))
        const limits = rates.headers(check)
        return Effect.zipRight(
          HttpApp.appendPreResponseHandler((_request, response) => Effect.succeed(HttpServerResponse.setHeaders(response, limits))),
          served
        )
      })
    }
    return Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
      const { headers } = request
      const { authority, path } = requestTarget(request)
      const refuse = (response: HttpServerResponse.HttpServerResponse) =>
        answer(request, isUnderDashboard(path) ? HttpServerResponse.setHeaders(response, DASHBOARD_HEADERS) : response)
      if (options.loopbackOnly && !isLoopbackHost(authority)) return refuse(misdirected(authority))
      const origin = headers.origin
      const corsOrigin = origin !== undefined && listed.has(origin) ? origin : undefined
      if (origin !== undefined && corsOrigin === undefined && !sameOrigin(origin, authority)) {
        return refuse(foreignOrigin(origin))
      }
      if (corsOrigin !== undefined && isPreflight(request)) return answer(request, preflight(corsOrigin, request))

      const served: HttpApp.Default<E, R> = !auth.required
        ? serveTo(request, localCaller)
        : isPublicPath(path) || options.publicPaths?.has(path) === true
        ? app
        : Effect.flatMap(auth.authenticate(bearerKey(headers.authorization)), (caller: Option.Option<Caller>) =>
          Option.isSome(caller) ? serveTo(request, caller.value) : refuse(unauthenticated(headers)))
      return listed.size > 0 ? Effect.zipRight(corsHeaders(corsOrigin), served) : served
    })
  }
}

/** `secure` as the configuration and the keys in use ask. */
export const securityMiddleware = Effect.gen(function*() {
  const { allowUnauthenticated, corsOrigins, maxRequestsPerMinutePerProject } = yield* AppConfig
  const auth = yield* Auth
  const publicPaths = yield* PublicPaths
  for (const path of publicPaths) {
    const problem = publicPathProblem(path)
    if (problem !== undefined) return yield* Effect.dieMessage(`PublicPaths: '${path}' ${problem}.`)
  }
  const rates = Option.getOrUndefined(Option.map(maxRequestsPerMinutePerProject, (perMinute) => new RequestRates(perMinute)))
  return secure({ auth, corsOrigins, loopbackOnly: !auth.required && !allowUnauthenticated, publicPaths, rates })
})

/**
 * The API middleware that gives every group's handlers but health's their `CurrentCaller` (and documents the bearer key
 * in the OpenAPI document). `secure` has already checked the key and provided the caller; served without `secure`
 * (an app of its own around `ApiLive`), the key is checked here.
 */
export class Authenticated extends HttpApiMiddleware.Tag<Authenticated>()("Authenticated", {
  failure: UnauthorizedSchema,
  provides: CurrentCaller,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

export const AuthenticatedLive = Layer.effect(
  Authenticated,
  Effect.map(Auth, (auth) =>
    Authenticated.of({
      bearer: (token) =>
        Effect.flatMap(Effect.all([Effect.serviceOption(CurrentCaller), Effect.serviceOption(HttpServerRequest.HttpServerRequest)]), ([provided, request]) =>
          Option.isSome(provided)
            ? Effect.succeed(provided.value)
            : Effect.flatMap(auth.authenticate(Redacted.value(token).trim()), (caller) =>
              Option.isSome(caller) ? Effect.succeed(caller.value) : Effect.fail(unauthorized(keyProblem(headersOf(request))))))
    }))
)
