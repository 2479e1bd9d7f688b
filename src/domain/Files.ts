/** The wire shapes of the OpenAI Files API. */
import { Schema } from "effect"
import { Count } from "./List.js"
import { echo } from "./Text.js"
import { FileId, StorableFileId } from "./Ids.js"

/** Purposes a client may upload with. */
export const UploadPurpose = Schema.Literal(
  "batch",
  "batch_output",
  "fine-tune",
  "assistants",
  "vision",
  "user_data",
  "evals"
)
export type UploadPurpose = typeof UploadPurpose.Type

/** OpenAI takes only `.jsonl` files (in any case) as batch input; what it says of another. */
export const isBatchInputName = (filename: string): boolean => filename.toLowerCase().endsWith(".jsonl")
export const BATCH_FORMAT_MESSAGE = "Invalid file format for Batch API. Must be .jsonl"

/** Bounds of `expires_after[seconds]` (one hour to 30 days), as OpenAI. */
export const MIN_EXPIRES_AFTER_SECONDS = 3600
export const MAX_EXPIRES_AFTER_SECONDS = 2_592_000

/**
 * What is wrong with a JSON body's `expires_after` (`param`: its name, `output_expires_after` on a batch), as OpenAI
 * says it; undefined when nothing is. Its form-field twin, all strings, is `uploadChecks.ts`'s.
 */
export const expiresAfterProblem = (
  value: { readonly anchor: string; readonly seconds: number },
  param: string
): { readonly code: "invalid_value"; readonly param: string; readonly message: string } | undefined => {
  if (value.anchor !== "created_at") {
    return {
      code: "invalid_value",
      param: `${param}.anchor`,
      message: `Invalid value: '${echo(value.anchor)}'. Supported values are: 'created_at'.`
    }
  }
  const { seconds } = value
  if (Number.isInteger(seconds) && seconds >= MIN_EXPIRES_AFTER_SECONDS && seconds <= MAX_EXPIRES_AFTER_SECONDS) return undefined
  return {
    code: "invalid_value",
    param: `${param}.seconds`,
    message: `Invalid '${param}.seconds': expected an integer between ${MIN_EXPIRES_AFTER_SECONDS} and ${MAX_EXPIRES_AFTER_SECONDS}.`
  }
}

export class FileObject extends Schema.Class<FileObject>("FileObject")({
  id: FileId,
  object: Schema.Literal("file"),
  bytes: Schema.Number,
  created_at: Schema.Number,
  expires_at: Schema.NullOr(Schema.Number),
  filename: Schema.String,
  purpose: Schema.String,
  /** Deprecated by OpenAI but required: the Node SDK's `waitForProcessing()` polls until `processed`. */
  status: Schema.Literal("uploaded", "processed", "error"),
  status_details: Schema.NullOr(Schema.String)
}) {}

export class FileList extends Schema.Class<FileList>("FileList")({
  object: Schema.Literal("list"),
  data: Schema.Array(FileObject),
  first_id: Schema.NullOr(Schema.String),
  last_id: Schema.NullOr(Schema.String),
  has_more: Schema.Boolean
}) {}

export class FileDeleted extends Schema.Class<FileDeleted>("FileDeleted")({
  id: FileId,
  object: Schema.Literal("file"),
  deleted: Schema.Boolean
}) {}

export const SortOrder = Schema.Literal("asc", "desc").annotations({
  message: () => ({ message: "expected 'asc' or 'desc'", override: true })
})
export type SortOrder = typeof SortOrder.Type

/**
 * The purposes a file may have on OpenAI (uploads' and those its own files get), which a list may filter by: another
 * is a 400 (a typo such as `batch-output` listed nothing, with a 200).
 */
export const FILE_PURPOSES = [
  "assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision", "user_data", "evals"
] as const
const ListedPurpose = Schema.Literal(...FILE_PURPOSES).annotations({
  message: () => ({ message: `expected one of ${FILE_PURPOSES.map((p) => `'${p}'`).join(", ")}`, override: true })
})

/** Query of `GET /v1/files` (URL parameters are strings on the wire). */
export class ListFilesParams extends Schema.Class<ListFilesParams>("ListFilesParams")({
  purpose: Schema.optional(ListedPurpose),
  limit: Schema.optional(Count(1, 10_000, "At most this many files (1–10,000, default 10,000)")),
  order: Schema.optional(SortOrder),
  after: Schema.optional(StorableFileId)
}) {}

/** The multipart fields of `POST /v1/files`, for the OpenAPI document (the handler parses the stream itself). */
export const UploadFileForm = Schema.Struct({
  file: Schema.String.annotations({ jsonSchema: { type: "string", format: "binary" } }),
  purpose: UploadPurpose,
  "expires_after[anchor]": Schema.optional(Schema.Literal("created_at")),
  "expires_after[seconds]": Schema.optional(Schema.String)
})
