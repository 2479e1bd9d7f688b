/**
 * `DATABASE_STATEMENT_TIMEOUT` on PostgreSQL (`storage/pgPool.ts`): a statement left unanswered past it fails and its
 * connection is dropped, while the pool goes on serving; migrations are exempt. (A network that stops carrying an
 * open connection: `Readiness.test.ts`.)
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Option, type Redacted } from "effect"
import { layerPg } from "../src/storage/Sql.js"
import { TestDatabase } from "./support/TestApp.js"

/** A fresh schema's URL. */
const freshSchema = Effect.map(Layer.build(TestDatabase.layer("postgres")), (context) =>
  Option.getOrThrow(Context.get(context, TestDatabase).url))

/** A client on `url`, migrated, its statements held to `statementTimeout`. */
const clientOn = (url: Redacted.Redacted, statementTimeout: Duration.Duration) =>
  Effect.map(Layer.build(layerPg(url, { statementTimeout })), (context) => Context.get(context, SqlClient.SqlClient))

describe("statements held to DATABASE_STATEMENT_TIMEOUT on PostgreSQL", () => {
  it.live("one unanswered past it fails in about that time; the next statements are served", () =>
    Effect.gen(function*() {
      const sql = yield* clientOn(yield* freshSchema, Duration.millis(500))
      const started = Date.now()
      const slow = yield* Effect.flip(sql`SELECT pg_sleep(5)`)
      const took = Date.now() - started
      expect(String(slow.cause)).toContain("PostgreSQL did not answer a statement within 500 ms")
      expect(took).toBeGreaterThanOrEqual(450)
      expect(took).toBeLessThan(3000)
      const answers = yield* Effect.all(Array.from({ length: 20 }, () => sql<{ one: number }>`SELECT 1 AS one`), { concurrency: 5 })
      expect(answers.every(([row]) => row?.one === 1)).toBe(true)
    }).pipe(Effect.scoped), 30_000)

  it.live("migrations are not held to it (a migration may rightly take long): a bound of 1 ms still migrates", () =>
    Effect.gen(function*() {
      const url = yield* freshSchema
      const bounded = yield* clientOn(url, Duration.millis(1))
      expect(yield* Effect.flip(bounded`SELECT pg_sleep(0.5)`)).toBeDefined() // held to it once migrated
      const sql = yield* clientOn(url, Duration.seconds(60))
      const migrated = yield* sql<{ name: string }>`SELECT name FROM effect_sql_migrations ORDER BY migration_id`
      expect(migrated.length).toBeGreaterThan(5)
    }).pipe(Effect.scoped), 30_000)
})
