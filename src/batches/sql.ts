/**
 * The SQL of the batch stores (`BatchStore`, `WorkLeases`) that is shared or that differs between SQLite and
 * PostgreSQL: every `onDialectOrElse` of theirs is here, resolved once when a store is built.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import { Effect, Schema } from "effect"
import type { BatchId } from "../domain/Ids.js"
import type { RequestOutcome, RequestRow, ResultLines } from "./BatchStore.js"
import { RESULT_ROW_COLUMNS, resultLinesOf } from "./resultLineBytes.js"
import { type TokenUsage, zeroUsage } from "./usage.js"

/** Rows per INSERT statement of request rows and slices (SQLite allows 32,766 bound parameters; 5 per row). */
export const INSERT_GROUP = 1000
/** Outcomes per INSERT on SQLite (14 parameters each). */
const SQLITE_OUTCOMES_PER_INSERT = 64

/** The columns of an outcome row, in the order both dialects' inserts give their values. */
const outcomeColumns = ["batch_id", "line", "custom_id", "result_id", "status_code", "response", "request_id",
  "error_code", "error_message", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens"]
const requestColumns = ["batch_id", "line", "custom_id", "result_id", "body"]

/** An integer column: a number from SQLite, a string from PostgreSQL (which returns BIGINT as text). */
export const SqlInt = Schema.Union(Schema.Number, Schema.NumberFromString)

export const chunks = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

/** The token usage an outcome adds to its batch's: none for an error. */
const usageOfOutcome = (o: RequestOutcome): TokenUsage => (o._tag === "Response" ? o.usage : zeroUsage)

export const makeBatchSql = (sql: SqlClient.SqlClient) => {
  /**
   * SQLite: the text of `INSERT INTO table (columns) VALUES (?, …), … suffix` for `rows` rows, built once per
   * shape: a group's values are bound as they are, with no statement to compile per group.
   */
  const insertTexts = new Map<string, string>()
  const insertText = (table: string, columns: ReadonlyArray<string>, rows: number, suffix = "") => {
    const key = `${table} ${rows} ${suffix}`
    let text = insertTexts.get(key)
    if (text === undefined) {
      const values = `(${columns.map(() => "?").join(", ")})`
      text = `INSERT INTO ${table} (${columns.join(", ")}) VALUES ${Array.from({ length: rows }, () => values).join(", ")} ${suffix}`
      insertTexts.set(key, text)
    }
    return text
  }

  /** One INSERT of up to INSERT_GROUP request rows. */
  const insertRequestGroup = sql.onDialectOrElse({
    pg: () => (batchId: BatchId, group: ReadonlyArray<RequestRow>) =>
      sql`INSERT INTO batch_requests ${
        sql.insert(group.map((r) => ({ batch_id: batchId, line: r.line, custom_id: r.customId, result_id: r.resultId, body: r.body })))
      }`,
    orElse: () => (batchId: BatchId, group: ReadonlyArray<RequestRow>) => {
      const params: Array<unknown> = []
      for (const r of group) params.push(batchId, r.line, r.customId, r.resultId, r.body)
      return sql.unsafe(insertText("batch_requests", requestColumns, group.length), params).raw
    }
  })

  /**
   * SQLite: one INSERT per SQLITE_OUTCOMES_PER_INSERT outcomes (groups are cut to that size, so the statements
   * stay few and prepared), values bound: cheaper than having SQLite take them out of a JSON parameter (the runner
   * alone went from ~38k to ~47k requests/s). The trigger of migration 0006 adds what it stored to the batch's
   * counts and usage within the same statement, so a single INSERT needs no transaction around it. Gives the lines
   * it stored.
   */
  const insertOutcomesSqlite = (batchId: BatchId, outcomes: ReadonlyArray<RequestOutcome>) => {
    const inserts = chunks(outcomes, SQLITE_OUTCOMES_PER_INSERT).map((group) => {
      const params: Array<unknown> = []
      for (const o of group) {
        const u = usageOfOutcome(o)
        if (o._tag === "Response") params.push(batchId, o.line, o.customId, o.resultId, o.statusCode, o.body, o.requestId, null, null)
        else params.push(batchId, o.line, o.customId, o.resultId, null, null, null, o.code, o.message)
        params.push(u.input, u.cached, u.output, u.reasoning, u.total)
      }
      const text = insertText("batch_results", outcomeColumns, group.length, "ON CONFLICT DO NOTHING RETURNING line")
      return sql.unsafe(text, params).values
    })
    const lines = (stored: ReadonlyArray<ReadonlyArray<unknown>>) => new Set(stored.map((row) => Number(row[0])))
    if (inserts.length === 1) return Effect.map(inserts[0]!, lines)
    return sql.withTransaction(Effect.map(Effect.all(inserts), (stored) => lines(stored.flat())))
  }

  /**
   * Postgres: the group as one JSON parameter, inserted by a single statement (one round trip); the trigger of
   * migration 0006 adds the rows it inserted to the batch's counts and usage. Gives the lines it stored. The batch
   * row is locked before any line is inserted, the order a finishing takes them in (`WorkLeases.whileHolding`):
   * inserted first, a stalled node's late lines waited for the row the finishing held, the finishing for those
   * lines, and PostgreSQL aborted one as a deadlock. (The trigger's update locks that row anyway.)
   */
  const insertOutcomesPg = (batchId: BatchId, outcomes: ReadonlyArray<RequestOutcome>) => {
    // The usage fields are named as in `TokenUsage`: input, cached, output, reasoning, total.
    const rows = JSON.stringify(outcomes.map((o) => {
      const usage = usageOfOutcome(o)
      return o._tag === "Response"
        ? { line: o.line, custom_id: o.customId, result_id: o.resultId, status_code: o.statusCode, response: o.body, request_id: o.requestId, ...usage }
        : { line: o.line, custom_id: o.customId, result_id: o.resultId, error_code: o.code, error_message: o.message, ...usage }
    }))
    return sql`
      WITH batch AS (SELECT id FROM batches WHERE id = ${batchId} FOR NO KEY UPDATE)
      INSERT INTO batch_results (${sql.literal(outcomeColumns.join(", "))})
      SELECT batch.id, line, custom_id, result_id, status_code, response, request_id, error_code, error_message,
        input, cached, output, reasoning, total
      FROM batch, json_to_recordset(${rows}::json) AS v(line INTEGER, custom_id TEXT, result_id TEXT, status_code INTEGER,
        response TEXT, request_id TEXT, error_code TEXT, error_message TEXT, input BIGINT, cached BIGINT,
        output BIGINT, reasoning BIGINT, total BIGINT)
      ON CONFLICT DO NOTHING RETURNING line`.values.pipe(
      Effect.map((stored): ReadonlySet<number> => new Set(stored.map((row) => Number(row[0]))))
    )
  }

  /**
   * Postgres: a column as JSON text (a string, or null), NEL, U+2028 and U+2029 escaped as `escapeLineSeparators`
   * does (`domain/Json.ts`).
   */
  const jsonText = (column: string) =>
    sql.literal(
      // chr() and E'' strings: read alike whatever standard_conforming_strings is (a U&'' literal fails when it is off).
      `replace(replace(replace(COALESCE(to_json(${column})::text, 'null'), chr(133), E'\\\\u0085'), chr(8232), E'\\\\u2028'), chr(8233), E'\\\\u2029')`
    )
  const encoder = new TextEncoder()

  return {
    insertRequestGroup,
    /** Inserts outcomes in line order, each only where its line has none yet; gives how many were inserted. */
    insertOutcomes: sql.onDialectOrElse({ pg: () => insertOutcomesPg, orElse: () => insertOutcomesSqlite }),

    /** A request is pending while it has no row in `batch_results` (the request table is aliased `r`). */
    isPending: sql.literal(
      "NOT EXISTS (SELECT 1 FROM batch_results o WHERE o.batch_id = r.batch_id AND o.line = r.line)"
    ),

    /**
     * A page of output or error file lines: the `batch_results` rows `where` selects, one line each, in line order.
     * Postgres builds the page itself (one string, instead of a row object per outcome to format here: finalizing
     * 50,000 outcomes took less than half the time); SQLite hands over the columns, joined by `resultLinesOf`.
     */
    resultPage: sql.onDialectOrElse({
      pg: () => (where: Statement.Fragment) =>
        sql<{ lines: string | null; count: number | string; last_line: number | string | null }>`
          SELECT string_agg(text || E'\\n', '' ORDER BY line) AS lines, COUNT(*) AS count, MAX(line) AS last_line FROM (
            SELECT line, CASE WHEN status_code IS NOT NULL AND response IS NOT NULL
              THEN '{"id":' || ${jsonText("result_id")} || ',"custom_id":' || ${jsonText("custom_id")} ||
                ',"response":{"status_code":' || status_code || ',"request_id":' || ${jsonText("request_id")} ||
                ',"body":' || response || '},"error":null}'
              ELSE '{"id":' || ${jsonText("result_id")} || ',"custom_id":' || ${jsonText("custom_id")} ||
                ',"response":null,"error":{"code":' || ${jsonText("error_code")} || ',"message":' ||
                ${jsonText("error_message")} || '}}'
              END AS text
            FROM batch_results WHERE ${where} ORDER BY line
          ) page`.pipe(Effect.map(([page]): ResultLines => {
          const count = Number(page!.count)
          return { bytes: encoder.encode(page!.lines ?? ""), count, lastLine: count > 0 ? Number(page!.last_line) : 0 }
        })),
      orElse: () => (where: Statement.Fragment) =>
        Effect.map(
          sql`SELECT ${sql.literal(RESULT_ROW_COLUMNS)} FROM batch_results WHERE ${where} ORDER BY line`.values,
          resultLinesOf
        )
    }),

    /**
     * Postgres plans by table statistics, which lag behind a bulk insert: refreshed once a batch's rows are in,
     * the reads of pending rows (an anti-join against batch_results) are planned for the batch's real size from
     * the first page on.
     */
    refreshRequestStatistics: () =>
      sql.onDialectOrElse({ pg: () => Effect.asVoid(sql`ANALYZE batch_requests`), orElse: () => Effect.void }),

    /**
     * Postgres: completions of a batch's last two slices on two nodes are serialized on the batch row, or each
     * would still see the other's slice open and neither would move the batch on (SQLite runs one write
     * transaction at a time: they begin `IMMEDIATE`).
     */
    lockBatchRow: (id: BatchId) =>
      sql.onDialectOrElse({
        pg: () => Effect.asVoid(sql`SELECT id FROM batches WHERE id = ${id} FOR UPDATE`),
        orElse: () => Effect.void
      }),

    /** Postgres: rows another node is claiming right now are skipped, not waited for (SQLite runs one write at a time). */
    skipLocked: sql.onDialectOrElse({
      pg: () => sql.literal("FOR UPDATE SKIP LOCKED"),
      orElse: () => sql.literal("")
    }),

    /**
     * Whose leases a node restarting as `owner` frees: its own; with SQLite, on which one node runs batches (API-only
     * nodes beside it hold no lease nor claim), every lease (whatever node held it before is gone).
     */
    leasesFreedOnRestart: (owner: string): { readonly owner?: string } =>
      sql.onDialectOrElse({ sqlite: () => ({}), orElse: () => ({ owner }) }),

    /** Whether another node's slice lease can run out under this node: not on SQLite, for the same reason. */
    othersLeasesLapse: sql.onDialectOrElse({ sqlite: () => false, orElse: () => true })
  }
}

export type BatchSql = ReturnType<typeof makeBatchSql>
