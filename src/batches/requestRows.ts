/**
 * The `batch_requests` table for `BatchStore`: one row per request, written by validation a page at a time and
 * read back, a page at a time, as the requests still pending (without a row in `batch_results`), with the attempts
 * their earlier runs left; deleted with the outcomes once nothing can read them (`sweepSpentRows`).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import { Effect } from "effect"
import { terminalStatuses } from "../domain/Batches.js"
import type { BatchId, BatchRequestId } from "../domain/Ids.js"
import type { BatchStoreShape, PageLimit, PendingPage, RequestAttempts, RequestRow } from "./BatchStore.js"
import { outcomeIs } from "./outcomes.js"
import { type BatchSql, chunks, INSERT_GROUP } from "./sql.js"

interface PendingColumns {
  readonly line: number | string
  readonly custom_id: string
  readonly result_id: BatchRequestId
  readonly body: string
  readonly attempts: number | string
  readonly retry_at: number | string | null
  /** The bytes of the bodies of the range's pending rows up to this one, this one's included. */
  readonly upto: number | string
}

/** Batches a sweep of spent rows looks at. */
const SPENT_GROUP = 500
/** Lines a statement clearing what a gone file held (`clearGoneParts`) goes over. */
const CLEAR_LINES = 2000
/** Lines cleared of a group's batches at a sweep, about: no batch more is begun past them. */
const CLEAR_BUDGET = 20_000

const pendingRow = (r: PendingColumns): RequestRow => {
  const used = Number(r.attempts)
  const row = { line: Number(r.line), customId: r.custom_id, resultId: r.result_id, body: r.body }
  return used === 0 ? row : { ...row, attempts: { used, retryAt: r.retry_at === null ? undefined : Number(r.retry_at) } }
}

export const makeRequestRows = (
  sql: SqlClient.SqlClient,
  dialect: BatchSql
): Pick<BatchStoreShape, "insertRequests" | "deleteRequests" | "pendingRequests" | "keepAttempts" | "sweepSpentRows"> => {
  const insertRequests = (batchId: BatchId, rows: ReadonlyArray<RequestRow>) => {
    const groups = chunks(rows, INSERT_GROUP)
    // One statement is atomic on its own; only several need a transaction (two more statements and a span).
    const insert = groups.length === 1
      ? dialect.insertRequestGroup(batchId, groups[0]!)
      : sql.withTransaction(Effect.forEach(groups, (group) => dialect.insertRequestGroup(batchId, group), { discard: true }))
    return insert.pipe(Effect.asVoid, Effect.orDie, Effect.withSpan("BatchStore.insertRequests"))
  }

  const deleteRows = (batchId: BatchId) =>
    Effect.zipRight(
      sql`DELETE FROM batch_results WHERE batch_id = ${batchId}`,
      sql`DELETE FROM batch_requests WHERE batch_id = ${batchId}`
    )
  const deleteRequests = (batchId: BatchId) => deleteRows(batchId).pipe(sql.withTransaction, Effect.asVoid, Effect.orDie)

  // On the hot path (a page per slice run): mapped by hand, not decoded by a schema. The bodies' sizes are summed in
  // the database, so that a page of long lines is cut there: 500 lines of 150 KB images, read whole, held 76 MB.
  const pendingRequests = (batchId: BatchId, afterLine: number, lastLine: number, limit: PageLimit) =>
    sql<PendingColumns>`
      SELECT r.line, r.custom_id, r.result_id, r.body, r.attempts, r.retry_at, p.upto FROM (
        SELECT line, size, SUM(size) OVER (ORDER BY line) AS upto FROM (
          -- The sizes alone, in a query of their own: beside a window, SQLite copied every body to sum them.
          SELECT line, octet_length(body) AS size FROM batch_requests r
          WHERE batch_id = ${batchId} AND line > ${afterLine} AND line <= ${lastLine} AND ${dialect.isPending}
          ORDER BY line LIMIT ${limit.rows}
        ) sizes
      ) p JOIN batch_requests r ON r.batch_id = ${batchId} AND r.line = p.line
      WHERE p.upto - p.size < ${limit.bytes}
      ORDER BY r.line`.pipe(
      Effect.map((rows): PendingPage => ({
        rows: rows.map(pendingRow),
        // Cut by its count or its bytes (or just at its end: one more read, which finds none).
        more: rows.length === limit.rows || (rows.length > 0 && Number(rows.at(-1)!.upto) >= limit.bytes)
      })),
      Effect.orDie
    )

  // At most a window of requests, when a run ends: a statement each, in one transaction. `retry_at` is whole
  // milliseconds (a backoff's jitter is not: PostgreSQL's bigint refused it, and the transaction with it).
  const keepAttempts = (batchId: BatchId, kept: ReadonlyMap<number, RequestAttempts>) =>
    kept.size === 0 ? Effect.void : Effect.forEach(kept, ([line, { retryAt, used }]) =>
      sql`UPDATE batch_requests SET attempts = ${used}, retry_at = ${retryAt === undefined ? null : Math.ceil(retryAt)}
        WHERE batch_id = ${batchId} AND line = ${line}`, { discard: true }).pipe(sql.withTransaction, Effect.orDie)

  /** Whether the file `column` of a batch `b` names was written and is gone (deleted, or expired and swept). */
  const gone = (column: "input_file_id" | "output_file_id" | "error_file_id") =>
    sql`(b.${sql(column)} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM files f WHERE f.id = b.${sql(column)}))`
  /**
   * The parts of a finished batch's rows that a gone file held, each cleared once (`cleared_parts`): the request
   * bodies once the input file is gone (a rerun, which needs it, is refused then), the answers once the output file
   * is, the failures' bodies and messages once the error file is. The rows stay: a line's id, its outcome's status
   * and code (what a rerun of the failures picks). Before, the answers of a deleted output file were still read
   * through `GET /v1/batches/{id}/results`, and the prompts kept for as long as the output was.
   */
  const PARTS = [
    { bit: 1, file: "input_file_id", clear: (lines: Statement.Fragment) => sql`UPDATE batch_requests SET body = '' WHERE ${lines}` },
    { bit: 2, file: "output_file_id", clear: (lines: Statement.Fragment) =>
      sql`UPDATE batch_results SET response = NULL WHERE ${lines} AND ${outcomeIs(sql, "succeeded")}` },
    { bit: 4, file: "error_file_id", clear: (lines: Statement.Fragment) =>
      sql`UPDATE batch_results SET response = NULL, error_message = NULL WHERE ${lines} AND ${outcomeIs(sql, "failed")}` }
  ] as const
  /**
   * `clearGoneParts` of the batches in `group`: a statement per `CLEAR_LINES` lines, and batches no more once
   * `CLEAR_BUDGET` lines are cleared (the rest at the next pass), so that no statement holds the database long. A first sweep after an upgrade
   * may find every old batch's input gone: one statement over them all held SQLite's one writer for seconds, and
   * PostgreSQL's statement timeout would have stopped the sweep there for good.
   */
  const clearGoneParts = (group: Statement.Fragment) =>
    Effect.gen(function*() {
      let budget = CLEAR_BUDGET
      for (const { bit, clear, file } of PARTS) {
        const due = yield* sql<{ id: BatchId; cleared_parts: number | string; last: number | string | null }>`
          SELECT b.id, b.cleared_parts, (SELECT MAX(line) FROM batch_requests r WHERE r.batch_id = b.id) AS last
          FROM (${group}) b
          WHERE ${sql.in("b.status", terminalStatuses)} AND (b.cleared_parts & ${bit}) = 0 AND ${gone(file)}`
        for (const { cleared_parts, id, last } of due) {
          if (budget <= 0) return
          const lastLine = Number(last ?? 0)
          for (let from = 0; from < lastLine; from += CLEAR_LINES) {
            yield* clear(sql`batch_id = ${id} AND line > ${from} AND line <= ${from + CLEAR_LINES}`)
          }
          budget -= lastLine
          yield* sql`UPDATE batches SET cleared_parts = ${Number(cleared_parts) | bit} WHERE id = ${id}`
        }
      }
    })

  // A group of batches looked at per sweep, in creation order: each sweep costs the same however many there are.
  const sweepSpentRows = (afterSeq: number) =>
    Effect.gen(function*() {
      const group = sql`SELECT seq, id, status, input_file_id, output_file_id, error_file_id, cleared_parts FROM batches
        WHERE seq > ${afterSeq} ORDER BY seq LIMIT ${SPENT_GROUP}`
      const [{ last }] = yield* sql<{ last: number | string | null }>`SELECT MAX(seq) AS last FROM (${group}) g`
      const spent = yield* sql<{ id: BatchId }>`
        SELECT id FROM (${group}) b WHERE ${sql.in("status", terminalStatuses)}
          AND EXISTS (SELECT 1 FROM batch_requests r WHERE r.batch_id = b.id)
          AND NOT EXISTS (SELECT 1 FROM files f WHERE f.id IN (b.input_file_id, b.output_file_id, b.error_file_id))`
      for (const { id } of spent) {
        yield* sql.withTransaction(Effect.zipRight(
          deleteRows(id),
          sql`DELETE FROM batch_slices WHERE batch_id = ${id}`
        ))
      }
      yield* clearGoneParts(group)
      return { next: last === null ? 0 : Number(last), cleared: spent.length }
    }).pipe(Effect.orDie, Effect.withSpan("BatchStore.sweepSpentRows"))

  return { insertRequests, deleteRequests, pendingRequests, keepAttempts, sweepSpentRows }
}
