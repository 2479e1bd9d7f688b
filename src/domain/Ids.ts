/**
 * Identifier formats of the objects this service hands out, shaped like OpenAI's, and their brands: a file id, a
 * batch id and a result line id are distinct types, so one cannot be passed where another is expected. A brand is
 * a type only (its schema checks and changes nothing at run time); ids enter branded from the generators below,
 * from rows typed with the brands, and at the HTTP edge through `StorableFileId`/`StorableBatchId`.
 */
import { Schema } from "effect"
import { createHash, randomFillSync } from "node:crypto"
import { StorableString } from "./Text.js"

/** A file id (`file-…`). */
export const FileId = Schema.String.pipe(Schema.brand("FileId"))
export type FileId = typeof FileId.Type
/** A batch id (`batch_…`). */
export const BatchId = Schema.String.pipe(Schema.brand("BatchId"))
export type BatchId = typeof BatchId.Type
/** The id of one line of an output or error file (`batch_req_…`). */
export const BatchRequestId = Schema.String.pipe(Schema.brand("BatchRequestId"))
export type BatchRequestId = typeof BatchRequestId.Type
/** An upload id (`upload_…`, the Uploads API). */
export const UploadId = Schema.String.pipe(Schema.brand("UploadId"))
export type UploadId = typeof UploadId.Type
/** The id of one part of an upload (`part_…`). */
export const UploadPartId = Schema.String.pipe(Schema.brand("UploadPartId"))
export type UploadPartId = typeof UploadPartId.Type

/**
 * A file id as a client sends it (path parameter, cursor, `input_file_id`): any `StorableString`, branded (an
 * unknown id is just not found).
 */
export const StorableFileId = StorableString.pipe(Schema.compose(FileId))
/** A batch id as a client sends it (path parameter, cursor): a `StorableString`, branded. */
export const StorableBatchId = StorableString.pipe(Schema.compose(BatchId))
/** An upload id as a client sends it (path parameter): a `StorableString`, branded. */
export const StorableUploadId = StorableString.pipe(Schema.compose(UploadId))

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

/**
 * Random bytes from a pool refilled 4 KiB at a time: a call into the system's generator per id cost more than
 * the rest of validating a line (one id per request).
 */
const pool = Buffer.alloc(4096)
let used = pool.length
const randomBytes = (n: number): Buffer => {
  if (n > pool.length) return randomFillSync(Buffer.alloc(n))
  if (used + n > pool.length) {
    randomFillSync(pool)
    used = 0
  }
  used += n
  return pool.subarray(used - n, used)
}

/** `n` random base62 characters (rejection sampling keeps them uniform). */
const base62 = (n: number): string => {
  let out = ""
  while (out.length < n) {
    for (const byte of randomBytes(n * 2)) {
      if (byte < 248 && out.length < n) out += BASE62[byte % 62]
    }
  }
  return out
}

const hex = (bytes: number): string => randomBytes(bytes).toString("hex")

// The generators mint their ids by assertion: a brand's `make` would check each (one per request line).

/** `file-` + 24 base62 characters. */
export const fileId = (): FileId => `file-${base62(24)}` as FileId
/** A file id derived from `seed`: the same seed always gives the same id (see `FileMetadata.id`). */
export const derivedFileId = (seed: string): FileId => {
  const digest = createHash("sha256").update(seed).digest()
  let out = ""
  for (let i = 0; out.length < 24; i++) out += BASE62[digest[i % digest.length]! % 62]
  return `file-${out}` as FileId
}

/** `upload_` + 24 base62 characters. */
export const uploadId = (): UploadId => `upload_${base62(24)}` as UploadId
/** `part_` + 24 base62 characters. */
export const uploadPartId = (): UploadPartId => `part_${base62(24)}` as UploadPartId

/** `batch_` + 32 hex characters. */
export const batchId = (): BatchId => `batch_${hex(16)}` as BatchId
/** `batch_req_` + 32 hex characters: the id of one line of an output or error file. */
export const batchRequestId = (): BatchRequestId => `batch_req_${hex(16)}` as BatchRequestId
/** `req_` + 32 hex characters: the `x-request-id` of a response. */
export const requestId = (): string => `req_${hex(16)}`
/** `evt_` + 32 hex characters: a webhook event's id (its `webhook-id`). */
export const eventId = (): string => `evt_${hex(16)}`
