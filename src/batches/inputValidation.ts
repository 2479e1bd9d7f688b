/**
 * Validation of a batch's input file as a fold over its lines: `step(state, line)` checks one line (with
 * `validateLine`) and the rules across lines (duplicate `custom_id`s, one model, at most `maxRequests` requests and
 * `MAX_EMBEDDING_INPUTS` embedding inputs),
 * giving the request rows, the problems with their 1-based lines, the slices and the model. Pure: no database and no
 * Effect; the runner (`validating.ts`) feeds it the lines of the file stream and stores `takeRows` a page at a time.
 *
 * The state is the fold's accumulator, updated in place by `step` and returned: copying a set of 50,000 `custom_id`s
 * per line would cost more than the checks.
 */
import type { BatchEndpoint, BatchError } from "../domain/Batches.js"
import type { BatchRequestId } from "../domain/Ids.js"
import { echo } from "../domain/Text.js"
import type { RequestRow, SliceBounds } from "./BatchStore.js"
import type { JsonlLine } from "./lines.js"
import { isValidLine, MAX_EMBEDDING_INPUTS, validateLine } from "./lineValidation.js"

/**
 * Requests per slice, the unit of work a node claims: small enough that every node gets a share of one large
 * batch, large enough that claiming costs nothing next to running it.
 */
export const SLICE = 500
/**
 * Problems kept in `errors.data`, by count and by size (every retrieve and list page carries them); the rest are
 * counted in one last `too_many_errors` entry.
 */
export const MAX_REPORTED_ERRORS = 1000
export const MAX_REPORTED_ERROR_BYTES = 64 * 1024

export interface InputRules {
  readonly endpoint: BatchEndpoint
  /** More requests fail with `too_many_tasks`. */
  readonly maxRequests: number
  /** The longest line `jsonlLines` was given: what a `TooLong` line is told. */
  readonly maxLineBytes: number
  /** The `id` of each request's output line (random in the runner; a test may give its own). */
  readonly resultId: () => BatchRequestId
}

export interface InputState {
  readonly rules: InputRules
  readonly errors: Array<BatchError>
  errorBytes: number
  /** Problems found beyond what `errors` keeps. */
  omitted: number
  readonly customIds: Set<string>
  /**
   * The model of the first request naming one, valid or not (null: a valid one named none, as a moderation may
   * leave it out), and its line.
   */
  model: { readonly name: string | null; readonly line: number } | undefined
  /** Valid requests so far. */
  count: number
  /** Their embeddings inputs (`MAX_EMBEDDING_INPUTS` at most). */
  inputs: number
  /** Rows not yet taken by `takeRows`, and the characters of their bodies. */
  rows: Array<RequestRow>
  rowsCharacters: number
  readonly slices: Array<SliceBounds>
}

export const initial = (rules: InputRules): InputState => ({
  rules,
  errors: [],
  errorBytes: 0,
  omitted: 0,
  customIds: new Set(),
  model: undefined,
  count: 0,
  inputs: 0,
  rows: [],
  rowsCharacters: 0,
  slices: []
})

const report = (state: InputState, e: BatchError): InputState => {
  const size = JSON.stringify(e).length
  if (state.errors.length < MAX_REPORTED_ERRORS && state.errorBytes + size <= MAX_REPORTED_ERROR_BYTES) {
    state.errors.push(e)
    state.errorBytes += size
  } else state.omitted++
  return state
}

/** Whether `customId` is new in the file; a repeat is reported (the line it repeats may have failed otherwise). */
const firstUse = (state: InputState, customId: string, line: number): boolean => {
  if (!state.customIds.has(customId)) {
    state.customIds.add(customId)
    return true
  }
  report(state, { code: "duplicate_custom_id", message: `The custom_id '${echo(customId)}' is used more than once in this file.`, param: "custom_id", line })
  return false
}

const modelText = (model: string | null) => (model === null ? "none" : `'${echo(model)}'`)

/** Whether `model` is the file's model (the first one seen becomes it); another is reported. */
const sameModel = (state: InputState, model: string | null, line: number): boolean => {
  if (state.model === undefined) state.model = { name: model, line }
  else if (state.model.name !== model) {
    report(state, { code: "model_mismatch", message: `All requests of a batch must use the same model: this line uses ${modelText(model)}, line ${state.model.line} uses ${modelText(state.model.name)}.`, param: "body.model", line })
    return false
  }
  return true
}

/** Checks one line and, when it is valid, adds its request row (cross-line rules included). */
export const step = (state: InputState, item: JsonlLine): InputState => {
  const { rules } = state
  if (item._tag === "TooLong") {
    return report(state, { code: "invalid_request", message: `This line is longer than ${rules.maxLineBytes} bytes.`, param: null, line: item.line })
  }
  if (item._tag === "Utf16") {
    return report(state, {
      code: "invalid_json_line",
      message: "The file is UTF-16 text (it begins with UTF-16's byte order mark): save it as UTF-8, as JSONL is.",
      param: null,
      line: null // the whole file's
    })
  }
  if (item._tag === "NotUtf8") {
    return report(state, { code: "invalid_json_line", message: "This line is not valid UTF-8 text.", param: null, line: item.line })
  }
  if (item.text.trim() === "") return state
  const result = validateLine(item.text, rules.endpoint)
  if (!isValidLine(result)) {
    for (const p of result.problems) report(state, { ...p, line: item.line })
    if (result.customId !== undefined) firstUse(state, result.customId, item.line)
    if (result.model !== undefined) sameModel(state, result.model, item.line)
    return state
  }
  const fresh = firstUse(state, result.customId, item.line)
  if (!sameModel(state, result.model, item.line) || !fresh) return state
  const inputs = state.inputs
  state.inputs += result.inputs
  const count = ++state.count
  // One line past both limits (the 50,001st of one input each) is one problem: too many requests.
  if (count === rules.maxRequests + 1) {
    report(state, { code: "too_many_tasks", message: `The batch has more than ${rules.maxRequests} requests, the most one batch may hold.`, param: null, line: item.line })
  } else if (inputs <= MAX_EMBEDDING_INPUTS && state.inputs > MAX_EMBEDDING_INPUTS) {
    report(state, { code: "too_many_tasks", message: `The batch has more than ${MAX_EMBEDDING_INPUTS} embedding inputs in all, the most one batch may hold.`, param: "body.input", line: item.line })
  }
  if (count > rules.maxRequests) return state
  const { slices } = state
  if ((count - 1) % SLICE === 0) slices.push({ firstLine: item.line, lastLine: item.line })
  else slices[slices.length - 1] = { firstLine: slices[slices.length - 1]!.firstLine, lastLine: item.line }
  state.rows.push({ line: item.line, customId: result.customId, resultId: rules.resultId(), body: result.body })
  state.rowsCharacters += result.body.length
  return state
}

/** How many rows `takeRows` would give, and the characters of their bodies. */
export const rowsWaiting = (state: InputState): { readonly rows: number; readonly characters: number } =>
  ({ rows: state.rows.length, characters: state.rowsCharacters })

/** The rows validated since the last call, to store; none once a problem was found (the batch will fail). */
export const takeRows = (state: InputState): ReadonlyArray<RequestRow> => {
  const rows = state.rows
  state.rows = []
  state.rowsCharacters = 0
  return state.errors.length > 0 ? [] : rows
}

/** The model to look up in the upstream's list (`model_not_found`), reported beside the file's other problems. */
export const modelToCheck = (state: InputState): string | undefined => state.model?.name ?? undefined

/** The models a batch may name, said beside a `model_not_found` (the first 10: an upstream may list hundreds). */
const modelsOnOffer = (known: ReadonlySet<string>): string => {
  const names = [...known]
  if (names.length === 0) return "No upstream serves a model for this project."
  const shown = names.slice(0, 10).map((name) => `'${echo(name, 100)}'`).join(", ")
  return `Models served: ${shown}${names.length > 10 ? ` and ${names.length - 10} more` : ""} (GET /v1/models lists them).`
}

export type InputVerdict =
  | { readonly _tag: "Valid"; readonly model: string | null; readonly total: number; readonly slices: ReadonlyArray<SliceBounds> }
  | { readonly _tag: "Invalid"; readonly errors: ReadonlyArray<BatchError> }

/**
 * The verdict once every line was folded in: valid (the model, how many requests, the slices), or the problems
 * found, with `empty_file` when there was no request and `model_not_found` when `knownModels` (the upstream's
 * list, if it has one) lacks the model.
 */
export const verdict = (state: InputState, knownModels?: ReadonlySet<string>): InputVerdict => {
  const errors = [...state.errors]
  if (state.count === 0 && errors.length === 0) {
    errors.push({ code: "empty_file", message: "The input file is empty. Please ensure that the batch contains at least one request.", param: null, line: null })
  }
  const model = state.model
  if (model?.name != null && knownModels !== undefined && !knownModels.has(model.name)) {
    // In line order among the others (one entry past the caps at most: the problem every line shares).
    const after = errors.findIndex((e) => e.line !== null && e.line > model.line)
    errors.splice(after === -1 ? errors.length : after, 0, { code: "model_not_found", message: `The provided model '${echo(model.name)}' is not supported by the upstream. ${modelsOnOffer(knownModels)}`, param: "body.model", line: model.line })
  }
  if (errors.length === 0) return { _tag: "Valid", model: model!.name, total: state.count, slices: state.slices }
  if (state.omitted > 0) {
    errors.push({ code: "too_many_errors", message: `${state.omitted} more problems were found and are not listed.`, param: null, line: null })
  }
  return { _tag: "Invalid", errors }
}
