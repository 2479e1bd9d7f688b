/**
 * Every status change a batch can make, in one table (`transitions` below: each move by name, its `from` statuses,
 * its `to` status and the column it stamps). `BatchStore` makes a move only on a batch in one of its `from`
 * statuses (a compare-and-set in SQL: a late `completed` can never overwrite a cancel), and its move function is
 * the only code that writes a status (test/TransitionTable.test.ts tries every pair of statuses on both databases).
 *
 *   validating ─startRunning→ in_progress ─lastSliceDone→ finalizing ─complete→ completed
 *   validating ─validationFailed→ failed          validating, in_progress ─expire→ expired
 *   validating, in_progress, finalizing ─cancel→ cancelling ─cancelDone→ cancelled
 *   validating, in_progress, finalizing, cancelling ─fault→ failed (`internal_error`, once retries are spent)
 */
import type { BatchStatus } from "../domain/Batches.js"

/** The column a move stamps with the time it was made (epoch seconds). */
export type TimestampColumn =
  | "in_progress_at"
  | "finalizing_at"
  | "completed_at"
  | "failed_at"
  | "expired_at"
  | "cancelling_at"
  | "cancelled_at"

export interface Transition {
  readonly from: ReadonlyArray<BatchStatus>
  readonly to: BatchStatus
  readonly stamp: TimestampColumn
}

const move = (from: ReadonlyArray<BatchStatus>, to: BatchStatus, stamp: TimestampColumn): Transition => ({ from, to, stamp })

/** The transition table: each move by name, `from` statuses → `to`, and the column it stamps. */
export const transitions = {
  /** Validation passed (`BatchStore.startRunning`, which also creates the slices). */
  startRunning: move(["validating"], "in_progress", "in_progress_at"),
  /** Validation found problems (listed in `errors`); nothing was sent. */
  validationFailed: move(["validating"], "failed", "failed_at"),
  /** The last open slice is done (`BatchStore.completeSlice`, only once no slice is left open). */
  lastSliceDone: move(["in_progress"], "finalizing", "finalizing_at"),
  /** The output and error files are written. */
  complete: move(["finalizing"], "completed", "completed_at"),
  /** `expires_at` passed before the requests were all run; the files hold what was done. */
  expire: move(["validating", "in_progress"], "expired", "expired_at"),
  /** A cancel request (the HTTP handler): the work is interrupted, then the files are written. */
  cancel: move(["validating", "in_progress", "finalizing"], "cancelling", "cancelling_at"),
  /** A cancelled batch's files are written. */
  cancelDone: move(["cancelling"], "cancelled", "cancelled_at"),
  /** A fault persisted through every retry (`BatchRunner`'s supervision): `internal_error`. */
  fault: move(["validating", "in_progress", "finalizing", "cancelling"], "failed", "failed_at")
} as const satisfies Record<string, Transition>

export type Move = keyof typeof transitions

