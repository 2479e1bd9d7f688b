/**
 * The `/ui` route as a browser (or a stranger) meets it, with API keys on: the page and its files without a key,
 * each with its Content-Type, ETag and the strict security headers; nothing else under `/ui/` (unknown names, dot
 * segments, escapes, other methods: 404 with the same headers, never a file of the server's disk or an API
 * answer; without a key, 401 for any path but the page's files: an app's own route under `/ui/` is no public one);
 * the key form that cannot put the key in a URL; the API calls the page makes, from its own origin, still
 * need the key; the requests counted under bounded route labels; and `/docs`, on the same origin, under a
 * Content-Security-Policy that runs only its own inline scripts. The page's files are read once they can be: a
 * failed read is not kept.
 */
import type * as HttpServer from "@effect/platform/HttpServer"
import { describe, expect, it as plainIt, layer } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { createHash } from "node:crypto"
import { cachedSuccess } from "../src/ui/DashboardHttp.js"
import { type RawAnswer, rawRequest } from "./support/RawHttp.js"
import { baseUrl, testApp } from "./support/TestApp.js"

const KEY = "sk-ui-7d1c2e"
const ADMIN = "sk-ui-admin-90ab"

const send = (method: string, path: string, headers: Record<string, string> = {}) =>
  Effect.flatMap(baseUrl, (base) => Effect.orDie(rawRequest(base, { method, path, headers })))
const get = (path: string, headers: Record<string, string> = {}) => send("GET", path, headers)

const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
  "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

const expectSecurityHeaders = (res: RawAnswer) => {
  expect(res.headers["content-security-policy"]).toBe(CSP)
  expect(res.headers["x-content-type-options"]).toBe("nosniff")
  expect(res.headers["referrer-policy"]).toBe("no-referrer")
  expect(res.headers["x-frame-options"]).toBe("DENY")
}

describe("the /ui route", () => {
  layer(testApp({ apiKeys: [Redacted.make(KEY)], adminApiKeys: [Redacted.make(ADMIN)] }), { excludeTestServices: true })(
    "with keys",
    (it) => {
      it.effect("serves the page without a key, with a strict CSP, and every file it loads from this server", () =>
        Effect.gen(function*() {
          const page = yield* get("/ui/")
          expect(page.status, page.text).toBe(200)
          expect(page.headers["content-type"]).toBe("text/html; charset=utf-8")
          expect(page.headers["cache-control"]).toBe("no-cache")
          expect(page.headers.etag).toMatch(/^"[\w-]{22}"$/)
          expectSecurityHeaders(page)
          // No inline script or style (the CSP would block them), and nothing fetched from elsewhere.
          expect(page.text).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/)
          expect(page.text).not.toMatch(/<style|\sstyle=|\son[a-z]+=/i)
          // Relative to the page (so under an app's prefix too), and resolved as a browser does.
          const loaded = [...page.text.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!)
            .filter((u) => !u.startsWith("data:") && !u.startsWith("#"))
            .map((u) => new URL(u, "http://server/ui/").pathname)
          expect(loaded).toContain("/ui/app.js")
          expect(loaded).toContain("/ui/app.css")
          for (const url of loaded) {
            expect(url, url).toMatch(/^\/ui\/[\w.]+$/)
            const res = yield* get(url)
            expect(res.status, url).toBe(200)
            expectSecurityHeaders(res)
          }
          // The modules app.js imports, and theirs, are served too, as JavaScript.
          const seen = new Set<string>()
          const follow = (name: string): Effect.Effect<void, never, HttpServer.HttpServer> =>
            Effect.gen(function*() {
              if (seen.has(name)) return
              seen.add(name)
              const res = yield* get(`/ui/${name}`)
              expect(res.status, name).toBe(200)
              expect(res.headers["content-type"], name).toBe("text/javascript; charset=utf-8")
              expect(res.text, name).not.toMatch(/\.innerHTML\s*=|insertAdjacentHTML|document\.write/)
              for (const m of res.text.matchAll(/from "\.\/([\w.]+)"/g)) yield* follow(m[1]!)
            })
          yield* follow("app.js")
          expect(seen.size).toBeGreaterThan(3)
          const css = yield* get("/ui/app.css")
          expect(css.headers["content-type"]).toBe("text/css; charset=utf-8")
          // The page as /ui/index.html too; a typed or bookmarked /ui leads to /ui/, where its relative paths
          // resolve (not a 401), by a relative Location: under an app's prefix too.
          const named = yield* get("/ui/index.html")
          expect([named.status, named.text]).toEqual([200, page.text])
          for (const path of ["/ui", "/ui?tab=1"]) {
            const there = yield* get(path)
            expect([there.status, there.headers.location], path).toEqual([302, "ui/"])
            expect(new URL(there.headers.location!, `http://server${path}`).pathname).toBe("/ui/")
            expectSecurityHeaders(there)
          }
        }))

      it.effect("has a key form that never puts the key in a URL: method=dialog, and no name on the key's input", () =>
        Effect.gen(function*() {
          const page = (yield* get("/ui/")).text
          expect(page).toMatch(/<form id="key-form" method="dialog">/)
          const input = /<input id="key-input"[^>]*>/.exec(page)?.[0]
          expect(input).toBeDefined()
          expect(input).not.toMatch(/\sname=/)
        }))

      it.effect("answers a revalidation with a matching ETag with 304 and no body", () =>
        Effect.gen(function*() {
          const first = yield* get("/ui/app.js")
          const again = yield* get("/ui/app.js", { "if-none-match": first.headers.etag! })
          expect(again.status).toBe(304)
          expect(again.text).toBe("")
          expectSecurityHeaders(again)
          expect((yield* get("/ui/app.js", { "if-none-match": "\"other\"" })).status).toBe(200)
        }))

      it.effect("serves nothing else under /ui: unknown names, dot segments and escapes are 404s (401s without a key)", () =>
        Effect.gen(function*() {
          const withKey = { authorization: `Bearer ${KEY}` }
          for (
            const path of [
              "/ui/nope.js",
              "/ui/../package.json",
              "/ui/..%2Fpackage.json",
              "/ui/%2e%2e/%2e%2e/package.json",
              "/ui/..%2f..%2fpackage.json",
              "/ui/DashboardHttp.ts",
              "/ui/constructor",
              "/ui/__proto__",
              "/ui/a/b",
              "/ui/./x",
              "/ui/app.js/x",
              "/ui/a/b/c/d"
            ]
          ) {
            // Refused without a key, with the page's headers as every answer under /ui.
            const refused = yield* get(path)
            expect(refused.status, path).toBe(401)
            expectSecurityHeaders(refused)
            const res = yield* get(path, withKey)
            expect(res.status, path).toBe(404)
            expect(res.text, path).not.toContain("effect-openai-batch")
            expect(res.json.error, path).toMatchObject({ type: "invalid_request_error", code: "not_found" })
            expectSecurityHeaders(res)
          }
          // Other methods: the API's 404 for a route it does not have, with the page's headers.
          for (const [method, path] of [["POST", "/ui"], ["POST", "/ui/app.js"], ["DELETE", "/ui/a/b"], ["PUT", "/ui/index.html"]]) {
            const res = yield* send(method!, path!, withKey)
            expect(res.status, `${method} ${path}`).toBe(404)
            expect(res.json.error.message).toBe(`Invalid URL (${method} ${path})`)
            expectSecurityHeaders(res)
          }
          const head = yield* send("HEAD", "/ui/app.js")
          expect(head.status).toBe(200)
          expectSecurityHeaders(head)
        }))

      it.effect("keeps the API behind the key, for the page's own origin too", () =>
        Effect.gen(function*() {
          const base = yield* baseUrl
          const origin = { origin: base, "sec-fetch-site": "same-origin" }
          const paths = ["/v1/batches", "/v1/files", "/ui/../v1/files", "/ui/%2e%2e/v1/files", "/uiX", "/ui..", "/UI/app.js"]
          for (const path of paths) {
            const res = yield* get(path, origin)
            expect(res.status, path).toBe(401)
            expect(res.text, path).not.toContain("\"object\":\"list\"")
          }
          const listed = yield* get("/v1/batches", { ...origin, authorization: `Bearer ${KEY}` })
          expect(listed.status, listed.text).toBe(200)
          expect(listed.json.object).toBe("list")
        }))

      it.effect("counts its requests under the route patterns, never the raw paths", () =>
        Effect.gen(function*() {
          yield* get("/ui/")
          yield* get("/ui/app.css")
          yield* get("/ui/whatever-123.js", { authorization: `Bearer ${KEY}` })
          const metrics = (yield* get("/metrics", { authorization: `Bearer ${ADMIN}` })).text
          expect(metrics).toMatch(/batch_http_requests_total\{[^}]*route="\/ui"[^}]*status="200"[^}]*\}/)
          expect(metrics).toMatch(/batch_http_requests_total\{[^}]*route="\/ui\/:asset"[^}]*status="404"[^}]*\}/)
          expect(metrics).not.toContain("whatever-123")
        }))

      it.effect("serves /docs under a CSP that runs its own inline scripts only, and fetches from this server only", () =>
        Effect.gen(function*() {
          const docs = yield* get("/docs")
          expect(docs.status).toBe(200)
          const csp = String(docs.headers["content-security-policy"])
          const directives = new Map(csp.split(";").map((d) => d.trim().split(/\s+/)).map(([name, ...values]) => [name!, values]))
          expect(directives.get("default-src")).toEqual(["'none'"])
          expect(directives.get("connect-src")).toEqual(["'self'"])
          expect(directives.get("frame-ancestors")).toEqual(["'none'"])
          expect(csp).not.toMatch(/https?:|\*|'unsafe-eval'/)
          // Every script the page runs (not the JSON data block) is allowed by its hash, and nothing else is.
          const scripts = [...docs.text.matchAll(/<script(?![^>]*type="application\/json")[^>]*>([\s\S]*?)<\/script>/g)].map((m) => m[1]!)
          expect(scripts.length).toBe(2)
          const hashes = scripts.map((s) => `'sha256-${createHash("sha256").update(s).digest("base64")}'`)
          expect(directives.get("script-src")).toEqual([...hashes, "'wasm-unsafe-eval'"])
          expect(docs.headers["x-content-type-options"]).toBe("nosniff")
        }))
    }
  )
})

describe("the dashboard's files, read once", () => {
  plainIt.effect("keeps what was read, and tries again after a failed read instead of keeping the failure", () =>
    Effect.gen(function*() {
      let reads = 0
      const read = Effect.suspend(() => ++reads === 1 ? Effect.fail("unreadable") : Effect.succeed(`files #${reads}`))
      const files = yield* cachedSuccess(read)
      expect(yield* Effect.flip(files)).toBe("unreadable")
      expect(yield* files).toBe("files #2")
      expect(yield* files).toBe("files #2")
      expect(reads).toBe(2)
    }))
})
