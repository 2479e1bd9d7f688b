/**
 * A node's clock compared with PostgreSQL's (`storage/clockSkew.ts`): a node whose clock is more than a quarter of
 * `LEASE_TTL` ahead of or behind the server's says so, once, and says when they agree again; one in sync says
 * nothing. The node's clock is skewed here by an Effect `Clock` of the test's own.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Layer, Logger } from "effect"
import { AppConfig } from "../src/Config.js"
import { watchClockSkew } from "../src/storage/clockSkew.js"
import { layerPg } from "../src/storage/Sql.js"
import { freshSchemaUrl } from "./support/ForwardedPostgres.js"
import { eventuallyEffect } from "./support/TestApp.js"

/** A clock `offset.ms` ahead of the machine's (behind when negative), sleeping as the machine's does. */
const skewedClock = (offset: { ms: number }): Clock.Clock => {
  const real = Clock.make()
  const now = () => Date.now() + offset.ms
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: now,
    currentTimeMillis: Effect.sync(now),
    unsafeCurrentTimeNanos: () => BigInt(now()) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(now()) * 1_000_000n),
    sleep: (duration) => real.sleep(duration)
  }
}

/** Runs the check every 100 ms on a fresh PostgreSQL schema, the node's clock `offset` off, for the test's scope; its lines. */
const watched = (offset: { ms: number }) =>
  Effect.gen(function*() {
    const sql = Context.get(yield* Layer.build(layerPg(yield* freshSchemaUrl)), SqlClient.SqlClient)
    const lines: Array<{ level: string; message: string; event: unknown }> = []
    const recorder = Logger.make(({ annotations, logLevel, message }) =>
      void lines.push({ level: logLevel.label, message: String(message), event: Object.fromEntries(annotations).event })
    )
    yield* watchClockSkew(Duration.millis(100)).pipe(
      Effect.withClock(skewedClock(offset)),
      Effect.provideService(SqlClient.SqlClient, sql),
      Effect.provide(AppConfig.layerWith({ leaseTtl: Duration.seconds(8) })),
      Effect.provide(Logger.replace(Logger.defaultLogger, recorder))
    )
    return lines
  })

describe("a node's clock against PostgreSQL's", () => {
  it.live("ahead by more than a quarter of LEASE_TTL: said once, and again when it agrees again; then behind", () =>
    Effect.gen(function*() {
      const offset = { ms: 5_000 } // LEASE_TTL 8 s: 2 s is the bound
      const lines = yield* watched(offset)
      yield* eventuallyEffect(Effect.sync(() => expect(lines.map((l) => l.event)).toEqual(["node.clock_skew"])), 5_000)
      expect(lines[0]!.level).toBe("WARN")
      expect(lines[0]!.message).toMatch(/^This node's clock is 5\.\d s ahead of PostgreSQL's\. Nodes judge each other's leases \(LEASE_TTL 8s\)/)
      yield* Effect.sleep("500 millis")
      expect(lines).toHaveLength(1) // not at each check
      offset.ms = 0
      yield* eventuallyEffect(Effect.sync(() => expect(lines.map((l) => l.event)).toEqual(["node.clock_skew", "node.clock_in_sync"])), 5_000)
      // Apart by what the query's round trip hides (up to a second or so on a loaded machine), within the bound.
      const apart = /^This node's clock agrees with PostgreSQL's again \((\d+\.\d) s apart\)\.$/.exec(lines[1]!.message)
      expect(Number(apart?.[1])).toBeLessThan(2)
      offset.ms = -3_000
      yield* eventuallyEffect(Effect.sync(() => expect(lines).toHaveLength(3)), 5_000)
      expect(lines[2]!.message).toMatch(/^This node's clock is 3\.\d s behind PostgreSQL's\./)
    }).pipe(Effect.scoped), 30_000)

  it.live("a test's clock (Effect's TestClock starts at 0) is not a machine's: nothing said", () =>
    Effect.gen(function*() {
      const lines = yield* watched({ ms: -Date.now() })
      yield* Effect.sleep("1 second")
      expect(lines).toEqual([])
    }).pipe(Effect.scoped), 30_000)

  it.live("in sync, or off by less than the bound: nothing said", () =>
    Effect.gen(function*() {
      const lines = yield* watched({ ms: 1_000 })
      yield* Effect.sleep("1 second")
      expect(lines).toEqual([])
    }).pipe(Effect.scoped), 30_000)
})
