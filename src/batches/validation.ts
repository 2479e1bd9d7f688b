/**
 * Pure validation of batch create parameters, with OpenAI's error codes and messages, and what the checks of input
 * lines (`lineValidation.ts`) share with it.
 */
import { Schema } from "effect"
import { type BatchEndpoint, type CreateBatchBody, StandardEndpoint } from "../domain/Batches.js"
import { expiresAfterProblem } from "../domain/Files.js"
import type { FileId } from "../domain/Ids.js"
import { isJsonObject } from "../domain/Json.js"
import { echo, unstorableReason } from "../domain/Text.js"

export interface Problem {
  readonly code: string
  readonly message: string
  readonly param: string | null
}

export const isStandardEndpoint = Schema.is(StandardEndpoint)

export const MAX_METADATA_PAIRS = 16
export const MAX_METADATA_KEY = 64
export const MAX_METADATA_VALUE = 512

/**
 * The longest `input_file_id` accepted (OpenAI's ids have ~30 characters): the batch object repeats it in every
 * retrieve and list, and a file of so long an id cannot exist here.
 */
export const MAX_INPUT_FILE_ID_LENGTH = 256

/** The create parameters once checked: what a batch row is made of. */
export interface ValidCreateBatch {
  readonly inputFileId: FileId
  readonly endpoint: BatchEndpoint
  readonly completionWindow: "24h"
  readonly metadata: Readonly<Record<string, string>> | null
  readonly outputExpiresAfterSeconds: number | null
  readonly idempotencyKey: string | null
}

/** `null`, `an array`, `a string`, `an object`: a value's kind as a message names it. */
export const typeName = (v: unknown) => {
  if (v === null) return "null"
  if (Array.isArray(v)) return "an array"
  return /^[aeiou]/.test(typeof v) ? `an ${typeof v}` : `a ${typeof v}`
}

/** A string's length in characters (code points, as OpenAI counts them), not UTF-16 units: an emoji is one. */
export const characterCount = (text: string): number => {
  let n = 0
  for (let i = 0; i < text.length; i++, n++) {
    const unit = text.charCodeAt(i)
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1)
      if (next >= 0xdc00 && next <= 0xdfff) i++
    }
  }
  return n
}

/**
 * Checks a batch's `metadata` (absent or null: none) as OpenAI does: at most 16 string pairs, keys up to 64
 * characters, values up to 512. The CLI checks its `--metadata` with it before uploading.
 */
export const checkedMetadata = (given: unknown): Problem | { readonly metadata: Record<string, string> | null } => {
  if (given == null) return { metadata: null }
  if (!isJsonObject(given)) {
    return {
      code: "invalid_type",
      param: "metadata",
      message: `Invalid type for 'metadata': expected an object, but got ${typeName(given)} instead.`
    }
  }
  const entries = Object.entries(given)
  if (entries.length > MAX_METADATA_PAIRS) {
    return {
      code: "invalid_value",
      param: "metadata",
      message: `Invalid 'metadata': too many properties. Expected an object with at most ${MAX_METADATA_PAIRS} properties, but got ${entries.length}.`
    }
  }
  for (const [key, value] of entries) {
    if (characterCount(key) > MAX_METADATA_KEY) {
      return {
        code: "invalid_value",
        param: "metadata",
        message: `Invalid 'metadata': key '${echo(key, 20)}' is longer than ${MAX_METADATA_KEY} characters.`
      }
    }
    const keyProblem = key === "__proto__" ? "must not be '__proto__'" : unstorableReason(key)
    if (keyProblem !== undefined) {
      return { code: "invalid_value", param: "metadata", message: `Invalid 'metadata': a key ${keyProblem}.` }
    }
    if (typeof value !== "string") {
      return {
        code: "invalid_type",
        param: `metadata.${key}`,
        message: `Invalid type for 'metadata.${key}': expected a string, but got ${typeName(value)} instead.`
      }
    }
    const length = characterCount(value)
    if (length > MAX_METADATA_VALUE) {
      return {
        code: "invalid_value",
        param: `metadata.${key}`,
        message: `Invalid 'metadata.${key}': string too long. Expected a string with maximum length ${MAX_METADATA_VALUE}, but got a string with length ${length} instead.`
      }
    }
    const valueProblem = unstorableReason(value)
    if (valueProblem !== undefined) {
      return { code: "invalid_value", param: `metadata.${key}`, message: `Invalid 'metadata.${key}': the value ${valueProblem}.` }
    }
  }
  return { metadata: Object.fromEntries(entries) as Record<string, string> }
}

/**
 * Checks the values of `POST /v1/batches` (types were checked by the schema); `extraEndpoints` are the paths
 * accepted beside OpenAI's (`EXTRA_BATCH_ENDPOINTS`).
 */
export const validateCreateBatch = (
  body: CreateBatchBody & { readonly input_file_id: FileId },
  extraEndpoints: ReadonlyArray<string> = []
): Problem | ValidCreateBatch => {
  const idLength = characterCount(body.input_file_id)
  if (idLength > MAX_INPUT_FILE_ID_LENGTH) {
    return {
      code: "invalid_value",
      param: "input_file_id",
      message: `Invalid 'input_file_id': expected a string of at most ${MAX_INPUT_FILE_ID_LENGTH} characters, but got one of ${idLength}.`
    }
  }
  const endpoint = body.endpoint
  if (!isStandardEndpoint(endpoint) && !extraEndpoints.includes(endpoint)) {
    const endpoints = [...StandardEndpoint.literals, ...extraEndpoints.filter((e) => !isStandardEndpoint(e))]
    return {
      code: "invalid_value",
      param: "endpoint",
      // An API path of an upstream's own (vLLM's /v1/rerank): where the operator allows it, said to whoever asks.
      message: `Invalid value: '${echo(body.endpoint)}'. Supported values are: ${endpoints.map((e) => `'${e}'`).join(", ")}` +
        (endpoint.startsWith("/v1/") ? " (the server's EXTRA_BATCH_ENDPOINTS adds others)." : ".")
    }
  }
  if (body.completion_window !== "24h") {
    return {
      code: "invalid_value",
      param: "completion_window",
      message: `Invalid value: '${echo(body.completion_window)}'. Supported values are: '24h'.`
    }
  }
  const checked = checkedMetadata(body.metadata)
  if ("code" in checked) return checked
  const metadata = checked.metadata
  let outputExpiresAfterSeconds: number | null = null
  if (body.output_expires_after != null) {
    const problem = expiresAfterProblem(body.output_expires_after, "output_expires_after")
    if (problem !== undefined) return problem
    outputExpiresAfterSeconds = body.output_expires_after.seconds
  }
  if (body.idempotency_key != null && (body.idempotency_key.length === 0 || characterCount(body.idempotency_key) > 256)) {
    return {
      code: "invalid_value",
      param: "idempotency_key",
      message: "Invalid 'idempotency_key': expected a non-empty string of at most 256 characters."
    }
  }
  return {
    inputFileId: body.input_file_id,
    endpoint,
    completionWindow: "24h",
    metadata,
    outputExpiresAfterSeconds,
    idempotencyKey: body.idempotency_key ?? null
  }
}

export const isProblem = (x: Problem | ValidCreateBatch): x is Problem => "code" in x
