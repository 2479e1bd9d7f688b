/**
 * Splits a byte stream into JSONL lines with their 1-based numbers, holding at most one line (bounded by
 * `maxLineBytes`) in memory: an over-long line is reported, not buffered, and a line that is not UTF-8 is reported
 * rather than decoded with replacement characters (which would then be sent upstream as if written so).
 */
import { Chunk, Stream } from "effect"

export type JsonlLine =
  | { readonly _tag: "Line"; readonly line: number; readonly text: string }
  | { readonly _tag: "TooLong"; readonly line: number }
  | { readonly _tag: "NotUtf8"; readonly line: number }
  /** The file begins with UTF-16's byte order mark ("Unicode" in Windows' Notepad): the last item, nothing after it read. */
  | { readonly _tag: "Utf16"; readonly line: number }

const NEWLINE = 10

/** The longest input line read; a longer one is reported (`invalid_request`), not buffered. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024

/** Whether `bytes` begin with UTF-16's byte order mark, little- or big-endian. */
const isUtf16Start = (bytes: Uint8Array) =>
  bytes.length >= 2 && ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))

export const jsonlLines = (maxLineBytes: number) => <E>(bytes: Stream.Stream<Uint8Array, E>): Stream.Stream<JsonlLine, E> =>
  Stream.suspend(() => {
    const decoder = new TextDecoder("utf-8", { fatal: true })
    let parts: Array<Uint8Array> = []
    let partBytes = 0
    let tooLong = false
    let line = 0
    let first = true

    const emit = (out: Array<JsonlLine>) => {
      line++
      if (tooLong) {
        out.push({ _tag: "TooLong", line })
      } else {
        const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts)
        const text = decoded(bytes)
        if (text === undefined && first && isUtf16Start(bytes)) out.push({ _tag: "Utf16", line: 1 })
        else out.push(text === undefined ? { _tag: "NotUtf8", line } : { _tag: "Line", line, text })
      }
      first = false
      parts = []
      partBytes = 0
      tooLong = false
    }
    const decoded = (bytes: Uint8Array): string | undefined => {
      let text: string
      try {
        text = decoder.decode(bytes)
      } catch {
        return undefined
      }
      if (first && text.charCodeAt(0) === 0xfeff) text = text.slice(1) // a UTF-8 byte order mark
      return text.endsWith("\r") ? text.slice(0, -1) : text
    }
    const append = (piece: Uint8Array) => {
      if (tooLong || piece.length === 0) return
      partBytes += piece.length
      if (partBytes > maxLineBytes) {
        tooLong = true
        parts = []
      } else {
        parts.push(piece)
      }
    }

    const split = (chunk: Uint8Array): Array<JsonlLine> => {
      const out: Array<JsonlLine> = []
      let start = 0
      for (let i = chunk.indexOf(NEWLINE); i !== -1; i = chunk.indexOf(NEWLINE, start)) {
        append(chunk.subarray(start, i))
        emit(out)
        start = i + 1
      }
      append(chunk.subarray(start))
      return out
    }
    const rest = (): Array<JsonlLine> => {
      const out: Array<JsonlLine> = []
      if (partBytes > 0 || tooLong) emit(out)
      return out
    }
    return bytes.pipe(
      Stream.mapConcatChunk((chunk) => Chunk.unsafeFromArray(split(chunk))),
      Stream.concat(Stream.suspend(() => Stream.fromIterable(rest()))),
      Stream.takeUntil((item) => item._tag === "Utf16")
    )
  })
