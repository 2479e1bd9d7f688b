/**
 * Reading a JSON text without parsing it again: where a string or value ends, and a member's text exactly as written.
 * A request body is forwarded as its line has it (`jsonMemberText`): parsing and printing it again would round
 * numbers beyond 2^53 (seeds, token ids), and the inline input (`inlineInput.ts`) cuts its lines the same way.
 */

import { afterString } from "../domain/Json.js"

const QUOTE = 34

export const isJsonSpace = (c: number) => c === 32 || c === 9 || c === 10 || c === 13

export const skipSpace = (text: string, at: number): number => {
  while (isJsonSpace(text.charCodeAt(at))) at++
  return at
}

/** The index just past the value starting at `start` (a string, object, array, number or literal). */
export const afterValue = (text: string, start: number): number => {
  const first = text.charCodeAt(start)
  if (first === QUOTE) return afterString(text, start)
  if (first === 123 || first === 91) { // { or [
    let depth = 0
    for (let at = start; ; at++) {
      const c = text.charCodeAt(at)
      if (c === QUOTE) at = afterString(text, at) - 1
      else if (c === 123 || c === 91) depth++
      else if ((c === 125 || c === 93) && --depth === 0) return at + 1
    }
  }
  let at = start
  for (let c = first; c !== 44 && c !== 125 && c !== 93 && !isJsonSpace(c) && at < text.length; c = text.charCodeAt(++at));
  return at
}

/** A member of a JSON object: its key (escapes decoded) and its value's text exactly as written. */
export interface JsonMember {
  readonly key: string
  readonly value: string
}

/** The members of the JSON object `text`, in order, repeated keys included. `text` must be JSON that `JSON.parse` accepted and whose value is an object. */
export const jsonMembers = (text: string): Array<JsonMember> => {
  const members: Array<JsonMember> = []
  let at = skipSpace(text, text.indexOf("{") + 1)
  while (text.charCodeAt(at) === QUOTE) {
    const keyEnd = afterString(text, at)
    const raw = text.slice(at + 1, keyEnd - 1)
    const key = raw.includes("\\") ? JSON.parse(text.slice(at, keyEnd)) as string : raw
    const valueStart = skipSpace(text, skipSpace(text, keyEnd) + 1) // past the colon
    const valueEnd = afterValue(text, valueStart)
    members.push({ key, value: text.slice(valueStart, valueEnd) })
    at = skipSpace(text, valueEnd)
    if (text.charCodeAt(at) !== 44) break // a comma: another member follows
    at = skipSpace(text, at + 1)
  }
  return members
}

/**
 * The text of member `name` of the JSON object `text` exactly as written (the last one when repeated, as
 * `JSON.parse` reads it), or undefined; `text` as `jsonMembers` takes it. This is how a request body is forwarded as
 * it is: parsing and printing it again would round numbers beyond 2^53 (seeds, token ids) and drop anything else
 * `JSON.parse` normalizes.
 */
export const jsonMemberText = (text: string, name: string): string | undefined =>
  memberText(jsonMembers(text), name)

/**
 * The JSON object `text` with member `name`'s value replaced by `value` (JSON text), every other member's value as
 * written; `text` as `jsonMembers` takes it, with no key twice.
 */
export const withMemberValue = (text: string, name: string, value: string): string =>
  `{${jsonMembers(text).map((m) => `${JSON.stringify(m.key)}:${m.key === name ? value : m.value}`).join(",")}}`

/** The value of the last of `members` named `name`, as `JSON.parse` reads it. */
export const memberText = (members: ReadonlyArray<JsonMember>, name: string): string | undefined => {
  for (let i = members.length - 1; i >= 0; i--) if (members[i]!.key === name) return members[i]!.value
  return undefined
}

/**
 * The first key `members` has twice, or undefined: `JSON.parse` keeps the last, other parsers the first (an upstream
 * could run another model than the one a line was validated and routed for).
 */
export const repeatedKey = (members: ReadonlyArray<JsonMember>): string | undefined => {
  const seen = new Set<string>()
  for (const { key } of members) {
    if (seen.has(key)) return key
    seen.add(key)
  }
  return undefined
}
