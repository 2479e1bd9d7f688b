/**
 * Client text that is stored or echoed: what can be kept exactly, and how much of it an answer repeats.
 */
import { Schema } from "effect"

/**
 * Why `s` cannot be stored exactly by every backend, for an error message; undefined when it can. A NUL is refused
 * by PostgreSQL's `text`, and a lone surrogate cannot be encoded as UTF-8 (it would come back as U+FFFD).
 */
export const unstorableReason = (s: string): string | undefined =>
  s.includes("\u0000")
    ? "must not contain a NUL character"
    : s.isWellFormed()
    ? undefined
    : "must be valid Unicode (it contains a lone surrogate)"

/** A string the API accepts: any text that can be stored exactly. */
export const StorableString = Schema.String.pipe(
  Schema.filter((s) => unstorableReason(s) ?? true, { identifier: "StorableString" })
)

/** The most characters of a client's value that an error message repeats. */
export const MAX_ECHO = 64

/**
 * The first `max` UTF-16 units of `s`, one fewer where the cut would split a surrogate pair (cut in half, an emoji
 * was drawn as `�`).
 */
export const cutBefore = (s: string, max: number): string => {
  const splitsPair = /[\uD800-\uDBFF]/.test(s[max - 1] ?? "") && /[\uDC00-\uDFFF]/.test(s[max] ?? "")
  return s.slice(0, splitsPair ? max - 1 : max)
}

/** `s` as an error message repeats it: at most `max` (`MAX_ECHO`) characters, never a broken surrogate pair. */
export const echo = (s: string, max = MAX_ECHO): string =>
  s.length <= max ? s.toWellFormed() : `${cutBefore(s, max).toWellFormed()}…`
