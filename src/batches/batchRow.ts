/**
 * A row of `batches`, as either database returns it, read into a `BatchRecord`, column by column: each column's
 * type is checked (a row that does not fit throws `MalformedBatchRow`, which the stores turn into a defect) and
 * integers come as numbers from SQLite and as text from PostgreSQL (BIGINT).
 *
 * Why not a `Schema.Struct` of the row: every poll reads rows (a batch list, twenty of them), and Schema's struct
 * and union decoding cost ~12 µs and ~20 KB of garbage per 30-column row; under load that was a quarter of all the
 * server allocated (`npm run bench:load`, docs/performance.md). The JSON columns still go through their schemas.
 * Why rows of values (`BATCH_COLUMNS` in order) rather than objects: the drivers build an object per row a property
 * at a time, and SQLite's took more than twice as long as its array (a page of 20 batches: 245 against 105 µs).
 */
import { Schema } from "effect"
import { Batch, BatchError, type BatchStatus, BatchStatus as BatchStatusSchema, Metadata } from "../domain/Batches.js"
import type { BatchId, FileId } from "../domain/Ids.js"
import { trusted } from "../domain/List.js"
import type { BatchRecord } from "./BatchStore.js"

/** A `batches` row whose columns do not have the types the table gives them. */
export class MalformedBatchRow extends Error {
  constructor(column: string, value: unknown) {
    const shown = typeof value === "string" ? JSON.stringify(value.slice(0, 100)) : String(value) // no throw on a bigint
    super(`Malformed row in batches: column ${column} holds ${shown}`)
    this.name = "MalformedBatchRow"
  }
}

/** The columns a record is read from, in the order of a row's values: `SELECT ${BATCH_COLUMNS} …` read as `.values`. */
export const BATCH_COLUMNS = [
  "id",
  "endpoint",
  "model",
  "errors",
  "input_file_id",
  "completion_window",
  "status",
  "output_file_id",
  "error_file_id",
  "created_at",
  "in_progress_at",
  "expires_at",
  "finalizing_at",
  "completed_at",
  "failed_at",
  "expired_at",
  "cancelling_at",
  "cancelled_at",
  "total",
  "completed",
  "failed",
  "input_tokens",
  "cached_tokens",
  "output_tokens",
  "reasoning_tokens",
  "total_tokens",
  "metadata",
  "project",
  "output_expires_after",
  "request_hash",
  "model_unchecked"
] as const

type Column = typeof BATCH_COLUMNS[number]
type Row = ReadonlyArray<unknown>

const INDEX = Object.fromEntries(BATCH_COLUMNS.map((column, i) => [column, i])) as Record<Column, number>
const at = (row: Row, column: Column): unknown => row[INDEX[column]]

const text = (row: Row, column: Column): string => {
  const value = at(row, column)
  if (typeof value !== "string") throw new MalformedBatchRow(column, value)
  return value
}
const textOrNull = (row: Row, column: Column): string | null => (at(row, column) === null ? null : text(row, column))

/**
 * A numeric column (the table's integers): a number from SQLite, decimal text from PostgreSQL's BIGINT. Any finite
 * number is taken, as a JavaScript number: token sums past 2^53 (an upstream may report anything) lose precision
 * but stay readable. NaN and ±Infinity, which neither database returns for these columns, are refused (the Schema
 * decoder used before took them).
 */
const sqlNumber = (row: Row, column: Column): number => {
  const value = at(row, column)
  const n = typeof value === "number" ? value : typeof value === "string" && value.trim() !== "" ? Number(value) : NaN
  if (!Number.isFinite(n)) throw new MalformedBatchRow(column, value)
  return n
}
const sqlNumberOrNull = (row: Row, column: Column): number | null =>
  at(row, column) === null ? null : sqlNumber(row, column)

const statuses: ReadonlySet<unknown> = new Set(BatchStatusSchema.literals)
const status = (row: Row): BatchStatus => {
  const value = at(row, "status")
  if (!statuses.has(value)) throw new MalformedBatchRow("status", value)
  return value as BatchStatus
}

/** A JSON column read with its schema (built once: a schema made per call compiles its parser again). */
const jsonColumn = <A>(schema: Schema.Schema<A, string>) => {
  const decode = Schema.decodeUnknownEither(schema)
  return (row: Row, column: Column): A | null => {
    const value = at(row, column)
    if (value === null) return null
    const decoded = decode(value)
    if (decoded._tag === "Left") throw new MalformedBatchRow(column, value)
    return decoded.right
  }
}
const errorsColumn = jsonColumn(Schema.parseJson(Schema.Array(BatchError)))
const metadataColumn = jsonColumn(Schema.parseJson(Metadata))

/** The record a row of `batches` holds (its `BATCH_COLUMNS`); throws `MalformedBatchRow` when a column does not fit. */
export const batchRecordOf = (row: Row): BatchRecord => {
  const errors = errorsColumn(row, "errors")
  return {
    batch: new Batch({
      id: text(row, "id") as BatchId,
      object: "batch",
      endpoint: text(row, "endpoint"),
      model: textOrNull(row, "model"),
      errors: errors === null ? null : { object: "list", data: errors },
      input_file_id: text(row, "input_file_id") as FileId,
      completion_window: text(row, "completion_window"),
      status: status(row),
      output_file_id: textOrNull(row, "output_file_id") as FileId | null,
      error_file_id: textOrNull(row, "error_file_id") as FileId | null,
      created_at: sqlNumber(row, "created_at"),
      in_progress_at: sqlNumberOrNull(row, "in_progress_at"),
      expires_at: sqlNumber(row, "expires_at"),
      finalizing_at: sqlNumberOrNull(row, "finalizing_at"),
      completed_at: sqlNumberOrNull(row, "completed_at"),
      failed_at: sqlNumberOrNull(row, "failed_at"),
      expired_at: sqlNumberOrNull(row, "expired_at"),
      cancelling_at: sqlNumberOrNull(row, "cancelling_at"),
      cancelled_at: sqlNumberOrNull(row, "cancelled_at"),
      request_counts: { total: sqlNumber(row, "total"), completed: sqlNumber(row, "completed"), failed: sqlNumber(row, "failed") },
      usage: {
        input_tokens: sqlNumber(row, "input_tokens"),
        input_tokens_details: { cached_tokens: sqlNumber(row, "cached_tokens") },
        output_tokens: sqlNumber(row, "output_tokens"),
        output_tokens_details: { reasoning_tokens: sqlNumber(row, "reasoning_tokens") },
        total_tokens: sqlNumber(row, "total_tokens")
      },
      metadata: metadataColumn(row, "metadata")
    }, trusted),
    project: text(row, "project"),
    outputExpiresAfterSeconds: sqlNumberOrNull(row, "output_expires_after"),
    requestHash: textOrNull(row, "request_hash"),
    ...(sqlNumber(row, "model_unchecked") === 1 && { modelUnchecked: true })
  }
}
