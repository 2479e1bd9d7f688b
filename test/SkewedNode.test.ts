/**
 * Two nodes on one PostgreSQL database, one whose machine's clock is 60 s ahead (played by an Effect `Clock` of the
 * test's own, under the whole node), share a large batch: each request is sent once, and what the skewed node
 * stores is in PostgreSQL's time (`storage/databaseClock.ts`). Before, it judged the other's leases by its own
 * clock, took every slice the other held, and sent their requests again; its `created_at` was a minute ahead.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Layer, Logger, LogLevel } from "effect"
import { startSimulator } from "../scripts/simulator.js"
import { AuthLive } from "../src/auth/Auth.js"
import { SLICE } from "../src/batches/inputValidation.js"
import { HttpLive } from "../src/http/Http.js"
import { ServicesLive } from "../src/Layers.js"
import { SchedulerLive } from "../src/Scheduler.js"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, configFor, TestDatabase, TestDataDir, TestHttpServer } from "./support/TestApp.js"

/** The machine's clock `aheadMs` ahead of the real one, its monotonic clock and its sleeps this machine's. */
const clockAhead = (aheadMs: number): Clock.Clock => {
  const real = Clock.make()
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: () => Date.now() + aheadMs,
    currentTimeMillis: Effect.sync(() => Date.now() + aheadMs),
    unsafeCurrentTimeNanos: () => real.unsafeCurrentTimeNanos(),
    currentTimeNanos: real.currentTimeNanos,
    sleep: (duration) => real.sleep(duration)
  }
}

const TOTAL = 4 * SLICE

/** Node `name` on `database` with its own simulator, built under `clock`: its URL and its simulator. */
const node = (name: string, database: Context.Context<TestDatabase>, clock: Clock.Clock) =>
  Effect.gen(function*() {
    const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator({ latencyMs: 20 })), (s) => Effect.promise(() => s.close()))
    const app = HttpLive.pipe(
      Layer.provide(AuthLive),
      Layer.provideMerge(ServicesLive),
      Layer.provideMerge(TestHttpServer),
      Layer.provideMerge(configFor({
        nodeId: name,
        inferenceBaseUrl: sim.url,
        maxConcurrentBatches: 1,
        maxConcurrentRequestsPerBatch: 8,
        // The other node learns of the batch at its next heartbeat: soon, so that it gets its share.
        heartbeatInterval: Duration.millis(200),
        leaseTtl: Duration.seconds(3)
      })),
      Layer.provideMerge(TestDataDir.Default),
      Layer.provide(Layer.succeedContext(database)),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Warning)),
      Layer.provide(SchedulerLive)
    )
    const context = yield* Layer.build(app).pipe(Effect.withClock(clock))
    return { sim, url: yield* Effect.provide(baseUrl, context) }
  })

describe("a node whose machine's clock is 60 s ahead, beside one in time, on one PostgreSQL", () => {
  it.live("shares a large batch with it, each request sent once; the batch's times are PostgreSQL's", () =>
    Effect.gen(function*() {
      const database = yield* Layer.build(TestDatabase.layer("postgres"))
      const ahead = yield* node("ahead", database, clockAhead(60_000))
      const inTime = yield* node("in-time", database, Clock.make())
      const openai = sdk(ahead.url)
      const lines = Array.from({ length: TOTAL }, (_, i) => chatLine(`line-${i}`, `prompt ${i}`))
      const input = yield* upload(openai, lines)
      const batch = yield* createBatch(openai, input.id, { output_expires_after: { anchor: "created_at", seconds: 3600 } })
      expect(Math.abs(input.created_at - Date.now() / 1000)).toBeLessThan(5)
      expect(Math.abs(batch.created_at - Date.now() / 1000)).toBeLessThan(5)
      expect(batch.expires_at! - batch.created_at).toBe(24 * 3600)
      const done = yield* waitFor(openai, batch.id, terminal, 60_000)
      expect(done.request_counts).toEqual({ total: TOTAL, completed: TOTAL, failed: 0 })
      expect(Math.abs(done.completed_at! - Date.now() / 1000)).toBeLessThan(5)
      expect(new Set((yield* readLines(openai, done.output_file_id)).map((l) => l.custom_id)).size).toBe(TOTAL)
      // Its output file (written by whichever node finished the batch) expires an hour from now by the server's clock.
      const output = yield* Effect.promise(() => openai.files.retrieve(done.output_file_id!))
      expect(Math.abs(output.expires_at! - (Date.now() / 1000 + 3600))).toBeLessThan(10)
      // Both took part (else nothing was shared), and no prompt reached the upstreams twice.
      expect(ahead.sim.stats.requests).toBeGreaterThan(0)
      expect(inTime.sim.stats.requests).toBeGreaterThan(0)
      const seen = new Map<string, number>()
      for (const { sim } of [ahead, inTime]) for (const [prompt, n] of sim.stats.byPrompt) seen.set(prompt, (seen.get(prompt) ?? 0) + n)
      expect(seen.size).toBe(TOTAL)
      expect([...seen.entries()].filter(([, n]) => n > 1)).toEqual([])
    }).pipe(Effect.scoped), 90_000)
})
