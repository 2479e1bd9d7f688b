/**
 * Why the lines of an error file failed, tallied as it is saved: `status 500`, `upstream_timeout`, `batch_cancelled`.
 * A watch's summary said only "20 failed" (requests a cancel or an expiry left unrun among them), and the file had to
 * be opened to tell a misconfigured endpoint from a flaky server.
 */
import { count } from "./progress.js"

const NEWLINE = 10
/** The first bytes of a line read for its reason: a line holds a whole answer, which may be megabytes. */
const LINE_PREFIX_BYTES = 64 * 1024

/** The reason of one error line: its error's code, else its answer's status. */
export const reasonOf = (text: string, whole: boolean): string => {
  if (whole) {
    try {
      const line = JSON.parse(text) as { error?: { code?: unknown } | null; response?: { status_code?: unknown } | null }
      if (typeof line?.error?.code === "string" && line.error.code !== "") return line.error.code.slice(0, 64)
      if (typeof line?.response?.status_code === "number") return `status ${line.response.status_code}`
    } catch {
      // not JSON: read as a prefix below
    }
  }
  // An answer's status first: its body, which a long line holds, may have an error code of its own.
  const status = /"status_code"\s*:\s*(\d{3})/.exec(text)
  if (status) return `status ${status[1]}`
  const code = /"error"\s*:\s*\{[^{}]*?"code"\s*:\s*"([^"\\]{1,64})"/.exec(text)
  return code ? code[1]! : "unreadable line"
}

export interface ErrorReasons {
  /** Reads the next bytes of the file. */
  readonly feed: (chunk: Uint8Array) => void
  /** Each reason and how many lines gave it, the most frequent first (the file read to its end). */
  readonly counts: () => ReadonlyArray<readonly [reason: string, lines: number]>
}

export const makeErrorReasons = (): ErrorReasons => {
  const tally = new Map<string, number>()
  let pieces: Array<Uint8Array> = []
  let kept = 0
  let truncated = false
  const endLine = () => {
    if (kept > 0) {
      const reason = reasonOf(Buffer.concat(pieces).toString("utf8"), !truncated)
      tally.set(reason, (tally.get(reason) ?? 0) + 1)
    }
    pieces = []
    kept = 0
    truncated = false
  }
  const keep = (bytes: Uint8Array) => {
    const room = LINE_PREFIX_BYTES - kept
    if (bytes.length > room) truncated = true
    const piece = bytes.subarray(0, Math.max(0, room))
    if (piece.length > 0) {
      pieces.push(piece.slice()) // a copy: the chunk's buffer may be reused
      kept += piece.length
    }
  }
  return {
    feed: (chunk) => {
      let start = 0
      for (let at = chunk.indexOf(NEWLINE); at !== -1; at = chunk.indexOf(NEWLINE, start)) {
        keep(chunk.subarray(start, at))
        endLine()
        start = at + 1
      }
      keep(chunk.subarray(start))
    },
    counts: () => {
      endLine() // a last line without its newline
      return [...tally.entries()].sort((a, b) => b[1] - a[1])
    }
  }
}

/** At most this many reasons are named in a summary; the rest are counted together. */
const NAMED_REASONS = 5

/** `errors by reason: 200 × batch_cancelled, 3 × status 500`, for a summary; undefined when there is none. */
export const reasonsLine = (counts: ReadonlyArray<readonly [string, number]>): string | undefined => {
  if (counts.length === 0) return undefined
  const named = counts.slice(0, NAMED_REASONS).map(([reason, n]) => `${count(n)} × ${reason}`)
  const rest = counts.slice(NAMED_REASONS).reduce((sum, [, n]) => sum + n, 0)
  return `errors by reason: ${named.join(", ")}${rest > 0 ? `, ${count(rest)} other` : ""}`
}
