/** The wire shapes of the OpenAI Batches API. */
import { ParseResult, Schema } from "effect"
import { Count } from "./List.js"
import * as AST from "effect/SchemaAST"
import { BatchId, FileId, StorableBatchId, StorableFileId } from "./Ids.js"
import { isJsonObject } from "./Json.js"
import { noMisspeltMembers, refusingMisspeltMembers } from "./misspeltNames.js"
import { StorableString } from "./Text.js"

/** The endpoints of OpenAI's Batch API that this service runs (`lineValidation.ts` knows each body's required fields). */
export const StandardEndpoint = Schema.Literal(
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/embeddings",
  "/v1/responses",
  "/v1/moderations",
  "/v1/images/generations"
)
export type StandardEndpoint = typeof StandardEndpoint.Type

/** A batch's endpoint: a standard one, or a path the server's `EXTRA_BATCH_ENDPOINTS` lists. */
export const BatchEndpoint = Schema.String
export type BatchEndpoint = string

/** OpenAI's most requests in one batch: the server's default `MAX_REQUESTS_PER_BATCH`, the CLI's `--max-requests`. */
export const OPENAI_MAX_REQUESTS_PER_BATCH = 50_000

export const BatchStatus = Schema.Literal(
  "validating",
  "failed",
  "in_progress",
  "finalizing",
  "completed",
  "expired",
  "cancelling",
  "cancelled"
)
export type BatchStatus = typeof BatchStatus.Type

export const terminalStatuses: ReadonlyArray<BatchStatus> = ["failed", "completed", "expired", "cancelled"]
/** Statuses a batch still has work in. */
export const activeStatuses: ReadonlyArray<BatchStatus> = ["validating", "in_progress", "finalizing", "cancelling"]

export const BatchError = Schema.Struct({
  code: Schema.String,
  message: Schema.String,
  param: Schema.NullOr(Schema.String),
  line: Schema.NullOr(Schema.Number)
})
export type BatchError = typeof BatchError.Type

export const BatchErrors = Schema.Struct({
  object: Schema.Literal("list"),
  data: Schema.Array(BatchError)
})

export const RequestCounts = Schema.Struct({
  total: Schema.Number,
  completed: Schema.Number,
  failed: Schema.Number
})

export const BatchUsage = Schema.Struct({
  input_tokens: Schema.Number,
  input_tokens_details: Schema.Struct({ cached_tokens: Schema.Number }),
  output_tokens: Schema.Number,
  output_tokens_details: Schema.Struct({ reasoning_tokens: Schema.Number }),
  total_tokens: Schema.Number
})
export type BatchUsage = typeof BatchUsage.Type

/** Metadata: at most 16 string pairs, keys up to 64 characters, values up to 512. */
export const Metadata = Schema.Record({ key: Schema.String, value: Schema.String })

export class Batch extends Schema.Class<Batch>("Batch")({
  id: BatchId,
  object: Schema.Literal("batch"),
  endpoint: BatchEndpoint,
  model: Schema.NullOr(Schema.String),
  errors: Schema.NullOr(BatchErrors),
  input_file_id: FileId,
  completion_window: Schema.String,
  status: BatchStatus,
  output_file_id: Schema.NullOr(FileId),
  error_file_id: Schema.NullOr(FileId),
  created_at: Schema.Number,
  in_progress_at: Schema.NullOr(Schema.Number),
  expires_at: Schema.Number,
  finalizing_at: Schema.NullOr(Schema.Number),
  completed_at: Schema.NullOr(Schema.Number),
  failed_at: Schema.NullOr(Schema.Number),
  expired_at: Schema.NullOr(Schema.Number),
  cancelling_at: Schema.NullOr(Schema.Number),
  cancelled_at: Schema.NullOr(Schema.Number),
  request_counts: RequestCounts,
  usage: BatchUsage,
  metadata: Schema.NullOr(Metadata)
}) {}

export class BatchList extends Schema.Class<BatchList>("BatchList")({
  object: Schema.Literal("list"),
  data: Schema.Array(Batch),
  first_id: Schema.NullOr(Schema.String),
  last_id: Schema.NullOr(Schema.String),
  has_more: Schema.Boolean
}) {}

/** Checked by `validateCreateBatch`: a `Schema.Record` would silently drop a `__proto__` key. */
const MetadataParam = Schema.optional(Schema.NullOr(Schema.Unknown.annotations({
  jsonSchema: { type: "object", additionalProperties: { type: "string" }, maxProperties: 16 }
})))

/** llama-stack's extension: the same key with the same parameters returns the same batch. */
const IdempotencyKeyParam = Schema.optional(Schema.NullOr(StorableString))

/**
 * Inline requests: an array, its elements unchecked here (they are the input file's lines, validated as a file's).
 * An array schema of unknowns decoded each element in turn, twice a create: ~250 ms of the event loop for a 1 MiB
 * body of 500,000 small ones.
 */
const InlineRequests = Schema.declare((u: unknown): u is ReadonlyArray<unknown> => Array.isArray(u), {
  title: "an array of requests", // "Expected an array of requests, actual …" (decodeErrors.ts)
  jsonSchema: {
    type: "array",
    items: {
      type: "object",
      required: ["custom_id", "method", "url", "body"],
      properties: {
        custom_id: { type: "string" },
        method: { type: "string", enum: ["POST"] },
        url: { type: "string" },
        body: { type: "object" }
      }
    }
  }
})

const CreateBatchFields = Schema.Struct({
  /** Required, as on OpenAI, unless `requests` is given (`CreateBatchBody`; `inputOf` in `batches/inlineInput.ts`). */
  input_file_id: Schema.optional(StorableFileId).annotations({
    description: "The uploaded input file (purpose `batch`); required unless `requests` is given"
  }),
  endpoint: Schema.String,
  completion_window: Schema.String,
  metadata: MetadataParam,
  output_expires_after: Schema.optional(Schema.NullOr(Schema.Struct({
    anchor: Schema.String,
    seconds: Schema.Number
  }))),
  idempotency_key: IdempotencyKeyParam,
  /** The inline-requests extension: the input lines as objects, stored as the batch's input file. */
  requests: Schema.optional(Schema.NullOr(InlineRequests).annotations({
    description: "(extension) The input lines as objects, instead of input_file_id: stored as the input file"
  }))
})

/**
 * A body with neither `input_file_id` nor `requests` fails on `input_file_id` before anything else, as it did
 * when `input_file_id` was simply required: an OpenAI client sees the same error as from OpenAI.
 * A misspelt member (`output_expire_after`) fails before that (`misspeltNames.ts`).
 */
const namesItsInput = noMisspeltMembers(Object.keys(CreateBatchFields.fields)).pipe(Schema.filter((body) =>
  !isJsonObject(body) || body.input_file_id !== undefined || (body.requests !== undefined && body.requests !== null) ||
  new ParseResult.Pointer("input_file_id", body, new ParseResult.Missing(new AST.Type(AST.stringKeyword)))
))

/**
 * Body of `POST /v1/batches`. Types are checked here; allowed values (endpoint, window, metadata limits) are
 * checked by `validateCreateBatch` so that the error names the parameter the way OpenAI does. Its JSON schema (the
 * OpenAPI document's) is the fields'.
 */
export const CreateBatchBody = Schema.compose(namesItsInput, CreateBatchFields, { strict: false }).annotations({
  [AST.SurrogateAnnotationId]: CreateBatchFields.ast
})
export type CreateBatchBody = typeof CreateBatchBody.Type

/** What a rerun reruns: failed requests, those a window's end or a cancel left unrun. */
export const RerunKind = Schema.Literal("error", "expired", "cancelled")
export type RerunKind = typeof RerunKind.Type

/** Body of `POST /v1/batches/{batch_id}/retry` (an extension), which may be empty. */
export const RetryBatchBody = Schema.NullOr(refusingMisspeltMembers(Schema.Struct({
  /** Which requests to rerun; all three kinds when left out. */
  only: Schema.optional(Schema.Array(RerunKind)),
  /** Replaces the original's metadata (to which `retry_of` is added). */
  metadata: MetadataParam,
  idempotency_key: IdempotencyKeyParam
})))
export type RetryBatchBody = typeof RetryBatchBody.Type

export class ListBatchesParams extends Schema.Class<ListBatchesParams>("ListBatchesParams")({
  limit: Schema.optional(Count(1, 100, "At most this many batches (1–100, default 20)")),
  after: Schema.optional(StorableBatchId)
}) {}
