/**
 * JSON text checked before it is parsed: `JSON.parse` of text nested thousands of levels deep holds the event loop
 * for seconds and takes gigabytes (16 MB of `[[[…]]]`: ~6 s), and a value that deep overflows the stack of whatever
 * walks it next. And where a string in JSON text ends, which the depth check and `batches/jsonText.ts` both need;
 * and whether a parsed value is a JSON object.
 */

/** Whether a parsed value is a JSON object (not an array, not null). */
export const isJsonObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

/** How deep a request body or an input line's JSON may nest (arrays and objects inside each other). */
export const MAX_JSON_DEPTH = 64

const QUOTE = 34
const BACKSLASH = 92

/** Whether the quote at `at` is escaped: an odd run of backslashes before it. */
const escaped = (text: string, at: number) => {
  let backslashes = 0
  while (text.charCodeAt(at - 1 - backslashes) === BACKSLASH) backslashes++
  return backslashes % 2 === 1
}

/** The index just past the string whose opening quote is at `start` (the text's end when it is not closed). */
export const afterString = (text: string, start: number): number => {
  let end = text.indexOf('"', start + 1)
  while (end !== -1 && escaped(text, end)) end = text.indexOf('"', end + 1)
  return end === -1 ? text.length : end + 1
}

/** `[` or `{`: found by the regex engine's native scan, many times faster than a loop over the characters. */
const OPENER = /[[{]/g

/** Whether `text` opens more than `max` arrays or objects inside each other (strings are skipped). */
export const nestedDeeperThan = (text: string, max: number): boolean => {
  // No more openers than `max` in all (in strings or not): it cannot nest deeper (an embedding answer of 30 KB has a
  // few: 70 µs for the loop below, against ~110 µs for parsing it).
  OPENER.lastIndex = 0
  let openers = 0
  while (OPENER.test(text)) if (++openers > max) break
  if (openers <= max) return false
  let depth = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      i = afterString(text, i) - 1 // an unterminated string ends the text: not JSON, which the parser says at once
    } else if (c === 123 || c === 91) { // { [
      if (++depth > max) return true
    } else if (c === 125 || c === 93) depth-- // } ]
  }
  return false
}

/**
 * Characters JSON leaves as they are in a string that other readers take for line breaks: NEL, LINE SEPARATOR and
 * PARAGRAPH SEPARATOR (Python's `str.splitlines()` splits a JSONL file there, and each half fails `json.loads`).
 */
const LINE_SEPARATORS = /[\u0085\u2028\u2029]/g

/** JSON `text` with those characters, which can only stand in its strings, written as escapes (`\u2028`). */
export const escapeLineSeparators = (text: string): string =>
  text.replace(LINE_SEPARATORS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
