/**
 * Schema migrations, run at start by `Migrator` (all pending ones in one transaction; on Postgres under a table
 * lock, so several nodes may start at once). Where SQLite and Postgres disagree, `onDialectOrElse` picks the branch.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"

export const migrations = {
  "0001_files": Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // `seq` gives a total order of creation (created_at has one-second resolution) for list cursors.
    const seq = sql.onDialectOrElse({
      pg: () => sql.literal("seq BIGSERIAL PRIMARY KEY"),
      orElse: () => sql.literal("seq INTEGER PRIMARY KEY AUTOINCREMENT")
    })
    yield* sql`CREATE TABLE files (
      ${seq},
      id TEXT NOT NULL UNIQUE,
      bytes BIGINT NOT NULL,
      created_at BIGINT NOT NULL,
      expires_at BIGINT,
      filename TEXT NOT NULL,
      purpose TEXT NOT NULL
    )`
    yield* sql`CREATE INDEX files_purpose_seq ON files (purpose, seq)`
    yield* sql`CREATE INDEX files_expires_at ON files (expires_at) WHERE expires_at IS NOT NULL`
  })
} satisfies Record<string, Effect.Effect<void, unknown, SqlClient.SqlClient>>
