/**
 * Batches and their per-request rows in SQL. Status changes are compare-and-set (a cancel can never be overwritten
 * by a late `completed`), a request's outcome is written once (only a `pending` row can take one), and the counts
 * and usage move only by the rows a write actually changed.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, Context, Data, Effect, Layer, Option } from "effect"
import { activeStatuses, Batch, type BatchError, type BatchStatus, terminalStatuses } from "../domain/Batches.js"
import { type TokenUsage, zeroUsage } from "./validation.js"

export class BatchNotFound extends Data.TaggedError("BatchNotFound")<{ readonly id: string }> {}
export class UnknownBatchCursor extends Data.TaggedError("UnknownBatchCursor")<{ readonly after: string }> {}

export interface NewBatch {
  readonly id: string
  readonly endpoint: string
  readonly inputFileId: string
  readonly completionWindow: string
  readonly expiresAfterSeconds: number
  readonly metadata: Readonly<Record<string, string>> | null
  readonly outputExpiresAfterSeconds: number | null
  readonly idempotencyKey: string | null
  /** Fingerprint of the create parameters, to tell an idempotent retry from a conflicting reuse of the key. */
  readonly requestHash: string | null
}

/** What the runner needs to know of a batch beyond its wire shape. */
export interface BatchRecord {
  readonly batch: Batch
  readonly outputExpiresAfterSeconds: number | null
  readonly requestHash: string | null
}

export interface RequestRow {
  readonly line: number
  readonly customId: string
  readonly resultId: string
  readonly body: string
}

/** The final outcome of one request: an upstream response (any status) or an error without one. */
export type RequestOutcome =
  | {
    readonly _tag: "Response"
    readonly line: number
    readonly customId: string
    readonly resultId: string
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
    readonly resultId: string
    readonly code: string
    readonly message: string
  }

/** A page of an output or error file: JSONL lines, each ending with a newline. */
export interface ResultLines {
  /** The lines in UTF-8, each ending with a newline (empty when the page is). */
  readonly bytes: Uint8Array
  readonly count: number
  /** The line number of the last outcome in the page (0 when it is empty). */
  readonly lastLine: number
}

export type TimestampColumn =
  | "in_progress_at"
  | "finalizing_at"
  | "completed_at"
  | "failed_at"
  | "expired_at"
  | "cancelling_at"
  | "cancelled_at"

export interface TransitionPatch {
  readonly errors?: ReadonlyArray<BatchError>
  readonly outputFileId?: string | null
  readonly errorFileId?: string | null
}

export interface BatchStoreShape {
  /** Inserts a batch; with an idempotency key already used, returns the existing one instead (`created: false`). */
  readonly create: (batch: NewBatch) => Effect.Effect<{ readonly record: BatchRecord; readonly created: boolean }>
  readonly get: (id: string) => Effect.Effect<BatchRecord, BatchNotFound>
  /** Newest first, after the batch `after`. */
  readonly list: (query: { readonly after?: string | undefined; readonly limit: number }) => Effect.Effect<
    { readonly data: ReadonlyArray<Batch>; readonly hasMore: boolean },
    UnknownBatchCursor
  >
  /**
   * Moves the batch to `to` if it is in one of `from`, stamping `stamp` with the current time; `None` when the
   * batch was not in `from` (someone else moved it first).
   */
  readonly transition: (
    id: string,
    from: ReadonlyArray<BatchStatus>,
    to: BatchStatus,
    stamp: TimestampColumn | null,
    patch?: TransitionPatch
  ) => Effect.Effect<Option.Option<Batch>>
  /** The current status of each of `ids` that exists. */
  readonly statuses: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyMap<string, BatchStatus>>
  readonly insertRequests: (batchId: string, rows: ReadonlyArray<RequestRow>) => Effect.Effect<void>
  readonly deleteRequests: (batchId: string) => Effect.Effect<void>
  /** Up to `limit` requests still without an outcome, in lines `afterLine < line <= lastLine`, in line order. */
  readonly pendingRequests: (
    batchId: string,
    afterLine: number,
    lastLine: number,
    limit: number
  ) => Effect.Effect<ReadonlyArray<RequestRow>>
  /**
   * Stores outcomes together with what they add to the batch's counts and usage (a trigger does that within the
   * same statement); requests that already had an outcome keep it. Returns how many were stored.
   */
  readonly recordOutcomes: (batchId: string, outcomes: ReadonlyArray<RequestOutcome>) => Effect.Effect<number>
  /** Gives every request still pending the error `code`; returns how many. */
  readonly failPending: (batchId: string, code: string, message: string) => Effect.Effect<number>
  /**
   * The output file lines (`succeeded`: 2xx answers) or error file lines (every other outcome) of up to `limit`
   * outcomes after line `afterLine`, in line order: `{"id","custom_id","response":{"status_code","request_id",
   * "body"},"error":null}` with the upstream body embedded as stored, or `"response":null` and `"error":{"code",
   * "message"}`.
   */
  readonly resultLines: (
    batchId: string,
    kind: "succeeded" | "failed",
    afterLine: number,
    limit: number
  ) => Effect.Effect<ResultLines>

  // ---- leases: which node works on what (see `BatchRunner`); times are epoch milliseconds ----

  /**
   * validating → in_progress, stamping `model` and `total`, creating the batch's slices and releasing its lease,
   * in one transaction; false when the batch had left `validating` (a cancel came first).
   */
  readonly startRunning: (
    id: string,
    patch: { readonly model: string; readonly total: number },
    slices: ReadonlyArray<SliceBounds>
  ) => Effect.Effect<boolean>
  /** Takes the batch-wide lease of an unfinished batch if it is free, expired or already `owner`'s. */
  readonly claimBatch: (id: string, lease: Lease) => Effect.Effect<boolean>
  /** Takes the first open slice of a running batch whose lease is free or expired. */
  readonly claimSlice: (id: string, lease: Lease) => Effect.Effect<Option.Option<Slice>>
  /**
   * Marks a slice done (every one of its requests has an outcome); when it was the batch's last open slice, moves
   * the batch to `finalizing` in the same transaction and returns true.
   */
  readonly completeSlice: (id: string, slice: number) => Effect.Effect<boolean>
  /** How many slices of the batch some node holds a live lease on. */
  readonly liveSlices: (id: string, now: number) => Effect.Effect<number>
  /** Extends every lease `owner` holds; returns the slices still held (a lease taken over is missing). */
  readonly renewLeases: (lease: Lease) => Effect.Effect<ReadonlyArray<{ readonly batchId: string; readonly slice: number }>>
  /** Gives up the leases of `owner` (every owner when none), on one batch or all. */
  readonly releaseLeases: (filter: { readonly owner?: string; readonly batchId?: string }) => Effect.Effect<void>
  /**
   * Frees the leases a previous run of node `owner` held. With SQLite, which one node uses at a time, every lease
   * is freed: whatever node held it before is gone.
   */
  readonly releaseAfterRestart: (owner: string) => Effect.Effect<void>
  /**
   * Unfinished batches with work a node could claim at `now`, oldest first: a free batch-wide lease on one that
   * validates, finishes or is past its expiry, or a free slice of one that runs.
   */
  readonly claimable: (now: number, limit: number) => Effect.Effect<ReadonlyArray<string>>
}

/** A node's claim: held by `owner` until `until`, taken at `now` (a lease with `until < now` is free). */
export interface Lease {
  readonly owner: string
  readonly now: number
  readonly until: number
}

export interface SliceBounds {
  readonly firstLine: number
  readonly lastLine: number
}

export interface Slice extends SliceBounds {
  readonly slice: number
}

export class BatchStore extends Context.Tag("BatchStore")<BatchStore, BatchStoreShape>() {}

type BatchRow = {
  readonly id: string
  readonly status: BatchStatus
  readonly endpoint: string
  readonly model: string | null
  readonly input_file_id: string
  readonly completion_window: string
  readonly errors: string | null
  readonly output_file_id: string | null
  readonly error_file_id: string | null
  readonly created_at: number | string
  readonly in_progress_at: number | string | null
  readonly expires_at: number | string
  readonly finalizing_at: number | string | null
  readonly completed_at: number | string | null
  readonly failed_at: number | string | null
  readonly expired_at: number | string | null
  readonly cancelling_at: number | string | null
  readonly cancelled_at: number | string | null
  readonly total: number | string
  readonly completed: number | string
  readonly failed: number | string
  readonly input_tokens: number | string
  readonly cached_tokens: number | string
  readonly output_tokens: number | string
  readonly reasoning_tokens: number | string
  readonly total_tokens: number | string
  readonly metadata: string | null
  readonly output_expires_after: number | string | null
  readonly request_hash: string | null
}

/** Postgres returns BIGINT as a string. */
const n = (v: number | string): number => Number(v)
const nOrNull = (v: number | string | null): number | null => (v === null ? null : Number(v))

const toRecord = (row: BatchRow): BatchRecord => ({
  batch: new Batch({
    id: row.id,
    object: "batch",
    endpoint: row.endpoint,
    model: row.model,
    errors: row.errors === null ? null : { object: "list", data: JSON.parse(row.errors) },
    input_file_id: row.input_file_id,
    completion_window: row.completion_window,
    status: row.status,
    output_file_id: row.output_file_id,
    error_file_id: row.error_file_id,
    created_at: n(row.created_at),
    in_progress_at: nOrNull(row.in_progress_at),
    expires_at: n(row.expires_at),
    finalizing_at: nOrNull(row.finalizing_at),
    completed_at: nOrNull(row.completed_at),
    failed_at: nOrNull(row.failed_at),
    expired_at: nOrNull(row.expired_at),
    cancelling_at: nOrNull(row.cancelling_at),
    cancelled_at: nOrNull(row.cancelled_at),
    request_counts: { total: n(row.total), completed: n(row.completed), failed: n(row.failed) },
    usage: {
      input_tokens: n(row.input_tokens),
      input_tokens_details: { cached_tokens: n(row.cached_tokens) },
      output_tokens: n(row.output_tokens),
      output_tokens_details: { reasoning_tokens: n(row.reasoning_tokens) },
      total_tokens: n(row.total_tokens)
    },
    metadata: row.metadata === null ? null : JSON.parse(row.metadata)
  }),
  outputExpiresAfterSeconds: nOrNull(row.output_expires_after),
  requestHash: row.request_hash
})



const nowSeconds = Effect.map(Clock.currentTimeMillis, (ms) => Math.floor(ms / 1000))

/** Rows per INSERT statement (SQLite allows 32,766 bound parameters; 5 per row). */
const INSERT_GROUP = 1000
/** Outcomes per INSERT on SQLite (14 parameters each). */
const SQLITE_OUTCOMES_PER_INSERT = 64

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient

  const selectById = (id: string) => sql<BatchRow>`SELECT * FROM batches WHERE id = ${id}`

  const get = (id: string) =>
    Effect.gen(function*() {
      const rows = yield* selectById(id).pipe(Effect.orDie)
      if (rows.length === 0) return yield* new BatchNotFound({ id })
      return toRecord(rows[0]!)
    }).pipe(Effect.withSpan("BatchStore.get", { attributes: { id } }))

  const create = (batch: NewBatch) =>
    Effect.gen(function*() {
      const created_at = yield* nowSeconds
      const row = {
        id: batch.id,
        status: "validating",
        endpoint: batch.endpoint,
        input_file_id: batch.inputFileId,
        completion_window: batch.completionWindow,
        created_at,
        expires_at: created_at + batch.expiresAfterSeconds,
        metadata: batch.metadata === null ? null : JSON.stringify(batch.metadata),
        output_expires_after: batch.outputExpiresAfterSeconds,
        idempotency_key: batch.idempotencyKey,
        request_hash: batch.requestHash
      }
      if (batch.idempotencyKey !== null) {
        // ON CONFLICT keeps the first batch for a key even when two creates race.
        const inserted = yield* sql<{ id: string }>`
          INSERT INTO batches ${sql.insert(row)} ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`
        if (inserted.length === 0) {
          const existing = yield* sql<BatchRow>`SELECT * FROM batches WHERE idempotency_key = ${batch.idempotencyKey}`
          return { record: toRecord(existing[0]!), created: false }
        }
      } else {
        yield* sql`INSERT INTO batches ${sql.insert(row)}`
      }
      return { record: toRecord((yield* selectById(batch.id))[0]!), created: true }
    }).pipe(Effect.orDie, Effect.withSpan("BatchStore.create"))

  const list = (query: { readonly after?: string | undefined; readonly limit: number }) =>
    Effect.gen(function*() {
      let where = sql`1 = 1`
      if (query.after !== undefined) {
        const cursor = yield* sql<{ seq: number | string }>`SELECT seq FROM batches WHERE id = ${query.after}`.pipe(
          Effect.orDie
        )
        if (cursor.length === 0) return yield* new UnknownBatchCursor({ after: query.after })
        where = sql`seq < ${cursor[0]!.seq}`
      }
      const rows = yield* sql<BatchRow>`
        SELECT * FROM batches WHERE ${where} ORDER BY seq DESC LIMIT ${query.limit + 1}`.pipe(Effect.orDie)
      return { data: rows.slice(0, query.limit).map((r) => toRecord(r).batch), hasMore: rows.length > query.limit }
    }).pipe(Effect.withSpan("BatchStore.list"))

  const transition = (
    id: string,
    from: ReadonlyArray<BatchStatus>,
    to: BatchStatus,
    stamp: TimestampColumn | null,
    patch: TransitionPatch = {}
  ) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const set: Record<string, unknown> = { status: to }
      if (stamp !== null) set[stamp] = now
      if (patch.errors !== undefined) set.errors = JSON.stringify(patch.errors)
      if (patch.outputFileId !== undefined) set.output_file_id = patch.outputFileId
      if (patch.errorFileId !== undefined) set.error_file_id = patch.errorFileId
      if (terminalStatuses.includes(to)) {
        set.lease_owner = null
        set.lease_until = null
      }
      const rows = yield* sql<BatchRow>`
        UPDATE batches SET ${sql.update(set)} WHERE id = ${id} AND ${sql.in("status", from)} RETURNING *`
      return Option.map(Option.fromNullable(rows[0]), (row) => toRecord(row).batch)
    }).pipe(Effect.orDie, Effect.withSpan("BatchStore.transition", { attributes: { id, to } }))

  const statuses = (ids: ReadonlyArray<string>) =>
    (ids.length === 0
      ? Effect.succeed(new Map<string, BatchStatus>())
      : sql<{ id: string; status: BatchStatus }>`SELECT id, status FROM batches WHERE ${sql.in("id", ids)}`.pipe(
        Effect.map((rows) => new Map(rows.map((r) => [r.id, r.status]))),
        Effect.orDie
      ))

  /**
   * The text of `INSERT INTO table (columns) VALUES (?, …), … suffix` for `rows` rows, built once per shape: a
   * group's values are bound as they are, with no statement to compile per group (SQLite; Postgres numbers its
   * placeholders, and gets a single statement per group its own way).
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

  const requestColumns = ["batch_id", "line", "custom_id", "result_id", "body"]

  const insertRequestGroup = (batchId: string, group: ReadonlyArray<RequestRow>) =>
    sql.onDialectOrElse({
      pg: () =>
        sql`INSERT INTO batch_requests ${
          sql.insert(group.map((r) => ({ batch_id: batchId, line: r.line, custom_id: r.customId, result_id: r.resultId, body: r.body })))
        }`,
      orElse: () => {
        const params: Array<unknown> = []
        for (const r of group) params.push(batchId, r.line, r.customId, r.resultId, r.body)
        return sql.unsafe(insertText("batch_requests", requestColumns, group.length), params).raw
      }
    })

  const insertRequests = (batchId: string, rows: ReadonlyArray<RequestRow>) => {
    const groups = chunks(rows, INSERT_GROUP)
    // One statement is atomic on its own; only several need a transaction (two more statements and a span).
    const insert = groups.length === 1
      ? insertRequestGroup(batchId, groups[0]!)
      : sql.withTransaction(Effect.forEach(groups, (group) => insertRequestGroup(batchId, group), { discard: true }))
    return insert.pipe(Effect.asVoid, Effect.orDie, Effect.withSpan("BatchStore.insertRequests"))
  }

  const deleteRequests = (batchId: string) =>
    Effect.zipRight(
      sql`DELETE FROM batch_results WHERE batch_id = ${batchId}`,
      sql`DELETE FROM batch_requests WHERE batch_id = ${batchId}`
    ).pipe(sql.withTransaction, Effect.asVoid, Effect.orDie)

  /** A request is pending while it has no row in `batch_results`. */
  const isPending = sql.literal(
    "NOT EXISTS (SELECT 1 FROM batch_results o WHERE o.batch_id = r.batch_id AND o.line = r.line)"
  )

  const pendingRequests = (batchId: string, afterLine: number, lastLine: number, limit: number) =>
    sql<{ line: number | string; custom_id: string; result_id: string; body: string }>`
      SELECT line, custom_id, result_id, body FROM batch_requests r
      WHERE batch_id = ${batchId} AND line > ${afterLine} AND line <= ${lastLine} AND ${isPending}
      ORDER BY line LIMIT ${limit}`.pipe(
      Effect.map((rows) =>
        rows.map((r): RequestRow => ({ line: n(r.line), customId: r.custom_id, resultId: r.result_id, body: r.body }))
      ),
      Effect.orDie
    )

  /** The columns of an outcome row, in the order both dialects' inserts below give their values. */
  const outcomeColumns = ["batch_id", "line", "custom_id", "result_id", "status_code", "response", "request_id",
    "error_code", "error_message", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens"]

  /**
   * SQLite: one INSERT per SQLITE_OUTCOMES_PER_INSERT outcomes (groups are cut to that size, so the statements
   * stay few and prepared), values bound: cheaper than having SQLite take them out of a JSON parameter (the runner
   * alone went from ~38k to ~47k requests/s). The trigger of migration 0006 adds what it stored to the batch's
   * counts and usage within the same statement, so a single INSERT needs no transaction around it.
   */
  const recordOutcomesSqlite = (batchId: string, outcomes: ReadonlyArray<RequestOutcome>) => {
    const inserts = chunks(outcomes, SQLITE_OUTCOMES_PER_INSERT).map((group) => {
      const params: Array<unknown> = []
      for (const o of group) {
        const u = usageOfOutcome(o)
        if (o._tag === "Response") params.push(batchId, o.line, o.customId, o.resultId, o.statusCode, o.body, o.requestId, null, null)
        else params.push(batchId, o.line, o.customId, o.resultId, null, null, null, o.code, o.message)
        params.push(u.input, u.cached, u.output, u.reasoning, u.total)
      }
      const text = insertText("batch_results", outcomeColumns, group.length, "ON CONFLICT DO NOTHING")
      return Effect.map(sql.unsafe(text, params).raw, (result) => (result as { changes: number }).changes)
    })
    if (inserts.length === 1) return inserts[0]!
    return sql.withTransaction(Effect.map(Effect.all(inserts), (stored) => stored.reduce((a, b) => a + b, 0)))
  }

  /**
   * Postgres: the group as one JSON parameter, inserted by a single statement (one round trip); the trigger of
   * migration 0006 adds the rows it inserted to the batch's counts and usage.
   */
  const recordOutcomesPg = (batchId: string, outcomes: ReadonlyArray<RequestOutcome>) => {
    // The usage fields are named as in `TokenUsage`: input, cached, output, reasoning, total.
    const rows = JSON.stringify(outcomes.map((o) => {
      const usage = usageOfOutcome(o)
      return o._tag === "Response"
        ? { line: o.line, custom_id: o.customId, result_id: o.resultId, status_code: o.statusCode, response: o.body, request_id: o.requestId, ...usage }
        : { line: o.line, custom_id: o.customId, result_id: o.resultId, error_code: o.code, error_message: o.message, ...usage }
    }))
    return sql<{ stored: number | string }>`
      WITH inserted AS (
        INSERT INTO batch_results (${sql.literal(outcomeColumns.join(", "))})
        SELECT ${batchId}, line, custom_id, result_id, status_code, response, request_id, error_code, error_message,
          input, cached, output, reasoning, total
        FROM json_to_recordset(${rows}::json) AS v(line INTEGER, custom_id TEXT, result_id TEXT, status_code INTEGER,
          response TEXT, request_id TEXT, error_code TEXT, error_message TEXT, input BIGINT, cached BIGINT,
          output BIGINT, reasoning BIGINT, total BIGINT)
        ON CONFLICT DO NOTHING RETURNING 1
      )
      SELECT COUNT(*) AS stored FROM inserted`.pipe(Effect.map((result) => n(result[0]!.stored)))
  }

  /** Stores a group of outcomes; a request that already has one keeps it, and counts and usage move only by the new. */
  const recordOutcomes = (batchId: string, outcomes: ReadonlyArray<RequestOutcome>) =>
    sql.onDialectOrElse({ pg: () => recordOutcomesPg, orElse: () => recordOutcomesSqlite })(
      batchId,
      oncePerLineInOrder(outcomes)
    ).pipe(
      // One span for the group, none for each of its statements (they cost more than the statements do).
      Effect.withTracerEnabled(false),
      Effect.orDie,
      // Without a stack trace: capturing one per group cost more than the span.
      Effect.withSpan("BatchStore.recordOutcomes", { captureStackTrace: false })
    )

  /** The trigger of migration 0006 counts the failures stored here. */
  const failPending = (batchId: string, code: string, message: string) =>
    sql<{ line: number }>`
      INSERT INTO batch_results (batch_id, line, custom_id, result_id, error_code, error_message)
      SELECT batch_id, line, custom_id, result_id, ${code}, ${message} FROM batch_requests r
      WHERE batch_id = ${batchId} AND ${isPending}
      ON CONFLICT DO NOTHING RETURNING line`.pipe(
      Effect.map((rows) => rows.length),
      Effect.orDie,
      Effect.withSpan("BatchStore.failPending")
    )

  /** A column as JSON text (a string, or null). */
  const jsonText = (column: string) =>
    sql.onDialectOrElse({ pg: () => `COALESCE(to_json(${column})::text, 'null')`, orElse: () => `json_quote(${column})` })

  /**
   * One output or error file line per row, built by the database: the page comes back as one string, instead of
   * a row object per outcome to format here (finalizing 50,000 outcomes: less than half the time).
   */
  const resultLineText = sql.literal(`CASE WHEN status_code IS NOT NULL AND response IS NOT NULL
    THEN '{"id":' || ${jsonText("result_id")} || ',"custom_id":' || ${jsonText("custom_id")} ||
      ',"response":{"status_code":' || status_code || ',"request_id":' || ${jsonText("request_id")} ||
      ',"body":' || response || '},"error":null}'
    ELSE '{"id":' || ${jsonText("result_id")} || ',"custom_id":' || ${jsonText("custom_id")} ||
      ',"response":null,"error":{"code":' || ${jsonText("error_code")} || ',"message":' ||
      ${jsonText("error_message")} || '}}'
    END`)

  /**
   * A page's lines joined, each with its newline: SQLite hands them over as bytes (a BLOB of the UTF-8 text it
   * holds), so the page is neither decoded into a string nor encoded back for the file; Postgres sends text.
   */
  const pageBytes = sql.literal(sql.onDialectOrElse({
    pg: () => `string_agg(text || E'\\n', '' ORDER BY line)`,
    orElse: () => `CAST(string_agg(text || char(10), '' ORDER BY line) AS BLOB)`
  }))
  const encoder = new TextEncoder()

  const resultLines = (batchId: string, kind: "succeeded" | "failed", afterLine: number, limit: number) => {
    const outcome = kind === "succeeded"
      ? sql`status_code >= 200 AND status_code < 300`
      : sql`(status_code IS NULL OR status_code < 200 OR status_code >= 300)`
    return sql<{ lines: string | Uint8Array | null; count: number | string; last_line: number | string | null }>`
      SELECT ${pageBytes} AS lines, COUNT(*) AS count, MAX(line) AS last_line FROM (
        SELECT line, ${resultLineText} AS text FROM batch_results
        WHERE batch_id = ${batchId} AND line > ${afterLine} AND ${outcome}
        ORDER BY line LIMIT ${limit}
      ) page`.pipe(
      Effect.map(([page]): ResultLines => {
        const count = n(page!.count)
        const lines = page!.lines ?? new Uint8Array(0)
        return { bytes: typeof lines === "string" ? encoder.encode(lines) : lines, count, lastLine: count > 0 ? n(page!.last_line!) : 0 }
      }),
      Effect.orDie
    )
  }

  // ---- leases ----

  /** Postgres: rows another node is claiming right now are skipped, not waited for (SQLite has one writer). */
  const skipLocked = sql.onDialectOrElse({
    pg: () => sql.literal("FOR UPDATE SKIP LOCKED"),
    orElse: () => sql.literal("")
  })
  const free = (lease: Lease) => sql`(lease_until IS NULL OR lease_until < ${lease.now})`

  const startRunning = (id: string, patch: { readonly model: string; readonly total: number }, slices: ReadonlyArray<SliceBounds>) =>
    Effect.gen(function*() {
      const now = yield* nowSeconds
      const moved = yield* sql<{ id: string }>`
        UPDATE batches SET status = 'in_progress', in_progress_at = ${now}, model = ${patch.model},
          total = ${patch.total}, lease_owner = NULL, lease_until = NULL
        WHERE id = ${id} AND status = 'validating' RETURNING id`
      if (moved.length === 0) return false
      yield* Effect.forEach(
        chunks(slices.map((s, slice) => ({ batch_id: id, slice, first_line: s.firstLine, last_line: s.lastLine })), INSERT_GROUP),
        (group) => sql`INSERT INTO batch_slices ${sql.insert(group)}`,
        { discard: true }
      )
      return true
    }).pipe(
      sql.withTransaction,
      // Postgres plans by table statistics, which lag behind a bulk insert: refreshed here, the reads of pending
      // rows (an anti-join against batch_results) are planned for the batch's real size from the first page on.
      Effect.tap((moved) => moved ? sql.onDialectOrElse({ pg: () => sql`ANALYZE batch_requests`, orElse: () => Effect.void }) : Effect.void),
      Effect.orDie,
      Effect.withSpan("BatchStore.startRunning", { attributes: { id } })
    )

  const claimBatch = (id: string, lease: Lease) =>
    sql<{ id: string }>`
      UPDATE batches SET lease_owner = ${lease.owner}, lease_until = ${lease.until}
      WHERE id = (
        SELECT id FROM batches WHERE id = ${id} AND ${sql.in("status", activeStatuses)}
          AND (lease_owner = ${lease.owner} OR ${free(lease)})
        ${skipLocked}
      ) RETURNING id`.pipe(
      Effect.map((rows) => rows.length > 0),
      Effect.orDie,
      Effect.withSpan("BatchStore.claimBatch", { attributes: { id } })
    )

  const claimSlice = (id: string, lease: Lease) =>
    sql<{ slice: number | string; first_line: number | string; last_line: number | string }>`
      UPDATE batch_slices SET owner = ${lease.owner}, lease_until = ${lease.until}
      WHERE batch_id = ${id} AND slice = (
        SELECT slice FROM batch_slices WHERE batch_id = ${id} AND state = 'open' AND ${free(lease)}
        ORDER BY slice LIMIT 1 ${skipLocked}
      ) RETURNING slice, first_line, last_line`.pipe(
      Effect.map((rows) =>
        Option.map(Option.fromNullable(rows[0]), (r): Slice => ({
          slice: n(r.slice),
          firstLine: n(r.first_line),
          lastLine: n(r.last_line)
        }))
      ),
      Effect.orDie,
      Effect.withSpan("BatchStore.claimSlice", { attributes: { id } })
    )

  // Postgres: completions of a batch's last two slices on two nodes are serialized on the batch row, or each
  // would still see the other's slice open and neither would move the batch on.
  const lockBatch = (id: string) =>
    sql.onDialectOrElse({
      pg: () => sql`SELECT id FROM batches WHERE id = ${id} FOR UPDATE`,
      orElse: () => Effect.succeed([])
    })

  const completeSlice = (id: string, slice: number) =>
    Effect.gen(function*() {
      yield* lockBatch(id)
      yield* sql`UPDATE batch_slices SET state = 'done', owner = NULL, lease_until = NULL
        WHERE batch_id = ${id} AND slice = ${slice}`
      const now = yield* nowSeconds
      const moved = yield* sql<{ id: string }>`
        UPDATE batches SET status = 'finalizing', finalizing_at = ${now}
        WHERE id = ${id} AND status = 'in_progress'
          AND NOT EXISTS (SELECT 1 FROM batch_slices WHERE batch_id = ${id} AND state = 'open')
        RETURNING id`
      return moved.length > 0
    }).pipe(sql.withTransaction, Effect.orDie, Effect.withSpan("BatchStore.completeSlice", { attributes: { id, slice } }))

  const liveSlices = (id: string, now: number) =>
    sql<{ live: number | string }>`
      SELECT COUNT(*) AS live FROM batch_slices
      WHERE batch_id = ${id} AND owner IS NOT NULL AND lease_until >= ${now}`.pipe(
      Effect.map((rows) => n(rows[0]!.live)),
      Effect.orDie
    )

  const renewLeases = (lease: Lease) =>
    Effect.gen(function*() {
      yield* sql`UPDATE batches SET lease_until = ${lease.until} WHERE lease_owner = ${lease.owner}`
      const held = yield* sql<{ batch_id: string; slice: number | string }>`
        UPDATE batch_slices SET lease_until = ${lease.until} WHERE owner = ${lease.owner} AND state = 'open'
        RETURNING batch_id, slice`
      return held.map((r) => ({ batchId: r.batch_id, slice: n(r.slice) }))
    }).pipe(sql.withTransaction, Effect.orDie)

  const releaseLeases = (filter: { readonly owner?: string; readonly batchId?: string }) =>
    Effect.gen(function*() {
      const batches = [sql`lease_owner IS NOT NULL`]
      const slices = [sql`owner IS NOT NULL`]
      if (filter.owner !== undefined) {
        batches.push(sql`lease_owner = ${filter.owner}`)
        slices.push(sql`owner = ${filter.owner}`)
      }
      if (filter.batchId !== undefined) {
        batches.push(sql`id = ${filter.batchId}`)
        slices.push(sql`batch_id = ${filter.batchId}`)
      }
      yield* sql`UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE ${sql.and(batches)}`
      yield* sql`UPDATE batch_slices SET owner = NULL, lease_until = NULL WHERE ${sql.and(slices)}`
    }).pipe(sql.withTransaction, Effect.orDie)

  const releaseAfterRestart = (owner: string) =>
    releaseLeases(sql.onDialectOrElse({ sqlite: () => ({}), orElse: () => ({ owner }) }))

  const claimable = (now: number, limit: number) =>
    sql<{ id: string }>`
      SELECT id FROM batches b WHERE ${sql.in("status", activeStatuses)} AND (
        ((status <> 'in_progress' OR expires_at * 1000 <= ${now}) AND (lease_until IS NULL OR lease_until < ${now}))
        OR (status = 'in_progress' AND EXISTS (
          SELECT 1 FROM batch_slices s WHERE s.batch_id = b.id AND s.state = 'open'
            AND (s.lease_until IS NULL OR s.lease_until < ${now})))
      ) ORDER BY seq LIMIT ${limit}`.pipe(
      Effect.map((rows) => rows.map((r) => r.id)),
      Effect.orDie
    )

  return BatchStore.of({
    create,
    get,
    list,
    transition,
    statuses,
    insertRequests,
    deleteRequests,
    pendingRequests,
    recordOutcomes,
    failPending,
    resultLines,
    startRunning,
    claimBatch,
    claimSlice,
    completeSlice,
    liveSlices,
    renewLeases,
    releaseLeases,
    releaseAfterRestart,
    claimable
  })
})

/** An upstream answer with a 2xx status: a line of the output file (anything else goes to the error file). */
/** The token usage an outcome adds to its batch's: none for an error. */
const usageOfOutcome = (o: RequestOutcome): TokenUsage => (o._tag === "Response" ? o.usage : zeroUsage)

/**
 * The first outcome of each line, in line order: counts follow the rows inserted only if a group names each line
 * once, and two nodes writing overlapping groups in the same order cannot deadlock on Postgres.
 */
const oncePerLineInOrder = (outcomes: ReadonlyArray<RequestOutcome>): ReadonlyArray<RequestOutcome> => {
  const byLine = new Map<number, RequestOutcome>()
  for (const o of outcomes) if (!byLine.has(o.line)) byLine.set(o.line, o)
  return [...byLine.values()].sort((a, b) => a.line - b.line)
}

const chunks = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

export const BatchStoreLive: Layer.Layer<BatchStore, never, SqlClient.SqlClient> = Layer.effect(BatchStore, make)
