/** `Range` headers read as RFC 9110 says (`files/byteRange.ts`), and a stream cut to a range read no further than it (`storage/sliceBytes.ts`). */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Stream } from "effect"
import { wantedRange } from "../src/files/byteRange.js"
import { sliceBytes } from "../src/storage/sliceBytes.js"

describe("byte ranges", () => {
  it("reads one bytes range, a suffix or an open end; refuses one past the end; ignores anything else", () => {
    expect(wantedRange(undefined, 100)).toEqual({ _tag: "All" })
    expect(wantedRange("bytes=0-9", 100)).toEqual({ _tag: "Part", start: 0, end: 9 })
    expect(wantedRange("bytes=90-", 100)).toEqual({ _tag: "Part", start: 90, end: 99 })
    expect(wantedRange("bytes=90-1000", 100)).toEqual({ _tag: "Part", start: 90, end: 99 })
    expect(wantedRange("bytes=-10", 100)).toEqual({ _tag: "Part", start: 90, end: 99 })
    expect(wantedRange("bytes=-1000", 100)).toEqual({ _tag: "Part", start: 0, end: 99 })
    expect(wantedRange("bytes=100-", 100)).toEqual({ _tag: "Unsatisfiable" })
    expect(wantedRange("bytes=-0", 100)).toEqual({ _tag: "Unsatisfiable" })
    expect(wantedRange("bytes=0-", 0)).toEqual({ _tag: "All" }) // an empty file: sent, empty
    expect(wantedRange("bytes=-5", 0)).toEqual({ _tag: "All" })
    for (const ignored of ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=-", "bytes=a-b"]) {
      expect(wantedRange(ignored, 100)).toEqual({ _tag: "All" })
    }
  })

  it.effect("cuts a stream to the range, across its pieces, and reads no piece past its end", () =>
    Effect.gen(function*() {
      let read = 0
      const pieces = Stream.fromIterable([0, 1, 2, 3, 4].map((p) => Uint8Array.from({ length: 10 }, (_, i) => p * 10 + i)))
        .pipe(Stream.tap(() => Effect.sync(() => void read++)))
      const bytes = (stream: Stream.Stream<Uint8Array>) =>
        Effect.map(Stream.runCollect(stream), (c) => Chunk.toArray(c).flatMap((piece) => [...piece]))
      expect(yield* bytes(sliceBytes(pieces, 15, 24))).toEqual([15, 16, 17, 18, 19, 20, 21, 22, 23, 24])
      expect(read).toBeLessThanOrEqual(4) // the fifth piece is never read
      expect(yield* bytes(sliceBytes(pieces, 0, 49))).toHaveLength(50)
      expect(yield* bytes(sliceBytes(pieces, 49, 49))).toEqual([49])
    }))
})
