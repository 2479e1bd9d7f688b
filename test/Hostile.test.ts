/**
 * Hostile and careless clients against the real server process, on SQLite and on PostgreSQL: every client mistake
 * is a 4xx in the OpenAI envelope, nothing hangs, the process lives on after each case, and the files uploaded
 * before are byte-identical at the end.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { createHash } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { MAX_CUSTOM_ID_LENGTH } from "../src/batches/lineValidation.js"
import { type Simulator, startSimulator } from "../scripts/simulator.js"
import { chatLine, sdk, terminal, waitFor } from "./support/Batches.js"
import { type RawAnswer, rawRequest } from "./support/RawHttp.js"
import { type ServerProcess, startServer } from "./support/ServerProcess.js"
import { backends, TestDatabase } from "./support/TestApp.js"

type Answer = RawAnswer

/** One raw request: any path bytes, headers and body (chunks sent with chunked encoding unless a length is set). */
const send = (
  base: string,
  method: string,
  path: string,
  options: { headers?: Record<string, string>; body?: string | Uint8Array | ReadonlyArray<Uint8Array> } = {}
) => rawRequest(base, { method, path, ...options })

const json = (value: unknown) => ({ headers: { "content-type": "application/json" }, body: JSON.stringify(value) })
const rawJson = (text: string | Uint8Array) => ({ headers: { "content-type": "application/json" }, body: text })

/** A 4xx whose body is exactly the OpenAI error envelope. */
const expectEnvelope = (answer: Answer, status: number, code?: string | null) => {
  expect(answer.status, answer.text.slice(0, 300)).toBe(status)
  expect(Object.keys(answer.json)).toEqual(["error"])
  expect(Object.keys(answer.json.error).sort()).toEqual(["code", "message", "param", "type"])
  expect(answer.json.error.type).toBe("invalid_request_error")
  if (code !== undefined) expect(answer.json.error.code).toBe(code)
}

const sha256 = (bytes: Uint8Array | string) => createHash("sha256").update(bytes).digest("hex")

/** Resident memory of a process, in MB (Linux). */
const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024

class Hostile extends Context.Tag("test/Hostile")<Hostile, {
  readonly server: ServerProcess
  readonly sim: Simulator
  /** Files uploaded before any hostile case: id → sha256 of the bytes. */
  readonly earlier: ReadonlyMap<string, string>
  /** A valid batch input file. */
  readonly inputFileId: string
}>() {}

const hostileServer = (backend: "sqlite" | "postgres") =>
  Layer.scoped(
    Hostile,
    Effect.gen(function*() {
      const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))
      const dataDir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-hostile-"))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
      )
      const database = Context.get(yield* Layer.build(TestDatabase.layer(backend)), TestDatabase)
      const server = yield* Effect.acquireRelease(
        Effect.promise(() =>
          startServer({
            DATA_DIR: dataDir,
            INFERENCE_BASE_URL: sim.url,
            ...Option.match(database.url, { onNone: () => ({}), onSome: (url) => ({ DATABASE_URL: Redacted.value(url) }) })
          })
        ),
        (s) => Effect.promise(() => s.stop())
      )
      const openai = sdk(server.url)
      const earlier = new Map<string, string>()
      const input = [chatLine("a", "one"), chatLine("b", "two")].join("\n") + "\n"
      const inputFile = yield* Effect.promise(async () =>
        openai.files.create({ file: new File([input], "input.jsonl"), purpose: "batch" })
      )
      earlier.set(inputFile.id, sha256(input))
      const binary = new Uint8Array(300_000).map((_, i) => (i * 7919) % 256)
      const other = yield* Effect.promise(() => openai.files.create({ file: new File([binary], "data.bin"), purpose: "user_data" }))
      earlier.set(other.id, sha256(binary))
      return { server, sim, earlier, inputFileId: inputFile.id }
    })
  )

for (const backend of backends) {
  describe(`hostile clients (${backend})`, () => {
    layer(hostileServer(backend), { excludeTestServices: true, timeout: 60_000 })("the server", (it) => {
      /** Runs `attempt`, then checks the server still answers. */
      const survives = <A>(attempt: (base: string) => Effect.Effect<A, Error, Hostile>) =>
        Effect.gen(function*() {
          const { server } = yield* Hostile
          const result = yield* attempt(server.url)
          const health = yield* send(server.url, "GET", "/v1/health")
          expect(health.status).toBe(200)
          expect(server.child.exitCode).toBeNull()
          return result
        })

      it.effect("oversize JSON bodies are 413s, with or without Content-Length, read in bounded memory", () =>
        survives((base) =>
          Effect.gen(function*() {
            const { server } = yield* Hostile
            expectEnvelope(yield* send(base, "POST", "/v1/batches", rawJson("x".repeat(1024 * 1024 + 1))), 413, "request_too_large")
            const chunk = new Uint8Array(1024 * 1024).fill(0x5b) // "[" — 300 MB of it, chunked, no Content-Length
            const chunks = Array.from({ length: 300 }, () => chunk)
            const answer = yield* send(base, "POST", "/v1/batches", { headers: { "content-type": "application/json" }, body: chunks })
            expectEnvelope(answer, 413, "request_too_large")
            expect(rssMb(server.child.pid!)).toBeLessThan(400)
          })
        ))

      it.effect("bodies that are not JSON, not UTF-8, or nested absurdly deep are 400/415, never 500", () =>
        survives((base) =>
          Effect.gen(function*() {
            const deep = (n: number) => `{"input_file_id":${"[".repeat(n)}${"]".repeat(n)},"endpoint":"/v1/chat/completions","completion_window":"24h"}`
            for (const n of [5_000, 200_000]) {
              expectEnvelope(yield* send(base, "POST", "/v1/batches", rawJson(deep(n))), 400, "invalid_body")
            }
            for (const bad of ["{", "not json", '{"input_file_id":', new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x7d])]) {
              expectEnvelope(yield* send(base, "POST", "/v1/batches", rawJson(bad)), 400, "invalid_body")
            }
            // A parameter given twice: JSON.parse keeps the last, a proxy in front may have checked the first.
            const { inputFileId } = yield* Hostile
            const twice = yield* send(base, "POST", "/v1/batches", rawJson(
              `{"input_file_id":"${inputFileId}","endpoint":"/v1/embeddings","endpoint":"/v1/chat/completions","completion_window":"24h"}`
            ))
            expectEnvelope(twice, 400, "invalid_body")
            expect([twice.json.error.param, twice.json.error.message]).toEqual(["endpoint", "The request body gives 'endpoint' more than once: send each parameter once."])
            for (const type of ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"]) {
              const answer = yield* send(base, "POST", "/v1/batches", { headers: { "content-type": type }, body: "input_file_id=x" })
              expectEnvelope(answer, 415, "unsupported_media_type")
            }
          })
        ))

      it.effect("a NUL or a lone surrogate in any id, cursor, filter or parameter is a 4xx", () =>
        survives((base) =>
          Effect.gen(function*() {
            const { inputFileId } = yield* Hostile
            for (const path of ["/v1/files/file-%00", "/v1/files/file-%00/content", "/v1/batches/batch_%00"]) {
              const answer = yield* send(base, "GET", path)
              expect(answer.status, path).toBe(400)
              expectEnvelope(answer, 400)
            }
            expectEnvelope(yield* send(base, "DELETE", "/v1/files/%00"), 400)
            expectEnvelope(yield* send(base, "POST", "/v1/batches/batch_%00/cancel"), 400)
            for (const query of ["after=%00", "purpose=%00", "after=%ED%A0%80", "limit=0", "limit=abc", "order=up"]) {
              expectEnvelope(yield* send(base, "GET", `/v1/files?${query}`), 400)
            }
            expectEnvelope(yield* send(base, "GET", "/v1/batches?after=x%00"), 400)
            for (const list of ["/v1/batches", "/v1/webhook_deliveries"]) {
              for (const limit of ["0x10", "1e1", "101"]) expectEnvelope(yield* send(base, "GET", `${list}?limit=${limit}`), 400)
            }
            const create = (extra: Record<string, unknown>) =>
              send(base, "POST", "/v1/batches", json({ input_file_id: inputFileId, endpoint: "/v1/chat/completions", completion_window: "24h", ...extra }))
            for (const extra of [
              { input_file_id: "file-\u0000" },
              { metadata: { k: "v\u0000" } },
              { metadata: { "k\u0000": "v" } },
              { idempotency_key: "\u0000" },
              { endpoint: "\u0000".repeat(10_000) }
            ]) {
              const answer = yield* create(extra)
              expectEnvelope(answer, 400)
              expect(answer.text.length).toBeLessThan(1000) // what is echoed is bounded
            }
            // A lone surrogate escaped in JSON would be stored as U+FFFD: refused instead.
            expectEnvelope(yield* send(base, "POST", "/v1/batches", rawJson(`{"input_file_id":"${inputFileId}","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"k":"x\\ud800y"}}`)), 400)
          })
        ))

      it.effect("input lines with a NUL or a lone surrogate fail validation with line errors (nothing sent)", () =>
        survives(() =>
          Effect.gen(function*() {
            const { server, sim } = yield* Hostile
            const openai = sdk(server.url)
            const lines = [
              JSON.stringify({ custom_id: "ok", method: "POST", url: "/v1/chat/completions", body: { model: "sim-model", messages: [] } }),
              `{"custom_id":"nul\\u0000","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[]}}`,
              `{"custom_id":"x\\ud800y","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[]}}`,
              `{"custom_id":"m","method":"POST","url":"/v1/chat/completions","body":{"model":"sim\\u0000","messages":[]}}`
            ]
            const before = sim.stats.requests
            const file = yield* Effect.promise(() => openai.files.create({ file: new File([lines.join("\n")], "nul.jsonl"), purpose: "batch" }))
            const batch = yield* Effect.promise(() => openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))
            const done = yield* waitFor(openai, batch.id, terminal)
            expect(done.status).toBe("failed")
            expect(done.errors!.data!.map((e) => [e.line, e.code, e.param])).toEqual([
              [2, "invalid_request", "custom_id"],
              [3, "invalid_request", "custom_id"],
              [4, "invalid_request", "body.model"]
            ])
            expect(sim.stats.requests).toBe(before)
          })
        ))

      it.effect("error messages and the errors list stay small whatever the input repeats", () =>
        survives(() =>
          Effect.gen(function*() {
            const { server } = yield* Hostile
            const openai = sdk(server.url)
            const huge = "c".repeat(MAX_CUSTOM_ID_LENGTH) // the longest accepted (longer: each line refused for it)
            const lines = Array.from({ length: 31 }, () => chatLine(huge, "dup"))
            const file = yield* Effect.promise(() => openai.files.create({ file: new File([lines.join("\n")], "dup.jsonl"), purpose: "batch" }))
            const batch = yield* Effect.promise(() => openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))
            const done = yield* waitFor(openai, batch.id, terminal)
            expect(done.status).toBe("failed")
            expect(done.errors!.data!.length).toBe(30)
            expect(done.errors!.data![0]!.code).toBe("duplicate_custom_id")
            expect(JSON.stringify(done).length).toBeLessThan(20_000)
            // 3,000 bad lines: the list is cut by size and the rest counted in one last entry.
            const bad = yield* Effect.promise(() => openai.files.create({ file: new File([Array.from({ length: 3000 }, () => "nope").join("\n")], "bad.jsonl"), purpose: "batch" }))
            const failed = yield* waitFor(openai, (yield* Effect.promise(() => openai.batches.create({ input_file_id: bad.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))).id, terminal)
            const data = failed.errors!.data!
            expect(JSON.stringify(failed).length).toBeLessThan(70 * 1024)
            expect(data.at(-1)!.code).toBe("too_many_errors")
            expect(data.at(-1)!.message).toBe(`${3000 - (data.length - 1)} more problems were found and are not listed.`)
            // An input_file_id of 1 MB would be repeated by every retrieve and list of its batch: refused at once.
            const longId = yield* send(server.url, "POST", "/v1/batches", json({ input_file_id: `file-${huge.slice(0, 900_000)}`, endpoint: "/v1/chat/completions", completion_window: "24h" }))
            expectEnvelope(longId, 400, "invalid_value")
            expect(longId.json.error.param).toBe("input_file_id")
            expect(longId.text.length).toBeLessThan(1024)
            const page = yield* send(server.url, "GET", "/v1/batches?limit=100")
            expect(page.text.length).toBeLessThan(200 * 1024)

            // Twenty such batches (~67 KB each): a list page ends at 1 MiB and says has_more (a hundred took 6.7 MB,
            // held whole for a client that did not read it), and the official client's paging still sees each once.
            const more = yield* Effect.forEach(Array.from({ length: 20 }), () =>
              Effect.promise(() => openai.batches.create({ input_file_id: bad.id, endpoint: "/v1/chat/completions", completion_window: "24h" })), { concurrency: 4 })
            for (const created of more) yield* waitFor(openai, created.id, terminal)
            const big = yield* send(server.url, "GET", "/v1/batches?limit=100")
            expect(big.status).toBe(200)
            expect(big.text.length).toBeLessThanOrEqual(1024 * 1024)
            expect(big.json.has_more).toBe(true)
            expect(big.json.data.length).toBeLessThan(20)
            expect(big.json.last_id).toBe(big.json.data.at(-1).id)
            const seen: Array<string> = []
            yield* Effect.promise(async () => {
              for await (const listed of openai.batches.list({ limit: 100 })) seen.push(listed.id)
            })
            expect(new Set(seen).size).toBe(seen.length)
            for (const id of [failed.id, ...more.map((b) => b.id)]) expect(seen).toContain(id)
          })
        ))

      it.effect("a missing input file creates a batch that fails as OpenAI's does; metadata keys in any order are one idempotent create", () =>
        survives((base) =>
          Effect.gen(function*() {
            const { inputFileId, server } = yield* Hostile
            const openai = sdk(server.url)
            const batch = yield* Effect.promise(() => openai.batches.create({ input_file_id: "file-doesnotexist", endpoint: "/v1/chat/completions", completion_window: "24h" }))
            expect(batch.status).toBe("validating")
            const done = yield* waitFor(openai, batch.id, terminal)
            expect(done.status).toBe("failed")
            expect(done.errors!.data).toEqual([{
              code: "invalid_request",
              message: "Cannot find file file-doesnotexist, or organization does not have access to it.",
              param: "input_file_id",
              line: null
            }])
            const create = (metadata: Record<string, string>) =>
              send(base, "POST", "/v1/batches", json({ input_file_id: inputFileId, endpoint: "/v1/chat/completions", completion_window: "24h", idempotency_key: "same-key", metadata }))
            const first = yield* create({ a: "1", b: "2", c: "3" })
            const again = yield* create({ c: "3", b: "2", a: "1" })
            expect(first.status).toBe(200)
            expect(again.status).toBe(200)
            expect(again.json.id).toBe(first.json.id)
            expect(first.json.metadata).toEqual({ a: "1", b: "2", c: "3" })
            expectEnvelope(yield* create({ a: "1", b: "3", c: "3" }), 409)
            // A key the platform's records would drop silently is refused instead.
            const proto = yield* create(JSON.parse('{"a":"1","__proto__":"x"}'))
            expectEnvelope(proto, 400)
            expect(proto.json.error.message).toContain("__proto__")
          })
        ))

      it.effect("broken uploads are 4xx and leave nothing listed", () =>
        survives((base) =>
          Effect.gen(function*() {
            const before = (yield* send(base, "GET", "/v1/files?purpose=batch")).json.data.length
            const part = (disposition: string, body: string) => `--b\r\nContent-Disposition: form-data; ${disposition}\r\n\r\n${body}\r\n`
            const purpose = part('name="purpose"', "batch")
            const file = (disposition: string) => part(`name="file"; ${disposition}`, "{}")
            const uploads: ReadonlyArray<readonly [string, string]> = [
              ["multipart/form-data; boundary=b", purpose + file(`filename*=UTF-8''%E0%A4%A.jsonl`) + "--b--\r\n"],
              ["multipart/form-data; boundary=b", purpose + file(`filename*=UTF-8''%.jsonl`) + "--b--\r\n"],
              ["multipart/form-data; boundary=b", purpose + file('filename="a.jsonl"')], // ends inside the form
              ["multipart/form-data; boundary=b", purpose + file('filename="a.jsonl"') + file('filename="b.jsonl"') + "--b--\r\n"],
              ["multipart/form-data; boundary=b", part('name="purpose"', "x".repeat(100_000)) + file('filename="a.jsonl"') + "--b--\r\n"],
              ["multipart/form-data", purpose],
              ["application/json", "{}"]
            ]
            for (const [type, body] of uploads) {
              const answer = yield* send(base, "POST", "/v1/files", { headers: { "content-type": type }, body })
              expect(answer.status, body.slice(0, 120)).toBeGreaterThanOrEqual(400)
              expect(answer.status, body.slice(0, 120)).toBeLessThan(500)
              expectEnvelope(answer, answer.status)
            }
            expect((yield* send(base, "GET", "/v1/files?purpose=batch")).json.data.length).toBe(before)
            // A boundary that names none is no boundary (it was said as a missing file).
            for (const type of ['multipart/form-data; boundary=""', "multipart/form-data; boundary=", "multipart/form-data; boundary=;"]) {
              const answer = yield* send(base, "POST", "/v1/files", { headers: { "content-type": type }, body: "--\r\n" })
              expect([answer.status, answer.json.error.message], type).toEqual([400, "The body must be multipart/form-data with a boundary."])
            }
            // A request line in absolute form (as sent to proxies) is routed by its path: an upload is an upload.
            const absolute = yield* send(base, "POST", `${base}/v1/files`, {
              headers: { "content-type": "multipart/form-data; boundary=b" },
              body: purpose + file('filename="abs.jsonl"') + "--b--\r\n"
            })
            expect(absolute.status, absolute.text).toBe(200)
            expect(absolute.json.filename).toBe("abs.jsonl")
          })
        ))

      it.effect("unknown routes, bad methods and oversized headers are 4xx", () =>
        survives((base) =>
          Effect.gen(function*() {
            expectEnvelope(yield* send(base, "GET", "/v1/nothing"), 404)
            expectEnvelope(yield* send(base, "PATCH", "/v1/files"), 404)
            // Node answers 431 and closes the connection, which the client may see first as a reset.
            const long = yield* Effect.either(send(base, "GET", `/v1/files/${"a".repeat(70_000)}`))
            if (long._tag === "Right") expect(long.right.status).toBe(431)
            else expect(long.left.message).toMatch(/ECONNRESET|EPIPE/)
            const cancelUnknown = yield* send(base, "POST", "/v1/batches/batch_nope/cancel", rawJson("{garbage"))
            expect(cancelUnknown.status).toBe(404)
          })
        ))

      it.effect("files uploaded before every hostile case are byte-identical, and nothing was uncaught", () =>
        Effect.gen(function*() {
          const { earlier, server } = yield* Hostile
          for (const [id, digest] of earlier) {
            const content = yield* Effect.promise(async () => new Uint8Array(await (await fetch(`${server.url}/v1/files/${id}/content`)).arrayBuffer()))
            expect(sha256(content)).toBe(digest)
          }
          expect(server.output()).not.toMatch(/Uncaught exception|Unhandled rejection/)
        }))
    })
  })
}
