/** The Files API over real HTTP: round trips, pagination, and every error path with the exact OpenAI envelope. */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { request as httpRequest } from "node:http"
import { gunzipSync } from "node:zlib"
import OpenAI from "openai"
import { request as undiciRequest } from "undici"
import { baseUrl, localBlobs, TestDataDir, testApp } from "./support/TestApp.js"

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

const form = (fields: Record<string, string>, file?: { name: string; bytes: Uint8Array; field?: string }) => {
  const body = new FormData()
  if (file) body.append(file.field ?? "file", new Blob([file.bytes]), file.name)
  for (const [k, v] of Object.entries(fields)) body.append(k, v)
  return body
}

const call = (path: string, init?: RequestInit) =>
  Effect.flatMap(baseUrl, (base) =>
    Effect.promise(async () => {
      const res = await fetch(`${base}${path}`, init)
      const buffer = new Uint8Array(await res.arrayBuffer())
      let json: any = undefined
      // Only a JSON answer is decoded (not 50 MB of file content).
      if (/json/.test(res.headers.get("content-type") ?? "")) {
        try {
          json = JSON.parse(new TextDecoder().decode(buffer))
        } catch {
          // not JSON after all
        }
      }
      return { status: res.status, headers: res.headers, buffer, json }
    }))

const upload = (fields: Record<string, string>, file?: { name: string; bytes: Uint8Array; field?: string }) =>
  call("/v1/files", { method: "POST", body: form(fields, file) })

/** Every error is exactly `{"error":{message,type,param,code}}`. */
const expectEnvelope = (
  res: { status: number; json: any },
  status: number,
  error: { type?: string; message?: string; param?: string | null; code?: string | null }
) => {
  expect(res.status).toBe(status)
  expect(Object.keys(res.json)).toEqual(["error"])
  expect(Object.keys(res.json.error).sort()).toEqual(["code", "message", "param", "type"])
  expect(res.json.error.message).toEqual(expect.any(String))
  expect(res.json.error).toMatchObject({ type: "invalid_request_error", ...error })
}

/** A raw HTTP request, for bodies `fetch` will not send (malformed multipart, chunked without a length). */
const raw = (path: string, headers: Record<string, string>, chunks: ReadonlyArray<string | Uint8Array>) =>
  Effect.flatMap(baseUrl, (base) =>
    Effect.async<{ status: number; json: any }>((resume) => {
      const req = httpRequest(`${base}${path}`, { method: "POST", headers }, (res) => {
        let text = ""
        res.setEncoding("utf8")
        res.on("data", (c) => (text += c))
        res.on("end", () => resume(Effect.succeed({ status: res.statusCode!, json: JSON.parse(text) })))
      })
      req.on("error", (e) => resume(Effect.die(e)))
      for (const c of chunks) req.write(c)
      req.end()
    }))

layer(testApp(), { excludeTestServices: true })("Files API over HTTP", (it) => {
  it.effect("a 50 MB binary upload round-trips byte for byte", () =>
    Effect.gen(function*() {
      const bytes = randomBytes(50 * 1024 * 1024)
      const created = yield* upload({ purpose: "user_data" }, { name: "big.bin", bytes })
      expect(created.status).toBe(200)
      expect(created.json).toMatchObject({ object: "file", bytes: bytes.length, filename: "big.bin", purpose: "user_data", status: "processed", status_details: null, expires_at: null })

      const content = yield* call(`/v1/files/${created.json.id}/content`, { headers: { accept: "application/binary" } })
      // A download cut half-way resumes where it stopped (`Range`), and a part of it is just that part.
      const ranged = (range: string) => call(`/v1/files/${created.json.id}/content`, { headers: { range } })
      const resumed = yield* ranged(`bytes=${30 * 1024 * 1024}-`)
      const middle = yield* ranged("bytes=100000-165535")
      const tail = yield* ranged("bytes=-10")
      const beyond = yield* ranged(`bytes=${bytes.length}-`)
      const several = yield* ranged("bytes=0-9, 20-29")
      const retrieved = yield* call(`/v1/files/${created.json.id}`)
      const deleted = yield* call(`/v1/files/${created.json.id}`, { method: "DELETE" })
      const gone = yield* call(`/v1/files/${created.json.id}`)

      // The 50 MB are checked once the calls are over. Client and server share this thread: work on them between two
      // calls (they were decoded as text and hashed) held it for seconds on a busy machine, the connection idle
      // meanwhile, and when the server's keep-alive timer (5 s) closed it as the next call went out on it, that call
      // failed ("fetch failed": the client's own idle timer, a second shorter, had had no chance to run).
      expect(content.status).toBe(200)
      expect(content.headers.get("content-type")).toBe("application/octet-stream")
      // Anyone's bytes: a browser fetching them never sniffs them into a page or a script.
      expect(content.headers.get("x-content-type-options")).toBe("nosniff")
      expect(content.buffer.length).toBe(bytes.length)
      expect(Buffer.compare(content.buffer, bytes)).toBe(0)
      expect(content.headers.get("accept-ranges")).toBe("bytes")
      // Saved under its name by `curl -OJ`, and by a browser, not as `content`.
      expect(content.headers.get("content-disposition")).toBe('attachment; filename="big.bin"')
      expect([resumed.status, resumed.headers.get("content-range"), resumed.headers.get("content-length")])
        .toEqual([206, `bytes ${30 * 1024 * 1024}-${bytes.length - 1}/${bytes.length}`, String(20 * 1024 * 1024)])
      expect(Buffer.compare(resumed.buffer, bytes.subarray(30 * 1024 * 1024))).toBe(0)
      expect([middle.status, middle.headers.get("content-range")]).toEqual([206, `bytes 100000-165535/${bytes.length}`])
      expect(Buffer.compare(middle.buffer, bytes.subarray(100_000, 165_536))).toBe(0)
      expect([tail.status, Buffer.compare(tail.buffer, bytes.subarray(bytes.length - 10))]).toEqual([206, 0])
      // Past the end: a 416 saying the size, in the envelope; several ranges at once: the whole file, as the RFC allows.
      expect([beyond.status, beyond.headers.get("content-range"), beyond.json.error.code]).toEqual([416, `bytes */${bytes.length}`, "range_not_satisfiable"])
      expect([several.status, several.buffer.length]).toEqual([200, bytes.length])

      expect(retrieved.json).toEqual(created.json)
      expect(retrieved.headers.get("content-type")).toBe("application/json")
      expect(retrieved.headers.get("x-request-id")).toMatch(/^req_[0-9a-f]{32}$/)
      expect(deleted.json).toEqual({ id: created.json.id, object: "file", deleted: true })
      expectEnvelope(gone, 404, { param: "id", code: "not_found" })
    }))

  it.effect("a chunked upload without Content-Length, fields after the file, keeps every byte", () =>
    Effect.gen(function*() {
      const boundary = "openai-test-boundary"
      const payload = randomBytes(300_000)
      const res = yield* raw("/v1/files", { "content-type": `multipart/form-data; boundary=${boundary}`, "transfer-encoding": "chunked" }, [
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="dir/sub/input.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n`,
        payload.subarray(0, 100_000),
        payload.subarray(100_000),
        `\r\n--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n`,
        `--${boundary}\r\nContent-Disposition: form-data; name="expires_after[anchor]"\r\n\r\ncreated_at\r\n`,
        `--${boundary}\r\nContent-Disposition: form-data; name="expires_after[seconds]"\r\n\r\n3600\r\n--${boundary}--\r\n`
      ])
      expect(res.status).toBe(200)
      expect(res.json).toMatchObject({ filename: "input.jsonl", purpose: "batch", bytes: payload.length })
      expect(res.json.expires_at).toBe(res.json.created_at + 3600)
      const content = yield* call(`/v1/files/${res.json.id}/content`)
      expect(sha256(content.buffer)).toBe(sha256(payload))
    }))

  it.effect("a download names its file: ASCII for curl -OJ, the exact name in filename* where it differs", () =>
    Effect.gen(function*() {
      const named = (name: string) =>
        Effect.flatMap(upload({ purpose: "user_data" }, { name, bytes: Buffer.from("x") }), (created) =>
          Effect.map(call(`/v1/files/${created.json.id}/content`), (content) => content.headers.get("content-disposition")))
      expect(yield* named("報告 (v2).jsonl")).toBe(
        `attachment; filename="__ (v2).jsonl"; filename*=UTF-8''%E5%A0%B1%E5%91%8A%20%28v2%29.jsonl`
      )
      expect(yield* named("100%E2%82%AC.jsonl")).toBe(`attachment; filename="100_E2_82_AC.jsonl"; filename*=UTF-8''100%25E2%2582%25AC.jsonl`)
      expect(yield* named('q"u\\ote café.jsonl')).toBe(
        `attachment; filename="q_u_ote caf_.jsonl"; filename*=UTF-8''q%22u%5Cote%20caf%C3%A9.jsonl`
      )
    }))

  it.effect("lists with purpose, limit, order and after, always with has_more and first/last ids", () =>
    Effect.gen(function*() {
      const purpose = "evals"
      const ids: Array<string> = []
      for (let i = 0; i < 5; i++) ids.push((yield* upload({ purpose }, { name: `e${i}.json`, bytes: new Uint8Array([i]) })).json.id)

      const desc = yield* call(`/v1/files?purpose=${purpose}`)
      expect(desc.json.object).toBe("list")
      expect(desc.json.data.map((f: any) => f.id)).toEqual([...ids].reverse())
      expect(desc.json).toMatchObject({ first_id: ids[4], last_id: ids[0], has_more: false })

      const page = yield* call(`/v1/files?purpose=${purpose}&order=asc&limit=2&after=${ids[1]}`)
      expect(page.json.data.map((f: any) => f.id)).toEqual([ids[2], ids[3]])
      expect(page.json).toMatchObject({ first_id: ids[2], last_id: ids[3], has_more: true })

      const empty = yield* call(`/v1/files?purpose=vision`)
      expect(empty.json).toEqual({ object: "list", data: [], first_id: null, last_id: null, has_more: false })
    }))

  it.effect("unknown ids are 404 on retrieve, content and delete", () =>
    Effect.gen(function*() {
      for (const [path, method] of [["/v1/files/file-missing", "GET"], ["/v1/files/file-missing/content", "GET"], ["/v1/files/file-missing", "DELETE"]] as const) {
        const res = yield* call(path, { method })
        expectEnvelope(res, 404, { param: "id", code: "not_found" })
        expect(res.json.error.message).toBe("No such File object: file-missing")
      }
    }))

  it.effect("bad upload parameters are 400s that store nothing", () =>
    Effect.gen(function*() {
      const { path } = yield* TestDataDir
      const before = (yield* call("/v1/files")).json.data.length
      const jsonl = { name: "in.jsonl", bytes: new TextEncoder().encode("{}\n") }

      expectEnvelope(yield* upload({ purpose: "bogus" }, jsonl), 400, { param: "purpose", code: "invalid_value" })
      expectEnvelope(yield* upload({}, jsonl), 400, { param: "purpose", code: "missing_required_parameter" })
      expectEnvelope(yield* upload({ purpose: "batch" }), 400, { param: "file", code: "missing_required_parameter" })
      expectEnvelope(yield* upload({ purpose: "batch", file: "not a file" }), 400, { param: "file" })
      // As OpenAI answers it: neither param nor code.
      expectEnvelope(yield* upload({ purpose: "batch" }, { ...jsonl, name: "in.csv" }), 400, {
        message: "Invalid file format for Batch API. Must be .jsonl",
        param: null,
        code: null
      })
      // Too short, and not written as a decimal integer (which `Number` would have read as 3600).
      for (const seconds of ["10", "0xE10", "3600.0", "3.6e3", " 3600", "+3600"]) {
        expectEnvelope(yield* upload({ purpose: "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": seconds }, jsonl), 400, { param: "expires_after.seconds", code: "invalid_value" })
      }
      expectEnvelope(yield* upload({ purpose: "batch", "expires_after[seconds]": "7200" }, jsonl), 400, { param: "expires_after.anchor", code: "missing_required_parameter" })
      // The expiry misspelled would be ignored, and the file never expire: refused instead.
      for (const misspelled of [{ "expires_after.seconds": "3600", "expires_after.anchor": "created_at" }, { expires_after: "{\"anchor\":\"created_at\",\"seconds\":3600}" }, { "expire_after[seconds]": "3600", "expire_after[anchor]": "created_at" }, { expires_afer: "3600" }]) {
        expectEnvelope(yield* upload({ purpose: "batch", ...misspelled }, jsonl), 400, { param: Object.keys(misspelled)[0]!, code: "unknown_parameter" })
      }
      const purpose = yield* upload({ Purpose: "batch" }, jsonl)
      expectEnvelope(purpose, 400, { param: "Purpose", code: "unknown_parameter" })
      expect(purpose.json.error.message).toBe("Unknown parameter: 'Purpose'. Did you mean 'purpose'?")

      expect((yield* call("/v1/files")).json.data.length).toBe(before)
      expect(localBlobs(path).staging).toEqual([])
      // Fields of a client's own, far from any of OpenAI's, are let through.
      expect((yield* upload({ purpose: "batch", team: "nlp", source_system: "etl", expires_at: "x" }, jsonl)).status).toBe(200)
    }))

  it.effect("malformed multipart, a non-multipart body, bad query parameters and unknown routes get the envelope", () =>
    Effect.gen(function*() {
      const garbage = yield* raw("/v1/files", { "content-type": "multipart/form-data; boundary=xyz", "content-length": "7" }, ["garbage"])
      expectEnvelope(garbage, 400, {})
      const truncated = yield* raw("/v1/files", { "content-type": "multipart/form-data; boundary=xyz" }, [
        `--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\nno closing boundary`
      ])
      expectEnvelope(truncated, 400, {})
      // A text field sent twice: which value was meant is unknown (the last one was taken silently).
      const purposeTwice = yield* raw("/v1/files", { "content-type": "multipart/form-data; boundary=xyz" }, [
        `--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
        `--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n` +
        `--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{}\n\r\n--xyz--\r\n`
      ])
      expectEnvelope(purposeTwice, 400, { param: "purpose", code: "invalid_value" })
      expect(purposeTwice.json.error.message).toBe("The 'purpose' field was sent more than once; send it once.")
      // A text field named file beside the file part, before or after it: which was meant is unknown too.
      for (const textFirst of [true, false]) {
        const text = `--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nSECOND\r\n`
        const file = `--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{}\n\r\n`
        const fileTwice = yield* raw("/v1/files", { "content-type": "multipart/form-data; boundary=xyz" }, [
          `--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` + (textFirst ? text + file : file + text) + "--xyz--\r\n"
        ])
        expectEnvelope(fileTwice, 400, { param: "file", code: "invalid_value" })
      }
      const notMultipart = yield* call("/v1/files", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" })
      expectEnvelope(notMultipart, 400, {})

      expectEnvelope(yield* call("/v1/files?limit=0"), 400, { param: "limit", code: "invalid_value" })
      expectEnvelope(yield* call("/v1/files?limit=abc"), 400, { param: "limit", code: "invalid_value" })
      // Digits only: `0x10`, `1e1` and ` 5` are not counts (Number() would read them as 16, 10 and 5).
      for (const limit of ["0x10", "1e1", "%205", "5.0"]) {
        expectEnvelope(yield* call(`/v1/files?limit=${limit}`), 400, { param: "limit", code: "invalid_value" })
      }
      expect((yield* call("/v1/files?limit=16")).status).toBe(200)
      const twice = yield* call("/v1/files?limit=5&limit=6")
      expectEnvelope(twice, 400, { param: "limit", code: "invalid_type" })
      expect(twice.json.error.message).toBe("Invalid type for 'limit': expected a string, but got an array instead.")
      const sideways = yield* call("/v1/files?order=sideways")
      expectEnvelope(sideways, 400, { param: "order", code: "invalid_value" })
      expect(sideways.json.error.message).toContain("expected 'asc' or 'desc'")
      // A purpose no file can have is a typo, not an empty list; one OpenAI gives its own files lists what there is.
      const typo = yield* call("/v1/files?purpose=batch-output")
      expectEnvelope(typo, 400, { param: "purpose", code: "invalid_value" })
      expect(typo.json.error.message).toContain("expected one of 'assistants', 'assistants_output', 'batch', 'batch_output'")
      expect((yield* call("/v1/files?purpose=fine-tune-results")).json.data).toEqual([])
      expectEnvelope(yield* call("/v1/files?after=file-unknown"), 400, { param: "after", code: "invalid_value" })
      const unknown = yield* call("/v1/nothing-here")
      expectEnvelope(unknown, 404, { code: "not_found" })
      expect(unknown.json.error.message).toBe("Invalid URL (GET /v1/nothing-here)")
      // The API's paths under another base URL: the client's one change is said.
      const llamaStack = yield* call("/v1/openai/v1/files?limit=2")
      expectEnvelope(llamaStack, 404, { code: "not_found" })
      expect(llamaStack.json.error.message).toBe(
        "Invalid URL (GET /v1/openai/v1/files?limit=2) This server serves the OpenAI API under /v1, not llama-stack's /v1/openai/v1: end the client's base URL with /v1."
      )
      expect((yield* call("/batches")).json.error.message).toBe("Invalid URL (GET /batches) The API is under /v1: end the client's base URL with /v1.")
      // An inference call, as to a gateway that serves both: what this server is.
      const chat = yield* call("/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" })
      expectEnvelope(chat, 404, { code: "not_found" })
      expect(chat.json.error.message).toBe(
        "Invalid URL (POST /v1/chat/completions) This server runs batches of such requests (the Files and Batches APIs); send a single one to the upstream itself."
      )
    }))

  it.effect("an upload to a path that is no route (for POST) is its 404, with the hint, not a 415 for not being JSON; /v1/files/ is /v1/files", () =>
    Effect.gen(function*() {
      const posted = () => ({ method: "POST", body: form({ purpose: "batch" }, { name: "a.jsonl", bytes: Buffer.from('{"custom_id":"a"}\n') }) })
      // The official client with a base URL without /v1, as a LiteLLM user's (http://host:4000) is.
      const sdkWithoutV1 = new OpenAI({ baseURL: yield* baseUrl, apiKey: "sk-test", maxRetries: 0 })
      const refused = yield* Effect.promise(() =>
        sdkWithoutV1.files.create({ file: new File(['{"custom_id":"a"}\n'], "a.jsonl"), purpose: "batch" }).then(() => undefined, (e) => e))
      expect(refused).toBeInstanceOf(OpenAI.NotFoundError)
      expect(refused.error).toEqual({
        message: "Invalid URL (POST /files) The API is under /v1: end the client's base URL with /v1.",
        type: "invalid_request_error",
        param: null,
        code: "not_found"
      })
      expectEnvelope(yield* call("/v1//files", posted()), 404, { code: "not_found" })
      // A form posted to a file's path, a route for GET and DELETE only, is no route either (it was a 415).
      expectEnvelope(yield* call("/v1/files/file-abc", posted()), 404, { code: "not_found" })
      // A known route still wants JSON: 415.
      expectEnvelope(yield* call("/v1/batches", posted()), 415, { code: "unsupported_media_type" })
      const slash = yield* call("/v1/files/", posted())
      expect([slash.status, slash.json.object, slash.json.filename]).toEqual([200, "file", "a.jsonl"])
    }))

  it.effect("serves the OpenAPI document and a docs page", () =>
    Effect.gen(function*() {
      const spec = yield* call("/openapi.json")
      expect(spec.status).toBe(200)
      expect(Object.keys(spec.json.paths)).toEqual(expect.arrayContaining(["/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/health"]))
      // The models route's wildcard is documented as OpenAI's `{model}`.
      expect(Object.keys(spec.json.paths)).not.toContain("/v1/models/*")
      expect(spec.json.paths["/v1/models/{model}"].get.parameters.map((p: { name: string }) => p.name)).toEqual(["model"])
      const docs = yield* call("/docs")
      expect([docs.status, docs.headers.get("x-frame-options")]).toEqual([200, "DENY"])
      const html = new TextDecoder().decode(docs.buffer)
      expect(html).toContain("<html")
      // The spec is embedded and Scalar's script is served inline (the page works without internet access).
      expect(html).toContain('"/v1/batches/{batch_id}/cancel"')
      expect(html).not.toMatch(/<script[^>]+src=/)
      expect(html.length).toBeGreaterThan(1_000_000)
      // Gzipped for a client that takes it (fetch above did, and undid it), whole for one that does not.
      const sent = (acceptEncoding: string) =>
        Effect.flatMap(baseUrl, (base) => Effect.promise(() => undiciRequest(`${base}/docs`, { headers: { "accept-encoding": acceptEncoding } })))
      const zipped = yield* sent("gzip, deflate, br")
      expect([zipped.statusCode, zipped.headers["content-encoding"], zipped.headers.vary]).toEqual([200, "gzip", "accept-encoding"])
      const unzipped = gunzipSync(Buffer.from(yield* Effect.promise(() => zipped.body.arrayBuffer()))).toString("utf8")
      expect(unzipped).toBe(html)
      expect(Number(zipped.headers["content-length"])).toBeLessThan(html.length / 2)
      for (const refused of ["identity", "gzip;q=0, identity", "gzip;q=0, *"]) {
        const whole = yield* sent(refused)
        expect(whole.headers["content-encoding"]).toBeUndefined()
        expect(yield* Effect.promise(() => whole.body.text())).toBe(html)
      }
      expect((yield* call("/v1/health")).json).toEqual({ status: "OK" })
    }))
})

describe("upload size limit", () => {
  const limit = 64 * 1024
  layer(testApp({ maxUploadBytes: limit }), { excludeTestServices: true })("MAX_UPLOAD_BYTES", (it) => {
    it.effect("an upload of exactly the limit is accepted", () =>
      Effect.gen(function*() {
        const res = yield* upload({ purpose: "user_data" }, { name: "edge.bin", bytes: randomBytes(limit) })
        expect(res.status).toBe(200)
        expect(res.json.bytes).toBe(limit)
      }))

    it.effect("one byte over is a 413, with or without Content-Length, and leaves nothing behind", () =>
      Effect.gen(function*() {
        const { path } = yield* TestDataDir
        const withLength = yield* upload({ purpose: "user_data" }, { name: "over.bin", bytes: randomBytes(limit + 1) })
        expectEnvelope(withLength, 413, { param: "file" })

        const boundary = "b0undary"
        const chunked = yield* raw("/v1/files", { "content-type": `multipart/form-data; boundary=${boundary}`, "transfer-encoding": "chunked" }, [
          `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n`,
          `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="over.bin"\r\n\r\n`,
          randomBytes(limit + 1),
          `\r\n--${boundary}--\r\n`
        ])
        expectEnvelope(chunked, 413, { param: "file" })
        const declaredTooLarge = yield* raw("/v1/files", { "content-type": `multipart/form-data; boundary=${boundary}`, "content-length": String(10 * limit) }, [])
        expectEnvelope(declaredTooLarge, 413, { param: "file" })

        const listed = yield* call("/v1/files")
        expect(listed.json.data.filter((f: any) => f.filename === "over.bin")).toEqual([])
        expect(localBlobs(path).staging).toEqual([])
      }))
  })
})
