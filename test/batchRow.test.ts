/**
 * A `batches` row read into a record (`batches/batchRow.ts`): as SQLite gives it (integers as numbers) and as
 * PostgreSQL does (BIGINT as text), the same batch; a row whose columns do not fit is refused, naming the column.
 * (The stores read real rows of both databases in `Batches.test.ts`, `MultiNode.test.ts` and the others.)
 */
import { describe, expect, it } from "@effect/vitest"
import { Schema } from "effect"
import { Batch } from "../src/domain/Batches.js"
import { BATCH_COLUMNS, batchRecordOf as recordOfValues, MalformedBatchRow } from "../src/batches/batchRow.js"

/** A row given as its columns by name, read as the stores read it: its values in the order of `BATCH_COLUMNS`. */
const batchRecordOf = (row: Record<string, unknown>) => recordOfValues(BATCH_COLUMNS.map((column) => row[column]))

/** Every column a distinct value, so that two columns swapped show. */
const sqliteRow = {
  id: "batch_1",
  status: "cancelled",
  endpoint: "/v1/chat/completions",
  model: "m",
  input_file_id: "file-in",
  completion_window: "24h",
  errors: JSON.stringify([{ code: "invalid_json", message: "Line 3 is not JSON.", param: null, line: 3 }]),
  output_file_id: "file-out",
  error_file_id: "file-err",
  created_at: 1_700_000_000,
  in_progress_at: 1_700_000_001,
  expires_at: 1_700_086_400,
  finalizing_at: 1_700_000_002,
  completed_at: 1_700_000_003,
  failed_at: 1_700_000_004,
  expired_at: 1_700_000_005,
  cancelling_at: 1_700_000_006,
  cancelled_at: 1_700_000_007,
  total: 3,
  completed: 2,
  failed: 1,
  input_tokens: 10,
  cached_tokens: 4,
  output_tokens: 20,
  reasoning_tokens: 5,
  total_tokens: 30,
  metadata: JSON.stringify({ team: "a" }),
  output_expires_after: 3600,
  request_hash: "h",
  project: "p",
  model_unchecked: 1
}

/** PostgreSQL returns its BIGINT columns (times, tokens) as text; the INTEGER ones as numbers. */
const BIGINT_COLUMNS = new Set(["created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
  "expired_at", "cancelling_at", "cancelled_at", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
  "total_tokens"])
const postgresRow = Object.fromEntries(
  Object.entries(sqliteRow).map(([column, value]) => [column, BIGINT_COLUMNS.has(column) ? String(value) : value])
)

describe("batchRecordOf", () => {
  it("reads a SQLite row and a PostgreSQL row into the same record, each column in its field", () => {
    const record = batchRecordOf(sqliteRow)
    expect(batchRecordOf(postgresRow)).toEqual(record)
    expect(record.project).toBe("p")
    expect(record.outputExpiresAfterSeconds).toBe(3600)
    expect(record.requestHash).toBe("h")
    expect(record.modelUnchecked).toBe(true)
    expect(batchRecordOf({ ...sqliteRow, model_unchecked: 0 }).modelUnchecked).toBeUndefined()
    expect(Schema.encodeSync(Batch)(record.batch)).toEqual({
      id: "batch_1",
      object: "batch",
      endpoint: "/v1/chat/completions",
      model: "m",
      errors: { object: "list", data: [{ code: "invalid_json", message: "Line 3 is not JSON.", param: null, line: 3 }] },
      input_file_id: "file-in",
      completion_window: "24h",
      status: "cancelled",
      output_file_id: "file-out",
      error_file_id: "file-err",
      created_at: 1_700_000_000,
      in_progress_at: 1_700_000_001,
      expires_at: 1_700_086_400,
      finalizing_at: 1_700_000_002,
      completed_at: 1_700_000_003,
      failed_at: 1_700_000_004,
      expired_at: 1_700_000_005,
      cancelling_at: 1_700_000_006,
      cancelled_at: 1_700_000_007,
      request_counts: { total: 3, completed: 2, failed: 1 },
      usage: {
        input_tokens: 10,
        input_tokens_details: { cached_tokens: 4 },
        output_tokens: 20,
        output_tokens_details: { reasoning_tokens: 5 },
        total_tokens: 30
      },
      metadata: { team: "a" }
    })
  })

  it("keeps null columns null", () => {
    const { batch } = batchRecordOf({ ...sqliteRow, errors: null, metadata: null, model: null, output_file_id: null, completed_at: null })
    expect([batch.errors, batch.metadata, batch.model, batch.output_file_id, batch.completed_at]).toEqual([null, null, null, null, null])
  })

  it("reads token sums past 2^53 (an upstream may report anything) instead of failing the batch's reads", () => {
    const huge = { ...sqliteRow, input_tokens: 2 ** 60, total_tokens: 2 ** 60 }
    expect(batchRecordOf(huge).batch.usage.input_tokens).toBe(2 ** 60)
    expect(batchRecordOf({ ...postgresRow, input_tokens: "1152921504606846976" }).batch.usage.input_tokens).toBe(2 ** 60)
  })

  const malformed: ReadonlyArray<readonly [string, unknown]> = [
    ["status", "done"],
    ["created_at", "soon"],
    ["created_at", Infinity],
    ["total", null],
    ["total", BigInt(5)], // what SqlClient.SafeIntegers would give: refused, and said without failing to print it
    ["completed_at", ""],
    ["id", 7],
    ["project", undefined],
    ["errors", "not json"],
    ["metadata", JSON.stringify({ team: 1 })]
  ]
  it.each(malformed.map(([column, value]) => [column, typeof value === "string" ? JSON.stringify(value) : String(value), value]))(
    "refuses a row whose %s holds %s, naming the column",
    (column, _shown, value) => {
      expect(() => batchRecordOf({ ...sqliteRow, [column]: value })).toThrow(MalformedBatchRow)
      expect(() => batchRecordOf({ ...sqliteRow, [column]: value })).toThrow(`column ${column}`)
    }
  )
})
