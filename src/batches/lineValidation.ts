/**
 * Pure validation of one input file line, with OpenAI's error codes and messages: its JSON, `custom_id`, method, URL
 * and the body's required fields (cross-line rules, such as duplicates, are `inputValidation.ts`'s).
 */
import { type BatchEndpoint, StandardEndpoint } from "../domain/Batches.js"
import { isJsonObject, MAX_JSON_DEPTH, nestedDeeperThan } from "../domain/Json.js"
import { echo, unstorableReason } from "../domain/Text.js"
import { jsonMembers, memberText, repeatedKey } from "./jsonText.js"
import { characterCount, isStandardEndpoint, type Problem, typeName } from "./validation.js"

/** The longest `body.model` accepted: the batch object repeats it in every retrieve and list. */
export const MAX_MODEL_LENGTH = 256

/**
 * The longest `custom_id` accepted (OpenAI states none): long enough for a key, a path or a small JSON record, short
 * enough that a page of results is not made of ids (a line of 16 million characters each made a results page of
 * 160 MB, read whole, with the event loop held for seconds).
 */
export const MAX_CUSTOM_ID_LENGTH = 65_536

/** A line that passed validation: what a request row is made of. */
export interface ValidLine {
  readonly customId: string
  /** The request body, as JSON text exactly as the line has it: forwarded upstream as it is. */
  readonly body: string
  /** Null only where the endpoint lets the body leave it out (moderations). */
  readonly model: string | null
  /** How many inputs an embeddings request embeds (0 on other endpoints): a batch holds at most `MAX_EMBEDDING_INPUTS`. */
  readonly inputs: number
}

/** The most inputs an embeddings batch may hold in all, as on OpenAI. */
export const MAX_EMBEDDING_INPUTS = 50_000

/**
 * The inputs of an embeddings body's `input`: one text or one list of tokens, or an array of either (each one
 * input).
 */
const embeddingInputs = (input: unknown): number =>
  Array.isArray(input) && input.length > 0 && (typeof input[0] === "string" || Array.isArray(input[0])) ? input.length : 1

type FieldKind = "string" | "array" | "present"

/** Fields each endpoint's body must have, with the type they must be. */
const requiredBodyFields: Record<StandardEndpoint, ReadonlyArray<readonly [string, FieldKind]>> = {
  "/v1/chat/completions": [["model", "string"], ["messages", "array"]],
  "/v1/completions": [["model", "string"], ["prompt", "present"]],
  "/v1/embeddings": [["model", "string"], ["input", "present"]],
  "/v1/responses": [["model", "string"], ["input", "present"]],
  // The model is optional, as on OpenAI (its default moderation model); when given, it must be a string.
  "/v1/moderations": [["input", "present"]],
  "/v1/images/generations": [["model", "string"], ["prompt", "string"]]
}
/** An allowlisted endpoint's body is passed through: only the model, which picks the upstream, is required. */
const extraEndpointFields: ReadonlyArray<readonly [string, FieldKind]> = [["model", "string"]]

const endpointLabel: Record<StandardEndpoint, string> = {
  "/v1/chat/completions": "Chat Completions",
  "/v1/completions": "Completions",
  "/v1/embeddings": "Embeddings",
  "/v1/responses": "Responses",
  "/v1/moderations": "Moderations",
  "/v1/images/generations": "Images"
}

const capitalized = (s: string) => s.charAt(0).toUpperCase() + s.slice(1)

/** What is wrong with the value of body field `field`, which must be of `kind`, if anything. */
const fieldProblem = (field: string, kind: FieldKind, value: unknown): Problem | undefined => {
  if ((kind === "string" && typeof value !== "string") || (kind === "array" && !Array.isArray(value))) {
    return {
      code: "invalid_request",
      param: `body.${field}`,
      message: `Invalid type for 'body.${field}': expected ${kind === "array" ? "an array" : "a string"}, but got ${typeName(value)} instead.`
    }
  }
  if (typeof value === "string" && unstorableReason(value) !== undefined) {
    return { code: "invalid_request", param: `body.${field}`, message: `Invalid 'body.${field}': it ${unstorableReason(value)}.` }
  }
  // A string's UTF-16 length is never below its count of characters: most models are counted no further.
  if (field === "model" && (value as string).length > MAX_MODEL_LENGTH && characterCount(value as string) > MAX_MODEL_LENGTH) {
    return { code: "invalid_request", param: "body.model", message: `Invalid 'body.model': longer than ${MAX_MODEL_LENGTH} characters.` }
  }
  return undefined
}

/**
 * A line that failed validation: its problems, and its `custom_id` and model when it has them (a later line
 * repeating the id is a duplicate all the same, and its model is compared with the others', as OpenAI reports every
 * offending line).
 */
export interface InvalidLine {
  readonly problems: ReadonlyArray<Problem>
  readonly customId: string | undefined
  readonly model: string | undefined
}

const invalid = (problem: Problem): InvalidLine => ({ problems: [problem], customId: undefined, model: undefined })

const prefixed = (prefix: string, key: string | undefined) => (key === undefined ? undefined : prefix + key)

/** Checks one input line on its own (cross-line rules, such as duplicates, are the caller's). */
export const validateLine = (text: string, endpoint: BatchEndpoint): InvalidLine | ValidLine => {
  if (nestedDeeperThan(text, MAX_JSON_DEPTH)) {
    return invalid({ code: "invalid_json_line", param: null, message: `This line's JSON is nested more than ${MAX_JSON_DEPTH} levels deep.` })
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    return invalid({ code: "invalid_json_line", param: null, message: "This line is not parseable as valid JSON." })
  }
  if (!isJsonObject(parsed)) {
    return invalid({
      code: "invalid_json_line",
      param: null,
      message: `This line is ${typeName(parsed)}, not a JSON object: each line is one request, {"custom_id", "method", "url", "body"}.`
    })
  }
  const members = jsonMembers(text)
  const bodyText = memberText(members, "body")
  const repeated = repeatedKey(members) ?? prefixed("body.", isJsonObject(parsed.body) ? repeatedKey(jsonMembers(bodyText!)) : undefined)
  if (repeated !== undefined) {
    const named = Array.from(repeated).slice(0, 64).join("") // a key may be megabytes long
    return invalid({
      code: "invalid_request",
      param: named,
      message: `This line has the key '${named}' more than once: which one an upstream would read is not known.`
    })
  }
  const problems: Array<Problem> = []
  for (const field of ["custom_id", "method", "url", "body"] as const) {
    if (parsed[field] === undefined || parsed[field] === null) {
      problems.push({
        code: "missing_required_parameter",
        param: field,
        message: `Missing required parameter: '${field}'.`
      })
    }
  }
  const { body, custom_id, method, url } = parsed
  if (custom_id != null && typeof custom_id !== "string") {
    problems.push({ code: "invalid_request", param: "custom_id", message: `Invalid type for 'custom_id': expected a string, but got ${typeName(custom_id)} instead.` })
  } else if (typeof custom_id === "string" && custom_id.length > MAX_CUSTOM_ID_LENGTH && characterCount(custom_id) > MAX_CUSTOM_ID_LENGTH) {
    problems.push({
      code: "invalid_request",
      param: "custom_id",
      message: `Invalid 'custom_id': string too long. Expected a string with maximum length ${MAX_CUSTOM_ID_LENGTH}, but got a string with length ${characterCount(custom_id)} instead.`
    })
  } else if (typeof custom_id === "string" && unstorableReason(custom_id) !== undefined) {
    problems.push({ code: "invalid_request", param: "custom_id", message: `Invalid 'custom_id': it ${unstorableReason(custom_id)}.` })
  }
  if (method != null && method !== "POST") {
    problems.push({ code: "invalid_request", param: "method", message: `Invalid value for 'method': only 'POST' is supported.` })
  }
  if (url != null) {
    if (typeof url !== "string") {
      problems.push({ code: "invalid_request", param: "url", message: `Invalid type for 'url': expected a string, but got ${typeName(url)} instead.` })
    } else if (url !== endpoint) {
      problems.push({
        code: "invalid_url",
        param: "url",
        // OpenAI's words, and what was compared (a file whose first line had the wrong url made every other line look wrong).
        message: `The URL provided for this request does not match the batch endpoint ('${echo(url, 100)}' here, '${endpoint}' for the batch).`
      })
    }
  }
  if (body != null && !isJsonObject(body)) {
    problems.push({ code: "invalid_request", param: "body", message: `Invalid type for 'body': expected an object, but got ${typeName(body)} instead.` })
  }
  if (isJsonObject(body)) {
    const standard = isStandardEndpoint(endpoint)
    if (body.stream === true) {
      problems.push({
        code: "streaming_unsupported",
        param: "body.stream",
        message: `${standard ? endpointLabel[endpoint] : endpoint}: Streaming is not supported in the Batch API.`
      })
    } else if (body.stream != null && body.stream !== false) {
      // "true" or 1 would pass as not streaming here, and a lenient upstream (pydantic's coercion) would stream.
      problems.push({
        code: "invalid_request",
        param: "body.stream",
        message: `Invalid type for 'body.stream': expected a boolean, but got ${typeName(body.stream)} instead.`
      })
    }
    // A line for another endpoint (`invalid_url`) is not also told the batch endpoint's fields it lacks.
    const forOtherEndpoint = typeof url === "string" && url !== endpoint
    const required = forOtherEndpoint ? [] : standard ? requiredBodyFields[endpoint] : extraEndpointFields
    for (const [field, kind] of required) {
      const value = body[field]
      if (value === undefined || value === null) {
        problems.push({ code: "invalid_request", param: `body.${field}`, message: `${capitalized(field)} parameter is required.` })
      } else {
        const problem = fieldProblem(field, kind, value)
        if (problem !== undefined) problems.push(problem)
      }
    }
    // Optional, but not null: OpenAI refuses a null model, and an upstream reads it as its default or refuses it.
    if (body.model !== undefined && !required.some(([field]) => field === "model")) {
      const problem = fieldProblem("model", "string", body.model)
      if (problem !== undefined) problems.push(problem)
    }
  }
  if (problems.length > 0) {
    // An id refused (too long, not storable) is not kept for the duplicates' check either.
    const kept = typeof custom_id === "string" && !problems.some((p) => p.param === "custom_id")
    const model = isJsonObject(body) && typeof body.model === "string" && !problems.some((p) => p.param === "body.model")
      ? body.model
      : undefined
    return { problems, customId: kept ? custom_id : undefined, model }
  }
  const { input, model } = body as Record<string, unknown>
  return {
    customId: custom_id as string,
    body: bodyText!,
    model: typeof model === "string" ? model : null,
    inputs: endpoint === "/v1/embeddings" ? embeddingInputs(input) : 0
  }
}

export const isValidLine = (x: InvalidLine | ValidLine): x is ValidLine => !("problems" in x)
