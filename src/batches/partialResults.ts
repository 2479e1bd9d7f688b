/**
 * Results while a batch runs (an extension, `GET /v1/batches/{id}/results`), for `BatchStore`: the output or error
 * file lines of the requests finished so far, a window at a time, in the files' exact bytes (the lines come from
 * `resultLines`, the same pages the final files are written from, so the final file is the concatenation of the
 * windows a poller collects).
 *
 * A window holds only lines before the batch's first request still without an outcome. Requests finish out of
 * order (a window of 32 in flight, several nodes on one batch), so "every line finished so far" could hold line
 * 12 while line 7 is still running; a poller that went on from line 12 would never see line 7. Below the first
 * unfinished request every line has its outcome, and an outcome never changes once stored (it is inserted once per
 * line), so a window there is final: resuming after its last line misses nothing and repeats nothing. Windows grow
 * as that first unfinished line moves on; once none is left (the batch's files are written, or about to be), they
 * reach the end.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Option, Stream } from "effect"
import type { BatchId } from "../domain/Ids.js"
import type { BatchStoreShape, ResultLines } from "./BatchStore.js"
import { outcomeIs } from "./outcomes.js"
import type { BatchSql } from "./sql.js"

/** Result lines read at a time while a window streams (as the final files are written). */
const PAGE = 1000

/** Past every line (lines are SQL `INTEGER`s): the bound of a window when no line is unfinished. */
const NO_LINE = 2_147_483_647

/** The lines of a window: how many, the last one's input line (0 when none), and their bytes, read a page at a time. */
export interface SettledResults {
  readonly count: number
  readonly lastLine: number
  readonly bytes: Stream.Stream<Uint8Array>
}

export const makePartialResults = (
  sql: SqlClient.SqlClient,
  dialect: BatchSql,
  resultLines: BatchStoreShape["resultLines"]
): Pick<BatchStoreShape, "settledResults"> => {
  /**
   * One statement, so the first unfinished line and the lines below it are read from the same snapshot. The first
   * unfinished line is looked for only where one can be: in an open slice (a slice is marked done once every one
   * of its lines has an outcome) of a batch not completed, expired or cancelled (those get their last outcomes
   * before their final status); none found, every line counts. It bounds the range scanned, so a window costs
   * about the lines between `afterLine` and it, not the batch.
   */
  const window = (batchId: BatchId, kind: "succeeded" | "failed", afterLine: number, limit: number) =>
    sql<{ count: number | string; last_line: number | string | null }>`
      SELECT COUNT(*) AS count, MAX(line) AS last_line FROM (
        SELECT line FROM batch_results
        WHERE batch_id = ${batchId} AND line > ${afterLine} AND line < COALESCE((
          SELECT line FROM batch_requests r
          WHERE r.batch_id = ${batchId} AND r.line > ${afterLine}
            AND r.line >= (SELECT MIN(first_line) FROM batch_slices WHERE batch_id = ${batchId} AND state = 'open')
            AND NOT EXISTS (
              SELECT 1 FROM batches WHERE id = ${batchId} AND status IN ('completed', 'expired', 'cancelled')
            )
            AND ${dialect.isPending}
          ORDER BY line LIMIT 1
        ), ${NO_LINE}) AND ${outcomeIs(sql, kind)}
        ORDER BY line LIMIT ${limit}
      ) settled`.pipe(
      Effect.map(([row]) => ({ count: Number(row!.count), lastLine: Number(row!.last_line ?? 0) })),
      Effect.orDie
    )

  /**
   * The window's lines are the first `count` lines of their kind after `afterLine` (they are all there, and none
   * can be added among them), so reading pages of `resultLines` from `afterLine` until `count` lines gives exactly
   * them.
   */
  const pages = (batchId: BatchId, kind: "succeeded" | "failed", afterLine: number, count: number) =>
    Stream.paginateEffect({ after: afterLine, left: count }, ({ after, left }) =>
      Effect.map(resultLines(batchId, kind, after, Math.min(PAGE, left)), (page: ResultLines) => {
        const rest = left - page.count
        return [page.bytes, rest > 0 && page.count > 0 ? Option.some({ after: page.lastLine, left: rest }) : Option.none()]
      }))

  const settledResults = (batchId: BatchId, kind: "succeeded" | "failed", afterLine: number, limit: number) =>
    Effect.map(window(batchId, kind, afterLine, limit), ({ count, lastLine }): SettledResults => ({
      count,
      lastLine,
      bytes: count === 0 ? Stream.empty : pages(batchId, kind, afterLine, count)
    })).pipe(Effect.withSpan("BatchStore.settledResults"))

  return { settledResults }
}
