/**
 * Where a request goes, read from its target as the router reads it: the authority and path (`requestTarget`, for the
 * Host and key checks), and the route pattern its path matches (`routeOf`, for its log line and metrics labels).
 * Patterns are written in the router's form (`/v1/batches/:batch_id`), so a label names a route, never a raw path.
 */
import * as HttpApi from "@effect/platform/HttpApi"
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { DASHBOARD_ROUTES } from "../ui/DashboardHttp.js"
import { OpenAIApi } from "./Api.js"
import { ABSOLUTE_FORM } from "./sentTarget.js"

/** Where the metrics are served (on the main port unless `METRICS_PORT` is set). */
export const METRICS_PATH = "/metrics"

/** Routes served beside the `HttpApi`'s endpoints (`Http.ts`). */
const OTHER_ROUTES = ["/docs", "/openapi.json", METRICS_PATH, ...DASHBOARD_ROUTES]

/**
 * The authority a request was addressed to, and its path as the router reads it. A target in absolute form
 * (`GET http://evil.example/v1/files`, as sent to proxies) names the authority itself, and then the `Host` header is
 * ignored (RFC 9112 §3.2.2); its path is what the router routes, read the router's way (no other normalisation,
 * so a path taken here for a public one is one the router serves as that public route). A web `Request` handed to
 * the app in process (`ApiApp` as a web handler) usually has no `Host` header (a browser's fetch may not set one):
 * its URL, absolute, then says the authority (every such request was a 421 on a server without keys).
 */
export const requestTarget = (
  request: HttpServerRequest.HttpServerRequest
): { readonly authority: string | undefined; readonly path: string } => {
  const target = request.url
  const absolute = target.startsWith("/") ? null : ABSOLUTE_FORM.exec(target)
  return {
    // `OPTIONS *` (asterisk form) names no authority of its own either: its Host header is the one.
    authority: target.startsWith("/") || target === "*"
      ? request.headers.host ?? (request.originalUrl.startsWith("/") ? undefined : ABSOLUTE_FORM.exec(request.originalUrl)?.[1])
      : absolute?.[1],
    path: (absolute === null ? target : target.replace(ABSOLUTE_FORM, "/")).split("?")[0]!
  }
}

/** One trailing slash is the router's path without it (`/ui/` is `/ui`, `/v1/files/` is `/v1/files`). */
export const routedPath = (path: string): string => (path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path)

/**
 * The route pattern a path matches among `patterns`; undefined when none does. A parameter (`:batch_id`) matches one
 * non-empty segment, a final `*` whatever follows its slash.
 */
const makeRouteMatcher = (patterns: ReadonlyArray<string>) => {
  const exact = new Map<string, string>()
  const withParams: Array<{ readonly segments: ReadonlyArray<string>; readonly pattern: string }> = []
  const prefixes: Array<{ readonly prefix: string; readonly pattern: string }> = []
  for (const pattern of patterns) {
    if (pattern.endsWith("/*")) prefixes.push({ prefix: pattern.slice(0, -1), pattern })
    else if (pattern.includes("/:")) withParams.push({ segments: pattern.split("/"), pattern })
    else exact.set(pattern, pattern)
  }
  return (given: string): string | undefined => {
    const path = routedPath(given)
    const known = exact.get(path)
    if (known !== undefined) return known
    const segments = path.split("/")
    for (const p of withParams) {
      if (p.segments.length !== segments.length) continue
      let i = 0
      while (i < segments.length && (p.segments[i] === segments[i] || (p.segments[i]!.startsWith(":") && segments[i] !== ""))) i++
      if (i === segments.length) return p.pattern
    }
    return prefixes.find((p) => path.startsWith(p.prefix))?.pattern
  }
}

let apiRouteOf: ((path: string) => string | undefined) | undefined

/** The route pattern of a path, among the API's endpoints and the routes beside them; undefined when none matches. */
export const routeOf = (path: string): string | undefined => {
  if (apiRouteOf === undefined) {
    const patterns: Array<string> = [...OTHER_ROUTES]
    HttpApi.reflect(OpenAIApi, { onGroup: () => {}, onEndpoint: ({ endpoint }) => patterns.push(endpoint.path) })
    apiRouteOf = makeRouteMatcher(patterns)
  }
  return apiRouteOf(path)
}

let routesByMethod: ReadonlyMap<string, (path: string) => string | undefined> | undefined

/**
 * The route pattern a request with `method` to a path matches, undefined when no route takes that method there (the
 * router's 404: `POST /v1/files/file-abc` has none, though `GET` and `DELETE` do). The routes beside the API's
 * are `GET`s; a `HEAD` is routed as its `GET`.
 */
export const routeFor = (method: string, path: string): string | undefined => {
  if (routesByMethod === undefined) {
    const patterns = new Map<string, Array<string>>([["GET", [...OTHER_ROUTES]]])
    HttpApi.reflect(OpenAIApi, {
      onGroup: () => {},
      onEndpoint: ({ endpoint }) => void patterns.set(endpoint.method, [...(patterns.get(endpoint.method) ?? []), endpoint.path])
    })
    routesByMethod = new Map([...patterns].map(([routed, paths]) => [routed, makeRouteMatcher(paths)]))
  }
  return routesByMethod.get(method === "HEAD" ? "GET" : method)?.(path)
}
