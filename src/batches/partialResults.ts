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
 *
 * A response is one page of `resultLines`, read whole before it is answered: a read that fails then fails the
 * request (an error status), where a streamed body would already have sent a 200 and its `x-last-line`, and a cut
 * body would look complete.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import type { BatchId } from "../domain/Ids.js"
import type { BatchStoreShape } from "./BatchStore.js"
import { outcomeIs } from "./outcomes.js"
import type { BatchSql } from "./sql.js"

/** Past every line (lines are SQL `INTEGER`s): the bound of a window when no line is unfinished. */
const NO_LINE = 2_147_483_647

/** A response's lines, and where the next one starts. */
export interface SettledResults {
  /** The lines in UTF-8, each ending with a newline (empty when there are none). */
  readonly bytes: Uint8Array
  readonly count: number
  /** The input line of the last line included; 0 when none. */
  readonly lastLine: number
  /**
   * The `afterLine` of the next call: the last line included, or, once every line of the kind in the window is
   * included, the line before the first unfinished request (the batch's last outcome when none is unfinished).
   * Every line of the kind up to it is final and was included (here or before `afterLine`), so a poller of a kind
   * that has few lines still moves on, and its next window scans only what is new. Never below `afterLine`.
   */
  readonly nextAfter: number
}

const EMPTY = new Uint8Array(0)

const toNumber = (value: number | string | null): number | null => (value === null ? null : Number(value))

export const makePartialResults = (
  sql: SqlClient.SqlClient,
  dialect: BatchSql,
  resultLines: BatchStoreShape["resultLines"]
): Pick<BatchStoreShape, "settledResults"> => {
  /**
   * One statement, so the first unfinished line and the lines below it are read from the same snapshot. The first
   * unfinished line is looked for only where one can be: in an open slice (a slice is marked done once every one
   * of its lines has an outcome) of a batch not completed, expired or cancelled (those get their last outcomes
   * before their final status); none found, every line counts, up to the batch's last outcome. It bounds the
   * range scanned, so a window costs about the lines between `afterLine` and it, not the batch.
   */
  const window = (batchId: BatchId, kind: "succeeded" | "failed", afterLine: number, limit: number) =>
    sql<{
      count: number | string
      first_pending: number | string | null
      last_outcome: number | string | null
    }>`
      WITH bound AS (
        SELECT (
          SELECT line FROM batch_requests r
          WHERE r.batch_id = ${batchId} AND r.line > ${afterLine}
            AND r.line >= (SELECT MIN(first_line) FROM batch_slices WHERE batch_id = ${batchId} AND state = 'open')
            AND NOT EXISTS (
              SELECT 1 FROM batches WHERE id = ${batchId} AND status IN ('completed', 'expired', 'cancelled')
            )
            AND ${dialect.isPending}
          ORDER BY line LIMIT 1
        ) AS first_pending
      )
      SELECT COUNT(*) AS count, (SELECT first_pending FROM bound) AS first_pending,
        (SELECT MAX(line) FROM batch_results WHERE batch_id = ${batchId}) AS last_outcome
      FROM (
        SELECT line FROM batch_results
        WHERE batch_id = ${batchId} AND line > ${afterLine}
          AND line < COALESCE((SELECT first_pending FROM bound), ${NO_LINE}) AND ${outcomeIs(sql, kind)}
        ORDER BY line LIMIT ${limit}
      ) settled`.pipe(
      Effect.map(([row]) => ({
        count: Number(row!.count),
        firstPending: toNumber(row!.first_pending),
        lastOutcome: toNumber(row!.last_outcome) ?? 0
      })),
      Effect.orDie
    )

  /**
   * The window's lines are the first `count` lines of their kind after `afterLine` (they are all there, and none
   * can be added among them), so one page of `resultLines` from `afterLine` holds the first of them: all `count`,
   * or fewer when their answers pass the page's byte bound. Memory is bounded by that page: at most `limit`
   * lines, their upstream bodies up to `RESULT_PAGE_BYTES` (8 MiB; or one line, when a single answer is larger,
   * as in the final files), plus each line's envelope (ids, status, error message).
   */
  const settledResults = (batchId: BatchId, kind: "succeeded" | "failed", afterLine: number, limit: number) =>
    Effect.gen(function*() {
      const { count, firstPending, lastOutcome } = yield* window(batchId, kind, afterLine, limit)
      const page = count === 0 ? { bytes: EMPTY, count: 0, lastLine: 0 } : yield* resultLines(batchId, kind, afterLine, count)
      // Cut by `limit` or by bytes, lines of the kind may follow the page's last; otherwise none before `scanned`.
      const wholeWindow = page.count === count && count < limit
      const scanned = firstPending === null ? lastOutcome : firstPending - 1
      return {
        ...page,
        nextAfter: Math.max(afterLine, page.lastLine, wholeWindow ? scanned : 0)
      } satisfies SettledResults
    }).pipe(Effect.withSpan("BatchStore.settledResults"))

  return { settledResults }
}
