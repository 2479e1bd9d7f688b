/**
 * `/docs`: the Scalar API reference of the OpenAPI document. The platform's `HttpApiScalar` embeds Scalar's 3.4 MB
 * script in a module whose import alone costs every server ~13 MB of heap; here the script is loaded on the first
 * request for the page, so only a server whose docs somebody opens pays for it.
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as OpenApi from "@effect/platform/OpenApi"
import { Effect } from "effect"
import { createRequire } from "node:module"
import * as Path from "node:path"

/** Scalar's script as `@effect/platform` ships it, beside `HttpApiScalar` (outside the package's public exports). */
const scalarScript = Effect.sync(() => {
  const require = createRequire(import.meta.url)
  const entry = require.resolve("@effect/platform/HttpApiScalar")
  return (require(Path.join(Path.dirname(entry), "internal", "httpApiScalar.js")) as { javascript: string }).javascript
})

/** JSON that cannot end the `<script>` element it is embedded in. */
const scriptSafeJson = (value: unknown) =>
  JSON.stringify(value).replace(/</g, "\\u003c").replace(/[\u2028\u2029]/g, (c) => (c === "\u2028" ? "\\u2028" : "\\u2029"))

const page = (spec: OpenApi.OpenAPISpec, script: string) => `<!doctype html>
<html>
  <head>
    <meta charset="utf-8" />
    <title>${spec.info.title.replace(/&/g, "&amp;").replace(/</g, "&lt;")}</title>
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" type="application/json">${scriptSafeJson(spec)}</script>
    <script>document.getElementById('api-reference').dataset.configuration = JSON.stringify({"_integration":"html"})</script>
    <script>${script}</script>
  </body>
</html>`

/** Serves the docs page of the `HttpApi` being built at `path`. */
export const docsRoute = (path: `/${string}`) =>
  HttpApiBuilder.Router.use((router) =>
    Effect.gen(function*() {
      const { api } = yield* HttpApi.Api
      const spec = OpenApi.fromApi(api)
      const html = yield* Effect.cached(Effect.map(scalarScript, (script) => HttpServerResponse.html(page(spec, script))))
      yield* router.get(path, html)
    })
  )
