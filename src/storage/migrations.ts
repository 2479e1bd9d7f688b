/**
 * Schema migrations, run at start by `Migrator` (all pending ones in one transaction; on Postgres under a table
 * lock, so several nodes may start at once). Where SQLite and Postgres disagree, `onDialectOrElse` picks the branch.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"

/** `seq` gives a total order of creation (timestamps have one-second resolution) for list cursors. */
const seqColumn = (sql: SqlClient.SqlClient) =>
  sql.onDialectOrElse({
    pg: () => sql.literal("seq BIGSERIAL PRIMARY KEY"),
    orElse: () => sql.literal("seq INTEGER PRIMARY KEY AUTOINCREMENT")
  })

export const migrations = {
  "0001_files": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE files (
      ${seqColumn(sql)},
      id TEXT NOT NULL UNIQUE,
      bytes BIGINT NOT NULL,
      created_at BIGINT NOT NULL,
      expires_at BIGINT,
      filename TEXT NOT NULL,
      purpose TEXT NOT NULL
    )`
    yield* sql`CREATE INDEX files_purpose_seq ON files (purpose, seq)`
    yield* sql`CREATE INDEX files_expires_at ON files (expires_at) WHERE expires_at IS NOT NULL`
  }),
  "0002_batches": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE batches (
      ${seqColumn(sql)},
      id TEXT NOT NULL UNIQUE,
      status TEXT NOT NULL,
      endpoint TEXT NOT NULL,
      model TEXT,
      input_file_id TEXT NOT NULL,
      completion_window TEXT NOT NULL,
      errors TEXT,
      output_file_id TEXT,
      error_file_id TEXT,
      created_at BIGINT NOT NULL,
      in_progress_at BIGINT,
      expires_at BIGINT NOT NULL,
      finalizing_at BIGINT,
      completed_at BIGINT,
      failed_at BIGINT,
      expired_at BIGINT,
      cancelling_at BIGINT,
      cancelled_at BIGINT,
      total INTEGER NOT NULL DEFAULT 0,
      completed INTEGER NOT NULL DEFAULT 0,
      failed INTEGER NOT NULL DEFAULT 0,
      input_tokens BIGINT NOT NULL DEFAULT 0,
      cached_tokens BIGINT NOT NULL DEFAULT 0,
      output_tokens BIGINT NOT NULL DEFAULT 0,
      reasoning_tokens BIGINT NOT NULL DEFAULT 0,
      total_tokens BIGINT NOT NULL DEFAULT 0,
      metadata TEXT,
      output_expires_after INTEGER,
      idempotency_key TEXT UNIQUE,
      request_hash TEXT
    )`
    yield* sql`CREATE INDEX batches_status ON batches (status)`
    // One row per input line: the source of truth for resuming, counting and writing the output files.
    // state: 'pending' until a final outcome is stored, then 'done' (written once: updates require 'pending').
    yield* sql`CREATE TABLE batch_requests (
      batch_id TEXT NOT NULL,
      line INTEGER NOT NULL,
      custom_id TEXT NOT NULL,
      result_id TEXT NOT NULL,
      body TEXT NOT NULL,
      state TEXT NOT NULL DEFAULT 'pending',
      status_code INTEGER,
      response TEXT,
      request_id TEXT,
      error_code TEXT,
      error_message TEXT,
      PRIMARY KEY (batch_id, line)
    )`
    yield* sql`CREATE INDEX batch_requests_state ON batch_requests (batch_id, state, line)`
  }),
  "0003_leases": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // The batch-wide lease (validating, finishing): the node holding it and until when (epoch milliseconds).
    yield* sql`ALTER TABLE batches ADD COLUMN lease_owner TEXT`
    yield* sql`ALTER TABLE batches ADD COLUMN lease_until BIGINT`
    // A running batch's requests in slices of consecutive lines, each claimed by one node at a time, so that
    // every node can work on one large batch. state: 'open' until all its requests have an outcome, then 'done'.
    yield* sql`CREATE TABLE batch_slices (
      batch_id TEXT NOT NULL,
      slice INTEGER NOT NULL,
      first_line INTEGER NOT NULL,
      last_line INTEGER NOT NULL,
      state TEXT NOT NULL DEFAULT 'open',
      owner TEXT,
      lease_until BIGINT,
      PRIMARY KEY (batch_id, slice)
    )`
    yield* sql`CREATE INDEX batch_slices_owner ON batch_slices (owner) WHERE owner IS NOT NULL`
    // Batches already running when this migration is applied become one slice each.
    yield* sql`INSERT INTO batch_slices (batch_id, slice, first_line, last_line)
      SELECT r.batch_id, 0, MIN(r.line), MAX(r.line) FROM batch_requests r
      JOIN batches b ON b.id = r.batch_id WHERE b.status = 'in_progress' GROUP BY r.batch_id`
  }),
  "0004_blobs": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const bytes = sql.onDialectOrElse({ pg: () => sql.literal("BYTEA"), orElse: () => sql.literal("BLOB") })
    // File bytes in SQL (FILE_STORAGE=sql): a published key points at the token its chunks were staged under.
    yield* sql`CREATE TABLE blobs (key TEXT PRIMARY KEY, token TEXT NOT NULL, published_at BIGINT NOT NULL)`
    yield* sql`CREATE TABLE blob_chunks (
      token TEXT NOT NULL,
      seq INTEGER NOT NULL,
      data ${bytes} NOT NULL,
      PRIMARY KEY (token, seq)
    )`
    // Uploads being written, by node: what a restarted node removes of its own unfinished ones.
    yield* sql`CREATE TABLE blob_staging (token TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at BIGINT NOT NULL)`
  }),
  "0005_results": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Outcomes move to a table of their own: a request row is written once and never grows, and a group of
    // outcomes is one append in line order, instead of rewriting each request row (and its state index) in place.
    // A request is pending while it has no row here; the primary key makes an outcome once-only.
    yield* sql`CREATE TABLE batch_results (
      batch_id TEXT NOT NULL,
      line INTEGER NOT NULL,
      custom_id TEXT NOT NULL,
      result_id TEXT NOT NULL,
      status_code INTEGER,
      response TEXT,
      request_id TEXT,
      error_code TEXT,
      error_message TEXT,
      PRIMARY KEY (batch_id, line)
    )`
    yield* sql`INSERT INTO batch_results
      SELECT batch_id, line, custom_id, result_id, status_code, response, request_id, error_code, error_message
      FROM batch_requests WHERE state = 'done'`
    yield* sql`DROP INDEX batch_requests_state`
    for (const column of ["state", "status_code", "response", "request_id", "error_code", "error_message"]) {
      yield* sql`ALTER TABLE batch_requests DROP COLUMN ${sql(column)}`
    }
  }),
  "0006_result_counts": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const usageColumns = ["input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens"]
    // Each outcome's token usage (zero for failures), and a trigger that adds every outcome inserted to its batch's
    // `request_counts` and `usage`: the counts follow the rows by construction, and storing a group of outcomes is
    // one INSERT (statements, not rows, are what a group write costs). Rows stored before keep their usage in the
    // batch totals only (the trigger counts new rows).
    for (const column of usageColumns) {
      yield* sql`ALTER TABLE batch_results ADD COLUMN ${sql(column)} BIGINT NOT NULL DEFAULT 0`
    }
    yield* sql.onDialectOrElse({
      // SQLite triggers run per row: one for successes (count and usage), one for failures (count).
      orElse: () =>
        Effect.zipRight(
          sql.unsafe(`CREATE TRIGGER batch_results_completed AFTER INSERT ON batch_results
            WHEN NEW.status_code >= 200 AND NEW.status_code < 300 BEGIN
              UPDATE batches SET completed = completed + 1, ${usageColumns.map((c) => `${c} = ${c} + NEW.${c}`).join(", ")}
              WHERE id = NEW.batch_id;
            END`),
          sql.unsafe(`CREATE TRIGGER batch_results_failed AFTER INSERT ON batch_results
            WHEN NEW.status_code IS NULL OR NEW.status_code < 200 OR NEW.status_code >= 300 BEGIN
              UPDATE batches SET failed = failed + 1 WHERE id = NEW.batch_id;
            END`)
        ),
      // Postgres: once per statement, over the rows it inserted (a group is one UPDATE of its batch, not one a row).
      pg: () =>
        Effect.zipRight(
          sql.unsafe(`CREATE FUNCTION batch_results_counts() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              UPDATE batches b SET
                completed = b.completed + c.completed, failed = b.failed + c.failed,
                ${usageColumns.map((c) => `${c} = b.${c} + c.${c}`).join(", ")}
              FROM (
                SELECT batch_id, COUNT(*) FILTER (WHERE ok) AS completed, COUNT(*) FILTER (WHERE NOT ok) AS failed,
                  ${usageColumns.map((c) => `COALESCE(SUM(${c}) FILTER (WHERE ok), 0) AS ${c}`).join(", ")}
                FROM (SELECT *, COALESCE(status_code >= 200 AND status_code < 300, false) AS ok FROM inserted) i
                GROUP BY batch_id
              ) c
              WHERE b.id = c.batch_id;
              RETURN NULL;
            END $$`),
          sql.unsafe(`CREATE TRIGGER batch_results_counts AFTER INSERT ON batch_results
            REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION batch_results_counts()`)
        )
    })
  }),
  "0007_projects": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Every file and batch belongs to a project (see `domain/Projects.ts`); rows from before belong to 'default'.
    yield* sql`ALTER TABLE files ADD COLUMN project TEXT NOT NULL DEFAULT 'default'`
    yield* sql`ALTER TABLE batches ADD COLUMN project TEXT NOT NULL DEFAULT 'default'`
    // What the lists of one project filter and order on.
    yield* sql`CREATE INDEX files_project_seq ON files (project, seq)`
    yield* sql`CREATE INDEX files_project_purpose_seq ON files (project, purpose, seq)`
    yield* sql`CREATE INDEX batches_project_seq ON batches (project, seq)`
    // What the per-project limits count: a project's unfinished batches.
    yield* sql`CREATE INDEX batches_project_status ON batches (project, status)`
    // Idempotency keys are per project: the column (UNIQUE since 0002) holds the key scoped by its project, as
    // `scopedIdempotencyKey` in `batches/batchRecords.ts` writes it ('default' is 7 characters long).
    yield* sql`UPDATE batches SET idempotency_key = '7:default:' || idempotency_key WHERE idempotency_key IS NOT NULL`
  }),
  "0008_uploads": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // The Uploads API (`files/Uploads.ts`): a file sent in parts. status: pending, completing (a complete is
    // assembling it, claimed by `completing_owner`), completed (`file_id` set), cancelled or expired.
    // `parts_bytes`/`parts_count`: what its parts hold, kept by the insert of each part (their bound, and the quota's).
    // `part_ids_digest`: the part ids its complete named (a repeated complete naming them waits for it, or gets it).
    yield* sql`CREATE TABLE uploads (
      id TEXT PRIMARY KEY,
      project TEXT NOT NULL,
      status TEXT NOT NULL,
      bytes BIGINT NOT NULL,
      parts_bytes BIGINT NOT NULL DEFAULT 0,
      parts_count INTEGER NOT NULL DEFAULT 0,
      filename TEXT NOT NULL,
      purpose TEXT NOT NULL,
      mime_type TEXT NOT NULL,
      file_expires_after INTEGER,
      created_at BIGINT NOT NULL,
      expires_at BIGINT NOT NULL,
      file_id TEXT,
      completing_owner TEXT,
      part_ids_digest TEXT
    )`
    // What the sweep looks for (pending ones past their hour) and the quota counts (a project's pending ones).
    yield* sql`CREATE INDEX uploads_status_expires_at ON uploads (status, expires_at)`
    yield* sql`CREATE INDEX uploads_project_status ON uploads (project, status)`
    // Each part's bytes are a blob under the part's id.
    yield* sql`CREATE TABLE upload_parts (
      id TEXT PRIMARY KEY,
      upload_id TEXT NOT NULL,
      bytes BIGINT NOT NULL,
      created_at BIGINT NOT NULL
    )`
    yield* sql`CREATE INDEX upload_parts_upload_id ON upload_parts (upload_id)`
  }),
  "0009_webhooks": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // The outbox of batch events (`webhooks/`): a row is written in the transaction of the batch's final move, then
    // delivered by whichever node claims it (`claimed_by` until `claimed_until`, epoch ms). `body` is the event as
    // signed on every attempt; `next_attempt_ms` is the next attempt's time while `pending` (epoch ms); retries end
    // `WEBHOOK_RETRY_FOR` after `created_at` (unix s, the final status's time). `target` says whose webhook `url` is
    // (`server`: WEBHOOK_URL, shown to operators only; `project`: the keys file's line); `turns` counts the worker's
    // turns at the row, sent or not (the backoff grows with it), `attempts` only those that sent the event.
    yield* sql`CREATE TABLE webhook_deliveries (
      ${seqColumn(sql)},
      id TEXT NOT NULL UNIQUE,
      type TEXT NOT NULL,
      batch_id TEXT NOT NULL,
      project TEXT NOT NULL,
      url TEXT NOT NULL,
      target TEXT NOT NULL,
      body TEXT NOT NULL,
      status TEXT NOT NULL DEFAULT 'pending',
      turns INTEGER NOT NULL DEFAULT 0,
      attempts INTEGER NOT NULL DEFAULT 0,
      last_status_code INTEGER,
      last_error TEXT,
      created_at BIGINT NOT NULL,
      next_attempt_ms BIGINT,
      delivered_at BIGINT,
      claimed_by TEXT,
      claimed_until BIGINT
    )`
    yield* sql`CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE status = 'pending'`
    yield* sql`CREATE INDEX webhook_deliveries_project_seq ON webhook_deliveries (project, seq)`
    // What the sweep of old settled rows looks for.
    yield* sql`CREATE INDEX webhook_deliveries_created_at ON webhook_deliveries (created_at)`
  }),
  "0010_upload_claims": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // A completing upload's claim lasts until `completing_until` (epoch ms), which its node renews while it
    // assembles: a claim left by a node that died is taken over by the next complete once that time has passed.
    yield* sql`ALTER TABLE uploads ADD COLUMN completing_until BIGINT`
  }),
  "0011_request_attempts": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // A pending request's attempts counted so far, and the end of its backoff (epoch ms), as its last run left them
    // (handed back at a turn's end, or the run ended before its answer): the node that runs it next counts on.
    yield* sql`ALTER TABLE batch_requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0`
    yield* sql`ALTER TABLE batch_requests ADD COLUMN retry_at BIGINT`
  }),
  "0012_deleted_files": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // A file deleted (or swept once expired) keeps its place in the list order for a while: its id stays a valid
    // `after` cursor, so a client deleting each file of a page as it lists them reaches the next page.
    yield* sql`CREATE TABLE deleted_files (
      id TEXT PRIMARY KEY,
      project TEXT NOT NULL,
      seq BIGINT NOT NULL,
      deleted_at BIGINT NOT NULL
    )`
    yield* sql`CREATE INDEX deleted_files_deleted_at ON deleted_files (deleted_at)`
  }),
  "0013_batch_lease_owner": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Each heartbeat renews a node's batch leases by owner: without it, a scan of every batch ever made, each second
    // (224,000 batches: 0.1 s a beat, holding SQLite's write lock). Few rows hold a lease at once.
    yield* sql`CREATE INDEX batches_lease_owner ON batches (lease_owner) WHERE lease_owner IS NOT NULL`
  }),
  "0014_batch_model_unchecked": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // 1 when validation could not check the batch's model (an upstream serving any model had given no list yet): a
    // run that then finds no upstream serving it fails its lines with `model_not_found`, where a checked model that
    // lost its upstream waits for one (`batches/BatchRunner.ts`).
    yield* sql`ALTER TABLE batches ADD COLUMN model_unchecked INTEGER NOT NULL DEFAULT 0`
  }),
  "0015_batch_cleared_parts": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // What the sweep has cleared of a finished batch's rows once a file of it was gone (1: the request bodies, 2: the
    // answers, 4: the failures' bodies; `batches/requestRows.ts`): each cleared once, not looked for at every sweep.
    yield* sql`ALTER TABLE batches ADD COLUMN cleared_parts INTEGER NOT NULL DEFAULT 0`
  })
} satisfies Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>>
