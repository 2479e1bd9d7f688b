/** The JSONL splitter: line numbers, CRLF, a byte order mark, lines split across chunks, over-long lines, bytes not UTF-8. */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import { jsonlLines } from "../src/batches/lines.js"

const split = (chunks: ReadonlyArray<string | Uint8Array>, max = 1024) =>
  Stream.fromIterable(chunks.map((c) => (typeof c === "string" ? new TextEncoder().encode(c) : c))).pipe(
    jsonlLines(max),
    Stream.runCollect,
    Effect.map(Chunk.toReadonlyArray)
  )

describe("jsonlLines", () => {
  it.effect("numbers lines from 1 and handles CRLF, a BOM, split multi-byte characters and a missing last newline", () =>
    Effect.gen(function*() {
      const euro = new TextEncoder().encode("€") // 3 bytes, split across chunks below
      const lines = yield* split(["\uFEFF{\"a\":1}\r\n\n{\"b\":", "2}\n\"", euro.subarray(0, 1), euro.subarray(1), "\""])
      expect(lines).toEqual([
        { _tag: "Line", line: 1, text: "{\"a\":1}" },
        { _tag: "Line", line: 2, text: "" },
        { _tag: "Line", line: 3, text: "{\"b\":2}" },
        { _tag: "Line", line: 4, text: "\"€\"" }
      ])
    }))

  it.effect("reports a line that is not UTF-8 rather than decoding it with replacement characters, and goes on", () =>
    Effect.gen(function*() {
      const bad = Uint8Array.from([...new TextEncoder().encode("{\"custom_id\":\"a"), 0xff, 0xfe, ...new TextEncoder().encode("\"}\n")])
      const lines = yield* split(["ok\n", bad, "after\n"])
      expect(lines).toEqual([
        { _tag: "Line", line: 1, text: "ok" },
        { _tag: "NotUtf8", line: 2 },
        { _tag: "Line", line: 3, text: "after" }
      ])
    }))

  it.effect("says a UTF-16 file (Notepad's \"Unicode\") once, by its byte order mark, and reads no further", () =>
    Effect.gen(function*() {
      const text = '{"custom_id":"a"}\r\n{"custom_id":"b"}\r\n'
      const littleEndian = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, "utf16le")])
      const bigEndian = Buffer.from(littleEndian).swap16()
      let pulled = 0
      const counted = Stream.fromIterable([littleEndian.subarray(0, 1), littleEndian.subarray(1, 40), littleEndian.subarray(40)]).pipe(
        Stream.tap(() => Effect.sync(() => pulled++)),
        jsonlLines(1024),
        Stream.runCollect
      )
      expect(Chunk.toReadonlyArray(yield* counted)).toEqual([{ _tag: "Utf16", line: 1 }])
      expect(pulled).toBe(2) // the chunk after the first line's end was not read
      expect(yield* split([bigEndian])).toEqual([{ _tag: "Utf16", line: 1 }])
      // Bytes that are not UTF-8 on a later line are that line's own fault, whatever they begin with.
      expect(yield* split(["ok\n", Uint8Array.from([0xff, 0xfe, 0x41, 0x0a])])).toEqual([{ _tag: "Line", line: 1, text: "ok" }, { _tag: "NotUtf8", line: 2 }])
    }))

  it.effect("reports an over-long line without buffering it, and goes on", () =>
    Effect.gen(function*() {
      const lines = yield* split(["ok\n", "x".repeat(20), "x".repeat(20), "\nafter\n"], 30)
      expect(lines).toEqual([
        { _tag: "Line", line: 1, text: "ok" },
        { _tag: "TooLong", line: 2 },
        { _tag: "Line", line: 3, text: "after" }
      ])
    }))
})
