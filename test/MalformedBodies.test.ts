/**
 * Malformed JSON bodies on `POST /v1/batches` (and garbage on the body-less `POST /v1/batches/{id}/cancel`) over
 * real HTTP: each is a 400 in OpenAI's exact envelope `{"error":{"message","type","param","code"}}`, never a 500 or
 * a dropped connection, and the same keep-alive connection then still serves a GET.
 *
 * Codes: a body that is not JSON at all is `invalid_body` (param null); JSON that is not the create object (empty
 * body, `[]`, `null`, a string…) is `invalid_type` (param null); a field of the wrong type is `invalid_type` naming
 * the field, as OpenAI; a missing field `missing_required_parameter`.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { Agent } from "node:http"
import { gzipSync } from "node:zlib"
import { sdk, upload } from "./support/Batches.js"
import { type RawAnswer, rawRequest } from "./support/RawHttp.js"
import { baseUrl, testApp } from "./support/TestApp.js"

type Answer = RawAnswer

/** One connection, kept alive: what a request leaves behind on it shows up in the next one. */
const agent = new Agent({ keepAlive: true, maxSockets: 1 })

/** A raw request on the kept-alive connection; `body` as one write (with its Content-Length unless `headers` say
 * otherwise) or as chunks. */
const send = (
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string | Buffer | ReadonlyArray<string>
) =>
  Effect.flatMap(baseUrl, (base) => {
    const all = { ...headers }
    if (typeof body === "string" || Buffer.isBuffer(body)) {
      if (!Object.keys(all).some((k) => k.toLowerCase() === "transfer-encoding")) all["content-length"] = String(Buffer.byteLength(body))
    }
    return Effect.orDie(rawRequest(base, { method, path, headers: all, agent, ...(body === undefined ? {} : { body }) }))
  })

const postJson = (body: string | Buffer | ReadonlyArray<string>, extra: Record<string, string> = {}) =>
  send("POST", "/v1/batches", { "content-type": "application/json", ...extra }, body)

/** Exactly OpenAI's envelope, as JSON, with the SDK's headers. */
const expectEnvelope = (res: Answer, status: number, error: { param: string | null; code: string }) => {
  expect(res.status, res.text).toBe(status)
  expect(String(res.headers["content-type"])).toMatch(/^application\/json\b/)
  expect(res.headers["x-request-id"]).toEqual(expect.any(String))
  expect(res.json, res.text).toBeDefined()
  expect(Object.keys(res.json)).toEqual(["error"])
  expect(Object.keys(res.json.error).sort()).toEqual(["code", "message", "param", "type"])
  expect(res.json.error.message).toEqual(expect.any(String))
  expect(res.json.error.message.length).toBeGreaterThan(0)
  expect(res.json.error).toMatchObject({ type: "invalid_request_error", ...error })
}

/** The server, and this very connection, still answer afterwards. */
const expectStillServing = Effect.gen(function*() {
  const res = yield* send("GET", "/v1/batches?limit=1", {})
  expect(res.status, res.text).toBe(200)
  expect(res.json).toMatchObject({ object: "list", data: expect.any(Array), has_more: expect.any(Boolean) })
  expect(res.reusedSocket, "the GET went out on the connection the bad request used").toBe(true)
})

const body = (fields: Record<string, unknown>) =>
  JSON.stringify({ input_file_id: "file-abc", endpoint: "/v1/chat/completions", completion_window: "24h", ...fields })

/** Nothing upstream listens here: a batch's requests fail to connect and wait 10 s before trying again. */
const noUpstream = { inferenceBaseUrl: "http://127.0.0.1:9/v1", inferenceRetryBaseDelay: Duration.seconds(10) }

describe("malformed bodies", () => {
  layer(testApp(noUpstream), { excludeTestServices: true })("POST /v1/batches", (it) => {
    const notJson: ReadonlyArray<readonly [string, string]> = [
      ["an unterminated object", "{"],
      ["a body cut off after a key", `{"input_file_id":`],
      ["plain text", "not json"],
      ["a trailing comma", `{"input_file_id":"file-abc",}`],
      ["two JSON values", `{"a":1}{"b":2}`],
      ["single quotes", `{'input_file_id':'file-abc'}`]
    ]
    for (const [what, text] of notJson) {
      it.effect(`not JSON (${what}): 400 invalid_body`, () =>
        Effect.gen(function*() {
          expectEnvelope(yield* postJson(text), 400, { param: null, code: "invalid_body" })
          yield* expectStillServing
        }))
    }

    it.effect("not JSON, sent chunked without a Content-Length: 400 invalid_body", () =>
      Effect.gen(function*() {
        expectEnvelope(yield* postJson([`{"input_file_id":`, ` "file-abc", "endpoint`], { "transfer-encoding": "chunked" }), 400, { param: null, code: "invalid_body" })
        yield* expectStillServing
      }))

    it.effect("a compressed body (Content-Encoding: gzip), JSON or an upload: 415, nothing stored", () =>
      Effect.gen(function*() {
        const zipped = gzipSync(`{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"}`)
        const json = yield* postJson(zipped, { "content-encoding": "gzip" })
        expectEnvelope(json, 415, { param: null, code: "unsupported_media_type" })
        expect(json.headers["accept-encoding"]).toBe("identity")
        yield* expectStillServing
        const files = (yield* send("GET", "/v1/files", {})).json.data.length
        const boundary = "b0undary"
        const form = Buffer.concat([
          Buffer.from(`--${boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--${boundary}\r\n` +
            `content-disposition: form-data; name="file"; filename="in.jsonl"\r\ncontent-type: application/octet-stream\r\n\r\n`),
          gzipSync(`{"custom_id":"a"}\n`),
          Buffer.from(`\r\n--${boundary}--\r\n`)
        ])
        const upload = yield* send("POST", "/v1/files", { "content-type": `multipart/form-data; boundary=${boundary}`, "content-encoding": "gzip" }, form)
        expectEnvelope(upload, 415, { param: null, code: "unsupported_media_type" })
        expect((yield* send("GET", "/v1/files", {})).json.data.length).toBe(files) // it was stored compressed
        yield* expectStillServing
      }))

    it.effect("an empty body typed as multipart, a form or text, on each JSON route: 415 at once, nothing made", () =>
      Effect.gen(function*() {
        const batches = (yield* send("GET", "/v1/batches?limit=100", {})).json.data.length
        const types = ["multipart/form-data; boundary=x", "multipart/form-data", "application/x-www-form-urlencoded", "multipart/mixed; boundary=x", "text/plain"]
        // An empty multipart body failed (a 500) or waited for ever for its boundary; an empty form was read as `{}`.
        for (const path of ["/v1/batches", "/v1/uploads", "/v1/uploads/upload_abc/complete", "/v1/batches/batch_abc/retry"]) {
          for (const type of types) {
            if (path.endsWith("/retry") && type === "application/x-www-form-urlencoded") continue // below
            expectEnvelope(yield* send("POST", path, { "content-type": type, "content-length": "0" }, ""), 415, { param: null, code: "unsupported_media_type" })
          }
        }
        yield* expectStillServing
        expect((yield* send("GET", "/v1/batches?limit=100", {})).json.data.length).toBe(batches)
        // Without a type, or typed as JSON, an empty body is read as JSON, as before; a cancel reads none.
        expectEnvelope(yield* send("POST", "/v1/batches", {}, ""), 400, { param: null, code: "invalid_type" })
        const cancel = yield* send("POST", "/v1/batches/batch_abc/cancel", { "content-type": "application/x-www-form-urlencoded", "content-length": "0" }, "")
        expect([cancel.status, cancel.json.error.code]).toEqual([404, "not_found"])
        // Nor does a rerun's empty form (`curl -X POST …/retry -d ''`): its body may be left out.
        const retry = yield* send("POST", "/v1/batches/batch_abc/retry", { "content-type": "application/x-www-form-urlencoded", "content-length": "0" }, "")
        expect([retry.status, retry.json.error.code]).toEqual([404, "not_found"])
      }))

    const notAnObject: ReadonlyArray<readonly [string, string]> = [
      ["an empty body", ""],
      ["an array", "[]"],
      ["null", "null"],
      ["a string", `"str"`],
      ["a number", "42"],
      ["a boolean", "true"]
    ]
    for (const [what, text] of notAnObject) {
      it.effect(`JSON but not an object (${what}): 400 invalid_type`, () =>
        Effect.gen(function*() {
          expectEnvelope(yield* postJson(text), 400, { param: null, code: "invalid_type" })
          yield* expectStillServing
        }))
    }

    const wrongTypes: ReadonlyArray<readonly [string, string, string, string]> = [
      ["input_file_id a number", body({ input_file_id: 42 }), "input_file_id", "invalid_type"],
      ["input_file_id null", body({ input_file_id: null }), "input_file_id", "invalid_type"],
      ["endpoint a number", body({ endpoint: 7 }), "endpoint", "invalid_type"],
      ["completion_window a number", body({ completion_window: 24 }), "completion_window", "invalid_type"],
      ["metadata a string", body({ metadata: "m" }), "metadata", "invalid_type"],
      ["a metadata value a number", body({ metadata: { a: 1 } }), "metadata.a", "invalid_type"],
      ["output_expires_after a string", body({ output_expires_after: "1h" }), "output_expires_after", "invalid_type"],
      ["every field missing", "{}", "input_file_id", "missing_required_parameter"]
    ]
    it.effect("a wrong type's message says what was expected and what came, as OpenAI's does", () =>
      Effect.gen(function*() {
        const messageOf = (text: string) => Effect.map(postJson(text), (r) => r.json.error.message)
        expect(yield* messageOf(body({ input_file_id: 42 }))).toBe("Invalid type for 'input_file_id': expected a string, but got a number instead.")
        expect(yield* messageOf(body({ endpoint: ["/v1/chat/completions"] }))).toBe("Invalid type for 'endpoint': expected a string, but got an array instead.")
        expect(yield* messageOf(body({ metadata: "m" }))).toBe("Invalid type for 'metadata': expected an object, but got a string instead.")
      }))

    for (const [what, text, param, code] of wrongTypes) {
      it.effect(`wrong field types (${what}): 400 ${code} naming ${param}`, () =>
        Effect.gen(function*() {
          expectEnvelope(yield* postJson(text), 400, { param, code })
          yield* expectStillServing
        }))
    }

    it.effect("the messages speak of the request, not of the server's schema", () =>
      // A user reads these messages: they must not dump the server's internal schema (type names such as
      // `StorableString`, `readonly` fields) at them.
      Effect.gen(function*() {
        const leaks: Array<string> = []
        for (const text of ["", "[]", "null", `"str"`, body({ input_file_id: 42 }), body({ metadata: "m" }), body({ output_expires_after: "1h" })]) {
          const res = yield* postJson(text)
          expect(res.status).toBe(400)
          if (/readonly|StorableString/.test(res.json.error.message)) leaks.push(`${JSON.stringify(text)} → ${res.json.error.message}`)
        }
        expect(leaks).toEqual([])
      }))

    it.effect("after all of that, a valid create still works", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const file = yield* upload(openai, [JSON.stringify({ custom_id: "a", method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [] } })])
        const res = yield* postJson(body({ input_file_id: file.id }))
        expect(res.status, res.text).toBe(200)
        expect(res.json).toMatchObject({ object: "batch", status: "validating", input_file_id: file.id })
        yield* Effect.promise(() => openai.batches.cancel(res.json.id))
      }))
  })

  layer(testApp(noUpstream), { excludeTestServices: true })("POST /v1/batches/{id}/cancel", (it) => {
    it.effect("a garbage body on cancel is ignored: the batch is cancelled, and unknown ids are still 404s", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const line = JSON.stringify({ custom_id: "a", method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [] } })
        const ids: Array<string> = []
        for (let i = 0; i < 4; i++) {
          const file = yield* upload(openai, [line])
          ids.push((yield* Effect.promise(() => openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))).id)
        }
        const shapes: ReadonlyArray<readonly [string, Record<string, string>, string | undefined]> = [
          ["garbage JSON", { "content-type": "application/json" }, "{{{ not json"],
          ["a JSON array", { "content-type": "application/json" }, "[1,2,3]"],
          ["an empty JSON body (curl, the Python SDK)", { "content-type": "application/json", "content-length": "0" }, undefined],
          ["no body and no content type (the Node SDK)", {}, undefined]
        ]
        for (const [i, [what, headers, text]] of shapes.entries()) {
          const res = yield* send("POST", `/v1/batches/${ids[i]}/cancel`, headers, text)
          expect(res.status, `${what}: ${res.text}`).toBe(200)
          expect(res.json).toMatchObject({ id: ids[i], object: "batch", cancelling_at: expect.any(Number) })
          expect(["cancelling", "cancelled"]).toContain(res.json.status)
          yield* expectStillServing
        }
        const unknown = yield* send("POST", "/v1/batches/batch_nope/cancel", { "content-type": "application/json" }, "{{{")
        expectEnvelope(unknown, 404, { param: "batch_id", code: "not_found" })
        yield* expectStillServing
      }))
  })
})
