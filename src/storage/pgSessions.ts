/**
 * What a PostgreSQL must be for the service, checked at start: sessions of its own, before anything is done on it,
 * and UTF-8 (`Utf8DatabaseRequired`, below), before the migrations (an app's own client migrated with
 * `MigrationsLive` is checked too).
 *
 * A PostgreSQL reached through a pooler that hands a server session to another client at each transaction's or
 * statement's end (PgBouncer's `pool_mode = transaction` or `statement`) is refused at start. Why: the service keeps
 * session state — advisory locks on its `NODE_ID` and on migrations — that such a pooler leaves on a shared session.
 * A trial through one ran without a word of warning: a second process under a running node's id was accepted and
 * requests went upstream twice, a stop released another node's lock, and a start hung 87 s on a migration lock left
 * on a session no node held.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import { Data, Effect, type Scope } from "effect"

export class SessionPoolingRequired extends Data.TaggedError("SessionPoolingRequired")<{ readonly process: number }> {
  override get message() {
    return `two connections were served by one PostgreSQL session (server process ${this.process}): DATABASE_URL goes ` +
      "through a pooler that shares sessions between transactions (PgBouncer's pool_mode = transaction or statement). " +
      "The service holds session locks (its NODE_ID, migrations): connect to PostgreSQL directly, or through a " +
      "pooler in session mode (pool_mode = session)"
  }
}

const backendPid = (connection: SqlConnection.Connection) =>
  Effect.map(connection.execute("SELECT pg_backend_pid() AS pid", [], undefined), (rows) => Number(rows[0]?.pid))

/**
 * Fails with `SessionPoolingRequired` when two connections held at once show that their sessions are shared: one
 * server process answers both, or a connection's process changes from one statement to the next. Each PostgreSQL
 * session has a process of its own for its whole life; a pooler sharing sessions hands the one just let go to the
 * next statement, unless another client took it meanwhile (asked twice each, in turns, for that).
 */
export const refuseSharedSessions = (
  reserve: Effect.Effect<SqlConnection.Connection, SqlError, Scope.Scope>
): Effect.Effect<void, SqlError | SessionPoolingRequired> =>
  Effect.scoped(Effect.gen(function*() {
    const connections = [yield* reserve, yield* reserve] as const
    const seen = [new Set<number>(), new Set<number>()] as const
    for (let round = 0; round < 2; round++) {
      for (const i of [0, 1] as const) {
        const pid = yield* backendPid(connections[i])
        seen[i].add(pid)
        if (seen[1 - i]!.has(pid) || seen[i].size > 1) return yield* Effect.fail(new SessionPoolingRequired({ process: pid }))
      }
    }
  }))

/**
 * A database whose encoding is not UTF-8 is refused at start. Why: it took every batch's requests and answers,
 * then failed the batch at its end (the output's line separators, U+2028, have no LATIN1 form), and refused any
 * file name or metadata outside its characters with a 500.
 */
export class Utf8DatabaseRequired extends Data.TaggedError("Utf8DatabaseRequired")<{ readonly encoding: string }> {
  override get message() {
    return `its encoding is ${this.encoding}, not UTF8: the service stores text in any language. Give it a database ` +
      "made with CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0"
  }
}

/** Fails with `Utf8DatabaseRequired` unless the database is in UTF-8 (run with the migrations: `Sql.ts`). */
export const refuseOtherEncodings = (sql: SqlClient.SqlClient) =>
  Effect.flatMap(sql<{ server_encoding: string }>`SHOW server_encoding`, (rows) => {
    const encoding = String(rows[0]?.server_encoding)
    return encoding === "UTF8" ? Effect.void : Effect.fail(new Utf8DatabaseRequired({ encoding }))
  })

/** `refuseSharedSessions` on `sql`'s pool, when it is PostgreSQL's. */
export const refuseSharedSessionsOf = (sql: SqlClient.SqlClient) =>
  sql.onDialectOrElse({ pg: () => refuseSharedSessions(sql.reserve), orElse: () => Effect.void })
