/**
 * `GET /ui`: the dashboard, a page of plain ES modules that uses the public API from the browser (`ui/` at the
 * package's root: `index.html`, `app.css`, the `*.js` modules). The files are served as they are, with no build
 * step: read on the first request and kept in memory, each with its ETag, `Cache-Control: no-cache` (a browser
 * revalidates, so a new version is seen at once, and gets a 304 otherwise) and a strict Content-Security-Policy.
 *
 * The page and its files hold no data, so `Security.ts` serves every `/ui` path without a key; the page asks for
 * the key when an API call answers 401. Only the names in `ASSETS` are served: any other `/ui/…` path, dot
 * segments and escapes included, is a 404, and nothing is ever read from a path taken from the request. Every
 * answer under `/ui`, a 404 or another method's included, carries the same security headers.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Effect, Option, SynchronizedRef } from "effect"
import { createHash } from "node:crypto"
import { readFile } from "node:fs/promises"
import * as Path from "node:path"
import { pathToFileURL } from "node:url"
import { notFound, serverError } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { envelope } from "../http/EarlyAnswer.js"
import { sentTarget } from "../http/sentTarget.js"
import { packageRoot } from "../packageRoot.js"

/** Where the page is served; its files are under `${DASHBOARD_PATH}/`. */
const DASHBOARD_PATH = "/ui"
/**
 * Its route patterns (the metrics' `route` label of its requests): the page, a file, and any deeper path (a 404
 * with the page's headers rather than the API's).
 */
export const DASHBOARD_ROUTES = [DASHBOARD_PATH, `${DASHBOARD_PATH}/:asset`, `${DASHBOARD_PATH}/*`] as const

/**
 * Whether a request path is the dashboard's, which `Security.ts` serves without a key: the page and its files, by
 * name. Not any path under `/ui/`: an embedding app's own route there is behind the key as any other, and an
 * unknown name is a 401 without a key (a 404 with one).
 */
export const isDashboardPath = (path: string): boolean =>
  path === DASHBOARD_PATH || path === `${DASHBOARD_PATH}/` ||
  (path.startsWith(`${DASHBOARD_PATH}/`) && Object.hasOwn(ASSETS, path.slice(DASHBOARD_PATH.length + 1)))

/** Whether a path is under `/ui`, whose every answer carries the page's headers (a refusal's too). */
export const isUnderDashboard = (path: string): boolean => path === DASHBOARD_PATH || path.startsWith(`${DASHBOARD_PATH}/`)

const JS = "text/javascript; charset=utf-8"
/** Every file the dashboard has, by name, with its Content-Type. */
const ASSETS: Readonly<Record<string, string>> = {
  "index.html": "text/html; charset=utf-8",
  "app.css": "text/css; charset=utf-8",
  "app.js": JS,
  "api.js": JS,
  "dom.js": JS,
  "format.js": JS,
  "batchList.js": JS,
  "batchPage.js": JS,
  "files.js": JS,
  "content.js": JS,
  "startForm.js": JS
}


/**
 * Headers of every `/ui` answer. Nothing inline (no `unsafe-inline`): the page's scripts and styles are its own
 * files, and all it fetches is this server's API. `img-src data:` lets the page name an empty icon, so the browser
 * asks for no `/favicon.ico`.
 */
export const DASHBOARD_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  // frame-ancestors' older form, for a browser that predates it.
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache"
}

interface Asset {
  readonly body: Uint8Array
  readonly contentType: string
  readonly etag: string
}

/**
 * `load`, run when first used and its value kept; a failure is not kept, so the next use tries again (a file
 * briefly unreadable, as while a package is replaced, does not break the page until a restart).
 */
export const cachedSuccess = <A, E, R>(load: Effect.Effect<A, E, R>) =>
  Effect.map(SynchronizedRef.make(Option.none<A>()), (kept) => {
    const loadOnce = SynchronizedRef.modifyEffect(kept, (value) =>
      Option.match(value, {
        onSome: (a) => Effect.succeed([a, value] as const),
        onNone: () => Effect.map(load, (a) => [a, Option.some(a)] as const)
      }))
    // Once loaded, no lock: the value is read as it is.
    return Effect.flatMap(SynchronizedRef.get(kept), Option.match({ onSome: Effect.succeed, onNone: () => loadOnce }))
  })

const loadAssets = Effect.tryPromise(async () => {
  // The package's `ui/` (`tsc` and the bundler copy no other files into `dist/`), looked up when first needed.
  const dir = pathToFileURL(Path.join(packageRoot(), "ui") + Path.sep)
  const entries = await Promise.all(Object.entries(ASSETS).map(async ([name, contentType]) => {
    const body = await readFile(new URL(name, dir))
    const etag = `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`
    return [name, { body: new Uint8Array(body), contentType, etag }] as const
  }))
  return new Map<string, Asset>(entries)
})

/** Whether an `If-None-Match` header names `etag` (`*`, a list, weak forms). */
const matches = (ifNoneMatch: string | undefined, etag: string) =>
  ifNoneMatch !== undefined &&
  (ifNoneMatch.trim() === "*" || ifNoneMatch.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag))

const respond = (asset: Asset, ifNoneMatch: string | undefined) => {
  const headers = { ...DASHBOARD_HEADERS, etag: asset.etag }
  return matches(ifNoneMatch, asset.etag)
    ? HttpServerResponse.empty({ status: 304, headers })
    : HttpServerResponse.uint8Array(asset.body, { contentType: asset.contentType, headers })
}

const missing = (message: string) => HttpServerResponse.setHeaders(envelope(notFound(message), 404), DASHBOARD_HEADERS)

/**
 * `/ui` sends the browser to the page at `/ui/`, where its relative paths (`app.js`) resolve: relative, so under
 * an app's prefix too (`/openai/ui` to `/openai/ui/`), and no loop behind a proxy that sends `/ui` to `/ui/` itself.
 */
const toPage = () => HttpServerResponse.empty({ status: 302, headers: { ...DASHBOARD_HEADERS, location: "ui/" } })

/** A package without its `ui/` folder (a bundler that left it out): said, and logged at each request for it. */
const unreadable = () =>
  HttpServerResponse.setHeaders(
    envelope(serverError("The dashboard's files are missing from this installation."), 500),
    DASHBOARD_HEADERS
  )

/**
 * `GET /ui/` (the page, also as `/ui/index.html`; `/ui` sends there) and `GET /ui/<name>` (its files); any other
 * method, and any deeper path, a 404 (in the API's words for a route it does not have) with the page's headers.
 */
export const dashboardRoute = HttpApiBuilder.Router.use((router) =>
  Effect.gen(function*() {
    const assets = yield* cachedSuccess(loadAssets.pipe(
      Effect.tapError((cause) => Effect.logError("Dashboard: its files could not be read", cause))
    ))
    const serve = (name: string | undefined) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
        if (name === undefined || (request.method !== "GET" && request.method !== "HEAD")) {
          return missing(`Invalid URL (${request.method} ${echo(sentTarget(request))})`)
        }
        return Effect.match(assets, {
          onFailure: unreadable,
          onSuccess: (all) => {
            const asset = all.get(name)
            return asset === undefined
              ? missing(`The dashboard has no file named '${echo(name, 100)}'.`)
              : respond(asset, request.headers["if-none-match"])
          }
        })
      })
    const [page, assetPattern, deeper] = DASHBOARD_ROUTES
    // The router takes `/ui/` for `/ui`: told apart by the path. Another method's 404 is the page's own.
    yield* router.all(
      page,
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        (request.method === "GET" || request.method === "HEAD") && !request.url.split("?")[0]!.endsWith("/")
          ? toPage()
          : serve("index.html"))
    )
    yield* router.all(assetPattern, Effect.flatMap(HttpRouter.params, ({ asset = "" }) => serve(asset === "" ? "index.html" : asset)))
    yield* router.all(deeper, serve(undefined))
  })
)
