/**
 * The SQLite client's prepared statements' cache (`STATEMENT_CACHE` in `src/storage/Sql.ts`) stays the size of the
 * statements in use, however long the process runs: Effect's `Cache`, whose keys it holds, is made here with the
 * same settings, and its list of keys counted (its inner state: what grew).
 */
import { expect, it } from "@effect/vitest"
import { Cache, Duration, Effect, TestClock } from "effect"
import { STATEMENT_CACHE } from "../src/storage/Sql.js"

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
