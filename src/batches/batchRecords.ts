/**
 * The `batches` table for `BatchStore`: create, read and list batches, and change their status, only by the moves
 * of the transition table (`applyMove`, a compare-and-set on the status in SQL).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as SqlSchema from "@effect/sql/SqlSchema"
import type { Fragment } from "@effect/sql/Statement"
import { Clock, Effect, Option, Schema } from "effect"
import { type Batch, type BatchStatus, BatchStatus as BatchStatusSchema, terminalStatuses } from "../domain/Batches.js"
import { BatchId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { polledReadSpan } from "../observability/Tracing.js"
import { type ReadValues, type Rows, rowsInPage, sharedPerRows } from "../storage/ReadConnection.js"
import { nowSeconds, visibleTo } from "../storage/Sql.js"
import {
  BatchNotFound,
  type BatchStoreShape,
  type NewBatch,
  type PlainMove,
  type TransitionPatch,
  UnknownBatchCursor
} from "./BatchStore.js"
import { BATCH_COLUMNS, batchRecordOf } from "./batchRow.js"
import { type BatchSql, chunks, INSERT_GROUP } from "./sql.js"
import { type Move, transitions } from "./transitions.js"

/**
 * The records of rows of `batches` (`batchRow.ts`: their `BATCH_COLUMNS`), the same ones for a repeated read's rows;
 * a row that does not fit is a defect.
 */
const recordsOf = sharedPerRows((rows) => rows.map(batchRecordOf))
const decodeRecords = (rows: Rows) => Effect.sync(() => recordsOf(rows, undefined))

/**
 * A list page of `limit` batches from its rows (one more than the page when there are more), ended sooner at about
 * `LIST_PAGE_BYTES`: the rows left out are not decoded.
 */
const pageOf = sharedPerRows((rows, limit: number) => {
  const taken = rowsInPage(rows, limit)
  return { data: rows.slice(0, taken).map((row) => batchRecordOf(row).batch), hasMore: rows.length > taken }
})

/**
 * The `idempotency_key` column's value: the key scoped by its project (the column is unique across projects), with
 * the project's length first so that no two (project, key) pairs give the same text.
 */
export const scopedIdempotencyKey = (project: string, key: string) => `${project.length}:${project}:${key}`

type BatchRecords = Pick<
  BatchStoreShape,
  "create" | "get" | "list" | "idempotentBatch" | "activeBatches" | "enqueuedRequests" | "statuses" | "transition" | "startRunning" | "completeSlice" | "activeByStatus"
>

/**
 * The `batches` table's operations; `moved` is told of every status change made here, once it is committed (the
 * metrics: queue wait, finished batches and their durations); `finalMoved` runs inside the transaction of every
 * move to a final status, with the time the move stamped (the webhook outbox, `webhooks/deliveries.ts`): the
 * status and what it writes are committed together or not at all.
 */
export const makeBatchRecords = (
  sql: SqlClient.SqlClient,
  dialect: BatchSql,
  readValues: ReadValues,
  moved: (batch: Batch) => void = () => {},
  finalMoved: (batch: Batch, project: string, at: number) => Effect.Effect<void, SqlError> = () => Effect.void
): BatchRecords => {
  const columns = sql.literal(BATCH_COLUMNS.join(", "))
  const selectWhere = (where: Fragment) =>
    Effect.flatMap(readValues(sql`SELECT ${columns} FROM batches WHERE ${where}`), decodeRecords)
  const visible = (visibility: Visibility) => visibleTo(sql, visibility)

  const get = (id: BatchId, visibility: Visibility) =>
    selectWhere(sql`id = ${id} AND ${visible(visibility)}`).pipe(
      Effect.orDie,
      Effect.flatMap((records) => records.length === 0 ? Effect.fail(new BatchNotFound({ id })) : Effect.succeed(records[0]!)),
      Effect.withSpan("BatchStore.get", polledReadSpan({ id }))
    )

  const create = (batch: NewBatch) =>
    Effect.gen(function*() {
      const created_at = yield* nowSeconds
      const idempotencyKey = batch.idempotencyKey === null ? null : scopedIdempotencyKey(batch.project, batch.idempotencyKey)
      const row = {
        id: batch.id,
        project: batch.project,
        status: "validating",
        endpoint: batch.endpoint,
        input_file_id: batch.inputFileId,
        completion_window: batch.completionWindow,
        created_at,
        expires_at: created_at + batch.expiresAfterSeconds,
        metadata: batch.metadata === null ? null : JSON.stringify(batch.metadata),
        output_expires_after: batch.outputExpiresAfterSeconds,
        idempotency_key: idempotencyKey,
        request_hash: batch.requestHash
      }
      if (idempotencyKey !== null) {
        // ON CONFLICT keeps the first batch for a key even when two creates race.
        const inserted = yield* sql`
          INSERT INTO batches ${sql.insert(row)} ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`
        if (inserted.length === 0) {
          const existing = yield* selectWhere(sql`idempotency_key = ${idempotencyKey}`)
          return { record: existing[0]!, created: false }
        }
      } else {
        yield* sql`INSERT INTO batches ${sql.insert(row)}`
      }
      return { record: (yield* selectWhere(sql`id = ${batch.id}`))[0]!, created: true }
    }).pipe(Effect.orDie, Effect.withSpan("BatchStore.create"))

  /** The `seq` of a batch the caller may see (a list cursor), as a number: Postgres gives a BIGINT as text. */
  const seqOf = (id: BatchId, visibility: Visibility) =>
    Effect.map(
      readValues(sql`SELECT seq FROM batches WHERE id = ${id} AND ${visible(visibility)}`),
      (rows) => rows.length === 0 ? Option.none() : Option.some(Number(rows[0]![0]))
    )

  const list = (query: { readonly visibility: Visibility; readonly after?: BatchId | undefined; readonly limit: number }) =>
    Effect.gen(function*() {
      let where = visible(query.visibility)
      if (query.after !== undefined) {
        const cursor = yield* Effect.orDie(seqOf(query.after, query.visibility))
        if (Option.isNone(cursor)) return yield* new UnknownBatchCursor({ after: query.after })
        where = sql`${where} AND seq < ${cursor.value}`
      }
      const rows = yield* Effect.orDie(
        readValues(sql`SELECT ${columns} FROM batches WHERE ${where} ORDER BY seq DESC LIMIT ${query.limit + 1}`)
      )
      return pageOf(rows, query.limit)
    }).pipe(Effect.withSpan("BatchStore.list", polledReadSpan()))

  const unfinished = sql.in("status", BatchStatusSchema.literals.filter((s) => !terminalStatuses.includes(s)))
  const countOne = (query: Effect.Effect<ReadonlyArray<{ readonly n: number | string | null }>, unknown>) =>
    Effect.map(Effect.orDie(query), (rows) => Number(rows[0]?.n ?? 0))

  const idempotentBatch = (project: string, key: string) =>
    Effect.map(
      Effect.orDie(selectWhere(sql`idempotency_key = ${scopedIdempotencyKey(project, key)}`)),
      (rows) => Option.fromNullable(rows[0])
    )

  const activeBatches = (project: string) =>
    countOne(sql`SELECT COUNT(*) AS n FROM batches WHERE project = ${project} AND ${unfinished}`)

  // `total` is 0 until a batch passes validation (`startRunning` sets it): batches still validating add nothing.
  const enqueuedRequests = (project: string, except: BatchId) =>
    countOne(sql`SELECT SUM(total) AS n FROM batches WHERE project = ${project} AND ${unfinished} AND id <> ${except}`)

  const activeByStatus = Effect.map(
    Effect.orDie(sql<{ readonly status: string; readonly n: number | string }>`
      SELECT status, COUNT(*) AS n FROM batches WHERE ${unfinished} GROUP BY status`),
    (rows) => new Map(rows.map((r): [BatchStatus, number] => [r.status as BatchStatus, Number(r.n)]))
  )

  const statusesOf = SqlSchema.findAll({
    Request: Schema.Array(BatchId),
    Result: Schema.Struct({ id: BatchId, status: BatchStatusSchema }),
    execute: (ids) => sql`SELECT id, status FROM batches WHERE ${sql.in("id", ids)}`
  })

  const statuses = (ids: ReadonlyArray<BatchId>) =>
    ids.length === 0
      ? Effect.succeed(new Map<BatchId, BatchStatus>())
      : statusesOf(ids).pipe(Effect.map((rows) => new Map(rows.map((r) => [r.id, r.status]))), Effect.orDie)

  /**
   * A move's time, never before the batch's earlier ones: the machine's clock stepped back (NTP, an operator) would
   * otherwise stamp a batch `in_progress` before it was created (PostgreSQL's `GREATEST` skips NULLs, SQLite's `MAX`
   * does not).
   */
  const notBeforeEarlierStamps = (now: number) =>
    sql.onDialectOrElse({
      pg: () => sql`GREATEST(${now}, created_at, in_progress_at, finalizing_at, cancelling_at)`,
      orElse: () =>
        sql`MAX(${now}, created_at, COALESCE(in_progress_at, 0), COALESCE(finalizing_at, 0), COALESCE(cancelling_at, 0))`
    })

  /**
   * The one place a batch's status changes: `move`'s compare-and-set (only from its `from` statuses, and only
   * where `condition` holds too), its timestamp column, and `set`; a move to a final status frees the batch-wide
   * lease and, in the same transaction, writes what `finalMoved` writes (its event). The batch as moved, or `None`
   * when it was not in a `from` status (or `condition` did not hold).
   */
  const applyMove = (id: BatchId, move: Move, set: Record<string, unknown>, condition: Fragment = sql`1 = 1`) => {
    const { from, stamp, to } = transitions[move]
    const final = terminalStatuses.includes(to)
    const moveIt = Effect.gen(function*() {
      const changes: Record<string, unknown> = { ...set, status: to }
      if (final) {
        changes.lease_owner = null
        changes.lease_until = null
      }
      const rows = yield* sql`
        UPDATE batches SET ${sql.update(changes)}, ${sql(stamp)} = ${notBeforeEarlierStamps(yield* nowSeconds)}
        WHERE id = ${id} AND ${sql.in("status", from)} AND ${condition} RETURNING ${columns}`.values
      const record = Option.fromNullable((yield* decodeRecords(rows))[0])
      if (final && Option.isSome(record)) yield* finalMoved(record.value.batch, record.value.project, record.value.batch[stamp]!)
      return Option.map(record, (r) => r.batch)
    })
    return final ? sql.withTransaction(moveIt) : moveIt
  }

  const transition = (id: BatchId, move: PlainMove, patch: TransitionPatch = {}, heldBy?: string) => {
    const set: Record<string, unknown> = {}
    if (patch.errors !== undefined) set.errors = JSON.stringify(patch.errors)
    if (patch.outputFileId !== undefined) set.output_file_id = patch.outputFileId
    if (patch.errorFileId !== undefined) set.error_file_id = patch.errorFileId
    return Effect.flatMap(Clock.currentTimeMillis, (now) => {
      const conditions = [
        ...(heldBy === undefined ? [] : [sql`lease_owner = ${heldBy}`]),
        // A running batch whose batch-wide lease a node holds is being expired (`finishing.ts`; no other work takes
        // that lease while it runs), and one with `batch_expired` lines was (its node stopped or died before the
        // final move): the expiry ends it. Cancelled, it ended `cancelled` with every line `batch_expired`.
        ...(move === "cancel"
          ? [sql`(status <> 'in_progress' OR ((lease_owner IS NULL OR lease_until < ${now}) AND NOT EXISTS (
              SELECT 1 FROM batch_results o WHERE o.batch_id = batches.id AND o.error_code = 'batch_expired')))`]
          : [])
      ]
      return applyMove(id, move, set, conditions.length === 0 ? undefined : sql.and(conditions))
    }).pipe(
      Effect.orDie,
      Effect.map((batch) => {
        if (Option.isSome(batch)) moved(batch.value)
        return batch
      }),
      Effect.withSpan("BatchStore.transition", { attributes: { id, move } })
    )
  }

  const startRunning: BatchRecords["startRunning"] = (id, patch, slices, heldBy) =>
    Effect.gen(function*() {
      const set = { model: patch.model, total: patch.total, model_unchecked: patch.modelUnchecked === true ? 1 : 0, lease_owner: null, lease_until: null }
      const batch = yield* applyMove(id, "startRunning", set, heldBy === undefined ? undefined : sql`lease_owner = ${heldBy}`)
      if (Option.isNone(batch)) return batch
      yield* Effect.forEach(
        chunks(slices.map((s, slice) => ({ batch_id: id, slice, first_line: s.firstLine, last_line: s.lastLine })), INSERT_GROUP),
        (group) => sql`INSERT INTO batch_slices ${sql.insert(group)}`,
        { discard: true }
      )
      return batch
    }).pipe(
      sql.withTransaction,
      Effect.map((batch) => {
        if (Option.isNone(batch)) return false
        moved(batch.value)
        return true
      }),
      Effect.tap((started) => (started ? dialect.refreshRequestStatistics() : Effect.void)),
      Effect.orDie,
      Effect.withSpan("BatchStore.startRunning", { attributes: { id } })
    )

  const completeSlice = (id: BatchId, slice: number) =>
    Effect.gen(function*() {
      yield* dialect.lockBatchRow(id)
      yield* sql`UPDATE batch_slices SET state = 'done', owner = NULL, lease_until = NULL
        WHERE batch_id = ${id} AND slice = ${slice}`
      const noSliceOpen = sql`NOT EXISTS (SELECT 1 FROM batch_slices WHERE batch_id = ${id} AND state = 'open')`
      return Option.isSome(yield* applyMove(id, "lastSliceDone", {}, noSliceOpen))
    }).pipe(sql.withTransaction, Effect.orDie, Effect.withSpan("BatchStore.completeSlice", { attributes: { id, slice } }))

  return {
    create,
    get,
    list,
    idempotentBatch,
    activeBatches,
    enqueuedRequests,
    statuses,
    transition,
    startRunning,
    completeSlice,
    activeByStatus
  }
}
