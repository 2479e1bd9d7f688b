/**
 * The SQLite client's prepared statements' cache (`STATEMENT_CACHE` in `src/storage/Sql.ts`) stays the size of the
 * statements in use, however long the process runs: Effect's `Cache`, whose keys it holds, is made here with the
 * same settings, and its list of keys counted (its inner state: what grew); and the client is made with them.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { expect, it, vi } from "@effect/vitest"
import Database from "better-sqlite3"
import { Cache, Duration, Effect, TestClock } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { layerSqlite, STATEMENT_CACHE } from "../src/storage/Sql.js"

/** The keys in the cache's access list, stale ones included. */
const keysListed = (cache: unknown): number => {
  let count = 0
  for (let key = (cache as any).cacheState.keys.head; key !== undefined; key = key.next) count++
  return count
}

/**
 * Keys listed after the same 20 statements were used every 11 minutes for an hour, then for nine more, with entries
 * living `timeToLive`.
 */
const hoursOfTheSameStatements = (timeToLive: Duration.Duration) =>
  Effect.gen(function*() {
    const cache = yield* Cache.make({ capacity: STATEMENT_CACHE.prepareCacheSize, timeToLive, lookup: (sql: string) => Effect.succeed(sql.length) })
    const listed: Array<number> = []
    for (let step = 1; step <= 55; step++) {
      for (let statement = 0; statement < 20; statement++) yield* cache.get(`SELECT ${statement}`)
      yield* TestClock.adjust(Duration.minutes(11))
      if (step === 6 || step === 55) listed.push(keysListed(cache))
    }
    return listed
  })

it.effect("the same statements used for hours keep as many keys after ten hours as after one (the client's default expiry left more each 10 minutes)", () =>
  Effect.gen(function*() {
    const [hour, tenHours] = yield* hoursOfTheSameStatements(STATEMENT_CACHE.prepareCacheTTL)
    expect(tenHours).toBe(hour)
    expect(hour).toBeLessThanOrEqual(40) // two a statement: the one its first use listed, and its entry's
    // What the setting is for: with the client's default, stale keys for each statement every 10 minutes.
    const [defaultHour, defaultTenHours] = yield* hoursOfTheSameStatements(Duration.minutes(10))
    expect(defaultTenHours! - defaultHour!).toBeGreaterThanOrEqual(20 * 49)
  }))

it.effect("the server's SQLite client is made with it: a statement used again an hour later is not prepared again", () =>
  Effect.gen(function*() {
    const dir = mkdtempSync(Path.join(tmpdir(), "batch-statements-"))
    const prepare = vi.spyOn(Database.prototype, "prepare")
    const prepared = yield* Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe("SELECT 42 AS answer")
      yield* TestClock.adjust(Duration.hours(1))
      yield* sql.unsafe("SELECT 42 AS answer")
      return prepare.mock.calls.filter(([text]) => text === "SELECT 42 AS answer").length
    }).pipe(
      Effect.provide(layerSqlite(Path.join(dir, "batches.sqlite"))),
      Effect.ensuring(Effect.sync(() => {
        prepare.mockRestore()
        rmSync(dir, { recursive: true, force: true })
      }))
    )
    expect(prepared).toBe(1)
  }))
