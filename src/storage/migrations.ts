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
  })
} satisfies Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>>
