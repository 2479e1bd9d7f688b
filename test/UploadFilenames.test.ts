/**
 * File names of uploads: non-ASCII names from the openai SDK and curl, `filename*` (RFC 8187), the escapes clients
 * use in quoted names, and names the server refuses (bad encodings, control characters, empty, too long).
 */
import { describe, expect, it as pure, layer } from "@effect/vitest"
import { Effect, Either } from "effect"
import { createReadStream, writeFileSync } from "node:fs"
import { request as httpRequest } from "node:http"
import * as Path from "node:path"
import OpenAI, { toFile } from "openai"
import { MAX_FILENAME_BYTES, uploadFilename } from "../src/files/uploadChecks.js"
import { FilenameInvalid, partDisposition } from "../src/http/Multipart.js"
import { baseUrl, TestDataDir, testApp } from "./support/TestApp.js"

const nonAscii = ["報告.jsonl", "отчёт.jsonl", "ą.jsonl", "😀 report.jsonl", "€.jsonl"]

const client = Effect.map(baseUrl, (base) => new OpenAI({ baseURL: `${base}/v1`, apiKey: "sk-test", maxRetries: 0 }))

const boundary = "----upload-filenames"

/** A multipart body whose file part has exactly these `Content-Disposition` bytes (curl's are raw UTF-8). */
const body = (disposition: string | Uint8Array, purpose = "user_data") =>
  Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n${purpose}\r\n`),
    Buffer.from(`--${boundary}\r\nContent-Disposition: `),
    typeof disposition === "string" ? Buffer.from(disposition, "utf8") : disposition,
    Buffer.from(`\r\nContent-Type: application/octet-stream\r\n\r\n{"a":1}\n\r\n--${boundary}--\r\n`)
  ])

/** `POST /v1/files` with a hand-written body, over node:http (fetch builds its own multipart). */
const rawUpload = (disposition: string | Uint8Array, purpose?: string) =>
  Effect.flatMap(baseUrl, (base) =>
    Effect.async<{ status: number; json: any }>((resume) => {
      const bytes = body(disposition, purpose)
      const req = httpRequest(`${base}/v1/files`, {
        method: "POST",
        headers: { "content-type": `multipart/form-data; boundary=${boundary}`, "content-length": String(bytes.length) }
      }, (res) => {
        let text = ""
        res.setEncoding("utf8")
        res.on("data", (c) => (text += c))
        res.on("end", () => resume(Effect.succeed({ status: res.statusCode!, json: JSON.parse(text) })))
      })
      req.on("error", (e) => resume(Effect.die(e)))
      req.end(bytes)
    }))

const filePart = (params: string) => `form-data; name="file"; ${params}`

/** A 400 in the OpenAI envelope about the `file` parameter. */
const expectFileError = (res: { status: number; json: any }, message: RegExp) => {
  expect(res.status).toBe(400)
  expect(Object.keys(res.json)).toEqual(["error"])
  expect(res.json.error).toEqual({ message: expect.stringMatching(message), type: "invalid_request_error", param: "file", code: "invalid_value" })
}

describe("partDisposition", () => {
  const named = (header: string) => Either.getOrThrow(partDisposition(header))
  const failure = (header: string | ReadonlyArray<string> | undefined) =>
    Either.match(partDisposition(header), { onLeft: (e) => e, onRight: () => undefined })

  pure("reads the field name and a file name sent as raw UTF-8, percent-encoded (filename*), or both", () => {
    expect(named(`form-data; name="purpose"`)).toEqual({ name: "purpose", filename: undefined })
    expect(named(`form-data; name="file"; filename="input.jsonl"`)).toEqual({ name: "file", filename: "input.jsonl" })
    expect(named(`form-data; name="file"; filename="報告.jsonl"`).filename).toBe("報告.jsonl")
    expect(named(`form-data; name="file"; filename*=UTF-8''%E5%A0%B1%E5%91%8A.jsonl`).filename).toBe("報告.jsonl")
    expect(named(`form-data; name="file"; filename*=utf-8'ru'%D0%BE%D1%82%D1%87%D1%91%D1%82.jsonl`).filename).toBe("отчёт.jsonl")
    // RFC 6266: filename* wins, whichever comes first
    expect(named(`form-data; name="file"; filename="fallback.jsonl"; filename*=UTF-8''%E2%82%AC.jsonl`).filename).toBe("€.jsonl")
    expect(named(`form-data; name="file"; filename*=UTF-8''%E2%82%AC.jsonl; filename="fallback.jsonl"`).filename).toBe("€.jsonl")
    // tokens, upper-case parameter names, a trailing semicolon, spaces around "="
    expect(named(`form-data; NAME=file; FileName=a.jsonl;`)).toEqual({ name: "file", filename: "a.jsonl" })
    expect(named(`form-data;name = "file" ;filename = "a b.jsonl"`)).toEqual({ name: "file", filename: "a b.jsonl" })
  })

  pure("undoes the escapes of quoted names: WHATWG %22 %0D %0A, the openai SDK's %5C, quoted-pairs before special characters only", () => {
    expect(named(`form-data; name="file"; filename="a%22b.jsonl"`).filename).toBe(`a"b.jsonl`)
    expect(named(`form-data; name="file"; filename="a%5Cb.jsonl"`).filename).toBe("a\\b.jsonl")
    expect(named(`form-data; name="file"; filename="a%0D%0Ab.jsonl"`).filename).toBe("a\r\nb.jsonl")
    expect(named(`form-data; name="file"; filename="a\\"b.jsonl"`).filename).toBe(`a"b.jsonl`)
    expect(named(`form-data; name="file"; filename="a\\\\b.jsonl"`).filename).toBe("a\\b.jsonl")
    // a browser's raw Windows path keeps its separators
    expect(named(`form-data; name="file"; filename="C:\\dir\\f.jsonl"`).filename).toBe("C:\\dir\\f.jsonl")
    // other percent sequences are the name's own
    expect(named(`form-data; name="file"; filename="100%25 %E2.jsonl"`).filename).toBe("100%25 %E2.jsonl")
  })

  pure("refuses names that cannot be read and headers that are malformed", () => {
    for (const bad of ["%E0%A4%A.jsonl", "%.jsonl", "%ZZ.jsonl", "%C3.jsonl"]) {
      expect(failure(filePart(`filename*=UTF-8''${bad}`))).toBeInstanceOf(FilenameInvalid)
    }
    expect(failure(filePart(`filename*=ISO-8859-1''%E4.jsonl`))).toBeInstanceOf(FilenameInvalid)
    expect(failure(filePart(`filename*=%E4.jsonl`))).toBeInstanceOf(FilenameInvalid) // no charset
    expect(failure(filePart(`filename="\uFFFD.jsonl"`))).toBeInstanceOf(FilenameInvalid) // bytes that were not UTF-8
    for (const malformed of [undefined, ["form-data; name=a", "form-data; name=b"], "", "form-data", `form-data; filename="a.jsonl"`, `form-data; name="file"; filename="a.jsonl`, `form-data; name="file"; filename=a b.jsonl`, `form-data; name="file"; filename="a"; filename="b"`]) {
      expect(failure(malformed)).toMatchObject({ _tag: "MultipartInvalid", reason: "InvalidDisposition" })
    }
  })
})

describe("uploadFilename", () => {
  pure("keeps the last path segment (a backslash separates only in a Windows path), refuses empty names, control characters and names over 255 bytes", () => {
    expect(uploadFilename("a/b/c.jsonl")).toEqual(Either.right("c.jsonl"))
    expect(uploadFilename("C:\\dir\\報告.jsonl")).toEqual(Either.right("報告.jsonl"))
    expect(uploadFilename("\\\\server\\share\\f.jsonl")).toEqual(Either.right("f.jsonl"))
    // Not a Windows path: a backslash is part of the name (a POSIX name may hold one).
    expect(uploadFilename("a\\b.jsonl")).toEqual(Either.right("a\\b.jsonl"))
    expect(uploadFilename("dir/a\\b.jsonl")).toEqual(Either.right("a\\b.jsonl"))
    expect(uploadFilename("報".repeat(85))).toEqual(Either.right("報".repeat(85))) // 255 bytes
    for (const bad of ["", "dir/", "a\u0000.jsonl", "a\nb.jsonl", "a\u007f.jsonl", "a\u0085.jsonl", "報".repeat(86)]) {
      expect(Either.isLeft(uploadFilename(bad))).toBe(true)
    }
    expect(MAX_FILENAME_BYTES).toBe(255)
  })
})

layer(testApp(), { excludeTestServices: true })("upload file names over HTTP", (it) => {
  it.effect("the openai SDK uploads non-ASCII names and gets them back exactly from create, retrieve and list", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const { path } = yield* TestDataDir
      const names = [...nonAscii, `quote"d.jsonl`]
      const created: Array<OpenAI.FileObject> = []
      for (const name of names) {
        const file = yield* Effect.promise(async () =>
          openai.files.create({ file: await toFile(Buffer.from(`{"n":1}\n`), name), purpose: "batch" }))
        expect(file).toMatchObject({ object: "file", filename: name, purpose: "batch", bytes: 8 })
        created.push(file)
      }
      // the SDK's other encoder: a hand-built multipart body for a file stream
      const streamedPath = Path.join(path, "отчёт 報告.jsonl")
      writeFileSync(streamedPath, `{"n":2}\n`)
      const streamed = yield* Effect.promise(() =>
        openai.files.create({ file: createReadStream(streamedPath), purpose: "batch" }))
      expect(streamed.filename).toBe("отчёт 報告.jsonl")
      created.push(streamed)

      for (const file of created) {
        const retrieved = yield* Effect.promise(() => openai.files.retrieve(file.id))
        expect(retrieved.filename).toBe(file.filename)
      }
      const listed = yield* Effect.promise(() => openai.files.list({ purpose: "batch" }))
      const byId = new Map(listed.data.map((f) => [f.id, f.filename]))
      expect(created.map((f) => byId.get(f.id))).toEqual([...names, "отчёт 報告.jsonl"])
    }))

  it.effect("raw UTF-8 bytes in filename=\"…\" (as curl sends them) and filename* forms are kept as sent", () =>
    Effect.gen(function*() {
      for (const name of nonAscii) {
        const res = yield* rawUpload(filePart(`filename="${name}"`))
        expect(res.status).toBe(200)
        expect(res.json.filename).toBe(name)
      }
      const cases: ReadonlyArray<[string, string]> = [
        [`filename*=UTF-8''%E5%A0%B1%E5%91%8A.jsonl`, "報告.jsonl"],
        [`filename*=utf-8'uk'%D0%B7%D0%B2%D1%96%D1%82.jsonl`, "звіт.jsonl"],
        [`filename="report.jsonl"; filename*=UTF-8''%F0%9F%98%80.jsonl`, "😀.jsonl"],
        [`filename*=UTF-8''a%2Fb%2Fc.jsonl`, "c.jsonl"],
        [`filename="dir/sub/ą.jsonl"`, "ą.jsonl"],
        [`filename="old \\"curl\\".jsonl"`, `old "curl".jsonl`],
        [`filename="a\\\\b.jsonl"`, "a\\b.jsonl"], // Python's httpx escapes a backslash of the name
        [`filename="C:\\fakepath\\f.jsonl"`, "f.jsonl"], // a browser's Windows path, unescaped
        [`filename="${"é".repeat(127)}x"`, `${"é".repeat(127)}x`] // 255 bytes
      ]
      for (const [params, expected] of cases) {
        const res = yield* rawUpload(filePart(params))
        expect(res.status).toBe(200)
        expect(res.json.filename).toBe(expected)
        const retrieved = yield* Effect.flatMap(baseUrl, (base) =>
          Effect.promise(() => fetch(`${base}/v1/files/${res.json.id}`).then((r) => r.json() as Promise<{ filename: string }>)))
        expect(retrieved.filename).toBe(expected)
      }
      // the batch purpose's .jsonl check sees the decoded name
      const batch = yield* rawUpload(filePart(`filename*=UTF-8''%E5%A0%B1%E5%91%8A.jsonl`), "batch")
      expect(batch.json).toMatchObject({ filename: "報告.jsonl", purpose: "batch" })
    }))

  it.effect("bad percent-encoding in filename* is a 400 envelope, and the server answers the next request", () =>
    Effect.gen(function*() {
      for (const bad of ["%E0%A4%A.jsonl", "%.jsonl"]) {
        expectFileError(yield* rawUpload(filePart(`filename*=UTF-8''${bad}`)), /filename\*.*UTF-8/)
        // and in a header multipasta cannot read (a raw non-ASCII fallback name), so only our reading sees it
        expectFileError(yield* rawUpload(filePart(`filename="報告.jsonl"; filename*=UTF-8''${bad}`)), /filename\*/)
        const next = yield* rawUpload(filePart(`filename="next.jsonl"`))
        expect(next.status).toBe(200)
        expect(next.json.filename).toBe("next.jsonl")
      }
      expectFileError(yield* rawUpload(filePart(`filename*=ISO-8859-1''%E4.jsonl`)), /UTF-8/)
      expectFileError(yield* rawUpload(filePart(`filename*=ISO-8859-1''plain.jsonl`)), /UTF-8/)
    }))

  it.effect("names that are not UTF-8, empty, with control characters or over 255 bytes are refused", () =>
    Effect.gen(function*() {
      const latin1 = Buffer.concat([Buffer.from(`form-data; name="file"; filename="`), Buffer.from([0xe4]), Buffer.from(`.jsonl"`)])
      expectFileError(yield* rawUpload(latin1), /not valid UTF-8/)
      expectFileError(yield* rawUpload(filePart(`filename=""`)), /empty/)
      expectFileError(yield* rawUpload(filePart(`filename="dir/"`)), /empty/)
      expectFileError(yield* rawUpload(filePart(`filename*=UTF-8''a%00b.jsonl`)), /control characters/)
      expectFileError(yield* rawUpload(filePart(`filename="a%0Ab.jsonl"`)), /control characters/)
      expectFileError(yield* rawUpload(filePart(`filename="${"é".repeat(128)}"`)), /longer than 255 bytes/)
      // a raw NUL never reaches the name: the part's headers are refused as a whole
      const nul = yield* rawUpload(Buffer.from(`form-data; name="file"; filename="a\u0000.jsonl"`))
      expect(nul.status).toBe(400)
      expect(nul.json.error).toMatchObject({ type: "invalid_request_error", code: "invalid_multipart" })
    }))
})
