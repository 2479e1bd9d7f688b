/**
 * The requests of the Python `openai` client, replayed byte for byte (the Python client cannot be installed here),
 * and checked against what its models need from the answers.
 *
 * Where the shapes come from (read from the two projects' git history, not guessed):
 * - openai-python v1.109.1 (the last 1.x release, 2025-09; it requires `httpx>=0.23,<1`):
 *   `src/openai/_base_client.py` (`BaseClient.default_headers`: Accept, Content-Type, User-Agent
 *   `OpenAI/Python <version>`, the `X-Stainless-*` platform headers, auth; `_build_headers`: `x-stainless-retry-count`
 *   and `x-stainless-read-timeout` appended in lower case, the read timeout being 600 (`_constants.DEFAULT_TIMEOUT`);
 *   `_build_request`: Content-Type dropped on GET, kept on POST/DELETE without a body, the multipart Content-Type
 *   dropped for httpx to set with its boundary, the form fields given as `data=` and the file as `files=`),
 *   `src/openai/_client.py` (`OpenAI.default_headers` adds `X-Stainless-Async: false`; `auth_headers`
 *   `Authorization: Bearer …`), `src/openai/resources/files.py` (`create`: `{"file","purpose","expires_after"}`
 *   with `file` extracted into `files=` and a `multipart/form-data` Content-Type; `content`: `Accept:
 *   application/binary`), `src/openai/resources/batches.py` (`create` body keys in the order
 *   completion_window, endpoint, input_file_id, metadata, output_expires_after; `cancel`: a POST without a body),
 *   `src/openai/pagination.py` (`SyncCursorPage`: the next page adds `after=<id of the last item>` to the query of
 *   the first, stops when `has_more` is false), `src/openai/_qs.py` (`urlencode`, nested keys as `a[b]`),
 *   `src/openai/_files.py` (an open file is handed to httpx as it is), `types/{batch,file_object,file_deleted}.py`.
 * - httpx 0.28.1: `httpx/_client.py` (`BaseClient.headers`: Accept, Accept-Encoding `gzip, deflate`, Connection
 *   `keep-alive`, User-Agent; `_merge_headers` with `Headers.update`, which moves a key given again to the end),
 *   `httpx/_models.py` (`Request._prepare`: `Host` first, then `Content-Length: 0` for a body-less POST/PUT/PATCH;
 *   the body's own headers appended), `httpx/_multipart.py` (boundary `os.urandom(16).hex()`, data fields before
 *   files, a file part's Content-Type guessed from its name: `application/octet-stream` for `.jsonl`, a known
 *   Content-Length for a real file), `httpx/_content.py` (`encode_json`: compact separators, `ensure_ascii=False`;
 *   httpx <= 0.27 used `json.dumps` defaults: `", "`, `": "` and `\uXXXX` escapes — both are replayed).
 * The headers are sent in the order and letter case httpx (through h11) writes them, on one kept-alive connection.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { connect, type Socket } from "node:net"
import { gunzipSync, inflateSync } from "node:zlib"
import { chatLine } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const VERSION = "1.109.1"
const API_KEY = "sk-python-test"

// ---- a raw HTTP/1.1 connection, kept alive like httpx's pool ---------------------------------------------------

interface Answer {
  readonly status: number
  /** Header names in lower case (each value as sent; repeated names joined with ", "). */
  readonly headers: Record<string, string>
  readonly body: Buffer
  readonly text: string
}

class RawConnection {
  private socket: Socket | undefined
  private buffered = Buffer.alloc(0)
  private waiting: (() => void) | undefined
  private ended = false
  connections = 0

  constructor(readonly host: string, readonly port: number) {}

  private open() {
    return new Promise<void>((resolve, reject) => {
      const socket = connect(this.port, this.host, () => resolve())
      this.connections++
      this.buffered = Buffer.alloc(0)
      this.ended = false
      socket.on("data", (chunk) => {
        this.buffered = Buffer.concat([this.buffered, chunk])
        this.waiting?.()
      })
      socket.on("end", () => {
        this.ended = true
        this.waiting?.()
      })
      socket.on("close", () => {
        this.ended = true
        this.socket = undefined
        this.waiting?.()
      })
      socket.on("error", reject)
      this.socket = socket
    })
  }

  /** Waits until `ready()` returns a value, reading more bytes as they come. */
  private async until<A>(ready: () => A | undefined): Promise<A> {
    for (;;) {
      const value = ready()
      if (value !== undefined) return value
      if (this.ended) throw new Error(`connection ended with ${this.buffered.length} unread bytes`)
      await new Promise<void>((resolve) => (this.waiting = resolve))
      this.waiting = undefined
    }
  }

  private take(n: number) {
    const out = this.buffered.subarray(0, n)
    this.buffered = this.buffered.subarray(n)
    return Buffer.from(out)
  }

  async send(request: Buffer): Promise<Answer> {
    if (this.socket === undefined || this.ended) await this.open() // httpx reconnects the same way
    this.socket!.write(request)
    const head = await this.until(() => {
      const end = this.buffered.indexOf("\r\n\r\n")
      return end < 0 ? undefined : this.take(end + 4).toString("latin1")
    })
    const [statusLine, ...lines] = head.slice(0, -4).split("\r\n")
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine!)![1])
    const headers: Record<string, string> = {}
    for (const line of lines) {
      const colon = line.indexOf(":")
      const name = line.slice(0, colon).toLowerCase()
      const value = line.slice(colon + 1).trim()
      headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`
    }
    let body: Buffer
    if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      const parts: Array<Buffer> = []
      for (;;) {
        const size = await this.until(() => {
          const end = this.buffered.indexOf("\r\n")
          return end < 0 ? undefined : parseInt(this.take(end + 2).toString("latin1"), 16)
        })
        if (size === 0) {
          await this.until(() => (this.buffered.indexOf("\r\n") < 0 ? undefined : this.take(this.buffered.indexOf("\r\n") + 2)))
          break
        }
        parts.push(await this.until(() => (this.buffered.length < size + 2 ? undefined : this.take(size + 2).subarray(0, size))))
      }
      body = Buffer.concat(parts)
    } else if (headers["content-length"] !== undefined) {
      const length = Number(headers["content-length"])
      body = await this.until(() => (this.buffered.length < length ? undefined : this.take(length)))
    } else if (status === 204 || status === 304) {
      body = Buffer.alloc(0)
    } else {
      await this.until(() => (this.ended ? true : undefined))
      body = this.take(this.buffered.length)
    }
    // httpx sends `Accept-Encoding: gzip, deflate` and decodes what comes back that way.
    const encoding = headers["content-encoding"]
    if (encoding === "gzip") body = gunzipSync(body)
    else if (encoding === "deflate") body = inflateSync(body)
    if (/\bclose\b/i.test(headers["connection"] ?? "")) this.socket?.end()
    return { status, headers, body, text: body.toString("utf8") }
  }

  close() {
    this.socket?.destroy()
  }
}

// ---- what openai-python 1.109.1 on httpx 0.28.1 writes ---------------------------------------------------------

/** `X-Stainless-OS`… as `platform_headers()` computes them for CPython 3.12 on x86-64 Linux. */
const platformHeaders: ReadonlyArray<readonly [string, string]> = [
  ["X-Stainless-Lang", "python"],
  ["X-Stainless-Package-Version", VERSION],
  ["X-Stainless-OS", "Linux"],
  ["X-Stainless-Arch", "x64"],
  ["X-Stainless-Runtime", "CPython"],
  ["X-Stainless-Runtime-Version", "3.12.3"]
]

type Headers = ReadonlyArray<readonly [string, string]>

/**
 * The headers of one request, in httpx's order: `Host` (and `Content-Length: 0` for a body-less POST) first; then
 * the client's `Accept-Encoding` and `Connection` (its `Accept` and `User-Agent` are replaced by the SDK's, which
 * `Headers.update` moves to the end); then the SDK's defaults, the retry headers, and the body's own headers.
 */
const pythonHeaders = (
  host: string,
  options: {
    readonly method: "GET" | "POST" | "DELETE"
    readonly accept?: string
    /** The body's headers (`Content-Length`, and a multipart `Content-Type`), appended by httpx. */
    readonly body?: Headers
    /** The SDK's `Content-Type` default was a multipart one, removed for httpx to set with the boundary. */
    readonly multipart?: boolean
  }
): Headers => {
  const auto: Array<readonly [string, string]> = [["Host", host]]
  if (options.method === "POST" && options.body === undefined) auto.push(["Content-Length", "0"])
  const sdk: Array<readonly [string, string]> = [["Accept", options.accept ?? "application/json"]]
  if (options.method !== "GET" && !options.multipart) sdk.push(["Content-Type", "application/json"])
  sdk.push(
    ["User-Agent", `OpenAI/Python ${VERSION}`],
    ...platformHeaders,
    ["Authorization", `Bearer ${API_KEY}`],
    ["X-Stainless-Async", "false"],
    ["x-stainless-retry-count", "0"],
    ["x-stainless-read-timeout", "600"]
  )
  return [...auto, ["Accept-Encoding", "gzip, deflate"], ["Connection", "keep-alive"], ...sdk, ...(options.body ?? [])]
}

const requestBytes = (method: string, target: string, headers: Headers, body: Buffer = Buffer.alloc(0)) =>
  Buffer.concat([
    Buffer.from(`${method} ${target} HTTP/1.1\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`, "latin1"),
    body
  ])

/** Python's `json.dumps`: httpx 0.28 (`separators=(",", ":")`, `ensure_ascii=False`) or <= 0.27 (the defaults). */
const pyDumps = (value: unknown, style: "httpx-0.28" | "httpx-0.27"): string => {
  const [comma, colon] = style === "httpx-0.28" ? [",", ":"] : [", ", ": "]
  const str = (s: string) => {
    const json = JSON.stringify(s)
    return style === "httpx-0.28" ? json : json.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
  }
  const go = (v: unknown): string => {
    if (v === null) return "null"
    if (typeof v === "string") return str(v)
    if (typeof v === "number" || typeof v === "boolean") return String(v)
    if (Array.isArray(v)) return `[${v.map(go).join(comma)}]`
    return `{${Object.entries(v as object).map(([k, x]) => `${str(k)}${colon}${go(x)}`).join(comma)}}`
  }
  return go(value)
}

/** `client.files.create(file=open(name, "rb"), purpose="batch"[, expires_after=…])`. */
const filesCreate = (host: string, name: string, bytes: Buffer, expiresAfter?: { anchor: string; seconds: number }) => {
  const boundary = randomBytes(16).toString("hex")
  // `_serialize_multipartform` flattens nested params as `key[sub]` (values as `str()`); httpx writes the data
  // fields in that order, then the file.
  const fields: Array<readonly [string, string]> = [["purpose", "batch"]]
  if (expiresAfter) fields.push(["expires_after[anchor]", expiresAfter.anchor], ["expires_after[seconds]", String(expiresAfter.seconds)])
  const body = Buffer.concat([
    ...fields.map(([name, value]) =>
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`)
    ),
    Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${name}"\r\n` +
        `Content-Type: application/octet-stream\r\n\r\n`
    ),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`)
  ])
  const headers = pythonHeaders(host, {
    method: "POST",
    multipart: true,
    body: [["Content-Length", String(body.length)], ["Content-Type", `multipart/form-data; boundary=${boundary}`]]
  })
  return requestBytes("POST", "/v1/files", headers, body)
}

const jsonPost = (host: string, target: string, body: string) => {
  const bytes = Buffer.from(body, "utf8")
  return requestBytes("POST", target, pythonHeaders(host, { method: "POST", body: [["Content-Length", String(bytes.length)]] }), bytes)
}
const get = (host: string, target: string, accept?: string) =>
  requestBytes("GET", target, pythonHeaders(host, { method: "GET", ...(accept ? { accept } : {}) }))
const bodilessPost = (host: string, target: string) => requestBytes("POST", target, pythonHeaders(host, { method: "POST" }))
const del = (host: string, target: string) => requestBytes("DELETE", target, pythonHeaders(host, { method: "DELETE" }))

/** `urlencode` of the params, in the order the SDK builds them. */
const query = (params: ReadonlyArray<readonly [string, string | number]>) =>
  new URLSearchParams(params.map(([k, v]): [string, string] => [k, String(v)])).toString()

// ---- what the SDK needs of the answers -------------------------------------------------------------------------

/**
 * A 2xx the SDK parses into `cast_to`: it parses JSON only when the media type ends with `json` (otherwise a model
 * call returns the text), and exposes `x-request-id` as `_request_id`.
 */
const parsed = (res: Answer, status = 200): any => {
  expect(res.status, res.text).toBe(status)
  expect(res.headers["content-type"]!.split(";")[0]!.trim()).toMatch(/json$/)
  expect(res.headers["x-request-id"]).toEqual(expect.any(String))
  return JSON.parse(res.text)
}

const isInt = (v: unknown) => typeof v === "number" && Number.isInteger(v)
const optionalInt = (v: unknown) => v === null || v === undefined || isInt(v)

/** `types/file_object.py` `FileObject`. */
const expectFileObject = (f: any) => {
  expect(typeof f.id).toBe("string")
  expect(isInt(f.bytes)).toBe(true)
  expect(isInt(f.created_at)).toBe(true)
  expect(typeof f.filename).toBe("string")
  expect(f.object).toBe("file")
  expect(["assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision", "user_data"]).toContain(f.purpose)
  expect(["uploaded", "processed", "error"]).toContain(f.status)
  expect(optionalInt(f.expires_at)).toBe(true)
  // `files.wait_for_processing()` polls until one of these, so an upload must already be in one.
  expect(["processed", "error", "deleted"]).toContain(f.status)
}

/** `types/batch.py` `Batch` (with `Errors`, `BatchError`, `BatchRequestCounts`). */
const expectBatch = (b: any) => {
  for (const key of ["id", "completion_window", "endpoint", "input_file_id"]) expect(typeof b[key], key).toBe("string")
  expect(isInt(b.created_at)).toBe(true)
  expect(b.object).toBe("batch")
  expect(["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]).toContain(b.status)
  for (const key of ["cancelled_at", "cancelling_at", "completed_at", "expired_at", "expires_at", "failed_at", "finalizing_at", "in_progress_at"]) {
    expect(optionalInt(b[key]), key).toBe(true)
  }
  for (const key of ["error_file_id", "output_file_id"]) expect(b[key] === null || typeof b[key] === "string", key).toBe(true)
  if (b.errors !== null && b.errors !== undefined) {
    expect(Array.isArray(b.errors.data)).toBe(true)
    for (const e of b.errors.data) expect(optionalInt(e.line)).toBe(true)
  }
  expect(b.request_counts).toEqual({ total: expect.any(Number), completed: expect.any(Number), failed: expect.any(Number) })
  if (b.metadata !== null) for (const v of Object.values(b.metadata)) expect(typeof v).toBe("string")
}

/** `pagination.py` `SyncCursorPage`: `data`, and `has_more` (read as "no more" only when false). */
const expectPage = (page: any) => {
  expect(page.object).toBe("list")
  expect(Array.isArray(page.data)).toBe(true)
  expect(typeof page.has_more).toBe("boolean")
}

/** An error the SDK turns into `APIStatusError` with `.type`, `.param`, `.code` read from `body["error"]`. */
const expectApiError = (res: Answer, status: number) => {
  expect(res.status, res.text).toBe(status)
  const body = JSON.parse(res.text)
  expect(Object.keys(body)).toEqual(["error"])
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"])
  return body.error
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** One kept-alive connection to the server under test, as httpx keeps one; closed with the test's scope. */
const pythonConnection = Effect.gen(function*() {
  const base = new URL(yield* baseUrl)
  const conn = new RawConnection(base.hostname, Number(base.port))
  yield* Effect.addFinalizer(() => Effect.sync(() => conn.close()))
  return { host: base.host, run: (request: Buffer) => Effect.promise(() => conn.send(request)) }
})

describe("the Python openai client's requests", () => {
  layer(testAppWithUpstream({ maxConcurrentRequestsPerBatch: 2 }), { excludeTestServices: true })("openai-python 1.109.1 on httpx", (it) => {
    it.scoped("files: create (purpose before file), retrieve, list(purpose=), content (Accept: application/binary), delete", () =>
      Effect.gen(function*() {
        const { host, run } = yield* pythonConnection

        const bytes = Buffer.from([chatLine("py-1", "from python"), chatLine("py-2", "café ☕")].join("\n") + "\n")
        const created = parsed(yield* run(filesCreate(host, "x.jsonl", bytes)))
        expectFileObject(created)
        expect(created).toMatchObject({ filename: "x.jsonl", purpose: "batch", bytes: bytes.length, status: "processed" })

        // expires_after as the SDK flattens it: `expires_after[anchor]`, `expires_after[seconds]` before the file.
        const expiring = parsed(yield* run(filesCreate(host, "y.jsonl", bytes, { anchor: "created_at", seconds: 3600 })))
        expectFileObject(expiring)
        expect(expiring.expires_at).toBe(expiring.created_at + 3600)

        const retrieved = parsed(yield* run(get(host, `/v1/files/${created.id}`)))
        expectFileObject(retrieved)
        expect(retrieved).toEqual(created)

        // `client.files.list(purpose="batch")`: `?purpose=batch`; the SDK pages on while `has_more` is true.
        const listed: Array<any> = []
        let target = `/v1/files?${query([["purpose", "batch"]])}`
        for (let pages = 0; ; pages++) {
          const page = parsed(yield* run(get(host, target)))
          expectPage(page)
          for (const f of page.data) expectFileObject(f)
          listed.push(...page.data)
          if (page.has_more === false || page.data.length === 0 || pages > 10) break
          target = `/v1/files?${query([["purpose", "batch"], ["after", page.data.at(-1).id]])}`
        }
        expect(listed.map((f) => f.id)).toEqual(expect.arrayContaining([created.id, expiring.id]))
        expect(listed.every((f) => f.purpose === "batch")).toBe(true)

        // `client.files.content(id)`: the bytes back, whatever the content type (`HttpxBinaryResponseContent`).
        const content = yield* run(get(host, `/v1/files/${created.id}/content`, "application/binary"))
        expect(content.status).toBe(200)
        expect(content.body.equals(bytes)).toBe(true)

        // `client.files.delete(id)`: DELETE with `Content-Type: application/json` and no body at all.
        const deleted = parsed(yield* run(del(host, `/v1/files/${created.id}`)))
        expect(deleted).toEqual({ id: created.id, object: "file", deleted: true })
        const gone = expectApiError(yield* run(get(host, `/v1/files/${created.id}`)), 404)
        expect(gone.type).toBe("invalid_request_error")
        expect(parsed(yield* run(del(host, `/v1/files/${expiring.id}`))).deleted).toBe(true)
      }))

    it.scoped("batches: create (exact body of each httpx), list(limit=2) and its after= page, retrieve, content of the output", () =>
      Effect.gen(function*() {
        const { host, run } = yield* pythonConnection

        const lines = [chatLine("py-a", "python a"), chatLine("py-b", "python b"), chatLine("py-c", "python c [fail:400]")]
        const file = parsed(yield* run(filesCreate(host, "batch.jsonl", Buffer.from(lines.join("\n") + "\n"))))

        // `client.batches.create(input_file_id=…, endpoint=…, completion_window="24h", metadata={…})`: the keys in
        // the order of the SDK's dict, `output_expires_after` left out (omitted, not null).
        const params = (metadata: Record<string, string>) => ({
          completion_window: "24h",
          endpoint: "/v1/chat/completions",
          input_file_id: file.id,
          metadata
        })
        const ids: Array<string> = []
        for (const [style, metadata] of [
          ["httpx-0.28", { project: "nightly", owner: "Zoë 🐍" }],
          ["httpx-0.27", { project: "nightly", owner: "Zoë 🐍" }],
          ["httpx-0.28", { run: "3" }]
        ] as const) {
          const body = pyDumps(params(metadata), style)
          if (style === "httpx-0.28") expect(body).toContain(`{"completion_window":"24h","endpoint":"/v1/chat/completions","input_file_id":"${file.id}","metadata":{`)
          else expect(body).toContain(`{"completion_window": "24h", "endpoint": "/v1/chat/completions", "input_file_id": "${file.id}", "metadata": {`)
          const batch = parsed(yield* run(jsonPost(host, "/v1/batches", body)))
          expectBatch(batch)
          expect(batch).toMatchObject({ status: "validating", input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata })
          ids.push(batch.id)
        }

        // `for b in client.batches.list(limit=2)`: `?limit=2`, then `?limit=2&after=<last id>` until has_more is false.
        const first = parsed(yield* run(get(host, `/v1/batches?${query([["limit", 2]])}`)))
        expectPage(first)
        expect(first.data.map((b: any) => b.id)).toEqual([ids[2], ids[1]])
        expect(first.has_more).toBe(true)
        const second = parsed(yield* run(get(host, `/v1/batches?${query([["limit", 2], ["after", first.data.at(-1).id]])}`)))
        expectPage(second)
        expect(second.data.map((b: any) => b.id)).toEqual([ids[0]])
        expect(second.has_more).toBe(false)
        for (const b of [...first.data, ...second.data]) expectBatch(b)

        // `client.batches.retrieve(id)` until the batch is final.
        let done: any
        for (const deadline = Date.now() + 20_000; ;) {
          done = parsed(yield* run(get(host, `/v1/batches/${ids[0]}`)))
          expectBatch(done)
          if (["completed", "failed", "expired", "cancelled"].includes(done.status)) break
          if (Date.now() > deadline) throw new Error(`stuck: ${JSON.stringify(done)}`)
          yield* Effect.promise(() => sleep(25))
        }
        expect(done).toMatchObject({ status: "completed", request_counts: { total: 3, completed: 2, failed: 1 } })
        expect(done.metadata).toEqual({ project: "nightly", owner: "Zoë 🐍" })

        // The output and error files, as `client.files.content(id).text` then a JSON parse per line.
        const output = yield* run(get(host, `/v1/files/${done.output_file_id}/content`, "application/binary"))
        expect(output.status).toBe(200)
        const outLines = output.text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))
        expect(outLines.map((l) => [l.custom_id, l.response.status_code, l.error])).toEqual([["py-a", 200, null], ["py-b", 200, null]])
        expect(outLines[0].response.body.choices[0].message.content).toBe("echo: python a")
        const errors = yield* run(get(host, `/v1/files/${done.error_file_id}/content`, "application/binary"))
        expect(errors.text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l).custom_id)).toEqual(["py-c"])
        const outputFile = parsed(yield* run(get(host, `/v1/files/${done.output_file_id}`)))
        expectFileObject(outputFile)
        expect(outputFile.purpose).toBe("batch_output")

        // An unknown id: the SDK raises NotFoundError from the envelope.
        expect(expectApiError(yield* run(get(host, "/v1/batches/batch_nope")), 404).type).toBe("invalid_request_error")
        for (const id of ids.slice(1)) {
          for (const deadline = Date.now() + 20_000; ;) {
            const b = parsed(yield* run(get(host, `/v1/batches/${id}`)))
            if (["completed", "failed", "expired", "cancelled"].includes(b.status)) break
            if (Date.now() > deadline) throw new Error(`stuck: ${JSON.stringify(b)}`)
            yield* Effect.promise(() => sleep(25))
          }
        }
      }))

    it.scoped("batches.cancel: a POST with Content-Type application/json, Content-Length 0 and no body; a 409 is not retried", () =>
      Effect.gen(function*() {
        const { host, run } = yield* pythonConnection

        const lines = Array.from({ length: 4 }, (_, i) => chatLine(`hang-${i}`, `hang ${i} [hang]`))
        const file = parsed(yield* run(filesCreate(host, "hang.jsonl", Buffer.from(lines.join("\n") + "\n"))))
        const batch = parsed(yield* run(jsonPost(host, "/v1/batches", pyDumps({ completion_window: "24h", endpoint: "/v1/chat/completions", input_file_id: file.id }, "httpx-0.28"))))
        expect(batch.metadata).toBeNull()
        for (const deadline = Date.now() + 10_000; ;) {
          if (parsed(yield* run(get(host, `/v1/batches/${batch.id}`))).status === "in_progress") break
          if (Date.now() > deadline) throw new Error("the batch did not start")
          yield* Effect.promise(() => sleep(10))
        }

        const request = bodilessPost(host, `/v1/batches/${batch.id}/cancel`)
        expect(request.toString("latin1")).toMatch(/^POST \/v1\/batches\/batch_\w+\/cancel HTTP\/1\.1\r\nHost: [^\r]+\r\nContent-Length: 0\r\n/)
        expect(request.toString("latin1")).toContain("\r\nContent-Type: application/json\r\n")
        expect(request.toString("latin1").endsWith("\r\n\r\n")).toBe(true)
        const cancelling = parsed(yield* run(request))
        expectBatch(cancelling)
        expect(cancelling.id).toBe(batch.id)
        expect(["cancelling", "cancelled"]).toContain(cancelling.status)

        let done: any
        for (const deadline = Date.now() + 10_000; ;) {
          done = parsed(yield* run(get(host, `/v1/batches/${batch.id}`)))
          if (done.status === "cancelled") break
          if (Date.now() > deadline) throw new Error(`stuck: ${JSON.stringify(done)}`)
          yield* Effect.promise(() => sleep(25))
        }
        expectBatch(done)
        expect(done.request_counts).toEqual({ total: 4, completed: 0, failed: 4 })
        // Cancelling again is idempotent: 200 with the batch.
        expect(parsed(yield* run(bodilessPost(host, `/v1/batches/${batch.id}/cancel`))).status).toBe("cancelled")

        // A finished batch: 409, and `x-should-retry: false` stops the SDK's retries (it retries 409s otherwise).
        const quickFile = parsed(yield* run(filesCreate(host, "quick.jsonl", Buffer.from(chatLine("q", "quick") + "\n"))))
        const quick = parsed(yield* run(jsonPost(host, "/v1/batches", pyDumps({ completion_window: "24h", endpoint: "/v1/chat/completions", input_file_id: quickFile.id }, "httpx-0.28"))))
        for (const deadline = Date.now() + 10_000; ;) {
          if (parsed(yield* run(get(host, `/v1/batches/${quick.id}`))).status === "completed") break
          if (Date.now() > deadline) throw new Error("quick batch did not complete")
          yield* Effect.promise(() => sleep(25))
        }
        const conflict = yield* run(bodilessPost(host, `/v1/batches/${quick.id}/cancel`))
        const error = expectApiError(conflict, 409)
        expect(error.message).toContain("completed")
        expect(conflict.headers["x-should-retry"]).toBe("false")
      }))
  })
})
