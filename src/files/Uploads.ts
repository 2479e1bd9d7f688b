/**
 * Uploads (OpenAI's Uploads API): a file sent in parts, possibly in parallel, then assembled into an ordinary File.
 * Metadata rows in SQL (`uploads`, `upload_parts`); each part's bytes are a blob of the `BlobStore` under its part
 * id. Completing (`uploadCompletion.ts`) streams the named parts, in order, into a new file through `FileStore`
 * (`uploadAssembly.ts`): never whole in memory, in a fiber of the service's scope that the request only waits for.
 *
 * Statuses as stored: `pending` (takes parts), `completing` (a complete is assembling it, under a claim renewed like
 * a lease: it takes no parts, no cancel and no complete of other parts until the claim lapses; shown as `pending`),
 * `completed`, `cancelled`, `expired`. A pending upload past its hour, and a completing one past it whose claim
 * lapsed, shows as `expired` at once; the sweep (every `FILE_SWEEP_INTERVAL`, beside the files' own) stores that,
 * deletes the parts of every upload that takes no more, and the rows of those closed for a day past their hour.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, Context, Data, Effect, Layer, Option, Schedule, type Scope } from "effect"
import { AppConfig } from "../Config.js"
import { type UploadId, uploadId, type UploadPartId, uploadPartId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { MAX_PART_BYTES, MAX_PARTS_PER_UPLOAD, type Upload, UPLOAD_LIFETIME_SECONDS, UploadPart } from "../domain/Uploads.js"
import { BlobStore } from "../storage/BlobStore.js"
import { nowSeconds, visibleTo } from "../storage/Sql.js"
import { FileStore, sweepEvery } from "./FileStore.js"
import type { PartsMismatch } from "./uploadAssembly.js"
import { makeCompletion } from "./uploadCompletion.js"
import { claimLapsedSql, shownStatus, toUpload, UploadClosed, UploadNotFound, type UploadRow } from "./uploadRows.js"

export { UploadClosed, UploadNotFound } from "./uploadRows.js"
/** A part the upload has no room for (too many parts, or bytes far beyond the upload's). */
export class PartRefused extends Data.TaggedError("PartRefused")<{ readonly message: string }> {}
/** A part that would take its project past `quota` (`MAX_FILE_BYTES_PER_PROJECT`), `room` bytes being left. */
export class PartOverQuota extends Data.TaggedError("PartOverQuota")<{ readonly quota: number; readonly room: number }> {}

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

/** How many more bytes of parts an upload may take: by its own bound, and by its project's quota. */
export interface PartRoom {
  readonly upload: number
  /** Infinity without `MAX_FILE_BYTES_PER_PROJECT`. */
  readonly quota: number
}

export interface UploadsShape {
  readonly create: (upload: NewUpload) => Effect.Effect<Upload>
  /**
   * How many bytes of parts the upload may still take: its `bytes` plus a slack for retried parts (as much again,
   * at most one part's maximum), and what its project's quota leaves (an upload counts as the larger of its `bytes`
   * and its parts' bytes: see `FileStore.projectBytes`).
   */
  readonly partRoom: (id: UploadId, visibility: Visibility) => Effect.Effect<PartRoom, UploadNotFound | UploadClosed | PartRefused>
  /** Opens a part's storage; its bytes disappear with the scope unless `addPart` added them to an upload. */
  readonly openPart: Effect.Effect<PartWriter, never, Scope.Scope>
  readonly addPart: (id: UploadId, visibility: Visibility, part: StagedPart) => Effect.Effect<
    UploadPart,
    UploadNotFound | UploadClosed | PartRefused | PartOverQuota
  >
  /**
   * Assembles the named parts, in order, into a File (checked against `md5` when given); the parts are then deleted.
   * The assembly goes on when the caller is interrupted (a client hanging up). A complete naming the same parts
   * while it runs waits for its outcome, and after it completed gets the completed upload again (idempotent).
   */
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

/** Bytes of parts an upload may hold beyond its own, for parts sent again: as much again, at most one part. */
const partsSlack = (bytes: number) => Math.min(MAX_PART_BYTES, bytes)
const SWEEP_GROUP = 100
/** How long past its hour a closed upload's row is kept (for a repeated complete or cancel). */
const CLOSED_UPLOAD_KEPT_SECONDS = 86_400

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const blobs = yield* BlobStore
  const files = yield* FileStore
  const { maxFileBytesPerProject } = yield* AppConfig

  const columns = sql.literal(
    "id, project, status, bytes, parts_bytes, parts_count, filename, purpose, mime_type, file_expires_after, created_at, expires_at, file_id, completing_owner, completing_until, part_ids_digest"
  )
  const visible = (visibility: Visibility) => visibleTo(sql, visibility)

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

  const { complete, releaseOwnClaims, renewClaims } = yield* makeCompletion({ columns, discardParts, read, visible })

  const create = (upload: NewUpload) =>
    Effect.gen(function*() {
      const created_at = yield* nowSeconds
      const row: UploadRow = {
        id: uploadId(),
        project: upload.project,
        status: "pending",
        bytes: upload.bytes,
        parts_bytes: 0,
        parts_count: 0,
        filename: upload.filename,
        purpose: upload.purpose,
        mime_type: upload.mimeType,
        file_expires_after: upload.fileExpiresAfterSeconds ?? null,
        created_at,
        expires_at: created_at + UPLOAD_LIFETIME_SECONDS,
        file_id: null,
        completing_owner: null,
        completing_until: null,
        part_ids_digest: null
      }
      yield* sql`INSERT INTO uploads ${sql.insert(row)}`.pipe(Effect.orDie)
      return toUpload(row, created_at)
    }).pipe(Effect.withSpan("Uploads.create"))

  const partRoom = (id: UploadId, visibility: Visibility) =>
    Effect.gen(function*() {
      const row = yield* read(id, visibility)
      const status = shownStatus(row, yield* nowSeconds)
      if (status !== "pending") return yield* new UploadClosed({ id, status })
      if (Number(row.parts_count) >= MAX_PARTS_PER_UPLOAD) {
        return yield* new PartRefused({ message: `Upload ${id} already has ${MAX_PARTS_PER_UPLOAD} parts, the most an upload may have.` })
      }
      const bytes = Number(row.bytes)
      const held = Number(row.parts_bytes)
      const room = bytes + partsSlack(bytes) - held
      if (room <= 0) {
        return yield* new PartRefused({ message: `The parts of upload ${id} already hold ${held} bytes; it was created for ${bytes}.` })
      }
      if (Option.isNone(maxFileBytesPerProject)) return { upload: room, quota: Infinity }
      // The project is charged max(bytes, parts' bytes) for this upload: parts grow it only past `bytes`.
      const free = maxFileBytesPerProject.value - (yield* files.projectBytes(row.project))
      return { upload: room, quota: free + Math.max(bytes, held) - held }
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

  /**
   * On PostgreSQL, the project's parts that grow its charge take turns until their transactions end, so that each
   * counts the others (parts of different uploads lock different rows). SQLite's write transactions already do.
   */
  const quotaTurn = (project: string) =>
    sql.onDialectOrElse({
      pg: () => sql`SELECT pg_advisory_xact_lock(hashtextextended(${`effect-openai-batch upload quota ${project} `} || current_schema(), 0))`,
      orElse: () => Effect.void
    })

  const addPart = (id: UploadId, visibility: Visibility, part: StagedPart) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      // The bounds of `partRoom` again, in an update of the upload's row: on Postgres it locks the row, so parts
      // arriving in parallel (and a complete or cancel, which update it too) take turns, each seeing the others.
      const added = yield* Effect.gen(function*() {
        const counted = yield* sql<{ project: string; bytes: number | string; parts_bytes: number | string }>`
          UPDATE uploads SET parts_bytes = parts_bytes + ${part.bytes}, parts_count = parts_count + 1
          WHERE id = ${id} AND status = 'pending' AND expires_at > ${now} AND ${visible(visibility)}
            AND parts_count < ${MAX_PARTS_PER_UPLOAD}
            AND parts_bytes + ${part.bytes} <= bytes + bytes AND parts_bytes + ${part.bytes} <= bytes + ${MAX_PART_BYTES}
          RETURNING project, bytes, parts_bytes`
        if (counted.length === 0) return false
        yield* sql`INSERT INTO upload_parts ${sql.insert({ id: part.id, upload_id: id, bytes: part.bytes, created_at: now })}`
        // The project's quota again, with this part counted (in this transaction), when the part grew what the
        // upload is charged (its parts past its `bytes`): `partRoom`'s figure was read before the part's body, and
        // 20 parts sent at once, each within it, took a project to twice its quota.
        const { bytes, parts_bytes, project } = counted[0]!
        const grown = Number(parts_bytes) - Math.max(Number(bytes), Number(parts_bytes) - part.bytes)
        if (Option.isSome(maxFileBytesPerProject) && grown > 0) {
          const quota = maxFileBytesPerProject.value
          yield* quotaTurn(project)
          const used = yield* files.projectBytes(project)
          if (used > quota) return yield* new PartOverQuota({ quota, room: quota - (used - grown) })
        }
        return true
      }).pipe(sql.withTransaction, Effect.catchTag("SqlError", Effect.die))
      if (!added) {
        yield* partRoom(id, visibility)
        return yield* new PartRefused({ message: `Upload ${id} has no room for a part of ${part.bytes} bytes.` })
      }
      return new UploadPart({ id: part.id, object: "upload.part", created_at: now, upload_id: id })
    }).pipe(Effect.uninterruptible, Effect.withSpan("Uploads.addPart", { attributes: { id } }))

  const cancel = (id: UploadId, visibility: Visibility) =>
    Effect.gen(function*() {
      const nowMs = yield* Clock.currentTimeMillis
      const now = Math.floor(nowMs / 1000)
      // A completion left by a node that died is no longer under way: the upload cancels as a pending one.
      const moved = yield* sql<UploadRow>`
        UPDATE uploads SET status = 'cancelled', completing_owner = NULL, completing_until = NULL
        WHERE id = ${id} AND expires_at > ${now} AND ${visible(visibility)} AND (status = 'pending' OR ${claimLapsedSql(sql, nowMs)})
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
    const nowMs = yield* Clock.currentTimeMillis
    const now = Math.floor(nowMs / 1000)
    yield* sql`UPDATE uploads SET status = 'expired', completing_owner = NULL, completing_until = NULL
      WHERE expires_at <= ${now} AND (status = 'pending' OR ${claimLapsedSql(sql, nowMs)})`
    let swept = 0
    while (true) {
      const closed = yield* sql<{ upload_id: UploadId }>`
        SELECT DISTINCT p.upload_id FROM upload_parts p JOIN uploads u ON u.id = p.upload_id
        WHERE u.status IN ('completed', 'cancelled', 'expired') LIMIT ${SWEEP_GROUP}`
      if (closed.length === 0) break
      yield* Effect.forEach(closed, (r) => discardParts(r.upload_id), { discard: true })
      swept += closed.length
    }
    // A closed upload's row answers a repeated complete or cancel; a day after its hour, nobody repeats them.
    // In groups, as the parts: a first sweep of a long-kept database holds the write lock a moment at a time.
    while (true) {
      const gone = yield* sql<{ id: UploadId }>`DELETE FROM uploads WHERE id IN (
        SELECT id FROM uploads WHERE status IN ('completed', 'cancelled', 'expired')
          AND expires_at <= ${now - CLOSED_UPLOAD_KEPT_SECONDS}
          AND NOT EXISTS (SELECT 1 FROM upload_parts p WHERE p.upload_id = uploads.id)
        LIMIT ${SWEEP_GROUP * 10}) RETURNING id`
      if (gone.length === 0) return swept
    }
  }).pipe(Effect.orDie, Effect.withSpan("Uploads.sweep"))

  return {
    service: Uploads.of({ create, partRoom, openPart, addPart, complete, cancel, sweep }),
    releaseOwnClaims,
    renewClaims
  }
})

/**
 * The live service: gives back this node's interrupted completions at start, renews the claims of those it runs
 * every `HEARTBEAT_INTERVAL`, and sweeps with the files' sweep.
 */
export const UploadsLive: Layer.Layer<Uploads, never, SqlClient.SqlClient | BlobStore | FileStore | AppConfig> = Layer
  .scoped(
    Uploads,
    Effect.gen(function*() {
      const { service, releaseOwnClaims, renewClaims } = yield* make
      yield* releaseOwnClaims
      const { heartbeatInterval } = yield* AppConfig
      yield* renewClaims.pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("Renewing upload completions' claims failed", cause)),
        Effect.repeat(Schedule.spaced(heartbeatInterval)),
        Effect.forkScoped
      )
      yield* sweepEvery(service.sweep, "Upload expiry sweep failed")
      return service
    })
  )
