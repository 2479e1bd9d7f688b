/**
 * `submit`'s check of the input file before anything is uploaded: the file streamed through the server's own
 * splitter (`lines.ts`) and validation fold (`inputValidation.ts`), so the problems have the codes, messages and
 * line numbers the server would give. Memory stays bounded: one line at a time, the rows the fold makes dropped
 * as they come; only the set of `custom_id`s grows, as on the server.
 *
 * What the server refuses before it reads a line is checked too: a name not `.jsonl`, an endpoint that is no `/v1/…`
 * path. What depends on the server's settings and upstreams is left to it: the model list (`model_not_found`) and the input
 * size limit (`file_too_large`). Its most requests a batch (`MAX_REQUESTS_PER_BATCH`) is the caller's to give
 * (`submit --max-requests`, OpenAI's limit by default).
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "node:path"
import type { BatchError } from "openai/resources/batches"
import { Effect, Option, Stream } from "effect"
import * as Input from "../batches/inputValidation.js"
import { type JsonlLine, jsonlLines, MAX_LINE_BYTES } from "../batches/lines.js"
import { OPENAI_MAX_REQUESTS_PER_BATCH } from "../domain/Batches.js"
import { BATCH_FORMAT_MESSAGE, isBatchInputName } from "../domain/Files.js"
import { batchRequestId } from "../domain/Ids.js"
import { isJsonObject } from "../domain/Json.js"
import { CliFailure, EXIT_INVALID } from "./failure.js"

export const DEFAULT_ENDPOINT = "/v1/chat/completions"
/** The most requests a batch may hold when the server's own limit is not given: OpenAI's. */
export const DEFAULT_MAX_REQUESTS = OPENAI_MAX_REQUESTS_PER_BATCH

export interface LocalCheck {
  /** The endpoint the file was checked against (and the batch will be created for). */
  readonly endpoint: string
  /** Valid requests found. */
  readonly requests: number
  /**
   * Every problem, as the server would refuse the upload or the create, or list them in the failed batch's
   * `errors.data` (whose last `too_many_errors` entry counts those not listed); empty when none.
   */
  readonly problems: ReadonlyArray<BatchError>
  /** How many problems were found, those not listed included. */
  readonly found: number
}

/**
 * What the server refuses before it reads a line: a file not named `.jsonl` (the upload), an endpoint that is no
 * `/v1/…` path (the create; which `/v1/` paths it runs is the server's to say).
 */
const fileProblems = (path: string, endpoint: string): Array<BatchError> => [
  ...(isBatchInputName(Path.basename(path))
    ? []
    : [{ code: "invalid_file_format", message: BATCH_FORMAT_MESSAGE, param: "file", line: null }]),
  ...(endpoint.startsWith("/v1/")
    ? []
    : [{ code: "invalid_value", message: `Invalid endpoint '${endpoint}': an endpoint is a /v1/… path, such as ${DEFAULT_ENDPOINT}.`, param: "endpoint", line: null }])
]


/**
 * The `url` of the file's first request, when one names it: the endpoint a file is meant for. A line that is no
 * request (not JSON, no `url`) is passed over: a first line that did not parse set the endpoint to chat's, and every
 * other line was then an `invalid_url` too.
 */
const firstUrl = (lines: Stream.Stream<JsonlLine, CliFailure>) =>
  lines.pipe(
    Stream.filterMap((l) => l._tag === "Line" ? requestUrl(l.text) : Option.none()),
    Stream.runHead
  )

const requestUrl = (text: string): Option.Option<string> => {
  try {
    const parsed: unknown = JSON.parse(text)
    return isJsonObject(parsed) && typeof parsed.url === "string" ? Option.some(parsed.url) : Option.none()
  } catch {
    return Option.none()
  }
}

/**
 * Checks `path` against `endpoint`, or, when none is given, against the `url` of its first request (else
 * `/v1/chat/completions`), with at most `maxRequests` requests.
 */
export const checkFile = (path: string, endpoint: Option.Option<string>, maxRequests: number) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const lines = fs.stream(path).pipe(
      Stream.mapError((e) => new CliFailure({ exitCode: EXIT_INVALID, message: `cannot read ${path}: ${e.message}` })),
      jsonlLines(MAX_LINE_BYTES)
    )
    const chosen = Option.isSome(endpoint)
      ? endpoint.value
      : Option.getOrElse(yield* firstUrl(lines), () => DEFAULT_ENDPOINT)
    let state = Input.initial({
      endpoint: chosen,
      maxRequests,
      maxLineBytes: MAX_LINE_BYTES,
      resultId: batchRequestId
    })
    yield* Stream.runForEachChunk(lines, (items) =>
      Effect.sync(() => {
        for (const item of items) state = Input.step(state, item)
        Input.takeRows(state) // not stored here: dropped as they come
      }))
    const verdict = Input.verdict(state)
    const problems = [...fileProblems(path, chosen), ...(verdict._tag === "Invalid" ? verdict.errors : [])]
    return {
      endpoint: chosen,
      requests: state.count,
      problems,
      found: problems.filter((p) => p.code !== "too_many_errors").length + state.omitted
    } satisfies LocalCheck
  })
