/**
 * `/docs`: the Scalar API reference of the OpenAPI document. The platform's `HttpApiScalar` embeds Scalar's 3.4 MB
 * script in a module whose import alone costs every server ~13 MB of heap; here the script is loaded on the first
 * request for the page, so only a server whose docs somebody opens pays for it; a browser that takes gzip gets it so.
 *
 * The page shares its origin with the `/ui` dashboard, whose API key sits in `localStorage`: it gets a
 * Content-Security-Policy that runs only its own two inline scripts (by their SHA-256, computed once with the
 * page), fetches only from this server, and loads no fonts or images from elsewhere (Scalar's default fonts come
 * from its CDN: turned off). What Scalar needs beside: `'wasm-unsafe-eval'` (it compiles a WebAssembly module
 * when it loads the document; JavaScript's `eval` and `new Function` stay refused, and it copes without them) and
 * `style-src 'unsafe-inline'` (it injects its styles at run time).
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as OpenApi from "@effect/platform/OpenApi"
import { Effect } from "effect"
import { createHash } from "node:crypto"
import { createRequire } from "node:module"
import * as Path from "node:path"
import { promisify } from "node:util"
import { gzip } from "node:zlib"

/** Scalar's script as `@effect/platform` ships it, beside `HttpApiScalar` (outside the package's public exports). */
const scalarScript = Effect.sync(() => {
  const require = createRequire(import.meta.url)
  const entry = require.resolve("@effect/platform/HttpApiScalar")
  return (require(Path.join(Path.dirname(entry), "internal", "httpApiScalar.js")) as { javascript: string }).javascript
})

/** JSON that cannot end the `<script>` element it is embedded in. */
const scriptSafeJson = (value: unknown) =>
  JSON.stringify(value).replace(/</g, "\\u003c").replace(/[\u2028\u2029]/g, (c) => (c === "\u2028" ? "\\u2028" : "\\u2029"))

/**
 * Scalar's theme colours made darker (lighter in dark mode) where axe measured their text under WCAG AA's 4.5:1: its
 * greys (3.27:1 on white), the methods' and parameters' colours (3.2–4.0:1).
 */
const CONTRAST_CSS = `.light-mode {
  --scalar-color-2: #666666;
  --scalar-color-3: #6b6b6b;
  --scalar-color-blue: #0068a8;
  --scalar-color-green: #00754a;
  --scalar-color-red: #c40000;
  --scalar-color-orange: #b34700;
  --scalar-color-yellow: #8a6d00;
}
.dark-mode {
  --scalar-color-3: #8c8c8c;
  --scalar-color-red: #ff5a5a;
}`

/** Scalar's settings: no fonts from its CDN (the page's own system fonts instead, and it works offline). */
const CONFIGURATION = { _integration: "html", withDefaultFonts: false, customCss: CONTRAST_CSS }

/** A CSP source allowing exactly this inline script. */
const hashSource = (script: string) => `'sha256-${createHash("sha256").update(script).digest("base64")}'`

/** The page's policy, given its inline scripts; `data:` images: its icon, and Scalar's own drawn ones. */
const policy = (scripts: ReadonlyArray<string>) =>
  [
    "default-src 'none'",
    `script-src ${scripts.map(hashSource).join(" ")} 'wasm-unsafe-eval'`,
    "style-src 'unsafe-inline'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'"
  ].join("; ")

const page = (spec: OpenApi.OpenAPISpec, script: string) => {
  const configure = `document.getElementById('api-reference').dataset.configuration = ${
    JSON.stringify(JSON.stringify(CONFIGURATION))
  }`
  const html = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>${spec.info.title.replace(/&/g, "&amp;").replace(/</g, "&lt;")}</title>
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <link rel="icon" href="data:," />
  </head>
  <body>
    <script id="api-reference" type="application/json">${scriptSafeJson(spec)}</script>
    <script>${configure}</script>
    <script>${script}</script>
  </body>
</html>`
  return { html, csp: policy([configure, script]) }
}

/** Whether an `Accept-Encoding` header takes gzip: named with a q above 0, or else `*` so. */
const acceptsGzip = (header: string | undefined): boolean => {
  const qualities = new Map((header ?? "").split(",").map((part) => {
    const [coding = "", ...params] = part.split(";").map((p) => p.trim().toLowerCase())
    const q = params.find((p) => p.startsWith("q="))
    return [coding, q === undefined ? 1 : Number(q.slice(2))] as const
  }))
  return (qualities.get("gzip") ?? qualities.get("*") ?? 0) > 0
}

/** The page as sent: its bytes, also gzipped (3.4 MB of script is ~0.9 MB so), and its policy. */
const pageBodies = (spec: OpenApi.OpenAPISpec) =>
  Effect.flatMap(scalarScript, (script) => {
    const { csp, html } = page(spec, script)
    const plain = new TextEncoder().encode(html)
    // Off the event loop: zlib's thread pool.
    return Effect.map(Effect.promise(() => promisify(gzip)(plain)), (gzipped) => ({ plain, gzipped: new Uint8Array(gzipped), csp }))
  })

/** Serves the docs page of the `HttpApi` being built at `path`. */
export const docsRoute = (path: `/${string}`) =>
  HttpApiBuilder.Router.use((router) =>
    Effect.gen(function*() {
      const { api } = yield* HttpApi.Api
      const spec = OpenApi.fromApi(api)
      const bodies = yield* Effect.cached(pageBodies(spec))
      yield* router.get(path, Effect.gen(function*() {
        const { csp, gzipped, plain } = yield* bodies
        const gzip = acceptsGzip((yield* HttpServerRequest.HttpServerRequest).headers["accept-encoding"])
        return HttpServerResponse.uint8Array(gzip ? gzipped : plain, {
          contentType: "text/html; charset=utf-8",
          headers: {
            "content-security-policy": csp,
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY", // frame-ancestors' older form
            "referrer-policy": "no-referrer",
            vary: "accept-encoding",
            ...(gzip ? { "content-encoding": "gzip" } : {})
          }
        })
      }))
    })
  )
