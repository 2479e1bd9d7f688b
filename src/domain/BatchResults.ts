/** The query of `GET /v1/batches/{id}/results` (an extension: results while a batch runs). */
import { Schema } from "effect"
import { Count } from "./List.js"

/** Lines one response holds at most (`limit`), and when `limit` is left out. */
const MAX_RESULT_LINES = 10_000
export const DEFAULT_RESULT_LINES = 1_000

/** The largest input line number (lines are SQL `INTEGER`s). */
const MAX_LINE = 2_147_483_647

/** A plain struct, not a class: the OpenAPI document lists a struct's fields as query parameters. */
export const BatchResultsParams = Schema.Struct({
  kind: Schema.optional(Schema.Literal("output", "error").annotations({
    message: () => ({ message: "expected 'output' or 'error'", override: true }),
    description: "`output` (default): the output file's lines (2xx answers); `error`: the error file's"
  })),
  after: Schema.optional(
    Count(0, MAX_LINE, "Only lines whose input line number is greater (default 0): the last `x-next-after` received")
  ),
  limit: Schema.optional(
    Count(1, MAX_RESULT_LINES, `At most this many lines (1–${MAX_RESULT_LINES}, default ${DEFAULT_RESULT_LINES})`)
  )
})
export type BatchResultsParams = typeof BatchResultsParams.Type
