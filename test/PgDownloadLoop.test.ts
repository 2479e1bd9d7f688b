/**
 * Issue 12: on PostgreSQL, a download its client ended interrupted the statement reading its bytes, and
 * @effect/sql-pg cancelled that statement with `pg_cancel_backend(pid)`, sent through another pooled connection.
 * When the statement finished before the cancel arrived, its connection was already back in the pool, and the
 * cancel hit the statement it ran next: another request's, a 500 with `canceling statement due to user request`.
 * `layerPg` now runs every statement to its end instead, on a connection held until then (`src/storage/Sql.ts`).
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Exit, Fiber, Layer, Option } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { downloadLoop } from "../scripts/pg-download-loop.js"
import { layerPg } from "../src/storage/Sql.js"
import { createScratchSchema, dropScratchSchema } from "./support/Postgres.js"
import { startServer } from "./support/ServerProcess.js"
import { TestDatabase } from "./support/TestApp.js"

/** `layerPg` on a fresh schema with a pool of two connections. */
const smallPool = Layer.unwrapEffect(Effect.map(TestDatabase, ({ url }) => layerPg(Option.getOrThrow(url), { maxConnections: 2 })))
  .pipe(Layer.provide(TestDatabase.layer("postgres")))

layer(smallPool, { excludeTestServices: true })("an interrupted PostgreSQL statement", (it) => {
  /*
   * The race made certain with a pool of two: `busy` holds one connection, the interrupted statement the other,
   * and `next` waits for a connection before the cancel does. The interrupted statement ends, `next` gets its
   * connection, and the cancel, run once `busy` frees the other, used to hit `next`.
   */
  it.effect("never cancels the statement that took its connection over", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // The interrupt is sent ~120 ms in, well before the interrupted statement ends (0.5 s) even on a busy machine
      // (with 0.25 s, a late interrupt once found it done: its fiber then succeeded).
      const busy = yield* Effect.fork(sql`SELECT pg_sleep(0.9)`)
      const interrupted = yield* Effect.fork(sql`SELECT pg_sleep(0.5)`)
      yield* Effect.sleep("100 millis")
      const next = yield* Effect.fork(sql<{ value: string }>`SELECT 'next' AS value FROM pg_sleep(0.8)`)
      yield* Effect.sleep("20 millis")
      yield* Fiber.interruptFork(interrupted)
      expect(yield* Fiber.join(next)).toEqual([{ value: "next" }])
      yield* Fiber.join(busy)
      expect(Exit.isInterrupted(yield* Fiber.await(interrupted))).toBe(true)
    }))

  it.effect("runs to its end: its fiber's interruption waits for it", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE run_to_end (value text)`
      const interrupted = yield* Effect.fork(sql`INSERT INTO run_to_end SELECT 'done' FROM pg_sleep(0.2)`)
      yield* Effect.sleep("50 millis")
      yield* Fiber.interrupt(interrupted)
      expect(yield* sql`SELECT value FROM run_to_end`).toEqual([{ value: "done" }])
    }))
})

/** The server as a child process on a fresh schema, file bytes in SQL, for as long as the scope lasts. */
const pgServer = Effect.gen(function*() {
  const { url } = yield* Effect.acquireRelease(
    Effect.orDie(createScratchSchema("test")),
    ({ schema }) => Effect.orDie(dropScratchSchema(schema))
  )
  const dataDir = yield* Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "pg-download-loop-"))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )
  return yield* Effect.acquireRelease(
    Effect.promise(() => startServer({ DATABASE_URL: url, FILE_STORAGE: "sql", DATA_DIR: dataDir })),
    (server) => Effect.promise(() => server.stop())
  )
})

describe("PostgreSQL downloads cut short by their clients", () => {
  /*
   * The loop of the issue (`npm run bench:pg-downloads` runs it 5,000 times), with the large downloads dropped
   * after their first bytes (a 100 KiB file, where the race came most often). Before the fix 0–13 of these 300
   * iterations failed, depending on timing: the tests above are the ones that fail every time. The server is a
   * child process: sharing the test's event loop, the race came a hundred times more rarely. A few whole downloads
   * then (the race needs a download cut short): they too are answered in full.
   */
  it.scopedLive("never make the requests after them fail", () =>
    Effect.gen(function*() {
      const server = yield* pgServer
      const aborted = yield* Effect.promise(() => downloadLoop(server.url, { iterations: 300, abort: true, largeBytes: 100 * 1024 }))
      expect(Object.fromEntries(aborted.failures)).toEqual({})
      const whole = yield* Effect.promise(() => downloadLoop(server.url, { iterations: 5, abort: false }))
      expect(Object.fromEntries(whole.failures)).toEqual({})
      expect(server.output()).not.toContain("canceling statement")
    }), 60_000) // about 10 s alone; a busy machine (other suites' forks) has taken 40
})
