/**
 * A node's time on PostgreSQL (`storage/databaseClock.ts`): Effect's `Clock` reads the server's time whatever the
 * machine's clock says, a step of the machine's clock moves nothing, a suspended machine's time (or one whose
 * monotonic clock leapt) is caught up within a second or so, and a measurement every minute keeps it on the
 * server's; a machine's clock more than a second from the server's is said, once, and said again when they agree.
 * The machine's clock is played here by an Effect `Clock` of the test's own (the server runs on this machine: its
 * clock is `Date.now()`'s).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Layer, Logger, TestClock } from "effect"
import { shareDatabaseClock } from "../src/storage/databaseClock.js"
import { layerPg, layerSqlite } from "../src/storage/Sql.js"
import { freshSchemaUrl } from "./support/ForwardedPostgres.js"
import { eventuallyEffect } from "./support/TestApp.js"

/**
 * A machine whose clock is `skew.wallMs` ahead of the real one (behind when negative) and whose monotonic clock
 * `skew.monotonicMs` ahead (a machine suspended for a while: it stood still), sleeping as this one does.
 */
const machineClock = (skew: { wallMs: number; monotonicMs: number }): Clock.Clock => {
  const real = Clock.make()
  const wall = () => Date.now() + skew.wallMs
  const monotonic = () => real.unsafeCurrentTimeNanos() + BigInt(skew.monotonicMs) * 1_000_000n
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: wall,
    currentTimeMillis: Effect.sync(wall),
    unsafeCurrentTimeNanos: monotonic,
    currentTimeNanos: Effect.sync(monotonic),
    sleep: (duration) => real.sleep(duration)
  }
}

interface Line {
  readonly level: string
  readonly message: string
  readonly event: unknown
}

/**
 * The database's clock shared, for the test's scope, on `machine` (watched every 100 ms, measured every `measureEvery`)
 * over a fresh PostgreSQL schema (or `sql`); its lines, and how far the time it reads is from the real one.
 */
const shared = (machine: Clock.Clock, measureEvery = Duration.minutes(1), sql?: SqlClient.SqlClient) =>
  Effect.gen(function*() {
    const client = sql ?? Context.get(yield* Layer.build(layerPg(yield* freshSchemaUrl)), SqlClient.SqlClient)
    const lines: Array<Line> = []
    const recorder = Logger.make(({ annotations, logLevel, message }) =>
      void lines.push({ level: logLevel.label, message: String(message), event: Object.fromEntries(annotations).event })
    )
    const clock = yield* shareDatabaseClock(measureEvery, Duration.millis(100)).pipe(
      Effect.zipRight(Effect.clock),
      Effect.withClock(machine),
      Effect.provideService(SqlClient.SqlClient, client),
      Effect.provide(Logger.replace(Logger.defaultLogger, recorder))
    )
    return { lines, awayMs: () => clock.unsafeCurrentTimeMillis() - Date.now() }
  })

describe("a node's time on PostgreSQL", () => {
  it.live("is the server's on a machine 60 s ahead, said once (again at another offset); a step of the machine's clock moves nothing; said when they agree", () =>
    Effect.gen(function*() {
      const skew = { wallMs: 60_000, monotonicMs: 0 }
      const { awayMs, lines } = yield* shared(machineClock(skew))
      expect(Math.abs(awayMs())).toBeLessThan(250)
      expect(lines.map((l) => l.event)).toEqual(["node.clock_skew"])
      expect(lines[0]!.level).toBe("WARN")
      expect(lines[0]!.message).toMatch(/^This node's clock is (59\.\d|60\.\d) s ahead of PostgreSQL's\. The node reads PostgreSQL's time \(measured every minute\) for its leases, the times it stores and its log lines/)
      yield* Effect.sleep("300 millis")
      expect(lines).toHaveLength(1) // not at each look
      // Stepped to another offset, still apart: said again, with the new one.
      skew.wallMs = 30_000
      yield* eventuallyEffect(Effect.sync(() => expect(lines.map((l) => l.event)).toEqual(["node.clock_skew", "node.clock_skew"])), 5_000)
      expect(lines[1]!.message).toMatch(/^This node's clock is (29\.\d|30\.\d) s ahead of PostgreSQL's\./)

      // Stepped back to the right time (NTP): the time read does not move, not even before the next measurement.
      skew.wallMs = 0
      expect(Math.abs(awayMs())).toBeLessThan(250)
      yield* eventuallyEffect(Effect.sync(() => expect(lines.map((l) => l.event)).toEqual(["node.clock_skew", "node.clock_skew", "node.clock_in_sync"])), 5_000)
      expect(lines[2]!.message).toMatch(/^This node's clock agrees with PostgreSQL's again \(0\.\d s apart\)\.$/)
      // Then 3 s behind.
      skew.wallMs = -3_000
      expect(Math.abs(awayMs())).toBeLessThan(250)
      yield* eventuallyEffect(Effect.sync(() => expect(lines).toHaveLength(4)), 5_000)
      expect(lines[3]!.message).toMatch(/^This node's clock is (2\.9|3\.\d) s behind PostgreSQL's\./)
      expect(Math.abs(awayMs())).toBeLessThan(250)
    }).pipe(Effect.scoped), 30_000)

  it.live("of a machine suspended for 20 s (its monotonic clock stood still) is caught up at the next look, before the minute's measurement", () =>
    Effect.gen(function*() {
      const skew = { wallMs: 0, monotonicMs: 0 }
      const { awayMs, lines } = yield* shared(machineClock(skew))
      expect(Math.abs(awayMs())).toBeLessThan(250)
      skew.monotonicMs = -20_000
      yield* eventuallyEffect(Effect.sync(() => expect(Math.abs(awayMs())).toBeLessThan(250)), 3_000)
      expect(lines).toEqual([])
    }).pipe(Effect.scoped), 30_000)

  it.live("of a machine whose clocks both leap 30 s (libfaketime steps the monotonic one too) is caught up at the next look", () =>
    Effect.gen(function*() {
      const skew = { wallMs: 0, monotonicMs: 0 }
      const { awayMs } = yield* shared(machineClock(skew))
      skew.wallMs = 30_000
      skew.monotonicMs = 30_000
      expect(awayMs()).toBeGreaterThan(29_000) // until the next look, 100 ms on
      yield* eventuallyEffect(Effect.sync(() => expect(Math.abs(awayMs())).toBeLessThan(250)), 3_000)
    }).pipe(Effect.scoped), 30_000)

  it.live("follows the server's clock as it is measured again (every minute; 200 ms here)", () =>
    Effect.gen(function*() {
      // The server's clock cannot be moved here: a machine whose clocks both run 600 ms ahead, too little to be seen
      // as a step, plays the same.
      const skew = { wallMs: 0, monotonicMs: 0 }
      const { awayMs } = yield* shared(machineClock(skew), Duration.millis(200))
      skew.wallMs = 600
      skew.monotonicMs = 600
      expect(awayMs()).toBeGreaterThan(500)
      yield* eventuallyEffect(Effect.sync(() => expect(Math.abs(awayMs())).toBeLessThan(250)), 3_000)
    }).pipe(Effect.scoped), 30_000)

  it.effect("is left alone under Effect's TestClock set to the machine's time: TestClock.adjust still moves it", () =>
    Effect.gen(function*() {
      const now = Date.now()
      yield* TestClock.setTime(now)
      const sql = Context.get(yield* Layer.build(layerPg(yield* freshSchemaUrl)), SqlClient.SqlClient)
      yield* shareDatabaseClock(Duration.minutes(1), Duration.millis(100)).pipe(Effect.provideService(SqlClient.SqlClient, sql))
      yield* TestClock.adjust("10 minutes")
      expect(yield* Clock.currentTimeMillis).toBe(now + 600_000)
    }).pipe(Effect.scoped), 30_000)

  it.live("is left alone under a test's clock (Effect's TestClock starts at 0), and on SQLite: nothing said", () =>
    Effect.gen(function*() {
      const test = yield* shared(machineClock({ wallMs: -Date.now(), monotonicMs: 0 }))
      expect(test.awayMs()).toBeLessThan(-1_000_000)
      const sqlite = Context.get(yield* Layer.build(layerSqlite(":memory:")), SqlClient.SqlClient)
      const onSqlite = yield* shared(machineClock({ wallMs: 60_000, monotonicMs: 0 }), undefined, sqlite)
      expect(onSqlite.awayMs()).toBeGreaterThan(59_000)
      yield* Effect.sleep("300 millis")
      expect([...test.lines, ...onSqlite.lines]).toEqual([])
    }).pipe(Effect.scoped), 30_000)
})

/**
 * A machine whose clocks and sleeps are Effect's TestClock (set near the real time first), under another name:
 * `shareDatabaseClock` leaves a clock it knows for a test's alone, this one it runs on, `TestClock.adjust` moving it.
 */
const testDrivenMachine = Effect.map(TestClock.testClock(), (test): Clock.Clock => ({
  [Clock.ClockTypeId]: Clock.ClockTypeId,
  unsafeCurrentTimeMillis: () => test.unsafeCurrentTimeMillis(),
  currentTimeMillis: Effect.sync(() => test.unsafeCurrentTimeMillis()),
  unsafeCurrentTimeNanos: () => test.unsafeCurrentTimeNanos(),
  currentTimeNanos: Effect.sync(() => test.unsafeCurrentTimeNanos()),
  sleep: (duration) => test.sleep(duration)
}))

/** A PostgreSQL client whose every query answers `answer()` (counted in `queries`). */
const stubPg = (answer: () => Effect.Effect<ReadonlyArray<unknown>, Error>) => {
  const stub = { queries: 0, sql: undefined as unknown as SqlClient.SqlClient }
  stub.sql = Object.assign((..._: ReadonlyArray<unknown>) => (stub.queries++, answer()), {
    onDialectOrElse: (cases: { readonly pg: () => unknown }) => cases.pg(),
    literal: (text: string) => text
  }) as unknown as SqlClient.SqlClient
  return stub
}

describe("a node's time on PostgreSQL, on TestClock", () => {
  it.effect("after a failed measurement is not measured again before 5 s (one query per 5 s while the database is down)", () =>
    Effect.gen(function*() {
      // A database that does not answer is not asked again at every look (each 100 ms here): a load of failing
      // queries on a struggling server, and a line of errors each.
      yield* TestClock.setTime(Date.now())
      const down = stubPg(() => Effect.fail(new Error("connection refused")))
      yield* shareDatabaseClock(Duration.minutes(1), Duration.millis(100)).pipe(
        Effect.withClock(yield* testDrivenMachine),
        Effect.provideService(SqlClient.SqlClient, down.sql)
      )
      for (let i = 0; i < 120; i++) yield* TestClock.adjust("100 millis") // 12 s
      // At the start, then at 5 s and 10 s.
      expect(down.queries).toBe(3)
    }).pipe(Effect.scoped))

  it.effect("measured with a round trip's jitter (±40 ms) reads a time that never goes back", () =>
    Effect.gen(function*() {
      // A measurement within 50 ms of the one in use is not taken: each would move the time by its jitter, back as
      // often as forward (a lease judged expired, then not; log lines out of order).
      yield* TestClock.setTime(Date.now())
      const machine = yield* testDrivenMachine
      let n = 0
      const jittery = stubPg(() => Effect.sync(() => [{ ms: machine.unsafeCurrentTimeMillis() + (n++ % 2 === 0 ? 40 : -40) }]))
      const clock = yield* shareDatabaseClock(Duration.millis(10), Duration.millis(10)).pipe(
        Effect.zipRight(Effect.clock),
        Effect.withClock(machine),
        Effect.provideService(SqlClient.SqlClient, jittery.sql)
      )
      const readings = [clock.unsafeCurrentTimeMillis()]
      for (let i = 0; i < 50; i++) {
        yield* TestClock.adjust("10 millis")
        readings.push(clock.unsafeCurrentTimeMillis())
      }
      expect(jittery.queries).toBeGreaterThan(20) // measured again and again
      const backwards = readings.flatMap((r, i) => (i > 0 && r < readings[i - 1]! ? [`${readings[i - 1]} -> ${r}`] : []))
      expect(backwards).toEqual([])
    }).pipe(Effect.scoped))

  it.effect("measured slowly (1.5 s a query: a loaded database) is measured on time, not again at each look", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.now())
      const machine = yield* testDrivenMachine
      const slow = stubPg(() => Effect.delay(Effect.sync(() => [{ ms: machine.unsafeCurrentTimeMillis() }]), "1500 millis"))
      yield* Effect.forkScoped(shareDatabaseClock(Duration.seconds(5), Duration.millis(100)).pipe(
        Effect.withClock(machine),
        Effect.provideService(SqlClient.SqlClient, slow.sql)
      ))
      for (let i = 0; i < 110; i++) yield* TestClock.adjust("100 millis") // 11 s
      // At the start, then at 5 s and 10 s (once each look after a slow one saw a leap: 5 or more).
      expect(slow.queries).toBe(3)
    }).pipe(Effect.scoped))
})
