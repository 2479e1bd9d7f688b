/**
 * The rows of the `uploads` table (migrations 0008, 0010), the Upload objects a client sees of them, and the errors
 * that name their status.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Data } from "effect"
import type { FileObject } from "../domain/Files.js"
import type { FileId, UploadId } from "../domain/Ids.js"
import { Upload, type UploadStatus } from "../domain/Uploads.js"

/** An upload's status as stored: the wire's, and `completing` while a complete assembles it. */
export type StoredStatus = UploadStatus | "completing"

export class UploadNotFound extends Data.TaggedError("UploadNotFound")<{ readonly id: UploadId }> {}
/** The upload takes no parts, complete or cancel: it is `status` (`completing`: being completed right now). */
export class UploadClosed extends Data.TaggedError("UploadClosed")<{ readonly id: UploadId; readonly status: StoredStatus }> {}

export type UploadRow = {
  readonly id: UploadId
  readonly project: string
  readonly status: StoredStatus
  readonly bytes: number | string
  readonly parts_bytes: number | string
  readonly parts_count: number | string
  readonly filename: string
  readonly purpose: string
  readonly mime_type: string
  readonly file_expires_after: number | string | null
  readonly created_at: number | string
  readonly expires_at: number | string
  readonly file_id: FileId | null
  readonly completing_owner: string | null
  /** Until when (epoch ms) the claim of a `completing` upload holds; its node renews it while it assembles. */
  readonly completing_until: number | string | null
  /** The `partIdsDigest` of the part ids of the complete that claimed it (or completed it). */
  readonly part_ids_digest: string | null
}

/**
 * Whether the upload is `completing` under a claim that lapsed at `nowMs`: its node stopped renewing it (it died), or
 * it was claimed before claims had a time (migration 0010). Such an upload is pending again.
 */
export const claimLapsed = (row: UploadRow, nowMs: number): boolean =>
  row.status === "completing" && (row.completing_until === null || Number(row.completing_until) < nowMs)

/** `claimLapsed` as a condition on the `uploads` table's row. */
export const claimLapsedSql = (sql: SqlClient.SqlClient, nowMs: number) =>
  sql`(status = 'completing' AND (completing_until IS NULL OR completing_until < ${nowMs}))`

/**
 * The status as it stands at `now` (unix seconds): a pending upload past its hour is `expired`, and so is one whose
 * completion's claim lapsed. A client sees `completing` as `pending` (`toUpload`).
 */
export const shownStatus = (row: UploadRow, now: number): StoredStatus =>
  (row.status === "pending" || claimLapsed(row, now * 1000)) && Number(row.expires_at) <= now ? "expired" : row.status

/** The Upload object a client sees of a row (Postgres returns BIGINT as a string). */
export const toUpload = (row: UploadRow, now: number, file: FileObject | null = null): Upload => {
  const status = shownStatus(row, now)
  return new Upload({
    id: row.id,
    object: "upload",
    bytes: Number(row.bytes),
    created_at: Number(row.created_at),
    filename: row.filename,
    purpose: row.purpose,
    status: status === "completing" ? "pending" : status,
    expires_at: Number(row.expires_at),
    file
  })
}
