/**
 * `submit`'s upload progress (and a download's, made the same way): the line (share, size, rate, time left), when it is drawn (a terminal four times a
 * second, redrawn in place and cleared at the end; a pipe every 5 s; a quick upload never), and the bytes counted as
 * a real upload reads them, through a server that takes its time.
 */
import { describe, expect, it } from "@effect/vitest"
import { Console, Effect, Fiber, TestClock } from "effect"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { make as makeBatchApi } from "../src/cli/BatchApi.js"
import { downloadLine, megabytes, type ProgressSink, uploadLine, withDownloadProgress, withUploadProgress } from "../src/cli/transferProgress.js"

/** A sink recording what is written to it. */
const recording = (tty: boolean) => {
  const written: Array<string> = []
  const sink: ProgressSink = { tty, columns: () => 80, write: (text) => void written.push(text) }
  return { sink, written }
}

/** An upload of `total` bytes read 1 MB every second of the test clock. */
const clockedUpload = (total: number) => (onRead: (bytes: number) => void) =>
  Effect.gen(function*() {
    for (let sent = 0; sent < total;) {
      yield* Effect.sleep("1 second")
      onRead((sent = Math.min(total, sent + 1e6)))
    }
    return "file-up"
  })

describe("upload progress", () => {
  it("says the share, the size, the rate and the time left", () => {
    expect(uploadLine("requests.jsonl", 90e6, 200e6, 10)).toBe("uploading requests.jsonl: 45% of 200.0 MB, 9.0 MB/s, 12s left")
    expect(uploadLine("r.jsonl", 0, 1_204_500_000, 0)).toBe("uploading r.jsonl: 0% of 1,204.5 MB")
    // All read: the rest is in the connection's (or a proxy's) buffers, the server's answer what is waited for.
    expect(uploadLine("r.jsonl", 5e6, 5e6, 2)).toBe("uploading r.jsonl: all 5.0 MB sent, waiting for the server (0s)")
    expect(uploadLine("r.jsonl", 5e6, 5e6, 32, 30)).toBe("uploading r.jsonl: all 5.0 MB sent, waiting for the server (30s)")
    expect(megabytes(400_000)).toBe("0.4 MB")
  })

  it.effect("on a terminal: redrawn in place four times a second, and cleared once the upload ends", () =>
    Effect.gen(function*() {
      const { sink, written } = recording(true)
      const upload = yield* Effect.fork(withUploadProgress("r.jsonl", 3e6, clockedUpload(3e6), sink))
      yield* TestClock.adjust("1250 millis")
      expect(written).toHaveLength(5)
      expect(written.every((w) => w.startsWith("\r\x1b[2K"))).toBe(true)
      expect(written[4]).toBe("\r\x1b[2Kuploading r.jsonl: 33% of 3.0 MB, 0.8 MB/s, 3s left")
      yield* TestClock.adjust("2 seconds")
      expect(yield* Fiber.join(upload)).toBe("file-up")
      expect(written[written.length - 1]).toBe("\r\x1b[2K") // the line cleared for the notes after it
      const count = written.length
      yield* TestClock.adjust("5 seconds")
      expect(written).toHaveLength(count) // nothing drawn after the end

      // Cut to the terminal's width: a wrapped line would be redrawn on its last row only.
      const narrow = recording(true)
      const cut = yield* Effect.fork(withUploadProgress("a/long/path/to/requests.jsonl", 3e6, clockedUpload(3e6), { ...narrow.sink, columns: () => 30 }))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(cut)
      expect(narrow.written[0]).toBe("\r\x1b[2Kuploading a/long/path/to/req…") // 29 columns
      // In columns, not characters: a CJK name's characters take two each, and none is cut in half.
      const wide = recording(true)
      const cjk = yield* Effect.fork(withUploadProgress("評価データセット.jsonl", 3e6, clockedUpload(3e6), { ...wide.sink, columns: () => 30 }))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(cjk)
      expect(wide.written[0]).toBe("\r\x1b[2Kuploading 評価データセット.j…") // 10 + 16 + 2 + 1: 29 columns (40 characters' worth)
      // A name's controls drawn, not sent to the terminal (a right-to-left override reversed the line).
      const bidi = recording(true)
      const shown = yield* Effect.fork(withUploadProgress("txt\u202Elnosj.exe", 3e6, clockedUpload(3e6), bidi.sink))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(shown)
      expect(bidi.written[0]).toMatch(/^\r\x1b\[2Kuploading txt⟨U\+202E⟩lnosj\.exe: /)
    }))

  it.effect("on a terminal: a note written during the upload (a busy server's) comes on a line of its own", () =>
    Effect.gen(function*() {
      const { sink, written } = recording(true)
      const console = yield* Effect.console
      const noting = (onRead: (bytes: number) => void) =>
        Effect.zipRight(Effect.zipRight(Effect.sleep("600 millis"), Console.error("trying again in 1s…")), clockedUpload(2e6)(onRead))
      const upload = yield* Effect.fork(withUploadProgress("r.jsonl", 2e6, noting, sink).pipe(
        Effect.withConsole({ ...console, error: (...args) => Effect.sync(() => void written.push(`note: ${args.join(" ")}`)) })
      ))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(upload)
      const at = written.indexOf("note: trying again in 1s…")
      expect(written.slice(at - 2, at + 2)).toEqual([
        expect.stringMatching(/^\r\x1b\[2Kuploading r\.jsonl: 0%/), // drawn at 250 and 500 ms
        "\r\x1b[2K", // cleared before the note
        "note: trying again in 1s…",
        expect.stringMatching(/^\r\x1b\[2Kuploading r\.jsonl/) // drawn again after it
      ])
    }))

  it.effect("in a pipe or a CI log: a plain line every 5 s; a quick upload says nothing", () =>
    Effect.gen(function*() {
      const { sink, written } = recording(false)
      const upload = yield* Effect.fork(withUploadProgress("r.jsonl", 12e6, clockedUpload(12e6), sink))
      yield* TestClock.adjust("12 seconds")
      yield* Fiber.join(upload)
      expect(written).toEqual([
        "uploading r.jsonl: 41% of 12.0 MB, 1.0 MB/s, 7s left\n",
        "uploading r.jsonl: 83% of 12.0 MB, 1.0 MB/s, 2s left\n"
      ])

      const quick = recording(false)
      const done = yield* Effect.fork(withUploadProgress("q.jsonl", 3e6, clockedUpload(3e6), quick.sink))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(done)
      expect(quick.written).toEqual([])

      // Every byte read at once, then the server's answer 12 s away (a proxy holding them): the time waited, counting.
      const held = recording(false)
      const answered = yield* Effect.fork(withUploadProgress("h.jsonl", 5e6, (onRead) =>
        Effect.zipRight(Effect.sync(() => onRead(5e6)), Effect.as(Effect.sleep("12 seconds"), "file-up")), held.sink))
      yield* TestClock.adjust("12 seconds")
      yield* Fiber.join(answered)
      expect(held.written).toEqual([
        "uploading h.jsonl: all 5.0 MB sent, waiting for the server (0s)\n",
        "uploading h.jsonl: all 5.0 MB sent, waiting for the server (5s)\n"
      ])

      // A 429 with a Retry-After of 30 s: its note is the last word until the next attempt reads the file again.
      const busy = recording(false)
      const console = yield* Effect.console
      const retried = yield* Effect.fork(withUploadProgress("b.jsonl", 5e6, (onRead) =>
        Effect.gen(function*() {
          onRead(5e6)
          yield* Effect.sleep("1 second")
          yield* Console.error("the server is busy; trying again in 30s…")
          yield* Effect.sleep("30 seconds")
          onRead(5e6) // the file opened again, read at once
          yield* Effect.sleep("6 seconds")
          return "file-up"
        }), busy.sink).pipe(
          Effect.withConsole({ ...console, error: (...args) => Effect.sync(() => void busy.written.push(`note: ${args.join(" ")}\n`)) })
        ))
      yield* TestClock.adjust("37 seconds")
      yield* Fiber.join(retried)
      expect(busy.written).toEqual([
        "note: the server is busy; trying again in 30s…\n",
        "uploading b.jsonl: all 5.0 MB sent, waiting for the server (0s)\n" // 35 s in: the second attempt's wait
      ])
    }))

  it.effect("a download's: its share when the server says the size (from where a partial file left off), else the bytes so far", () =>
    Effect.gen(function*() {
      expect(downloadLine("b_output.jsonl", 90e6, 200e6, 10)).toBe("downloading b_output.jsonl: 45% of 200.0 MB, 9.0 MB/s, 12s left")
      // Going on from 50 MB on disk: the rate is this download's own.
      expect(downloadLine("b_output.jsonl", 90e6, 200e6, 10, 50e6)).toBe("downloading b_output.jsonl: 45% of 200.0 MB, 4.0 MB/s, 28s left")
      expect(downloadLine("b_error.jsonl", 12e6, undefined, 4)).toBe("downloading b_error.jsonl: 12.0 MB, 3.0 MB/s")
      const { sink, written } = recording(false)
      const download = yield* Effect.fork(withDownloadProgress("b_output.jsonl", 12e6, 0, clockedUpload(12e6), sink))
      yield* TestClock.adjust("12 seconds")
      yield* Fiber.join(download)
      expect(written).toEqual([
        "downloading b_output.jsonl: 41% of 12.0 MB, 1.0 MB/s, 7s left\n",
        "downloading b_output.jsonl: 83% of 12.0 MB, 1.0 MB/s, 2s left\n"
      ])
    }))

  it.scopedLive("counts the bytes a real upload reads, as the server takes them", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(Path.join(tmpdir(), "upload-progress-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const input = Path.join(dir, "input.jsonl")
      const size = 32 * 1024 * 1024
      writeFileSync(input, "x".repeat(size))
      // A server that reads nothing for a second, then the rest at once: what is counted meanwhile is what went
      // into the connection's buffers, not the whole file.
      const server = createServer((req, res) => {
        let bytes = 0
        req.pause()
        setTimeout(() => req.resume(), 1000)
        req.on("data", (chunk: Buffer) => void (bytes += chunk.length))
        req.on("end", () => {
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(
            { id: "file-up", object: "file", bytes, created_at: 1, filename: "input.jsonl", purpose: "batch", status: "processed" }
          ))
        })
      })
      yield* Effect.acquireRelease(
        Effect.async<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))),
        () => Effect.sync(() => server.close().closeAllConnections())
      )
      const api = makeBatchApi({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, apiKey: undefined })
      const { sink, written } = recording(true)
      let counted = 0
      const file = yield* withUploadProgress("input.jsonl", size, (onRead) =>
        api.upload(input, "input.jsonl", (bytes) => {
          counted = bytes
          onRead(bytes)
        }), sink)
      expect(file.bytes).toBeGreaterThan(size)
      expect(counted).toBe(size)
      const shares = written.flatMap((w) => /: (\d+)% of 33\.6 MB/.exec(w)?.[1] ?? []).map(Number)
      expect(shares.length).toBeGreaterThan(1)
      expect(shares.some((share) => share < 100)).toBe(true)
      expect(shares).toEqual([...shares].sort((a, b) => a - b))

      // Sent again after a busy server's 503: counted from 0 again, not on top of the first attempt.
      let attempts = 0
      server.removeAllListeners("request")
      server.on("request", (req, res) => {
        req.resume()
        req.on("end", () => {
          if (attempts++ === 0) {
            res.writeHead(503, { "content-type": "application/json", "retry-after-ms": "10" })
              .end(JSON.stringify({ error: { message: "busy", type: "server_error", param: null, code: null } }))
          } else {
            res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(
              { id: "file-up", object: "file", bytes: size, created_at: 1, filename: "input.jsonl", purpose: "batch", status: "processed" }
            ))
          }
        })
      })
      const reads: Array<number> = []
      yield* api.upload(input, "input.jsonl", (bytes) => void reads.push(bytes))
      expect(attempts).toBe(2)
      expect(Math.max(...reads)).toBe(size)
      expect(reads.at(-1)).toBe(size)
    }))
})
