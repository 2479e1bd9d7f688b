/**
 * A multipart body is read the same however the network cuts it: multipasta looked for the closing delimiter's two
 * dashes in the first piece after the boundary, and a body cut between them (a TCP segment's end, one upload in a
 * few thousand) was refused as unfinished (400 `invalid_multipart`).
 */
import { describe, expect, it as pure, layer } from "@effect/vitest"
import { Chunk, Effect, Either, Stream } from "effect"
import * as net from "node:net"
import { heldDashes, parseFormData } from "../src/http/Multipart.js"
import { baseUrl, testApp } from "./support/TestApp.js"

const CONTENT = '{"a":1}\n--x-\n'

/** A form of a field and a file, with `boundary`, and `epilogue` after its closing delimiter. */
const form = (boundary: string, epilogue: string) =>
  Buffer.from(
    `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n${CONTENT}\r\n` +
      `--${boundary}--${epilogue}`
  )

/** The form's field and file content as parsed from `pieces`, or the parser's failure. */
const parsed = (boundary: string, pieces: ReadonlyArray<Uint8Array>) =>
  Effect.runSync(Effect.either(Stream.runCollect(parseFormData(
    { "content-type": `multipart/form-data; boundary="${boundary}"` },
    { maxParts: 10, maxFieldSize: 1000, maxTotalSize: 1_000_000 },
    Stream.fromIterable(pieces)
  )))).pipe(Either.map((events) => {
    const all = Chunk.toReadonlyArray(events)
    const fields = all.flatMap((e) => (e._tag === "Field" ? [`${e.key}=${e.value}`] : []))
    const file = Buffer.concat(all.flatMap((e) => (e._tag === "FileChunk" ? [e.bytes] : []))).toString()
    return { fields, file }
  }))

/** `body` cut at each of `cuts`. */
const cutAt = (body: Buffer, cuts: ReadonlyArray<number>) =>
  [...cuts, body.length].map((end, i) => body.subarray(i === 0 ? 0 : cuts[i - 1], end))

describe("a multipart body cut anywhere", () => {
  pure("is read whole: every cut, and every two cuts in its last 16 bytes (boundaries of dashes, an epilogue of dashes, text or a part)", () => {
    const epilogues = ["", "\r\n", "-\r\n", "\r\n\r\n", "\r\nnot the form's\r\n"]
    const whole = JSON.stringify({ fields: ["purpose=batch"], file: CONTENT })
    const misread: Array<string> = []
    for (const boundary of ["----WebKitFormBoundary7MA4YWxk", "abc--", "-".repeat(90)]) {
      const parts = [`\r\n--${boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\ny`, `\r\n--${boundary}\r\nContent-Type: text/plain\r\n\r\nx\r\n`]
      for (const epilogue of [...epilogues, ...parts]) {
        const body = form(boundary, epilogue)
        const cuts: Array<ReadonlyArray<number>> = []
        // Every cut of the first body; of the others, those near the end, where the delimiters and epilogue are.
        const from = boundary.startsWith("----W") && epilogue === "" ? 1 : body.length - 60
        for (let i = from; i < body.length; i++) cuts.push([i])
        for (let i = body.length - 16; i < body.length; i++) for (let j = i + 1; j < body.length; j++) cuts.push([i, j])
        for (const at of cuts) {
          const result = parsed(boundary, cutAt(body, at))
          const read = Either.isLeft(result) ? JSON.stringify(result.left) : JSON.stringify(result.right)
          if (read !== whole) misread.push(`${JSON.stringify([boundary.slice(0, 12), epilogue, at])}: ${read}`)
        }
      }
    }
    expect(misread.slice(0, 5)).toEqual([])
  })

  pure("a run of dashes longer than any delimiter's is passed on, not held back: the parser's memory stays bounded", () => {
    const dashes = heldDashes(80)
    let given = 0
    for (let i = 0; i < 1000; i++) {
      given += dashes.cut(Buffer.alloc(1000, "-")).length
      expect(dashes.rest().length).toBeLessThanOrEqual(80)
    }
    expect(given + dashes.rest().length).toBe(1_000_000)
    // The body such a run is in is read whole.
    const body = Buffer.concat([form("b", "").subarray(0, -"\r\n--b--".length), Buffer.alloc(500_000, "-"), Buffer.from("\r\n--b--")])
    const result = parsed("b", Array.from({ length: Math.ceil(body.length / 1000) }, (_, i) => body.subarray(i * 1000, (i + 1) * 1000)))
    expect(Either.isRight(result) && result.right.file).toBe(CONTENT + "-".repeat(500_000))
  })
})

/** `POST /v1/files` with `body`, written in two TCP writes 50 ms apart cut at `cut`; the raw answer. */
const uploadInTwo = (base: string, boundary: string, body: Buffer, cut: number) =>
  Effect.async<string>((resume) => {
    const { hostname, port } = new URL(base)
    const socket = net.connect({ host: hostname, port: Number(port), noDelay: true }, () => {
      socket.write(
        `POST /v1/files HTTP/1.1\r\nHost: ${hostname}:${port}\r\nConnection: close\r\n` +
          `Content-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${body.length}\r\n\r\n`
      )
      socket.write(body.subarray(0, cut))
      setTimeout(() => socket.write(body.subarray(cut)), 50)
    })
    let answer = ""
    socket.setEncoding("utf8")
    socket.on("data", (c: string) => (answer += c))
    socket.on("end", () => resume(Effect.succeed(answer)))
    socket.on("error", (e) => resume(Effect.die(e)))
  })

layer(testApp(), { excludeTestServices: true })("an upload whose body arrives in pieces", (it) => {
  it.effect("cut between the closing delimiter's dashes (with a CRLF after, as curl, Go, Java and .NET send, or not): stored", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      for (const epilogue of ["\r\n", ""]) {
        const body = form("XyZ", epilogue)
        const answer = yield* uploadInTwo(base, "XyZ", body, body.length - epilogue.length - 1)
        expect(answer).toMatch(/^HTTP\/1\.1 200 /)
        const file = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4))
        expect(file).toMatchObject({ object: "file", filename: "a.jsonl", purpose: "batch", bytes: CONTENT.length })
        const content = yield* Effect.promise(() => fetch(`${base}/v1/files/${file.id}/content`).then((r) => r.text()))
        expect(content).toBe(CONTENT)
      }
    }))

  it.effect("a body whose boundary is not the Content-Type's is a 400 saying what is missing", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      const body = form("other", "\r\n")
      const answer = yield* uploadInTwo(base, "XyZ", body, 10)
      expect(answer).toMatch(/^HTTP\/1\.1 400 /)
      expect(JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)).error).toEqual({
        message: "The multipart/form-data body could not be parsed: it ended before its closing delimiter " +
          "(--boundary--): cut short, or the boundary in the body is not the Content-Type's.",
        type: "invalid_request_error",
        param: null,
        code: "invalid_multipart"
      })
    }))
})
