/**
 * `BatchStore`: batches and what the runner stores for them, in SQL (SQLite or PostgreSQL).
 *
 * - batches and their status (`batchRecords.ts`): create, get, list; every status change is a move of the
 *   transition table (`transitions.ts`), applied compare-and-set, so a cancel is never overwritten by a late
 *   `completed`; a final move writes its webhook event (`webhooks/deliveries.ts`) in the same transaction;
 * - request rows (`requestRows.ts`): one per input line, written by validation, read back a page at a time;
 * - outcomes and result lines (`outcomes.ts`): an outcome is inserted once per request (the primary key), counted
 *   by triggers in the same statement, and the output and error files' lines are built by the database;
 * - results while a batch runs (`partialResults.ts`): those lines up to the first request not finished yet.
 *
 * Claims on batches and slices (which node works on what) are `WorkLeases`'. SQL that differs between the two
 * databases is in `sql.ts`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Context, Data, Effect, Layer, type Option } from "effect"
import type { Batch, BatchEndpoint, BatchError, BatchStatus } from "../domain/Batches.js"
import type { BatchId, BatchRequestId, FileId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { Metrics } from "../observability/Metrics.js"
import { makeOutbox } from "../webhooks/deliveries.js"
import { WebhookTargets } from "../webhooks/WebhookTargets.js"
import { makeBatchRecords } from "./batchRecords.js"
import { readValuesOf } from "../storage/ReadConnection.js"
import { makeOutcomes } from "./outcomes.js"
import { makePartialResults, type SettledResults } from "./partialResults.js"
import { makeRequestRows } from "./requestRows.js"
import { makeBatchSql } from "./sql.js"
import type { Move } from "./transitions.js"
import type { TokenUsage } from "./usage.js"

export class BatchNotFound extends Data.TaggedError("BatchNotFound")<{ readonly id: BatchId }> {}
export class UnknownBatchCursor extends Data.TaggedError("UnknownBatchCursor")<{ readonly after: BatchId }> {}

export interface NewBatch {
  readonly id: BatchId
  /** The project the batch (and its output and error files) belongs to. */
  readonly project: string
  readonly endpoint: BatchEndpoint
  readonly inputFileId: FileId
  readonly completionWindow: string
  readonly expiresAfterSeconds: number
  readonly metadata: Readonly<Record<string, string>> | null
  readonly outputExpiresAfterSeconds: number | null
  /** Unique within the batch's project. */
  readonly idempotencyKey: string | null
  /** Fingerprint of the create parameters, to tell an idempotent retry from a conflicting reuse of the key. */
  readonly requestHash: string | null
}

/** What the runner needs to know of a batch beyond its wire shape. */
export interface BatchRecord {
  readonly batch: Batch
  readonly project: string
  readonly outputExpiresAfterSeconds: number | null
  readonly requestHash: string | null
  /**
   * True when validation could not check the batch's model against the upstreams' lists (one serving any model had
   * given none yet): a run finding no upstream for it fails its lines, as validation would have (`model_not_found`).
   */
  readonly modelUnchecked?: boolean
}

/** One request of a batch: an input line that passed validation. */
export interface RequestRow {
  readonly line: number
  readonly customId: string
  readonly resultId: BatchRequestId
  /** The request body, as JSON text. */
  readonly body: string
  /** Read back while pending: the attempts its earlier runs counted, and the end of their backoff (`keepAttempts`). */
  readonly attempts?: RequestAttempts | undefined
}

/** How much a page of pending requests holds at most: rows, and bytes of their bodies (the first row whatever its size). */
export interface PageLimit {
  readonly rows: number
  readonly bytes: number
}

/** A page of pending requests; `more`: others may follow in its range. */
export interface PendingPage {
  readonly rows: ReadonlyArray<RequestRow>
  readonly more: boolean
}

/** The attempts a pending request has used, as its last run left them. */
export interface RequestAttempts {
  readonly used: number
  /** Epoch milliseconds before which its next attempt is not sent. */
  readonly retryAt?: number | undefined
}

/** The final outcome of one request: an upstream response (any status) or an error without one. */
export type RequestOutcome =
  | {
    readonly _tag: "Response"
    readonly line: number
    readonly customId: string
    readonly resultId: BatchRequestId
    readonly statusCode: number
    /** JSON text of the upstream body. */
    readonly body: string
    readonly requestId: string
    readonly usage: TokenUsage
  }
  | {
    readonly _tag: "Error"
    readonly line: number
    readonly customId: string
    readonly resultId: BatchRequestId
    readonly code: string
    readonly message: string
  }

/** A page of an output or error file. */
export interface ResultLines {
  /** The lines in UTF-8, each ending with a newline (empty when the page is). */
  readonly bytes: Uint8Array
  readonly count: number
  /** The line number of the last outcome in the page (0 when it is empty). */
  readonly lastLine: number
}

/** A run of consecutive request lines, the unit of work a node claims (see `WorkLeases`). */
export interface SliceBounds {
  readonly firstLine: number
  readonly lastLine: number
}

/** What a move writes besides the status and its timestamp. */
export interface TransitionPatch {
  readonly errors?: ReadonlyArray<BatchError>
  readonly outputFileId?: FileId | null
  readonly errorFileId?: FileId | null
}

/** The moves `transition` makes; the other two have conditions of their own (`startRunning`, `completeSlice`). */
export type PlainMove = Exclude<Move, "startRunning" | "lastSliceDone">

export interface BatchStoreShape {
  // ---- batches ----

  /**
   * Inserts a batch; with an idempotency key its project already used, returns the existing one instead
   * (`created: false`). For inline requests and reruns it runs as `FileStore.create`'s check, in the transaction that
   * writes the batch's input file (`BatchCommands`): a store of another database loses only that atomicity.
   */
  readonly create: (batch: NewBatch) => Effect.Effect<{ readonly record: BatchRecord; readonly created: boolean }>
  /** A batch `visibility` does not see is `BatchNotFound`, exactly as one that does not exist. */
  readonly get: (id: BatchId, visibility: Visibility) => Effect.Effect<BatchRecord, BatchNotFound>
  /** The batches `visibility` sees, newest first, after the batch `after` (one it does not see is unknown). */
  readonly list: (query: {
    readonly visibility: Visibility
    readonly after?: BatchId | undefined
    readonly limit: number
  }) => Effect.Effect<
    { readonly data: ReadonlyArray<Batch>; readonly hasMore: boolean },
    UnknownBatchCursor
  >
  /** The batch `project` created with idempotency key `key`, if any. */
  readonly idempotentBatch: (project: string, key: string) => Effect.Effect<Option.Option<BatchRecord>>
  /** How many of `project`'s batches are not finished (not completed, failed, expired or cancelled). */
  readonly activeBatches: (project: string) => Effect.Effect<number>
  /** The requests of `project`'s batches past validation and not finished, but those of batch `except`. */
  readonly enqueuedRequests: (project: string, except: BatchId) => Effect.Effect<number>
  /** The current status of each of `ids` that exists. */
  readonly statuses: (ids: ReadonlyArray<BatchId>) => Effect.Effect<ReadonlyMap<BatchId, BatchStatus>>
  /** How many batches (of every project, on every node) are in each unfinished status; a status with none is absent. */
  readonly activeByStatus: Effect.Effect<ReadonlyMap<BatchStatus, number>>

  // ---- status changes: the moves of the transition table (`transitions.ts`), compare-and-set ----

  /**
   * Makes `move` if the batch is in one of its `from` statuses, stamping its column with the current time (a move
   * to a final status also frees the batch-wide lease); `None` when it was not (someone else moved it first), or,
   * with `heldBy`, when that node no longer holds the batch-wide lease (it stalled past it).
   */
  readonly transition: (id: BatchId, move: PlainMove, patch?: TransitionPatch, heldBy?: string) => Effect.Effect<Option.Option<Batch>>
  /**
   * Move `startRunning` (validating → in_progress), stamping `model`, `total` and whether the model went unchecked,
   * creating the batch's slices and freeing its batch-wide lease, in one transaction; false when the batch had left
   * `validating` (a cancel came first), or, with `heldBy`, when that node no longer holds its batch-wide lease (it
   * stalled past it: another node validates the batch now).
   */
  readonly startRunning: (
    id: BatchId,
    patch: { readonly model: string | null; readonly total: number; readonly modelUnchecked?: boolean },
    slices: ReadonlyArray<SliceBounds>,
    heldBy?: string
  ) => Effect.Effect<boolean>
  /**
   * Marks a slice done (every one of its requests has an outcome) and frees it; when it was the batch's last open
   * slice, makes move `lastSliceDone` (in_progress → finalizing) in the same transaction and returns true.
   */
  readonly completeSlice: (id: BatchId, slice: number) => Effect.Effect<boolean>

  // ---- request rows ----

  readonly insertRequests: (batchId: BatchId, rows: ReadonlyArray<RequestRow>) => Effect.Effect<void>
  /** Deletes a batch's request rows and outcomes (a validation that starts over, or one that failed). */
  readonly deleteRequests: (batchId: BatchId) => Effect.Effect<void>
  /**
   * Requests still without an outcome, in lines `afterLine < line <= lastLine`, in line order: up to `limit.rows`, and
   * none more once their bodies hold `limit.bytes` (the first whatever its size).
   */
  readonly pendingRequests: (
    batchId: BatchId,
    afterLine: number,
    lastLine: number,
    limit: PageLimit
  ) => Effect.Effect<PendingPage>
  /**
   * Keeps, with each pending request, the attempts a run used on it without a final answer (handed back at its turn's
   * end, or the run ended), so that whichever node runs it next counts on and waits out its backoff.
   */
  readonly keepAttempts: (batchId: BatchId, kept: ReadonlyMap<number, RequestAttempts>) => Effect.Effect<void>
  /**
   * Deletes the request rows, outcomes and slices of finished batches whose input, output and error files are all
   * gone (deleted, or expired and swept): nothing reads them any more, and they were most of the database (~22 MB
   * for 20,000 requests). Looks at the batches created after `afterSeq`, a group at a time; gives where to go on
   * (0: from the start again) and how many batches it cleared.
   */
  readonly sweepSpentRows: (afterSeq: number) => Effect.Effect<{ readonly next: number; readonly cleared: number }>

  // ---- outcomes and result lines ----

  /**
   * Stores outcomes together with what they add to the batch's counts and usage (a trigger does that within the
   * same statement); requests that already had an outcome keep it (another node's, after a takeover). Returns the
   * lines stored.
   */
  readonly recordOutcomes: (batchId: BatchId, outcomes: ReadonlyArray<RequestOutcome>) => Effect.Effect<ReadonlySet<number>>
  /** Gives every request still pending the error `code`; returns how many. */
  readonly failPending: (batchId: BatchId, code: string, message: string) => Effect.Effect<number>
  /**
   * The output file lines (`succeeded`: 2xx answers) or error file lines (every other outcome) of up to `limit`
   * outcomes after line `afterLine`, in line order, in the JSONL format of OpenAI's files. A page also stops once
   * its upstream bodies pass `RESULT_PAGE_BYTES` (it always holds at least one line), so large answers are written
   * a few at a time: the page is empty only when no line is left.
   */
  readonly resultLines: (
    batchId: BatchId,
    kind: "succeeded" | "failed",
    afterLine: number,
    limit: number
  ) => Effect.Effect<ResultLines>
  /**
   * Results while a batch runs (`partialResults.ts`): of the output (`succeeded`) or error file lines after line
   * `afterLine`, those before the batch's first request still without an outcome (every one when none is left), at
   * most `limit` and one page of `resultLines` (read whole: a failed read fails the call); their bytes are exactly
   * the final file's. With them, the `afterLine` of the next call.
   */
  readonly settledResults: (
    batchId: BatchId,
    kind: "succeeded" | "failed",
    afterLine: number,
    limit: number
  ) => Effect.Effect<SettledResults>
}

export class BatchStore extends Context.Tag("BatchStore")<BatchStore, BatchStoreShape>() {}

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const metrics = yield* Metrics
  const dialect = makeBatchSql(sql)
  const outcomes = makeOutcomes(sql, dialect)
  return BatchStore.of({
    ...makeBatchRecords(sql, dialect, yield* readValuesOf(sql), metrics.batchMoved, makeOutbox(sql, yield* WebhookTargets)),
    ...makeRequestRows(sql, dialect),
    ...outcomes,
    ...makePartialResults(sql, dialect, outcomes.resultLines)
  })
})

export const BatchStoreLive: Layer.Layer<BatchStore, never, SqlClient.SqlClient> = Layer.effect(BatchStore, make)
