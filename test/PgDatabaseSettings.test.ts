/**
 * A PostgreSQL set up by a strict DBA (a locked-down database trial): a database not in UTF-8 is refused at start
 * (it failed every batch at its end); a default of `serializable` does not reach the service's transactions (each
 * failed as a batch fault); a start with nothing to migrate does not wait for a backup's locks; a privilege taken
 * away is a 503 for a request, not a 500, and said at start with what the role needs.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Context, Effect, Layer, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { AppConfig } from "../src/Config.js"
import { startFaultLine } from "../src/startFaultLines.js"
import { privilegeMissing, storageFault } from "../src/storage/Faults.js"
import { MIGRATIONS_TABLE } from "../src/storage/migrationsTable.js"
import { Utf8DatabaseRequired } from "../src/storage/pgSessions.js"
import { layerPg } from "../src/storage/Sql.js"
import { createScratchSchema, dropScratchSchema, onDatabase, testDatabaseUrl } from "./support/Postgres.js"
import { baseUrl, testApp } from "./support/TestApp.js"

/** A database of its own made with `options` (dropped with the scope), and its URL. */
const scratchDatabase = (options: string) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const name = `settings_${randomBytes(6).toString("hex")}`
      yield* onDatabase(`CREATE DATABASE ${name} ${options}`)
      const url = new URL(testDatabaseUrl)
      url.pathname = `/${name}`
      return { name, url: url.toString() }
    }),
    ({ name }) => Effect.orDie(onDatabase(`DROP DATABASE ${name} WITH (FORCE)`))
  )

const started = (url: string) => Effect.map(Layer.build(layerPg(Redacted.make(url))), (context) => Context.get(context, SqlClient.SqlClient))

describe("a PostgreSQL as a DBA set it up", () => {
  it.scoped("a database not in UTF-8 is refused at start, in one line saying how to make one", () =>
    Effect.gen(function*() {
      const latin1 = yield* scratchDatabase("ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
      const exit = yield* Effect.exit(Effect.scoped(started(latin1.url)))
      expect(exit._tag).toBe("Failure")
      const cause = exit._tag === "Failure" ? exit.cause : Cause.empty
      expect(Cause.failureOption(cause).pipe(Option.getOrUndefined)).toBeInstanceOf(Utf8DatabaseRequired)
      const line = yield* startFaultLine(cause).pipe(Effect.provide(AppConfig.layerWith({ databaseUrl: Option.some(Redacted.make(latin1.url)) })))
      expect(Option.getOrThrow(line)).toMatch(/^Cannot use the database \(PostgreSQL at .*; see DATABASE_URL\): its encoding is LATIN1, not UTF8: .*CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0$/)
      // Refused before anything was made there.
      const tables = yield* PgClient.make({ url: Redacted.make(latin1.url) }).pipe(
        Effect.flatMap((sql) => sql`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'`)
      )
      expect(tables).toEqual([{ n: 0 }])
    }).pipe(Effect.provide(Reactivity.layer)), 30_000)

  it.scoped("a database whose default isolation is serializable: the service's sessions run read committed", () =>
    Effect.gen(function*() {
      const strict = yield* scratchDatabase("")
      yield* onDatabase(`ALTER DATABASE ${strict.name} SET default_transaction_isolation = 'serializable'`)
      const beforeMigrating: Array<string> = []
      // From the first statement on: the node's lock and the migrations too.
      const before = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ transaction_isolation: string }>`SHOW transaction_isolation`).pipe(
        Effect.provide(layerPg(Redacted.make(strict.url), {}, Layer.effectDiscard(Effect.flatMap(SqlClient.SqlClient, (sql) =>
          Effect.flatMap(sql<{ transaction_isolation: string }>`SHOW transaction_isolation`, (rows) =>
            Effect.sync(() => void beforeMigrating.push(rows[0]!.transaction_isolation))))))),
        Effect.scoped
      )
      expect([beforeMigrating, before.map((row) => row.transaction_isolation)]).toEqual([["read committed"], ["read committed"]])
      const sql = yield* started(strict.url)
      const isolations = yield* Effect.all(
        Array.from({ length: 4 }, () => sql.withTransaction(sql<{ transaction_isolation: string }>`SHOW transaction_isolation`)),
        { concurrency: 4 }
      )
      expect(isolations.map((rows) => rows[0]?.transaction_isolation)).toEqual(Array(4).fill("read committed"))
    }), 30_000)

  it.scoped("a start with nothing to migrate does not wait for a lock another session (a pg_dump) holds on the migrations table", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* createScratchSchema("settings")
      yield* Effect.addFinalizer(() => Effect.orDie(dropScratchSchema(schema)))
      yield* Effect.scoped(started(url)) // migrated
      // What pg_dump holds on every table for its whole run.
      const dump = yield* PgClient.make({ url: Redacted.make(url) })
      const connection = yield* dump.reserve
      yield* connection.executeRaw("BEGIN", [])
      yield* connection.executeRaw(`LOCK TABLE ${MIGRATIONS_TABLE} IN ACCESS SHARE MODE`, [])
      const again = yield* Effect.either(Effect.timeout(Effect.disconnect(Effect.scoped(started(url))), "10 seconds"))
      expect(again._tag).toBe("Right")
      yield* connection.executeRaw("ROLLBACK", [])
    }).pipe(Effect.provide(Reactivity.layer)), 30_000)

  it.scoped("a privilege taken away is told apart (the request a 503, not a storage fault a batch waits out), said with what the role needs", () =>
    Effect.gen(function*() {
      const { schema, url } = yield* createScratchSchema("settings")
      const role = `${schema}_app`
      yield* Effect.addFinalizer(() => Effect.orDie(Effect.zipRight(dropScratchSchema(schema), onDatabase(`DROP ROLE IF EXISTS ${role}`))))
      yield* Effect.scoped(started(url))
      yield* onDatabase(`CREATE ROLE ${role} LOGIN; GRANT USAGE ON SCHEMA ${schema} TO ${role}; GRANT SELECT ON ALL TABLES IN SCHEMA ${schema} TO ${role}`)
      const asRole = new URL(url)
      asRole.username = role
      const sql = yield* started(asRole.toString()) // nothing to migrate: reading is enough to start
      const refused = yield* Effect.flip(sql`INSERT INTO files (id, bytes, created_at, filename, purpose) VALUES ('file-x', 1, 1, 'x', 'batch')`)
      expect([privilegeMissing(Cause.fail(refused)), storageFault(Cause.fail(refused))]).toEqual([true, undefined])
      const line = yield* startFaultLine(Cause.die(refused)).pipe(Effect.provide(AppConfig.layerWith({ databaseUrl: Option.some(Redacted.make(url)) })))
      expect(Option.getOrThrow(line)).toMatch(/it takes no write \(permission denied for table files\); the role needs SELECT, INSERT, UPDATE and DELETE/)

      // A node of a role refused only that: an upload gets the 503 of storage that refuses the server, not a 500.
      yield* onDatabase(`GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${schema} TO ${role}; ` +
        `GRANT USAGE ON ALL SEQUENCES IN SCHEMA ${schema} TO ${role}; REVOKE INSERT ON ${schema}.files FROM ${role}`)
      const app = yield* Layer.build(testApp({ databaseUrl: Option.some(Redacted.make(asRole.toString())) }, "postgres"))
      const base = yield* Effect.provide(baseUrl, app)
      const form = new FormData()
      form.append("purpose", "batch")
      form.append("file", new Blob(['{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n']), "a.jsonl")
      const answer = yield* Effect.promise(() => fetch(`${base}/v1/files`, { method: "POST", body: form }))
      expect(answer.status).toBe(503)
      expect((yield* Effect.promise(() => answer.json() as Promise<{ error: { code: string } }>)).error.code).toBe("storage_unavailable")
    }).pipe(Effect.provide(Reactivity.layer)), 30_000)
})
