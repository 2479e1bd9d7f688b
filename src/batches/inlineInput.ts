/**
 * Inline requests (an extension): `POST /v1/batches` with `requests: [...]` instead of `input_file_id`. The requests
 * become the batch's input file, one JSON object a line in array order, so that everything after the create is a
 * file's: the same validation, with line numbers that are the array positions + 1.
 *
 * A line is the element's JSON text as the client sent it, without the whitespace between its tokens (a JSONL line
 * holds no line break): as for a file, a body is forwarded as written, and parsing and printing it again would
 * round numbers beyond 2^53 (seeds, token ids).
 */
import { createHash } from "node:crypto"
import type { CreateBatchBody } from "../domain/Batches.js"
import type { BatchId, FileId } from "../domain/Ids.js"
import { afterString } from "../domain/Json.js"
import { afterValue, isJsonSpace, jsonMemberText, skipSpace } from "./jsonText.js"
import type { Problem } from "./validation.js"

/** The input a create names: an uploaded file, or requests given inline. */
export type BatchInput =
  | { readonly _tag: "File"; readonly id: FileId }
  | { readonly _tag: "Inline"; readonly requests: ReadonlyArray<unknown> }

/**
 * Exactly one of `input_file_id` and `requests` (the schema, `CreateBatchBody`, already refused a body with
 * neither, with OpenAI's error for a missing `input_file_id`), and no more requests than a batch may hold
 * (`maxRequests`), refused before their lines are made: a 1 MiB body holds 500,000 tiny ones.
 */
export const inputOf = (body: CreateBatchBody, maxRequests: number): BatchInput | Problem => {
  const requests = body.requests ?? []
  if (body.input_file_id !== undefined) {
    return body.requests == null ? { _tag: "File", id: body.input_file_id } : {
      code: "invalid_value",
      param: "requests",
      message: "Give either 'input_file_id' or 'requests' (the requests inline), not both."
    }
  }
  if (requests.length === 0) {
    return { code: "invalid_value", param: "requests", message: "'requests' must hold at least one request." }
  }
  if (requests.length > maxRequests) {
    return {
      code: "too_many_tasks",
      param: "requests",
      message: `'requests' holds ${requests.length} requests; a batch may hold ${maxRequests} at most.`
    }
  }
  return { _tag: "Inline", requests }
}

const QUOTE = 34
const COMMA = 44
const CLOSING_BRACKET = 93

/** `text` (JSON) without the whitespace between its tokens; strings are kept as written. */
const compact = (text: string): string => {
  let out = ""
  let from = 0
  for (let at = 0; at < text.length; at++) {
    const c = text.charCodeAt(at)
    if (c === QUOTE) at = afterString(text, at) - 1
    else if (isJsonSpace(c)) {
      out += text.slice(from, at)
      from = at + 1
    }
  }
  return out + text.slice(from)
}

/** The JSON text of each element of the array `text` (JSON that `JSON.parse` accepted), as written. */
const elementTexts = (text: string): Array<string> => {
  const elements: Array<string> = []
  let at = skipSpace(text, 1) // past the "["
  while (at < text.length && text.charCodeAt(at) !== CLOSING_BRACKET) {
    const end = afterValue(text, at)
    elements.push(text.slice(at, end))
    at = skipSpace(text, end)
    if (text.charCodeAt(at) === COMMA) at = skipSpace(text, at + 1)
  }
  return elements
}

/**
 * The input file's lines for `requests`, each ending with a newline: taken from `bodyText`, the request body as
 * sent (the JSON object `requests` was decoded from), or printed from the decoded values when that text is not at
 * hand.
 */
export const inlineJsonl = (requests: ReadonlyArray<unknown>, bodyText: string | undefined): string => {
  const arrayText = bodyText === undefined ? undefined : jsonMemberText(bodyText, "requests")
  const texts = arrayText?.startsWith("[") ? elementTexts(arrayText) : []
  const lines = texts.length === requests.length ? texts.map(compact) : requests.map((r) => JSON.stringify(r))
  return lines.join("\n") + "\n"
}

/** What tells two inline creates apart for an idempotency key: the digest of their input lines. */
export const inlineFingerprint = (jsonl: string): string => `inline:${createHash("sha256").update(jsonl).digest("hex")}`

/** The name of the input file made for batch `id`'s inline requests. */
export const inlineFilename = (id: BatchId): string => `${id}_inline.jsonl`
