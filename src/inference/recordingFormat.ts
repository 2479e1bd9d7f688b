/**
 * A recording's key and file, pure: what `Recordings.ts` writes and reads. An answer is keyed by its endpoint, the
 * body's model and the SHA-256 of the endpoint with the canonical body (keys sorted, no whitespace): the same request
 * written in another key order or spacing finds the same answer. Each answer is one pretty JSON file,
 * `<dir>/<endpoint slug>/<hash>.json`.
 */
import { createHash } from "node:crypto"
import * as Path from "node:path"
import { defaults } from "../Config.js"
import { escapeLineSeparators, isJsonObject } from "../domain/Json.js"
import type { UpstreamResponse } from "./Inference.js"

/** What a recording is found by. */
export interface RecordingKey {
  readonly endpoint: string
  /** The body's `model`; null when it has none (or not a string). */
  readonly model: string | null
  /** SHA-256 (hex) of the endpoint and the canonical body. */
  readonly hash: string
}

/** Four times the default `INFERENCE_MAX_RESPONSE_BYTES`: pretty-printing an answer about doubles it. */
export const DEFAULT_MAX_RECORDING_BYTES = 4 * defaults.inferenceMaxResponseBytes

/** `value` with every object's keys sorted, recursively (objects without a prototype: `__proto__` stays a key). */
const sortKeys = (value: unknown): unknown => {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (!isJsonObject(value)) return value
  const sorted: Record<string, unknown> = Object.create(null)
  for (const key of Object.keys(value).sort()) sorted[key] = sortKeys(value[key])
  return sorted
}

/** `text` parsed; undefined when it is not JSON. */
const parseJson = (text: string): { readonly json: unknown } | undefined => {
  try {
    return { json: JSON.parse(text) }
  } catch {
    return undefined
  }
}

/**
 * The key of a request: `body` as the input line has it, hashed in canonical form (a body that is not JSON, as
 * its text). Numbers are compared as parsed: `1.50` and `1.5` are the same request.
 */
export const recordingKey = (endpoint: string, body: string): RecordingKey => {
  const parsed = parseJson(body)
  const canonical = parsed === undefined ? body : JSON.stringify(sortKeys(parsed.json))
  const model = parsed !== undefined && isJsonObject(parsed.json) && typeof parsed.json.model === "string"
    ? parsed.json.model
    : null
  // The endpoint as a JSON string holds no line break: no endpoint and body can be read as another pair.
  const hash = createHash("sha256").update(`${JSON.stringify(endpoint)}\n${canonical}`).digest("hex")
  return { endpoint, model, hash }
}

/** The folder of an endpoint's recordings: `/v1/chat/completions` → `chat_completions` (never `.` or `..`). */
const endpointSlug = (endpoint: string): string =>
  endpoint.replace(/^\/+/, "").replace(/^v1\//, "").replace(/[^A-Za-z0-9-]+/g, "_") || "_"

/** `<dir>/<endpoint slug>/<hash>.json`; the model is in the file and in the hash (model names may hold `/`). */
export const recordingPath = (dir: string, key: RecordingKey): string =>
  Path.join(dir, endpointSlug(key.endpoint), `${key.hash}.json`)

/**
 * A recording's file text, deterministic: pretty JSON (2 spaces, a final line break), keys in a fixed order. The
 * answer is kept as JSON under `body` when it comes back byte for byte from it (`JSON.stringify` of the parsed
 * text is the text), else verbatim under `body_text` (numbers `JSON.stringify` would rewrite, keys it reorders).
 * The request is kept for reading, its keys sorted; a file that would pass `maxBytes` pretty is written on one line.
 */
export const recordingText = (
  key: RecordingKey,
  body: string,
  response: UpstreamResponse,
  maxBytes = DEFAULT_MAX_RECORDING_BYTES
): string => {
  const request = parseJson(body)
  const answer = parseJson(response.text)
  const exact = answer !== undefined && JSON.stringify(answer.json) === response.text
  const recording = {
    endpoint: key.endpoint,
    model: key.model,
    ...(request === undefined ? { request_text: body } : { request: sortKeys(request.json) }),
    status: response.status,
    request_id: response.requestId,
    ...(exact ? { body: answer.json } : { body_text: response.text })
  }
  const pretty = `${JSON.stringify(recording, null, 2)}\n`
  return Buffer.byteLength(pretty) <= maxBytes ? pretty : `${JSON.stringify(recording)}\n`
}

/** The answer a recording's file text holds, or what is wrong with it. */
export const answerFromRecording = (text: string): UpstreamResponse | { readonly problem: string } => {
  const file = parseJson(text)
  if (file === undefined || !isJsonObject(file.json)) return { problem: "it is not a JSON object" }
  const { status, request_id: requestId, body, body_text: bodyText } = file.json
  if (typeof status !== "number" || !Number.isInteger(status) || status < 100 || status > 599) {
    return { problem: "its `status` is not an HTTP status" }
  }
  if (typeof requestId !== "string") return { problem: "its `request_id` is not a string" }
  if (body !== undefined) {
    if (!isJsonObject(body)) return { problem: "its `body` is not a JSON object" }
    return { status, text: escapeLineSeparators(JSON.stringify(body)), json: body, requestId }
  }
  const parsed = typeof bodyText === "string" ? parseJson(bodyText) : undefined
  if (parsed === undefined || !isJsonObject(parsed.json)) return { problem: "it has neither `body` nor a JSON object in `body_text`" }
  return { status, text: escapeLineSeparators(bodyText as string), json: parsed.json, requestId }
}
