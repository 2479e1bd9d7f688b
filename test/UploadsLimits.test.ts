/**
 * The bounds of the Uploads API, on SQLite (they are checked before anything is stored, or in SQL both backends
 * share): each bad create parameter is a 400 naming it; a project's quota counts a pending upload's bytes, or its
 * parts' when more, and refuses a part beyond it; parts hold at most the upload's bytes as much again (at most one
 * part more); a part is one `data` file of at most 64 MB, checked while it streams; parts sent side by side count each
 * other against the quota (on both backends).
 */
import { expect, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Layer, Option } from "effect"
import { toFile } from "openai"
import { StorageLive } from "../src/Layers.js"
import { failure } from "./support/Batches.js"
import { rawRequest } from "./support/RawHttp.js"
import { backends, baseUrl, testApp } from "./support/TestApp.js"
import { auth, clients, createUpload, KEYS, partBlobs, sendPart, sendPartPromise, sql } from "./support/Uploads.js"

const MiB = 1024 * 1024

const limited = testApp({ maxUploadBytes: 1024 * 1024, maxFileBytesPerProject: Option.some(600_000) }, "sqlite", { auth })
layer(StorageLive.pipe(Layer.provideMerge(limited)), { excludeTestServices: true })("bad parameters", (it) => {
  it.effect("each bad create parameter is a 400 naming it; bytes beyond the project's quota a 413", () =>
    Effect.gen(function*() {
      const { a } = yield* clients
      const good = { bytes: 10, filename: "in.jsonl", mime_type: "text/jsonl", purpose: "batch" } as const
      const cases: ReadonlyArray<[Record<string, unknown>, string | null, string | null]> = [
        [{ bytes: 0 }, "bytes", "invalid_value"],
        [{ bytes: 1.5 }, "bytes", "invalid_value"],
        [{ bytes: 1024 * 1024 + 1 }, "bytes", "invalid_value"], // MAX_UPLOAD_BYTES
        [{ bytes: "10" }, "bytes", "invalid_type"],
        [{ mime_type: "image/png" }, "mime_type", "invalid_value"],
        [{ mime_type: "pdf", purpose: "user_data", filename: "a.pdf" }, "mime_type", "invalid_value"],
        [{ mime_type: `a/${"b".repeat(254)}`, purpose: "user_data", filename: "a.pdf" }, "mime_type", "invalid_value"],
        [{ purpose: "nope" }, "purpose", "invalid_value"],
        [{ filename: "in.csv" }, null, null], // as OpenAI answers it
        [{ filename: "" }, "filename", "invalid_value"],
        [{ filename: "a\nb.jsonl" }, "filename", "invalid_value"],
        [{ expires_after: { anchor: "last_active_at", seconds: 3600 } }, "expires_after.anchor", "invalid_value"],
        [{ expires_after: { anchor: "created_at", seconds: 60 } }, "expires_after.seconds", "invalid_value"],
        [{ purpose: undefined }, "purpose", "missing_required_parameter"],
        [{ expire_after: { anchor: "created_at", seconds: 3600 } }, "expire_after", "unknown_parameter"],
        [{ mimeType: "text/jsonl" }, "mimeType", "unknown_parameter"]
      ]
      for (const [change, param, code] of cases) {
        const e = yield* failure(() => a.uploads.create({ ...good, ...change } as any))
        expect([JSON.stringify(change), e.status, e.param, e.code]).toEqual([JSON.stringify(change), 400, param, code])
      }
      const mime = yield* failure(() => a.uploads.create({ ...good, mime_type: "image/png" }))
      expect(mime.error.message).toBe(
        "Invalid value: 'image/png'. Supported values are: 'text/jsonl', 'application/jsonl', 'application/x-ndjson', 'application/json', 'text/plain'."
      )
      // A batch's type is read without regard to case or parameters, as media types are (RFC 2045).
      for (const mime_type of ["text/jsonl; charset=utf-8", "TEXT/JSONL", "Application/X-NDJSON"]) {
        const batch = yield* Effect.promise(() => a.uploads.create({ ...good, mime_type }))
        expect(batch.status).toBe("pending")
        yield* Effect.promise(() => a.uploads.cancel(batch.id))
      }
      expect((yield* failure(() => a.uploads.create({ ...good, mime_type: "text/jsonl; charset" }))).param).toBe("mime_type")
      // For another purpose than batch, any MIME type: OpenAI takes PDFs and images there.
      for (const mime_type of ["application/pdf", "image/png", "text/plain; charset=utf-8"]) {
        const other = yield* Effect.promise(() => a.uploads.create({ ...good, purpose: "user_data", filename: "a.pdf", mime_type }))
        expect(other.status).toBe("pending")
        yield* Effect.promise(() => a.uploads.cancel(other.id))
      }

      // A pending upload holds its bytes in the project's quota: a file beyond the rest is refused.
      const held = yield* Effect.promise(() => a.uploads.create({ ...good, bytes: 599_000 }))
      const over = yield* failure(() => a.uploads.create({ ...good, bytes: 1001 }))
      expect([over.status, over.param, over.code]).toEqual([413, "bytes", "storage_quota_exceeded"])
      const file = yield* failure(async () =>
        a.files.create({ file: await toFile(Buffer.alloc(1001), "f.jsonl"), purpose: "batch" }))
      expect([file.status, file.code]).toEqual([413, "storage_quota_exceeded"])
      yield* Effect.promise(() => a.uploads.cancel(held.id))
      expect((yield* Effect.promise(() => a.uploads.create({ ...good, bytes: 1001 }))).status).toBe("pending")
    }))

  it.effect("a pending upload counts as its bytes or its parts' bytes, whichever is more: a part beyond the quota is a 413", () =>
    Effect.gen(function*() {
      const { b } = yield* clients // a project of its own: the quota is 600,000 bytes, a file takes 250,000
      yield* Effect.promise(async () => b.files.create({ file: await toFile(Buffer.alloc(250_000), "f.jsonl"), purpose: "batch" }))
      const upload = yield* createUpload(b, 300_000)
      yield* sendPart(b, upload.id, Buffer.alloc(300_000)) // its bytes: already counted
      const over = yield* failure(() => sendPartPromise(b, upload.id, Buffer.alloc(100_000)))
      expect([over.status, over.param, over.code]).toEqual([413, "data", "storage_quota_exceeded"])
      expect(over.error.message).toContain("and 50000 bytes are left")
      yield* sendPart(b, upload.id, Buffer.alloc(50_000)) // what is left fits
      // The parts' bytes count now: 250,000 + 350,000 leave no room for a file.
      const file = yield* failure(async () => b.files.create({ file: await toFile(Buffer.alloc(1), "g.jsonl"), purpose: "batch" }))
      expect([file.status, file.code]).toEqual([413, "storage_quota_exceeded"])
    }))

  it.effect("parts may hold an upload's bytes as much again, no more: a 1-byte upload takes no 3-byte part", () =>
    Effect.gen(function*() {
      const { a } = yield* clients
      const upload = yield* createUpload(a, 1)
      const refused = yield* failure(() => sendPartPromise(a, upload.id, Buffer.from("abc")))
      expect([refused.status, refused.param, refused.code]).toEqual([400, "data", "invalid_value"])
      yield* sendPart(a, upload.id, Buffer.from("a"))
      yield* sendPart(a, upload.id, Buffer.from("b")) // sent again: 2 bytes held
      expect((yield* failure(() => sendPartPromise(a, upload.id, Buffer.from("c")))).status).toBe(400)
      expect((yield* partBlobs).staging).toEqual([])
    }))

  it.effect("an upload takes 10,000 parts, no more, even sent side by side at the last one", () =>
    Effect.gen(function*() {
      const { a } = yield* clients
      const upload = yield* createUpload(a, 100)
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE uploads SET parts_count = 9999 WHERE id = ${upload.id}`
      // Both pass the check before their bytes are read; the count's update lets one in.
      const sent = yield* Effect.promise(() => Promise.all([0, 1].map((i) =>
        sendPartPromise(a, upload.id, Buffer.from(String(i))).then(() => undefined, (e) => e as { status: number; message: string }))))
      const refused = sent.filter((e) => e !== undefined)
      expect(refused).toHaveLength(1)
      expect([refused[0]!.status, refused[0]!.message]).toEqual([400, `400 Upload ${upload.id} already has 10000 parts, the most an upload may have.`])
      expect(Number((yield* sql<{ n: number }>`SELECT parts_count AS n FROM uploads WHERE id = ${upload.id}`)[0]!.n)).toBe(10_000)
    }))
})

layer(StorageLive.pipe(Layer.provideMerge(testApp({}, "sqlite", { auth }))), { excludeTestServices: true })("part size", (it) => {
  it.effect("a part must be one 'data' file of at most 64 MB, checked while it streams; a larger form is a 413 on 'data'", () =>
    Effect.gen(function*() {
      const { a } = yield* clients
      const base = yield* baseUrl
      const upload = yield* createUpload(a, 64 * MiB) // room for the largest part
      const post = (form: FormData) =>
        Effect.promise(async () => {
          const response = await fetch(`${base}/v1/uploads/${upload.id}/parts`, {
            method: "POST",
            headers: { authorization: `Bearer ${KEYS.a}` },
            body: form
          })
          return { status: response.status, error: ((await response.json()) as any).error }
        })
      const text = new FormData()
      text.set("data", "not a file")
      expect(yield* post(text)).toMatchObject({ status: 400, error: { param: "data", code: "invalid_type" } })
      const none = new FormData()
      none.set("other", new Blob(["x"]), "x.bin")
      expect(yield* post(none)).toMatchObject({ status: 400, error: { param: "data", code: "missing_required_parameter" } })

      // Chunked, without a Content-Length: only the count of the streamed bytes can refuse them.
      const boundary = "b0undary"
      const chunked = (field: string, bytes: number) =>
        rawRequest(base, {
          method: "POST",
          path: `/v1/uploads/${upload.id}/parts`,
          headers: {
            authorization: `Bearer ${KEYS.a}`,
            "content-type": `multipart/form-data; boundary=${boundary}`,
            "transfer-encoding": "chunked"
          },
          body: [
            `--${boundary}\r\nContent-Disposition: form-data; name="${field}"; filename="part"\r\n\r\n`,
            Buffer.alloc(bytes),
            `\r\n--${boundary}--\r\n`
          ]
        }).pipe(Effect.orDie)
      const big = yield* chunked("data", 64 * MiB + 1)
      expect([big.status, big.json.error.param, big.json.error.code]).toEqual([413, "data", "file_too_large"])
      // A form past the part's bound in all (here in a file that is not kept) is refused naming 'data' too.
      const form = yield* chunked("other", 64 * MiB + 128 * 1024)
      expect([form.status, form.json.error.param, form.json.error.code]).toEqual([413, "data", "file_too_large"])
      expect(yield* partBlobs).toEqual({ parts: [], staging: [] })
    }), { timeout: 60_000 })
})

for (const backend of backends) {
  layer(StorageLive.pipe(Layer.provideMerge(testApp({ maxFileBytesPerProject: Option.some(400_000) }, backend, { auth }))), { excludeTestServices: true })(
    `${backend}: parts sent side by side`,
    (it) => {
      it.effect("count each other against the project's quota: 12 parts of 40,000 bytes at once into 4 uploads of 60,000 take it to 400,000, no further", () =>
        Effect.gen(function*() {
          const { a } = yield* clients
          const uploads = yield* Effect.forEach([0, 1, 2, 3], () => createUpload(a, 60_000)) // 240,000 counted
          // Each checked against the quota before its body came: all 12 passed, and took the project to 480,000.
          const sent = yield* Effect.promise(() => Promise.all(uploads.flatMap((upload) => Array.from({ length: 3 }, () =>
            sendPartPromise(a, upload.id, Buffer.alloc(40_000)).then(() => 200, (e) => (e as { status: number }).status)))))
          expect(sent.filter((status) => status !== 200 && status !== 413)).toEqual([])
          const held = yield* sql(`SELECT SUM(CASE WHEN parts_bytes > bytes THEN parts_bytes ELSE bytes END) AS n FROM uploads WHERE project = 'projA'`)
          const charged = Number((held as Array<{ n: number | string }>)[0]!.n)
          expect(charged).toBeLessThanOrEqual(400_000)
          expect(charged).toBeGreaterThanOrEqual(360_000) // refused only when beyond: each part of 40,000 that fitted went in
          expect((yield* partBlobs).parts).toHaveLength(sent.filter((status) => status === 200).length) // the refused ones' bytes gone
        }))
    }
  )
}
