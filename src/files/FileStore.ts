/**
 * Files: metadata rows in SQL, bytes in the `BlobStore`. Owns expiry (expired files vanish from `get`/`list` at once
 * and a background sweep deletes them), the clean-up of bytes that lost their metadata in a crash, and the place of
 * deleted files in the list order for a day (`deleted_files`: their ids stay valid `after` cursors).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import { Clock, Context, Data, Duration, Effect, Layer, Option, Schedule, Scope, Stream } from "effect"
import { logFailure } from "../observability/failureRuns.js"
import { AppConfig } from "../Config.js"
import { FileObject, type SortOrder } from "../domain/Files.js"
import { type FileId, fileId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { polledReadSpan } from "../observability/Tracing.js"
import { BlobStore, type StagedBlob, stageStream, type StagingWriter } from "../storage/BlobStore.js"
import { DiskReserve, usingReserve } from "../storage/DiskReserve.js"
import { nowSeconds, visibleTo } from "../storage/Sql.js"
import { readValuesOf, rowsInPage, sharedPerRows } from "../storage/ReadConnection.js"
import { sayMissingBytes } from "./missingBytes.js"
import { claimLapsedSql } from "./uploadRows.js"
import { trusted } from "../domain/List.js"

export class FileNotFound extends Data.TaggedError("FileNotFound")<{ readonly id: FileId }> {}
/** The `after` cursor of a list names no file. */
export class UnknownCursor extends Data.TaggedError("UnknownCursor")<{ readonly after: FileId }> {}

/** The soonest of expiries in seconds (`FileMetadata.expiresAfterSeconds`); undefined when none is given. */
export const soonest = (...seconds: ReadonlyArray<number | undefined>): number | undefined => {
  const given = seconds.filter((s): s is number => s !== undefined)
  return given.length === 0 ? undefined : Math.min(...given)
}

export interface FileMetadata {
  readonly filename: string
  readonly purpose: string
  /** The project the file belongs to. */
  readonly project: string
  /** Seconds after creation at which the file expires; none: never (a batch file: `BATCH_FILES_EXPIRE_AFTER`). */
  readonly expiresAfterSeconds?: number | undefined
  /**
   * A fixed id instead of a new random one. Writing the same id again replaces that file, which makes producing
   * a derived file (a batch's output) idempotent across retries and restarts.
   */
  readonly id?: FileId | undefined
}

export interface ListFilesQuery {
  readonly visibility: Visibility
  readonly purpose?: string | undefined
  readonly after?: FileId | undefined
  readonly limit: number
  readonly order: SortOrder
}

export interface FilePage {
  readonly data: ReadonlyArray<FileObject>
  readonly hasMore: boolean
}

export interface FileStoreShape {
  /** Opens a staging area for an upload; its bytes disappear with the scope unless `commit`ted. */
  readonly openUpload: Effect.Effect<StagingWriter, never, Scope.Scope>
  /** Publishes staged bytes as a new file. */
  readonly commit: (staged: StagedBlob, meta: FileMetadata) => Effect.Effect<FileObject>
  /**
   * `openUpload` + `commit` in one step; `check`, when given, runs once the bytes are staged, in one transaction with
   * their publishing and the file's row: its failure makes no file (a batch's files written by a node that lost the
   * batch meanwhile; checked apart, a commit that waited past the lease made it all the same). A check may write
   * too: a server-written input file and its batch's row commit together (`BatchCommands`, which inserts the batch
   * after the file when a store runs no check).
   */
  readonly create: <E, E2 = never>(
    meta: FileMetadata,
    content: Stream.Stream<Uint8Array, E>,
    check?: Effect.Effect<void, E2>
  ) => Effect.Effect<FileObject, E | E2>
  /** A file `visibility` does not see is `FileNotFound`, exactly as one that does not exist. */
  readonly get: (id: FileId, visibility: Visibility) => Effect.Effect<FileObject, FileNotFound>
  /** The files `visibility` sees; an `after` cursor it does not see is an `UnknownCursor`. */
  readonly list: (query: ListFilesQuery) => Effect.Effect<FilePage, UnknownCursor>
  /**
   * The bytes of `project`'s files (not expired), output files included, and of its pending uploads (what they
   * will take once completed, or what their parts hold when more: see `Uploads`).
   */
  readonly projectBytes: (project: string) => Effect.Effect<number>
  /** The file's metadata and its bytes, streamed: all of them, or from byte `offset` on (`streamFrom`, a `Range`). */
  readonly content: (id: FileId, visibility: Visibility) => Effect.Effect<
    {
      readonly file: FileObject
      readonly stream: Stream.Stream<Uint8Array>
      readonly streamFrom: (offset: number) => Stream.Stream<Uint8Array>
    },
    FileNotFound
  >
  readonly remove: (id: FileId, visibility: Visibility) => Effect.Effect<void, FileNotFound>
  /** Whether a file `visibility` sees was deleted (or swept once expired) at `since` (unix seconds) or later. */
  readonly removedSince: (id: FileId, visibility: Visibility, since: number) => Effect.Effect<boolean>
  /** Deletes every expired file (metadata and bytes); returns how many. */
  readonly sweepExpired: Effect.Effect<number>
}

export class FileStore extends Context.Tag("FileStore")<FileStore, FileStoreShape>() {}

type FileRow = {
  readonly id: FileId
  readonly bytes: number | string
  readonly created_at: number | string
  readonly expires_at: number | string | null
  readonly filename: string
  readonly purpose: string
  readonly project: string
}

/**
 * A `FileRow` from a row's values, in the order of `FILE_COLUMNS`: the reads that list files take rows as arrays
 * (`.values`), which the drivers build faster than objects (SQLite: 60 rows in 60–70 µs against 100–120).
 */
const FILE_COLUMNS = "id, bytes, created_at, expires_at, filename, purpose, project"
const fileRowOf = (values: ReadonlyArray<unknown>): FileRow => {
  const [id, bytes, created_at, expires_at, filename, purpose, project] = values as [
    FileId, number | string, number | string, number | string | null, string, string, string
  ]
  return { id, bytes, created_at, expires_at, filename, purpose, project }
}

/** Postgres returns BIGINT as a string. */
const toFileObject = (row: FileRow): FileObject =>
  new FileObject({
    id: row.id,
    object: "file",
    bytes: Number(row.bytes),
    created_at: Number(row.created_at),
    expires_at: row.expires_at === null ? null : Number(row.expires_at),
    filename: row.filename,
    purpose: row.purpose,
    status: "processed",
    status_details: null
  }, trusted)

/** The file of a read's first row, and a list page of `limit` files from its rows: the same ones for a repeated read's. */
const fileOf = sharedPerRows((rows) => toFileObject(fileRowOf(rows[0]!)))
const filePageOf = sharedPerRows((rows, limit: number): FilePage => {
  const taken = rowsInPage(rows, limit) // at about LIST_PAGE_BYTES
  return { data: rows.slice(0, taken).map((values) => toFileObject(fileRowOf(values))), hasMore: rows.length > taken }
})

const SWEEP_GROUP = 500
/** The orphaned blobs a start names in its line (the count says how many in all). */
const ORPHANS_NAMED = 20
/**
 * How long a deleted (or swept) file's id stays a valid `after` cursor: a client that deletes each file of a page as
 * it lists them asks for the next page after the last one it deleted.
 */
const DELETED_CURSOR_SECONDS = 24 * 3600

/** The purposes of the files `BATCH_FILES_EXPIRE_AFTER` is about: batch inputs, and a batch's output and error files. */
const BATCH_PURPOSES: ReadonlySet<string> = new Set(["batch", "batch_output"])

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const blobs = yield* BlobStore
  // Part of the storage when it keeps one (SQLite's default storage); an app's own may not.
  const reserve = yield* Effect.serviceOption(DiskReserve)
  const readValues = yield* readValuesOf(sql)
  const { batchFilesExpireAfter } = yield* AppConfig
  /** Seconds after creation at which a file expires: its creator's word, else the batch files' default. */
  const expiresAfter = (meta: FileMetadata) =>
    meta.expiresAfterSeconds ?? (BATCH_PURPOSES.has(meta.purpose)
      ? Option.getOrUndefined(Option.map(batchFilesExpireAfter, (d) => Math.round(Duration.toSeconds(d))))
      : undefined)

  const columns = sql.literal(FILE_COLUMNS)
  const live = (now: number) => sql`(expires_at IS NULL OR expires_at > ${now})`
  const visible = (visibility: Visibility) => visibleTo(sql, visibility)

  const commit = (staged: StagedBlob, meta: FileMetadata) =>
    Effect.gen(function*() {
      const id = meta.id ?? fileId()
      const created_at = yield* nowSeconds
      const seconds = expiresAfter(meta)
      const row: FileRow = {
        id,
        bytes: staged.bytes,
        created_at,
        expires_at: seconds === undefined ? null : created_at + seconds,
        filename: meta.filename,
        purpose: meta.purpose,
        project: meta.project
      }
      // Bytes first, then the row: a crash in between leaves unreferenced bytes, which the start-up clean-up
      // removes; the opposite order could list a file whose bytes are missing.
      yield* blobs.publish(staged, id)
      const insert = meta.id === undefined
        ? sql`INSERT INTO files ${sql.insert(row)}`
        : sql`INSERT INTO files ${sql.insert(row)} ON CONFLICT (id) DO UPDATE SET
            bytes = excluded.bytes, created_at = excluded.created_at, expires_at = excluded.expires_at,
            filename = excluded.filename, purpose = excluded.purpose, project = excluded.project`
      yield* insert.pipe(
        Effect.tapError(() => blobs.remove(id)),
        Effect.orDie
      )
      return toFileObject(row)
    }).pipe(Effect.uninterruptible, Effect.withSpan("FileStore.commit"))

  const create = <E, E2 = never>(meta: FileMetadata, content: Stream.Stream<Uint8Array, E>, check?: Effect.Effect<void, E2>) =>
    Effect.scoped(Effect.flatMap(stageStream(blobs, content), (staged) =>
      check === undefined
        ? commit(staged, meta)
        : Effect.zipRight(check, commit(staged, meta)).pipe(
          sql.withTransaction,
          Effect.catchIf((e): e is SqlError => e instanceof SqlError, Effect.die)
        ))).pipe(
      Effect.withSpan("FileStore.create")
    )

  const get = (id: FileId, visibility: Visibility) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const rows = yield* readValues(sql`
        SELECT ${columns} FROM files WHERE id = ${id} AND ${live(now)} AND ${visible(visibility)}`).pipe(Effect.orDie)
      if (rows.length === 0) return yield* new FileNotFound({ id })
      return fileOf(rows, undefined)
    }).pipe(Effect.withSpan("FileStore.get", polledReadSpan({ id })))

  const list = (query: ListFilesQuery) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const conditions = [live(now), visible(query.visibility)]
      if (query.purpose !== undefined) conditions.push(sql`purpose = ${query.purpose}`)
      if (query.after !== undefined) {
        // A live file first: an id can be deleted and used again (a batch's output file is written again under its id).
        const cursor = yield* readValues(sql`
          SELECT seq, 0 AS deleted FROM files WHERE id = ${query.after} AND ${visible(query.visibility)}
          UNION ALL SELECT seq, 1 AS deleted FROM deleted_files WHERE id = ${query.after} AND ${visible(query.visibility)}
          ORDER BY deleted LIMIT 1`).pipe(Effect.orDie)
        if (cursor.length === 0) return yield* new UnknownCursor({ after: query.after })
        const seq = cursor[0]![0]
        conditions.push(query.order === "asc" ? sql`seq > ${seq}` : sql`seq < ${seq}`)
      }
      const direction = sql.literal(query.order === "asc" ? "ASC" : "DESC")
      const rows = yield* readValues(sql`
        SELECT ${columns} FROM files WHERE ${sql.and(conditions)}
        ORDER BY seq ${direction} LIMIT ${query.limit + 1}`).pipe(Effect.orDie)
      return filePageOf(rows, query.limit)
    }).pipe(Effect.withSpan("FileStore.list", polledReadSpan()))

  const projectBytes = (project: string) =>
    Effect.gen(function*() {
      const nowMs = yield* Clock.currentTimeMillis
      const now = Math.floor(nowMs / 1000)
      // Uploads that may still become files: pending ones in their hour, completing ones in it or under a live claim.
      const rows = yield* sql<{ n: number | string | null }>`
        SELECT SUM(bytes) AS n FROM (
          SELECT bytes FROM files WHERE project = ${project} AND ${live(now)}
          UNION ALL
          SELECT CASE WHEN parts_bytes > bytes THEN parts_bytes ELSE bytes END FROM uploads WHERE project = ${project}
            AND ((status IN ('pending', 'completing') AND expires_at > ${now})
              OR (status = 'completing' AND NOT ${claimLapsedSql(sql, nowMs)}))
        ) stored`
      return Number(rows[0]?.n ?? 0)
    }).pipe(Effect.orDie, Effect.withSpan("FileStore.projectBytes"))

  const content = (id: FileId, visibility: Visibility) =>
    Effect.map(get(id, visibility), (file) => ({ file, stream: blobs.read(id), streamFrom: (offset: number) => blobs.read(id, offset) }))
      .pipe(Effect.withSpan("FileStore.content"))

  /** Keeps the place of the files `where` selects, about to be deleted, as `after` cursors (`deleted_files`). */
  const keepCursors = (where: Statement.Fragment, now: number) =>
    sql`INSERT INTO deleted_files (id, project, seq, deleted_at) SELECT id, project, seq, ${now} FROM files WHERE ${where}
      ON CONFLICT (id) DO UPDATE SET project = excluded.project, seq = excluded.seq, deleted_at = excluded.deleted_at`

  const remove = (id: FileId, visibility: Visibility) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const where = sql`id = ${id} AND ${visible(visibility)}`
      const deleted = yield* sql.withTransaction(
        Effect.zipRight(keepCursors(where, now), sql<{ id: FileId }>`DELETE FROM files WHERE ${where} RETURNING id`)
      ).pipe(Effect.orDie, usingReserve(reserve, `deleting file ${id}`))
      if (deleted.length === 0) return yield* new FileNotFound({ id })
      yield* blobs.remove(id)
      if (Option.isSome(reserve)) yield* reserve.value.restoreSoon
    }).pipe(Effect.uninterruptible, Effect.withSpan("FileStore.remove", { attributes: { id } }))

  const removedSince = (id: FileId, visibility: Visibility, since: number) =>
    Effect.map(
      Effect.orDie(sql`SELECT 1 FROM deleted_files WHERE id = ${id} AND deleted_at >= ${since} AND ${visible(visibility)}`),
      (rows) => rows.length > 0
    )

  const sweepExpired = Effect.gen(function*() {
    const now = yield* nowSeconds
    yield* sql`DELETE FROM deleted_files WHERE deleted_at <= ${now - DELETED_CURSOR_SECONDS}`
    let removed = 0
    while (true) {
      const expired = yield* sql<{ id: string }>`
        SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ${now} LIMIT ${SWEEP_GROUP}`
      if (expired.length === 0) return removed
      const ids = expired.map((r) => r.id)
      const these = sql.in("id", ids)
      yield* sql.withTransaction(Effect.zipRight(keepCursors(these, now), sql`DELETE FROM files WHERE ${these}`))
      yield* Effect.forEach(ids, blobs.remove, { discard: true, concurrency: 8 })
      removed += ids.length
    }
  }).pipe(Effect.orDie, Effect.withSpan("FileStore.sweepExpired"))

  /**
   * Bytes no row refers to, found at start. A file's, deleted or swept (in `deleted_files` for a day) and an upload
   * part's (`part_…`, at most an hour's work) are removed: a stop between the row's delete and the bytes' left them.
   * Any other, a crash between publish and insert left, or a database restored older than its files (bytes on disk):
   * set aside where the store keeps them apart (`BlobStoreShape.setAside`), else removed.
   */
  const settleOrphans = Effect.gen(function*() {
    const keys = yield* blobs.keys
    const ids: Array<string> = []
    let unknown = 0
    for (let i = 0; i < keys.length; i += SWEEP_GROUP) {
      const group = keys.slice(i, i + SWEEP_GROUP)
      const rows = yield* sql<{ id: string; deleted: number | string }>`SELECT id, 0 AS deleted FROM files WHERE ${sql.in("id", group)}
        UNION ALL SELECT id, 0 AS deleted FROM upload_parts WHERE ${sql.in("id", group)}
        UNION ALL SELECT id, 1 AS deleted FROM deleted_files WHERE ${sql.in("id", group)}`
      const known = new Set(rows.filter((r) => Number(r.deleted) === 0).map((r) => r.id))
      const deleted = new Set(rows.filter((r) => Number(r.deleted) === 1).map((r) => r.id))
      const orphans = group.filter((key) => !known.has(key))
      const leftByDelete = (key: string) => deleted.has(key) || key.startsWith("part_")
      const others = orphans.filter((key) => !leftByDelete(key))
      yield* Effect.forEach(orphans.filter(leftByDelete), blobs.remove, { discard: true })
      yield* Effect.forEach(others, blobs.setAside?.move ?? blobs.remove, { discard: true })
      unknown += others.length
      ids.push(...others.slice(0, ORPHANS_NAMED - ids.length))
    }
    if (unknown === 0) return
    const named = `${ids.join(", ")}${unknown > ids.length ? ", …" : ""}`
    yield* (blobs.setAside === undefined
      ? Effect.logWarning(`Removed ${unknown} file blob(s) left without metadata by a crash (${named})`)
      : Effect.logWarning(
        `Moved ${unknown} file blob(s) that no file refers to into ${blobs.setAside.dir} (${named}): a crash between ` +
          "storing and recording a file leaves them, or a database restored older than its files. Nothing reads them " +
          "there; delete them once they are not needed."
      )).pipe(Effect.annotateLogs({ event: "files.orphans", blobs: unknown }))
  }).pipe(Effect.orDie, Effect.withSpan("FileStore.settleOrphans"))

  return { service: { openUpload: blobs.openStaging, commit, create, get, list, projectBytes, content, remove, removedSince, sweepExpired }, settleOrphans }
})

/** Runs `sweep` now and then every `fileSweepInterval`, in a fiber that lives as long as the scope; failures are logged. */
export const sweepEvery = <A>(sweep: Effect.Effect<A>, failure: string) =>
  Effect.flatMap(AppConfig, ({ fileSweepInterval }) =>
    sweep.pipe(
      Effect.catchAllCause((cause) => logFailure(failure, cause)),
      Effect.repeat(Schedule.spaced(fileSweepInterval)),
      Effect.forkScoped
    ))

/**
 * The live FileStore: cleans up after a crash once at start, then sweeps expired files every
 * `fileSweepInterval` in a background fiber that lives as long as the layer.
 */
export const FileStoreLive: Layer.Layer<FileStore, never, SqlClient.SqlClient | BlobStore | AppConfig> = Layer
  .scoped(
    FileStore,
    Effect.gen(function*() {
      const { service, settleOrphans } = yield* make
      yield* settleOrphans
      yield* sayMissingBytes(yield* SqlClient.SqlClient, yield* BlobStore)
      yield* sweepEvery(service.sweepExpired, "File expiry sweep failed")
      return FileStore.of(service)
    })
  )
