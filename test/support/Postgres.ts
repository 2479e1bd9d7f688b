/** Scratch schemas on the machine's PostgreSQL, for tests and benchmarks that must never see each other's tables. */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect, Redacted } from "effect"
import { randomBytes } from "node:crypto"

/** The machine's PostgreSQL (`TEST_DATABASE_URL` to use another); an unreachable server fails the tests. */
export const testDatabaseUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"

/** Runs `statement` on the test database (a fresh connection). */
export const onDatabase = (statement: string) =>
  Effect.flatMap(PgClient.make({ url: Redacted.make(testDatabaseUrl) }), (sql) => sql.unsafe(statement)).pipe(
    Effect.scoped,
    Effect.provide(Reactivity.layer)
  )

/**
 * A fresh schema `<prefix>_<random>`, and a URL whose connections use it (through `search_path`), so every
 * start of the app on that URL sees the same tables and nobody else's.
 */
export const createScratchSchema = (prefix: string) =>
  Effect.gen(function*() {
    const schema = `${prefix}_${randomBytes(8).toString("hex")}`
    yield* onDatabase(`CREATE SCHEMA ${schema}`)
    const url = new URL(testDatabaseUrl)
    url.searchParams.set("options", `-c search_path=${schema}`)
    return { schema, url: url.toString() }
  })

export const dropScratchSchema = (schema: string) => onDatabase(`DROP SCHEMA ${schema} CASCADE`)
