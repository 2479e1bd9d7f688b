/**
 * The `batch_results` table for `BatchStore`: one outcome per request, inserted only where the request has none
 * yet (its primary key is the batch and the line), counted into the batch's `request_counts` and `usage` by the
 * triggers of migration 0006 within the same statement; and the output and error files' lines, built from it a
 * page at a time (`sql.ts`' `resultPage`).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import type { BatchId } from "../domain/Ids.js"
import type { BatchStoreShape, RequestOutcome } from "./BatchStore.js"
import type { BatchSql } from "./sql.js"

/**
 * The first outcome of each line, in line order: counts follow the rows inserted only if a group names each line
 * once, and two nodes writing overlapping groups in the same order cannot deadlock on Postgres.
 */
const oncePerLineInOrder = (outcomes: ReadonlyArray<RequestOutcome>): ReadonlyArray<RequestOutcome> => {
  const byLine = new Map<number, RequestOutcome>()
  for (const o of outcomes) if (!byLine.has(o.line)) byLine.set(o.line, o)
  return [...byLine.values()].sort((a, b) => a.line - b.line)
}

/**
 * The upstream bodies a page of result lines may hold before it stops (at least one line): a page of a thousand
 * 40 MB answers would otherwise be one string of gigabytes.
 */
export const RESULT_PAGE_BYTES = 8 * 1024 * 1024

/** The outcomes (`batch_results` rows) of the output file (`succeeded`: 2xx answers) or of the error file (the others). */
export const outcomeIs = (sql: SqlClient.SqlClient, kind: "succeeded" | "failed") =>
  kind === "succeeded"
    ? sql`status_code >= 200 AND status_code < 300`
    : sql`(status_code IS NULL OR status_code < 200 OR status_code >= 300)`

export const makeOutcomes = (
  sql: SqlClient.SqlClient,
  dialect: BatchSql
): Pick<BatchStoreShape, "recordOutcomes" | "failPending" | "resultLines"> => {
  // The hot path (a statement per group of outcomes): no schema, no span per statement.
  const recordOutcomes = (batchId: BatchId, outcomes: ReadonlyArray<RequestOutcome>) =>
    dialect.insertOutcomes(batchId, oncePerLineInOrder(outcomes)).pipe(
      // One span for the group, none for each of its statements (they cost more than the statements do).
      Effect.withTracerEnabled(false),
      Effect.orDie,
      // Without a stack trace: capturing one per group cost more than the span.
      Effect.withSpan("BatchStore.recordOutcomes", { captureStackTrace: false })
    )

  /** The trigger of migration 0006 counts the failures stored here. */
  const failPending = (batchId: BatchId, code: string, message: string) =>
    sql<{ line: number }>`
      INSERT INTO batch_results (batch_id, line, custom_id, result_id, error_code, error_message)
      SELECT batch_id, line, custom_id, result_id, ${code}, ${message} FROM batch_requests r
      WHERE batch_id = ${batchId} AND ${dialect.isPending}
      ON CONFLICT DO NOTHING RETURNING line`.pipe(
      Effect.map((rows) => rows.length),
      Effect.orDie,
      Effect.withSpan("BatchStore.failPending")
    )

  /**
   * The lines after `afterLine` (at most `limit`) whose bodies and ids before them stay under `RESULT_PAGE_BYTES`: a running
   * sum over their lengths finds the last, then only those lines are read. The lengths are taken before the running
   * sum (`sizes`): with `octet_length(response)` inside the window, SQLite read every answer of the rows it summed
   * (a page of a batch of 300 answers of 600 KB took 70–175 ms, now 0.1–0.3 ms).
   */
  const resultLines = (batchId: BatchId, kind: "succeeded" | "failed", afterLine: number, limit: number) => {
    const outcome = outcomeIs(sql, kind)
    return dialect.resultPage(sql`batch_id = ${batchId} AND line > ${afterLine} AND line <= (
        SELECT MAX(line) FROM (
          SELECT line, SUM(size) OVER (ORDER BY line) - size AS before FROM (
            SELECT line, COALESCE(octet_length(response), 0) + octet_length(custom_id) AS size
            FROM batch_results WHERE batch_id = ${batchId} AND line > ${afterLine} AND ${outcome}
            ORDER BY line LIMIT ${limit}
          ) sizes
        ) sized WHERE before < ${RESULT_PAGE_BYTES}
      ) AND ${outcome}`).pipe(Effect.orDie)
  }

  return { recordOutcomes, failPending, resultLines }
}
