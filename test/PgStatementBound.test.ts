/**
 * `DATABASE_STATEMENT_TIMEOUT` on PostgreSQL (`storage/pgPool.ts`): a statement left unanswered past it fails and its
 * connection is dropped, while the pool goes on serving; migrations are exempt; a session cut off within a
 * transaction is ended by PostgreSQL itself. (A network that stops carrying an open connection: `Readiness.test.ts`.)
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Fiber, Layer, type Redacted } from "effect"
import { storageFault } from "../src/storage/Faults.js"
import { layerPg } from "../src/storage/Sql.js"
import { forwardedSchema, freshSchemaUrl as freshSchema } from "./support/ForwardedPostgres.js"

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
      const migrated = yield* sql<{ name: string }>`SELECT name FROM effect_openai_batch_migrations ORDER BY migration_id`
      expect(migrated.length).toBeGreaterThan(5)
    }).pipe(Effect.scoped), 30_000)

  it.live("one waiting for a lock past it is a storage fault to wait out, and its server process is ended: it never commits", () =>
    Effect.gen(function*() {
      const url = yield* freshSchema
      const other = yield* clientOn(url, Duration.seconds(60))
      yield* other`CREATE TABLE counter (v INTEGER NOT NULL)`
      yield* other`INSERT INTO counter VALUES (0)`
      const bounded = yield* clientOn(url, Duration.millis(500))
      // Another session holds the row until told to let go.
      const release = yield* Deferred.make<void>()
      const locked = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(other.withTransaction(Effect.gen(function*() {
        yield* other`SELECT v FROM counter FOR UPDATE`
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(release)
      })))
      yield* Deferred.await(locked)
      const [failure, waitingAfter] = yield* Effect.gen(function*() {
        const failure = yield* Effect.flip(Effect.sandbox(bounded`UPDATE counter SET v = v + 1`))
        // Its server process is gone, not left waiting for the lock.
        yield* Effect.sleep("1 second")
        const [waiting] = yield* Effect.orDie(other<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE counter%'`)
        return [failure, waiting!.n] as const
      }).pipe(Effect.ensuring(Effect.zipRight(Deferred.succeed(release, undefined), Fiber.await(holder))))
      expect(storageFault(failure)).toBe("unavailable") // a batch waits and retries, as for a database that is down
      expect(waitingAfter).toBe(0)
      expect(yield* other<{ v: number }>`SELECT v FROM counter`).toEqual([{ v: 0 }]) // the timed-out update never committed
    }).pipe(Effect.scoped), 30_000)

  it.live("a session cut off within a transaction, that no one can end, is ended by PostgreSQL past it: its locks go with it", () =>
    Effect.gen(function*() {
      const { direct, forwarded, forwarder } = yield* forwardedSchema
      const other = yield* clientOn(direct, Duration.seconds(10)) // its statements wait for the row's lock 10 s at most
      yield* other`CREATE TABLE counter (v INTEGER NOT NULL)`
      yield* other`INSERT INTO counter VALUES (0)`
      const bounded = yield* clientOn(forwarded, Duration.seconds(1))
      // The row updated, then the network stops carrying anything (new connections too, so the session cannot be
      // ended from here), the next statement times out, and the network comes back without the client's close.
      const cutOff = yield* Effect.flip(Effect.sandbox(bounded.withTransaction(Effect.gen(function*() {
        yield* bounded`UPDATE counter SET v = 1`
        forwarder.freeze()
        yield* bounded`SELECT 1`
      }))))
      expect(storageFault(cutOff)).toBe("unavailable")
      forwarder.restore()
      // Another session gets the row in about the bound, not when TCP keepalive gives up hours later.
      yield* other`UPDATE counter SET v = v + 10`
      expect(yield* other<{ v: number }>`SELECT v FROM counter`).toEqual([{ v: 10 }]) // the cut-off update never committed
    }).pipe(Effect.scoped), 30_000)
})
