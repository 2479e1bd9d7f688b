/**
 * Leases (of batches, slices, upload completions and webhook deliveries) are written and judged by each node's own
 * clock. On PostgreSQL, where nodes on several machines share them, a node whose clock runs ahead takes live work
 * from the others (its requests sent twice), and one behind leaves a dead node's work waiting. So a node compares
 * its clock with PostgreSQL's, at the start and every minute, and says when they are more than a quarter of
 * `LEASE_TTL` apart (two nodes each within that of the server are within half of it of each other), and when they
 * agree again. On SQLite every node runs on the file's machine, on one clock.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, Duration, Effect, Layer, Schedule } from "effect"
import { AppConfig } from "../Config.js"

/** How often a node compares its clock with the database's. */
const CHECK_EVERY = Duration.minutes(1)

/**
 * Effect's clock this far from the machine's is a test's (`TestClock` starts at 0), not the machine's: an app
 * embedded in a test on PostgreSQL warned of a node 56 years behind at each start. (A machine's own clock, however
 * wrong, is the one `Date.now()` reads too.)
 */
const TEST_CLOCK_AWAY_MS = 86_400_000

/**
 * How far a node's clock, read `before` and `after` asking, is ahead of the database's answer `databaseMs` (behind
 * when negative), give or take `uncertaintyMs` (half the round trip: the server read its clock somewhere in it).
 */
const skewOf = (before: number, databaseMs: number, after: number) => ({
  aheadMs: (before + after) / 2 - databaseMs,
  uncertaintyMs: (after - before) / 2
})

const seconds = (ms: number) => `${(Math.abs(ms) / 1000).toFixed(1)} s`

/** The warning of a node `aheadMs` ahead of the database's clock (behind when negative). */
const skewLine = (aheadMs: number, leaseTtl: Duration.Duration) =>
  `This node's clock is ${seconds(aheadMs)} ${aheadMs > 0 ? "ahead of" : "behind"} PostgreSQL's. Nodes judge each ` +
  `other's leases (LEASE_TTL ${Duration.format(leaseTtl)}) by their own clocks: one ahead takes live work from the ` +
  "others (their requests sent twice), one behind leaves a dead node's work waiting. Keep every node's clock in " +
  "sync (NTP)."

/** Compares this node's clock with PostgreSQL's every `every`, for as long as the scope lasts (nothing on SQLite). */
export const watchClockSkew = (every: Duration.Duration = CHECK_EVERY) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    if (!sql.onDialectOrElse({ pg: () => true, orElse: () => false })) return
    const { leaseTtl } = yield* AppConfig
    const boundMs = Duration.toMillis(leaseTtl) / 4
    let apart = false
    const check = Effect.gen(function*() {
      const before = yield* Clock.currentTimeMillis
      if (Math.abs(before - Date.now()) > TEST_CLOCK_AWAY_MS) return
      const [row] = yield* sql<{ ms: number }>`SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::float8 AS ms`
      const { aheadMs, uncertaintyMs } = skewOf(before, Number(row!.ms), yield* Clock.currentTimeMillis)
      if (!apart && Math.abs(aheadMs) - uncertaintyMs > boundMs) {
        apart = true
        yield* Effect.logWarning(skewLine(aheadMs, leaseTtl)).pipe(
          Effect.annotateLogs({ event: "node.clock_skew", ahead_ms: Math.round(aheadMs) })
        )
      } else if (apart && Math.abs(aheadMs) + uncertaintyMs <= boundMs / 2) { // well within: no line at each wobble
        apart = false
        yield* Effect.logInfo(`This node's clock agrees with PostgreSQL's again (${seconds(aheadMs)} apart).`).pipe(
          Effect.annotateLogs({ event: "node.clock_in_sync", ahead_ms: Math.round(aheadMs) })
        )
      }
    })
    // A check that fails is skipped: the heartbeat says when the database does not answer.
    yield* check.pipe(Effect.ignore, Effect.repeat(Schedule.spaced(every)), Effect.forkScoped)
  })

/** `watchClockSkew` every minute, with the app. */
export const ClockSkewWatchLive = Layer.scopedDiscard(watchClockSkew())
