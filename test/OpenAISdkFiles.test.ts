/** The official `openai` npm client against the real server: what users actually run. */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { createReadStream, writeFileSync } from "node:fs"
import * as Path from "node:path"
import OpenAI, { NotFoundError, toFile } from "openai"
import { baseUrl, TestDataDir, testApp } from "./support/TestApp.js"

const client = Effect.map(baseUrl, (base) => new OpenAI({ baseURL: `${base}/v1`, apiKey: "sk-test", maxRetries: 0 }))

layer(testApp(), { excludeTestServices: true })("openai SDK: files", (it) => {
  it.effect("create (stream and in-memory), retrieve, content, list with auto-pagination, delete, list and delete", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const { path } = yield* TestDataDir
      const lines = Array.from({ length: 100 }, (_, i) => JSON.stringify({ custom_id: `r${i}`, method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [] } })).join("\n") + "\n"
      const inputPath = Path.join(path, "input.jsonl")
      writeFileSync(inputPath, lines)

      // fs.createReadStream: the SDK streams a hand-built multipart body, chunked, file part first
      const streamed = yield* Effect.promise(() => openai.files.create({ file: createReadStream(inputPath), purpose: "batch" }))
      expect(streamed).toMatchObject({ object: "file", bytes: Buffer.byteLength(lines), filename: "input.jsonl", purpose: "batch", status: "processed" })
      const waited = yield* Effect.promise(() => openai.files.waitForProcessing(streamed.id))
      expect(waited.status).toBe("processed")

      const retrieved = yield* Effect.promise(() => openai.files.retrieve(streamed.id))
      expect(retrieved).toEqual(expect.objectContaining({ id: streamed.id, bytes: streamed.bytes, created_at: streamed.created_at }))

      const content = yield* Effect.promise(async () => (await openai.files.content(streamed.id)).text())
      expect(content).toBe(lines)

      // toFile: a FormData body, with expires_after flattened into bracketed fields
      const created: Array<string> = [streamed.id]
      for (let i = 0; i < 4; i++) {
        const f = yield* Effect.promise(async () =>
          openai.files.create({
            file: await toFile(Buffer.from(`{"n":${i}}\n`), `n${i}.jsonl`),
            purpose: "user_data",
            expires_after: { anchor: "created_at", seconds: 7200 }
          }))
        expect(f.expires_at).toBe(f.created_at + 7200)
        created.push(f.id)
      }

      // auto-pagination follows the last id of each page until has_more is false
      const collect = (query: OpenAI.FileListParams) =>
        Effect.promise(async () => {
          const ids: Array<string> = []
          for await (const f of openai.files.list(query)) ids.push(f.id)
          return ids
        })
      const seen = yield* collect({ limit: 2, order: "asc" })
      expect(seen).toEqual(created)
      const page = yield* Effect.promise(() => openai.files.list({ limit: 2 }))
      expect(page.data.map((f) => f.id)).toEqual([created[4], created[3]])
      expect(page.has_more).toBe(true)
      const userData = yield* collect({ purpose: "user_data", limit: 3 })
      expect(userData).toEqual(created.slice(1).reverse())

      const deleted = yield* Effect.promise(() => openai.files.delete(streamed.id))
      expect(deleted).toEqual({ id: streamed.id, object: "file", deleted: true })

      const error = yield* Effect.promise(() => openai.files.retrieve(streamed.id).then(() => undefined, (e) => e))
      expect(error).toBeInstanceOf(NotFoundError)
      expect(error.status).toBe(404)
      expect(error.error).toMatchObject({ type: "invalid_request_error", param: "id", code: "not_found" })
      expect(error.requestID).toMatch(/^req_/)

      // List and delete: each next page is asked for after a file already deleted.
      const removed: Array<string> = []
      yield* Effect.promise(async () => {
        for await (const f of openai.files.list({ purpose: "user_data", limit: 2 })) {
          await openai.files.delete(f.id)
          removed.push(f.id)
        }
      })
      expect(removed).toEqual(created.slice(1).reverse())
      expect((yield* Effect.promise(() => openai.files.list({ purpose: "user_data" }))).data).toEqual([])
    }))

  it.effect("client mistakes surface as typed SDK errors", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const bad = yield* Effect.promise(async () =>
        openai.files.create({ file: await toFile(Buffer.from("x"), "x.jsonl"), purpose: "nonsense" as any }).then(() => undefined, (e) => e)
      )
      expect(bad).toBeInstanceOf(OpenAI.BadRequestError)
      expect(bad.param).toBe("purpose")
      expect(bad.code).toBe("invalid_value")
    }))
})
