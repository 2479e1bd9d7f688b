/**
 * The scheduler batch work runs on: the event loop stays free for the API while background fibers have work queued,
 * and the background work still gets its share while other work floods the loop.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import { batchWorkSlices, makeBackgroundScheduler, sliceLength } from "../src/batches/backgroundScheduler.js"
import { busyFor } from "./support/Cpu.js"

/** `steps` steps of `stepMs` of CPU, each one a task of its own (the fiber yields between them). */
const cpuWork = (steps: number, stepMs: number) =>
  Effect.forEach(Array.from({ length: steps }), () => Effect.zipRight(Effect.sync(() => busyFor(stepMs)), Effect.yieldNow()), { discard: true })

/** How late a 2 ms timer fires at worst while `work` runs: what an HTTP request arriving meanwhile would wait. */
const worstTimerDelay = <A>(work: Effect.Effect<A>) =>
  Effect.gen(function*() {
    let worst = 0
    let expected = performance.now() + 2
    const timer = setInterval(() => {
      const now = performance.now()
      worst = Math.max(worst, now - expected)
      expected = now + 2
    }, 2)
    yield* Effect.ensuring(work, Effect.sync(() => clearInterval(timer)))
    // A timer that never got to fire at all was late by the whole run.
    return Math.max(worst, performance.now() - expected)
  })

describe("background scheduler", () => {
  it("a slice is 8 ms, or a third of the loop's time when the rest of a turn took longer, up to 40 ms", () => {
    expect(sliceLength(batchWorkSlices, 0)).toBe(8)
    expect(sliceLength(batchWorkSlices, 10)).toBe(8)
    expect(sliceLength(batchWorkSlices, 40)).toBeCloseTo(20)
    expect(sliceLength(batchWorkSlices, 5_000)).toBe(40)
  })

  it.live("the event loop turns between slices while background fibers have 400 ms of work queued", () =>
    Effect.gen(function*() {
      const scheduler = makeBackgroundScheduler(batchWorkSlices)
      // Four fibers, as a batch's workers: 400 steps of 1 ms in all.
      const work = Effect.all(Array.from({ length: 4 }, () => cpuWork(100, 1)), { concurrency: "unbounded", discard: true })
      const started = performance.now()
      const worst = yield* worstTimerDelay(Effect.withScheduler(work, scheduler))
      const took = performance.now() - started
      expect(took).toBeGreaterThan(390) // the work was done
      // A turn holds one slice of at most 40 ms (8 ms here: nothing else waits), plus a step begun at its end;
      // on the default scheduler the timer waits for the whole 400 ms.
      expect(worst).toBeLessThan(100)
    }))

  it.live("after an idle spell the first slice is the short one: the idle time is not taken for a busy loop", () =>
    Effect.gen(function*() {
      const scheduler = makeBackgroundScheduler(batchWorkSlices)
      yield* Effect.withScheduler(cpuWork(1, 0), scheduler) // a slice, then 100 ms of nothing
      yield* Effect.sleep("100 millis")
      let steps = 0
      let stepsInFirstSlice = -1
      const work = Effect.forEach(Array.from({ length: 60 }), () =>
        Effect.zipRight(Effect.sync(() => {
          // Step 0 runs on the test's own turn; step 1 is the first of a slice: this runs right after that slice.
          if (steps++ === 1) setImmediate(() => (stepsInFirstSlice = steps - 1))
          busyFor(1)
        }), Effect.yieldNow()), { discard: true })
      yield* Effect.withScheduler(work, scheduler)
      // 8 ms of 1 ms steps (and the step begun at its end); a slice measured from the last one would be 40 ms.
      expect(stepsInFirstSlice).toBeGreaterThan(0)
      expect(stepsInFirstSlice).toBeLessThan(20)
    }))

  it.live("a permit a batch fiber releases reaches the API's fiber waiting for it at once, not behind the batch work", () =>
    Effect.gen(function*() {
      const scheduler = makeBackgroundScheduler(batchWorkSlices)
      // The one SQLite connection, as the SQL client guards it.
      const connection = yield* Effect.makeSemaphore(1)
      const done = yield* Deferred.make<void>()
      let releasedAt = 0
      // A batch transaction holds the connection until `done`, while 100 batch fibers keep the queue full.
      const transaction = yield* Effect.fork(Effect.withScheduler(
        connection.withPermits(1)(Deferred.await(done)).pipe(Effect.zipRight(Effect.sync(() => (releasedAt = performance.now())))),
        scheduler
      ))
      yield* Effect.sleep("20 millis")
      const backlog = yield* Effect.fork(Effect.withScheduler(
        Effect.all(Array.from({ length: 100 }, () => cpuWork(5, 1)), { concurrency: "unbounded", discard: true }),
        scheduler
      ))
      const request = yield* Effect.fork(connection.withPermits(1)(Effect.sync(() => performance.now())))
      yield* Effect.sleep("20 millis")
      yield* Deferred.succeed(done, undefined)
      const acquiredAt = yield* Fiber.join(request)
      yield* Fiber.join(transaction)
      yield* Fiber.join(backlog)
      // Woken on the default scheduler: within the same turn. Behind the queue it took ~100 ms (a task per fiber).
      expect(acquiredAt - releasedAt).toBeLessThan(20)
    }))

  it.live("background work keeps a share of the loop while other work floods it", () =>
    Effect.gen(function*() {
      const scheduler = makeBackgroundScheduler(batchWorkSlices)
      // The flood: 10 ms of CPU on every turn of the loop, for as long as the background work runs.
      let flooding = true
      let floodTurns = 0
      const flood = () => {
        if (!flooding) return
        floodTurns++
        busyFor(10)
        setImmediate(flood)
      }
      setImmediate(flood)
      const started = performance.now()
      const fiber = yield* Effect.fork(Effect.withScheduler(cpuWork(100, 1), scheduler))
      yield* Fiber.join(fiber).pipe(Effect.ensuring(Effect.sync(() => (flooding = false))))
      const took = performance.now() - started
      expect(floodTurns).toBeGreaterThan(5) // the flood ran meanwhile
      // 100 ms of work at ~8 ms per turn of ~18 ms: ~230 ms; starved, it would never end.
      expect(took).toBeLessThan(2_000)
    }))
})
