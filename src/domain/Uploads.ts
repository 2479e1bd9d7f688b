/** The wire shapes of the OpenAI Uploads API (a large file sent in parts, then assembled into a File). */
import { Schema } from "effect"
import { FileObject } from "./Files.js"
import { UploadId, UploadPartId } from "./Ids.js"
import { refusingMisspeltMembers } from "./misspeltNames.js"
import { StorableString } from "./Text.js"

/** Most bytes one upload may announce, as OpenAI (also bounded by `MAX_UPLOAD_BYTES`). */
export const MAX_UPLOAD_TOTAL_BYTES = 8 * 1024 ** 3
/** Most bytes one part may hold, as OpenAI. */
export const MAX_PART_BYTES = 64 * 1024 ** 2
/** Most parts one upload may hold (stored, and named in a complete). */
export const MAX_PARTS_PER_UPLOAD = 10_000
/** An upload takes parts, and can be completed, for this long after its creation. */
export const UPLOAD_LIFETIME_SECONDS = 3600

/** The MIME types an upload of batch input may announce (for another purpose, any well-formed type: `isMimeType`). */
export const BatchUploadMimeType = Schema.Literal("text/jsonl", "application/jsonl", "application/x-ndjson", "application/json", "text/plain")

/** A `type/subtype` of RFC 6838's characters (parameters such as `; charset=utf-8` allowed), at most 255 characters. */
export const isMimeType = (text: string): boolean =>
  text.length <= 255 && /^[A-Za-z0-9][\w!#$&^.+-]*\/[A-Za-z0-9][\w!#$&^.+-]*(?:[ \t]*;[ \t]*[\w!#$&^.+-]+=(?:[\w!#$&^.+-]+|"[^"\\]*"))*$/.test(text)

export const UploadStatus = Schema.Literal("pending", "completed", "cancelled", "expired")
export type UploadStatus = typeof UploadStatus.Type

export class Upload extends Schema.Class<Upload>("Upload")({
  id: UploadId,
  object: Schema.Literal("upload"),
  bytes: Schema.Number,
  created_at: Schema.Number,
  filename: Schema.String,
  purpose: Schema.String,
  status: UploadStatus,
  expires_at: Schema.Number,
  /** The File the upload became, once `completed`. */
  file: Schema.NullOr(FileObject)
}) {}

export class UploadPart extends Schema.Class<UploadPart>("UploadPart")({
  id: UploadPartId,
  object: Schema.Literal("upload.part"),
  created_at: Schema.Number,
  upload_id: UploadId
}) {}

/**
 * Body of `POST /v1/uploads`. Types are checked here; values (bounds, MIME types, purposes, the file name) by
 * `parseCreateUpload` (`files/uploadChecks.ts`), so that each error names its parameter the way OpenAI does.
 */
export const CreateUploadBody = refusingMisspeltMembers(Schema.Struct({
  bytes: Schema.Number,
  filename: StorableString,
  mime_type: Schema.String,
  purpose: Schema.String,
  /** The expiry of the File the upload becomes (not of the upload, which always lasts an hour). */
  expires_after: Schema.optional(Schema.NullOr(Schema.Struct({ anchor: Schema.String, seconds: Schema.Number })))
}))
export type CreateUploadBody = typeof CreateUploadBody.Type

/** Body of `POST /v1/uploads/{id}/complete`: the parts in the file's order, and optionally the file's MD5. */
export const CompleteUploadBody = refusingMisspeltMembers(Schema.Struct({
  part_ids: Schema.Array(StorableString),
  md5: Schema.optional(Schema.NullOr(Schema.String))
}))
export type CompleteUploadBody = typeof CompleteUploadBody.Type

/** The multipart field of `POST /v1/uploads/{id}/parts`, for the OpenAPI document (the handler streams the body). */
export const UploadPartForm = Schema.Struct({
  data: Schema.String.annotations({ jsonSchema: { type: "string", format: "binary" } })
})
