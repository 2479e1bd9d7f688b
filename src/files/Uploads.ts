/**
 * Uploads (OpenAI's Uploads API): a file sent in parts, possibly in parallel, then assembled into an ordinary File.
 * Metadata rows in SQL (`uploads`, `upload_parts`); each part's bytes are a blob of the `BlobStore` under its part
 * id. Completing streams the named parts, in order, into a new file through `FileStore`: never whole in memory.
 *
 * Statuses as stored: `pending` (takes parts), `completing` (a complete is assembling it: it takes no parts, no
 * second complete and no cancel; shown as `pending`), `completed`, `cancelled`, `expired`. A pending upload past its
 * hour shows as `expired` at once; the sweep (every `FILE_SWEEP_INTERVAL`, beside the files' own) stores that and
 * deletes the parts of every upload that takes no more.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Context, Data, Effect, Exit, Layer, type Scope, Stream } from "effect"
import { createHash } from "node:crypto"
import { AppConfig } from "../Config.js"
import { type UploadId, uploadId, type UploadPartId, uploadPartId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { echo } from "../domain/Text.js"
import { MAX_PART_BYTES, MAX_PARTS_PER_UPLOAD, type Upload, UPLOAD_LIFETIME_SECONDS, UploadPart } from "../domain/Uploads.js"
import { BlobStore } from "../storage/BlobStore.js"
import { nowSeconds, visibleTo } from "../storage/Sql.js"
import { FileStore, sweepEvery } from "./FileStore.js"
import { shownStatus, type StoredStatus, toUpload, type UploadRow } from "./uploadRows.js"

export class UploadNotFound extends Data.TaggedError("UploadNotFound")<{ readonly id: UploadId }> {}
/** The upload takes no parts, complete or cancel: it is `status` (`completing`: being completed right now). */
export class UploadClosed extends Data.TaggedError("UploadClosed")<{ readonly id: UploadId; readonly status: StoredStatus }> {}
/** A part the upload has no room for (too many parts, or bytes far beyond the upload's). */
export class PartRefused extends Data.TaggedError("PartRefused")<{ readonly message: string }> {}
/** The parts a complete names do not make the upload; `param` names what is wrong. */
export class PartsMismatch extends Data.TaggedError("PartsMismatch")<{
  readonly message: string
  readonly param: "part_ids" | "md5"
}> {}

export interface NewUpload {
  readonly project: string
  readonly bytes: number
  readonly filename: string
  readonly purpose: string
  readonly mimeType: string
  /** Seconds after its creation at which the completed File expires; none: never. */
  readonly fileExpiresAfterSeconds?: number | undefined
}

/** A part's bytes, stored under its id and not yet added to any upload. */
export interface StagedPart {
  readonly id: UploadPartId
  readonly bytes: number
}

export interface PartWriter {
  readonly write: (chunk: Uint8Array) => Effect.Effect<void>
  /** Stores the bytes written under a new part id. */
  readonly finish: Effect.Effect<StagedPart>
}

export interface UploadsShape {
  readonly create: (upload: NewUpload) => Effect.Effect<Upload>
  /** How many bytes of parts the upload may still take (its `bytes` plus one part's maximum, for retried parts). */
  readonly partRoom: (id: UploadId, visibility: Visibility) => Effect.Effect<number, UploadNotFound | UploadClosed | PartRefused>
  /** Opens a part's storage; its bytes disappear with the scope unless `addPart` added them to an upload. */
  readonly openPart: Effect.Effect<PartWriter, never, Scope.Scope>
  readonly addPart: (id: UploadId, visibility: Visibility, part: StagedPart) => Effect.Effect<
    UploadPart,
    UploadNotFound | UploadClosed | PartRefused
  >
  /** Assembles the named parts, in order, into a File (checked against `md5` when given); the parts are then deleted. */
  readonly complete: (
    id: UploadId,
    visibility: Visibility,
    partIds: ReadonlyArray<string>,
    md5: string | undefined
  ) => Effect.Effect<Upload, UploadNotFound | UploadClosed | PartsMismatch>
  /** Cancels a pending upload and deletes its parts; cancelling a cancelled upload gives it again. */
  readonly cancel: (id: UploadId, visibility: Visibility) => Effect.Effect<Upload, UploadNotFound | UploadClosed>
  /** Expires uploads past their hour and deletes the parts of every upload that takes no more; returns how many. */
  readonly sweep: Effect.Effect<number>
}

export class Uploads extends Context.Tag("Uploads")<Uploads, UploadsShape>() {}

/** A completion claimed by a node that stopped answering is given up this long after the upload's expiry. */
const STALE_COMPLETION_SECONDS = 24 * 3600
const SWEEP_GROUP = 100

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const blobs = yield* BlobStore
  const files = yield* FileStore
  const { nodeId } = yield* AppConfig

  const columns = sql.literal(
    "id, project, status, bytes, filename, purpose, mime_type, file_expires_after, created_at, expires_at, file_id, completing_owner"
  )
  const visible = (visibility: Visibility) => visibleTo(sql, visibility)
  // On Postgres a part's insert locks its upload row, so a complete claiming the upload at that moment sees the part.
  const lockUpload = sql.onDialectOrElse({ pg: () => sql.literal("FOR SHARE"), orElse: () => sql.literal("") })

  const read = (id: UploadId, visibility: Visibility) =>
    Effect.flatMap(
      sql<UploadRow>`SELECT ${columns} FROM uploads WHERE id = ${id} AND ${visible(visibility)}`.pipe(Effect.orDie),
      (rows) => (rows.length === 0 ? Effect.fail(new UploadNotFound({ id })) : Effect.succeed(rows[0]!))
    )

  /** Why an upload refused a change: missing, or not (or no longer) pending. */
  const refusal = (id: UploadId, visibility: Visibility) =>
    Effect.gen(function*() {
      const row = yield* read(id, visibility)
      return yield* new UploadClosed({ id, status: shownStatus(row, yield* nowSeconds) })
    })

  /** Deletes the parts of an upload, rows then bytes (bytes left by a crash in between go with the orphans at start). */
  const discardParts = (id: UploadId) =>
    Effect.gen(function*() {
      const removed = yield* sql<{ id: string }>`DELETE FROM upload_parts WHERE upload_id = ${id} RETURNING id`
      yield* Effect.forEach(removed, (part) => blobs.remove(part.id), { discard: true, concurrency: 8 })
    }).pipe(Effect.orDie, Effect.uninterruptible)

  const create = (upload: NewUpload) =>
    Effect.gen(function*() {
      const created_at = yield* nowSeconds
      const row: UploadRow = {
        id: uploadId(),
        project: upload.project,
        status: "pending",
        bytes: upload.bytes,
        filename: upload.filename,
        purpose: upload.purpose,
        mime_type: upload.mimeType,
        file_expires_after: upload.fileExpiresAfterSeconds ?? null,
        created_at,
        expires_at: created_at + UPLOAD_LIFETIME_SECONDS,
        file_id: null,
        completing_owner: null
      }
      yield* sql`INSERT INTO uploads ${sql.insert(row)}`.pipe(Effect.orDie)
      return toUpload(row, created_at)
    }).pipe(Effect.withSpan("Uploads.create"))

  const partRoom = (id: UploadId, visibility: Visibility) =>
    Effect.gen(function*() {
      const row = yield* read(id, visibility)
      const status = shownStatus(row, yield* nowSeconds)
      if (status !== "pending") return yield* new UploadClosed({ id, status })
      const [stored] = yield* sql<{ n: number | string; total: number | string }>`
        SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS total FROM upload_parts WHERE upload_id = ${id}`.pipe(Effect.orDie)
      if (Number(stored!.n) >= MAX_PARTS_PER_UPLOAD) {
        return yield* new PartRefused({ message: `Upload ${id} already has ${MAX_PARTS_PER_UPLOAD} parts, the most an upload may have.` })
      }
      const room = Number(row.bytes) + MAX_PART_BYTES - Number(stored!.total)
      if (room <= 0) {
        return yield* new PartRefused({ message: `The parts of upload ${id} already hold ${stored!.total} bytes; it was created for ${row.bytes}.` })
      }
      return room
    }).pipe(Effect.withSpan("Uploads.partRoom", { attributes: { id } }))

  /** Removes a part's bytes unless its row says it belongs to an upload. */
  const discardUnlisted = (id: UploadPartId) =>
    Effect.gen(function*() {
      const listed = yield* sql`SELECT 1 FROM upload_parts WHERE id = ${id}`
      if (listed.length === 0) yield* blobs.remove(id)
    }).pipe(Effect.orDie)

  const openPart = Effect.gen(function*() {
    const writer = yield* blobs.openStaging
    const id = uploadPartId()
    let published = false
    // Runs before the staging area's own finalizer: a part published but never added to an upload is removed.
    yield* Effect.addFinalizer(() => (published ? discardUnlisted(id) : Effect.void))
    const finish = Effect.gen(function*() {
      const staged = yield* writer.finish
      yield* blobs.publish(staged, id)
      published = true
      return { id, bytes: staged.bytes } satisfies StagedPart
    }).pipe(Effect.uninterruptible)
    return { write: writer.write, finish } satisfies PartWriter
  })

  const addPart = (id: UploadId, visibility: Visibility, part: StagedPart) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      // The conditions of `partRoom` again, in the insert: parts arriving in parallel are each checked against the
      // others, and a complete or cancel that moved first wins.
      const inserted = yield* sql<{ id: UploadPartId }>`
        INSERT INTO upload_parts (id, upload_id, bytes, created_at)
        SELECT ${part.id}, u.id, ${part.bytes}, ${now} FROM uploads u
        WHERE u.id = ${id} AND u.status = 'pending' AND u.expires_at > ${now} AND ${visible(visibility)}
          AND (SELECT COUNT(*) FROM upload_parts p WHERE p.upload_id = u.id) < ${MAX_PARTS_PER_UPLOAD}
          AND (SELECT COALESCE(SUM(p.bytes), 0) FROM upload_parts p WHERE p.upload_id = u.id) + ${part.bytes}
            <= u.bytes + ${MAX_PART_BYTES}
        ${lockUpload}
        RETURNING id`.pipe(Effect.orDie)
      if (inserted.length === 0) {
        yield* partRoom(id, visibility)
        return yield* new PartRefused({ message: `Upload ${id} has no room for a part of ${part.bytes} bytes.` })
      }
      return new UploadPart({ id: part.id, object: "upload.part", created_at: now, upload_id: id })
    }).pipe(Effect.uninterruptible, Effect.withSpan("Uploads.addPart", { attributes: { id } }))

  /** The named parts, checked: each the upload's, none twice, adding up to its bytes. */
  const namedParts = (row: UploadRow, partIds: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const stored = yield* sql<{ id: UploadPartId; bytes: number | string }>`
        SELECT id, bytes FROM upload_parts WHERE upload_id = ${row.id}`.pipe(Effect.orDie)
      const sizes = new Map(stored.map((p) => [p.id as string, Number(p.bytes)]))
      const seen = new Set<string>()
      let total = 0
      for (const partId of partIds) {
        const size = sizes.get(partId)
        if (size === undefined) {
          return yield* new PartsMismatch({ message: `Upload ${row.id} has no part '${echo(partId)}'.`, param: "part_ids" })
        }
        if (seen.has(partId)) {
          return yield* new PartsMismatch({ message: `Part '${echo(partId)}' is named more than once.`, param: "part_ids" })
        }
        seen.add(partId)
        total += size
      }
      if (total !== Number(row.bytes)) {
        return yield* new PartsMismatch({
          message: `The parts add up to ${total} bytes, but upload ${row.id} was created with bytes ${row.bytes}.`,
          param: "part_ids"
        })
      }
      return partIds as ReadonlyArray<UploadPartId>
    })

  /** Streams the parts into a new file's staging area, then publishes it and marks the upload completed, together. */
  const assemble = (row: UploadRow, partIds: ReadonlyArray<UploadPartId>, md5: string | undefined) =>
    Effect.scoped(Effect.gen(function*() {
      const writer = yield* files.openUpload
      const hash = createHash("md5")
      for (const partId of partIds) {
        yield* Stream.runForEach(blobs.read(partId), (chunk) => {
          hash.update(chunk)
          return writer.write(chunk)
        })
      }
      const staged = yield* writer.finish
      const digest = hash.digest("hex")
      if (md5 !== undefined && digest !== md5.toLowerCase()) {
        return yield* new PartsMismatch({
          message: `The MD5 of the parts (${digest}) does not match the md5 given (${echo(md5)}).`,
          param: "md5"
        })
      }
      // One transaction: the file is listed exactly when the upload says it is completed.
      return yield* Effect.gen(function*() {
        const file = yield* files.commit(staged, {
          filename: row.filename,
          purpose: row.purpose,
          project: row.project,
          expiresAfterSeconds: row.file_expires_after === null ? undefined : Number(row.file_expires_after)
        })
        const done = yield* sql`UPDATE uploads SET status = 'completed', file_id = ${file.id}, completing_owner = NULL
          WHERE id = ${row.id} AND status = 'completing' RETURNING id`
        // The claim is this fiber's until it ends (only this node's restart releases it): losing it is a bug.
        if (done.length === 0) return yield* Effect.dieMessage(`Upload ${row.id} lost its completion claim`)
        return file
      }).pipe(sql.withTransaction, Effect.catchTag("SqlError", Effect.die))
    }))

  const complete = (id: UploadId, visibility: Visibility, partIds: ReadonlyArray<string>, md5: string | undefined) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const claimed = yield* sql<UploadRow>`
        UPDATE uploads SET status = 'completing', completing_owner = ${nodeId}
        WHERE id = ${id} AND status = 'pending' AND expires_at > ${now} AND ${visible(visibility)}
        RETURNING ${columns}`.pipe(Effect.orDie)
      if (claimed.length === 0) return yield* refusal(id, visibility)
      const row = claimed[0]!
      // Any failure or interruption (a client gone mid-assembly) gives the upload back, pending, to complete again.
      const file = yield* Effect.flatMap(namedParts(row, partIds), (parts) => assemble(row, parts, md5)).pipe(
        Effect.onExit((exit) =>
          Exit.isSuccess(exit) ? Effect.void : sql`UPDATE uploads SET status = 'pending', completing_owner = NULL
            WHERE id = ${id} AND status = 'completing'`.pipe(Effect.orDie))
      )
      yield* discardParts(id)
      return toUpload({ ...row, status: "completed", file_id: file.id }, now, file)
    }).pipe(Effect.withSpan("Uploads.complete", { attributes: { id } }))

  const cancel = (id: UploadId, visibility: Visibility) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const moved = yield* sql<UploadRow>`
        UPDATE uploads SET status = 'cancelled'
        WHERE id = ${id} AND status = 'pending' AND expires_at > ${now} AND ${visible(visibility)}
        RETURNING ${columns}`.pipe(Effect.orDie)
      if (moved.length === 0) {
        const row = yield* read(id, visibility)
        if (row.status === "cancelled") return toUpload(row, now)
        return yield* refusal(id, visibility)
      }
      yield* discardParts(id)
      return toUpload(moved[0]!, now)
    }).pipe(Effect.uninterruptible, Effect.withSpan("Uploads.cancel", { attributes: { id } }))

  const sweep = Effect.gen(function*() {
    const now = yield* nowSeconds
    yield* sql`UPDATE uploads SET status = 'expired', completing_owner = NULL
      WHERE (status = 'pending' AND expires_at <= ${now})
        OR (status = 'completing' AND expires_at <= ${now - STALE_COMPLETION_SECONDS})`
    let swept = 0
    while (true) {
      const closed = yield* sql<{ upload_id: UploadId }>`
        SELECT DISTINCT p.upload_id FROM upload_parts p JOIN uploads u ON u.id = p.upload_id
        WHERE u.status IN ('completed', 'cancelled', 'expired') LIMIT ${SWEEP_GROUP}`
      if (closed.length === 0) return swept
      yield* Effect.forEach(closed, (r) => discardParts(r.upload_id), { discard: true })
      swept += closed.length
    }
  }).pipe(Effect.orDie, Effect.withSpan("Uploads.sweep"))

  /** Completions this node was running when it stopped (with SQLite, the only node: all of them) are given back. */
  const releaseOwnClaims = sql`UPDATE uploads SET status = 'pending', completing_owner = NULL
    WHERE status = 'completing' AND ${
    sql.onDialectOrElse({ sqlite: () => sql`1 = 1`, orElse: () => sql`completing_owner = ${nodeId}` })
  }`.pipe(Effect.orDie)

  return {
    service: Uploads.of({ create, partRoom, openPart, addPart, complete, cancel, sweep }),
    releaseOwnClaims
  }
})

/** The live service: gives back this node's interrupted completions at start, then sweeps with the files' sweep. */
export const UploadsLive: Layer.Layer<Uploads, never, SqlClient.SqlClient | BlobStore | FileStore | AppConfig> = Layer
  .scoped(
    Uploads,
    Effect.gen(function*() {
      const { service, releaseOwnClaims } = yield* make
      yield* releaseOwnClaims
      yield* sweepEvery(service.sweep, "Upload expiry sweep failed")
      return service
    })
  )
