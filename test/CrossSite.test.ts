/**
 * A hostile web page against the server: its requests carry a foreign `Origin` (or, after DNS rebinding, a foreign
 * `Host`), it can send form posts without a preflight, and it must neither read an answer nor change anything.
 * Listed origins (`CORS_ORIGINS`) get their CORS headers and preflight approvals. Raw `node:http` requests, so that
 * `Host` and `Origin` are sent exactly as a browser would.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import * as Net from "node:net"
import { AuthTest } from "../src/auth/Auth.js"
import { type RawAnswer, rawRequest } from "./support/RawHttp.js"
import { baseUrl, testApp } from "./support/TestApp.js"

type Answer = RawAnswer

/** One request, exactly as given (a `host` header replaces the one Node would send). */
const send = (method: string, path: string, headers: Record<string, string> = {}, body?: string | Buffer) =>
  Effect.flatMap(baseUrl, (base) =>
    Effect.orDie(rawRequest(base, { method, path, headers, ...(body === undefined ? {} : { body }) })))

/** The status line of the answer to `text` written as is on a fresh connection (for what `node:http` will not send). */
const sendRaw = (text: string) =>
  Effect.flatMap(baseUrl, (base) =>
    Effect.async<string>((resume) => {
      const socket = Net.connect(Number(new URL(base).port), "127.0.0.1", () => socket.end(text))
      let answer = ""
      socket.on("data", (d) => (answer += d))
      socket.on("close", () => resume(Effect.succeed(answer.split("\r\n")[0]!)))
      socket.on("error", (e) => resume(Effect.die(e)))
    }))

const EVIL = "https://evil.example"
const APP = "https://app.example"
const KEY = "sk-site-4b1f9e"
const auth = { authorization: `Bearer ${KEY}` }

/** No header of the CORS protocol at all. */
const expectNoCors = (res: Answer) =>
  expect(Object.keys(res.headers).filter((h) => h.startsWith("access-control-"))).toEqual([])

/** The OpenAI envelope with `status` and `code`, and an `x-request-id` as every answer has. */
const expectRefusal = (res: Answer, status: number, code: string) => {
  expect(res.status, res.text).toBe(status)
  const type = status === 401 ? "authentication_error" : "invalid_request_error"
  expect(res.json).toEqual({ error: { message: expect.any(String), type, param: null, code } })
  expect(res.headers["x-request-id"]).toMatch(/^req_/)
}

/** The bodies a cross-site HTML form (or a no-cors fetch) can send without a preflight. */
const formPosts: ReadonlyArray<readonly [string, string]> = [
  ["application/x-www-form-urlencoded", "input_file_id=file-abc&endpoint=%2Fv1%2Fchat%2Fcompletions&completion_window=24h"],
  ["text/plain", JSON.stringify({ input_file_id: "file-abc", endpoint: "/v1/chat/completions", completion_window: "24h" })],
  [
    "multipart/form-data; boundary=xyz",
    "--xyz\r\nContent-Disposition: form-data; name=\"input_file_id\"\r\n\r\nfile-abc\r\n" +
    "--xyz\r\nContent-Disposition: form-data; name=\"endpoint\"\r\n\r\n/v1/chat/completions\r\n" +
    "--xyz\r\nContent-Disposition: form-data; name=\"completion_window\"\r\n\r\n24h\r\n--xyz--\r\n"
  ]
]

/** A multipart upload, as a cross-site form can post it to `/v1/files`. */
const uploadForm =
  "--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n" +
  "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"planted.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{}\n\r\n--xyz--\r\n"

/** Nothing was created: no file, no batch. */
const expectNothingStored = (headers: Record<string, string> = {}) =>
  Effect.gen(function*() {
    expect((yield* send("GET", "/v1/files", headers)).json.data).toEqual([])
    expect((yield* send("GET", "/v1/batches", headers)).json.data).toEqual([])
  })

describe("cross-site requests", () => {
  layer(testApp(), { excludeTestServices: true })("without keys (loopback only)", (it) => {
    it.effect("no CORS header on any answer unless CORS_ORIGINS lists origins", () =>
      Effect.gen(function*() {
        for (const [method, path] of [["GET", "/v1/files"], ["GET", "/v1/health"], ["GET", "/v1/nothing"], ["OPTIONS", "/v1/files"]]) {
          const res = yield* send(method!, path!)
          expectNoCors(res)
          expect(res.headers.vary).toBeUndefined()
        }
      }))

    it.effect("a hostile page's request gets no access-control-allow-origin: refused, in the envelope", () =>
      Effect.gen(function*() {
        for (const origin of [EVIL, "null", "http://localhost:1", "http://127.0.0.1:1"]) {
          for (const [method, path] of [["GET", "/v1/files"], ["GET", "/v1/batches"], ["GET", "/v1/health"], ["GET", "/openapi.json"]]) {
            const res = yield* send(method!, path!, { origin })
            expectRefusal(res, 403, "origin_not_allowed")
            expectNoCors(res)
          }
        }
      }))

    it.effect("its DELETE preflight gets no CORS approval", () =>
      Effect.gen(function*() {
        const res = yield* send("OPTIONS", "/v1/files/file-abc", {
          origin: EVIL,
          "access-control-request-method": "DELETE",
          "access-control-request-headers": "authorization, content-type"
        })
        expect(res.status).toBe(403)
        expectNoCors(res)
      }))

    it.effect("form posts get 415 (403 with the page's Origin) and change nothing; a planted upload or cancel too", () =>
      Effect.gen(function*() {
        for (const [contentType, body] of formPosts) {
          expectRefusal(yield* send("POST", "/v1/batches", { "content-type": contentType }, body), 415, "unsupported_media_type")
          const fromPage = yield* send("POST", "/v1/batches", { "content-type": contentType, origin: EVIL }, body)
          expectRefusal(fromPage, 403, "origin_not_allowed")
          expectNoCors(fromPage)
        }
        // A multipart upload needs no preflight: the page's Origin stops it.
        const planted = yield* send("POST", "/v1/files", { "content-type": "multipart/form-data; boundary=xyz", origin: EVIL }, uploadForm)
        expectRefusal(planted, 403, "origin_not_allowed")
        // A bodiless POST (a form with no fields, a no-cors fetch) neither.
        expectRefusal(yield* send("POST", "/v1/batches/batch_abc/cancel", { origin: EVIL }), 403, "origin_not_allowed")
        yield* expectNothingStored()
      }))

    it.effect("a foreign Host (DNS rebinding) is refused with 421 on every route; loopback names are served", () =>
      Effect.gen(function*() {
        const foreign = ["evil.example:8321", "evil.example", "localhost.evil.example", "127.0.0.1.evil.example:80", "[::1].evil:1", "localhost:abc", "10.0.0.1:8321", "user@localhost"]
        for (const host of foreign) {
          for (const [method, path] of [["GET", "/v1/files"], ["GET", "/v1/health"], ["GET", "/docs"], ["GET", "/openapi.json"], ["DELETE", "/v1/files/file-abc"]]) {
            const res = yield* send(method!, path!, { host })
            expectRefusal(res, 421, "misdirected_request")
            expectNoCors(res)
          }
        }
        const planted = yield* send("POST", "/v1/files", { host: "evil.example:8321", "content-type": "multipart/form-data; boundary=xyz" }, uploadForm)
        expectRefusal(planted, 421, "misdirected_request")
        // No Host, an empty one, and a target in absolute form, whose authority is the one that counts (RFC 9112).
        expect(yield* sendRaw("GET /v1/files HTTP/1.0\r\n\r\n")).toBe("HTTP/1.1 421 Misdirected Request")
        expect(yield* sendRaw("GET /v1/files HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n")).toBe("HTTP/1.1 421 Misdirected Request")
        expect(yield* sendRaw("GET http://evil.example/v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
          .toBe("HTTP/1.1 421 Misdirected Request")
        expect(yield* sendRaw("GET http://localhost/v1/files HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"))
          .toBe("HTTP/1.1 200 OK")
        // `OPTIONS *` goes by its Host too: the app's answer for a target it has no route for, not a 421.
        expect(yield* sendRaw("OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")).toBe("HTTP/1.1 404 Not Found")
        expect(yield* sendRaw("OPTIONS * HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")).toBe("HTTP/1.1 421 Misdirected Request")
        for (const host of ["localhost", "localhost:8321", "LocalHost:1", "127.0.0.1", "127.0.0.1:8321", "[::1]", "[::1]:8321"]) {
          const res = yield* send("GET", "/v1/files", { host })
          expect({ host, status: res.status }).toEqual({ host, status: 200 })
        }
        yield* expectNothingStored()
      }))

    it.effect("the server's own pages (same origin) are served", () =>
      Effect.gen(function*() {
        const base = yield* baseUrl
        const res = yield* send("GET", "/v1/files", { origin: base })
        expect(res.status).toBe(200)
        expectNoCors(res)
      }))
  })

  layer(testApp({ apiKeys: [Redacted.make(`${KEY}:projS`)] }), { excludeTestServices: true })("with keys", (it) => {
    it.effect("any Host is served with a key (and needs one)", () =>
      Effect.gen(function*() {
        expect((yield* send("GET", "/v1/files", { host: "batch.internal.example:443", ...auth })).status).toBe(200)
        expectRefusal(yield* send("GET", "/v1/files", { host: "batch.internal.example:443" }), 401, "invalid_api_key")
        expect((yield* send("GET", "/v1/health", { host: "batch.internal.example" })).status).toBe(200)
      }))

    it.effect("form posts without a key get 401 (403 with the page's Origin) and change nothing", () =>
      Effect.gen(function*() {
        for (const [contentType, body] of formPosts) {
          expectRefusal(yield* send("POST", "/v1/batches", { "content-type": contentType }, body), 401, "invalid_api_key")
          expectRefusal(yield* send("POST", "/v1/batches", { "content-type": contentType, origin: EVIL }, body), 403, "origin_not_allowed")
          // Even holding the key, a form's body is not JSON.
          expectRefusal(yield* send("POST", "/v1/batches", { "content-type": contentType, ...auth }, body), 415, "unsupported_media_type")
        }
        expectRefusal(yield* send("POST", "/v1/files", { "content-type": "multipart/form-data; boundary=xyz" }, uploadForm), 401, "invalid_api_key")
        expectRefusal(
          yield* send("POST", "/v1/files", { "content-type": "multipart/form-data; boundary=xyz", origin: EVIL, ...auth }, uploadForm),
          403,
          "origin_not_allowed"
        )
        yield* expectNothingStored(auth)
      }))
  })

  layer(
    testApp({ corsOrigins: [APP] }, "sqlite", { auth: AuthTest({ apiKeys: [`${KEY}:projS`] }) }),
    { excludeTestServices: true }
  )("with CORS_ORIGINS=https://app.example", (it) => {
    it.effect("the listed origin's preflight is approved: its method, authorization and the SDK's x-stainless-* headers", () =>
      Effect.gen(function*() {
        const res = yield* send("OPTIONS", "/v1/files/file-abc", {
          origin: APP,
          "access-control-request-method": "DELETE",
          "access-control-request-headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count, x-custom-evil"
        })
        expect(res.status).toBe(204)
        expect(res.headers["access-control-allow-origin"]).toBe(APP)
        expect(String(res.headers["access-control-allow-methods"]).split(", ")).toContain("DELETE")
        const allowed = String(res.headers["access-control-allow-headers"]).split(", ")
        expect(allowed).toEqual(expect.arrayContaining(["authorization", "content-type", "x-stainless-os", "x-stainless-retry-count"]))
        expect(allowed).not.toContain("x-custom-evil")
        expect(res.headers["access-control-allow-credentials"]).toBeUndefined()
        expect(String(res.headers.vary)).toContain("Origin")
      }))

    it.effect("its answers carry the CORS headers, errors included, and expose x-request-id", () =>
      Effect.gen(function*() {
        for (const [headers, status] of [[auth, 200], [{}, 401]] as const) {
          const res = yield* send("GET", "/v1/files", { origin: APP, ...headers })
          expect(res.status).toBe(status)
          expect(res.headers["access-control-allow-origin"]).toBe(APP)
          expect(String(res.headers["access-control-expose-headers"]).split(", ")).toContain("x-request-id")
          expect(res.headers.vary).toBe("Origin")
          expect(res.headers["x-request-id"]).toMatch(/^req_/)
        }
        // Without an Origin: no CORS header, but the answer still varies by it.
        const plain = yield* send("GET", "/v1/files", auth)
        expectNoCors(plain)
        expect(plain.headers.vary).toBe("Origin")
      }))

    it.effect("other origins, close ones included, still get nothing", () =>
      Effect.gen(function*() {
        for (const origin of [EVIL, "https://app.example.evil", "http://app.example", "https://app.example:444", "https://sub.app.example", "null"]) {
          const res = yield* send("GET", "/v1/files", { origin, ...auth })
          expectRefusal(res, 403, "origin_not_allowed")
          expectNoCors(res)
          const preflight = yield* send("OPTIONS", "/v1/files/file-abc", { origin, "access-control-request-method": "DELETE" })
          expect(preflight.status).toBe(403)
          expectNoCors(preflight)
        }
      }))
  })
})
