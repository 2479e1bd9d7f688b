/** A stream of bytes cut to a range: a file read from a `Range`'s first byte (`files/byteRange.ts`) to its last. */
import { Stream } from "effect"

/** The bytes `start` to `end` (inclusive) of `stream`; it is read no further than `end`. */
export const sliceBytes = <E, R>(stream: Stream.Stream<Uint8Array, E, R>, start: number, end: number) =>
  Stream.suspend(() => {
    let position = 0
    return stream.pipe(
      Stream.takeWhile(() => position <= end),
      Stream.map((piece) => {
        const from = position
        position += piece.length
        const a = Math.max(start - from, 0)
        const b = Math.min(end + 1 - from, piece.length)
        return a === 0 && b === piece.length ? piece : piece.subarray(Math.min(a, b), b)
      }),
      Stream.filter((piece) => piece.length > 0)
    )
  })
