/**
 * A batch's expiry is a time of the clock, not a span slept (`src/batches/untilClockReads.ts`): a wall clock stepped
 * forward past it (NTP, a VM resumed) ends the wait within a minute of the step, though the monotonic clock that
 * sleeps run on moved a minute only.
 */
import { expect, it } from "@effect/vitest"
import { Clock, Effect, Fiber, TestClock } from "effect"
import { untilClockReads } from "../src/batches/untilClockReads.js"

it.effect("ends within a minute of the wall clock passing the time, however little was slept; at once when already past", () =>
  Effect.gen(function*() {
    const testClock = yield* Effect.clock
    // The wall clock: the test clock, stepped forward by `jumpMs`; sleeps stay on the test clock.
    let jumpMs = 0
    const stepped: Clock.Clock = {
      [Clock.ClockTypeId]: Clock.ClockTypeId,
      currentTimeMillis: Effect.suspend(() => Effect.map(testClock.currentTimeMillis, (ms) => ms + jumpMs)),
      unsafeCurrentTimeMillis: () => testClock.unsafeCurrentTimeMillis() + jumpMs,
      currentTimeNanos: Effect.suspend(() => Effect.map(testClock.currentTimeNanos, (ns) => ns + BigInt(jumpMs) * 1_000_000n)),
      unsafeCurrentTimeNanos: () => testClock.unsafeCurrentTimeNanos() + BigInt(jumpMs) * 1_000_000n,
      sleep: (duration) => testClock.sleep(duration)
    }
    const dayMs = 86_400_000
    const waiting = yield* Effect.fork(Effect.withClock(untilClockReads(dayMs), stepped))
    yield* TestClock.adjust("10 minutes")
    expect(waiting.unsafePoll()).toBeNull()
    jumpMs = 25 * 3_600_000 // the clock stepped 25 h ahead
    yield* TestClock.adjust("1 minute")
    expect(yield* Fiber.join(waiting)).toBeUndefined()
    expect(waiting.unsafePoll()).not.toBeNull()
    // Without a step, the whole span (slept a minute at a time: under a test clock each wake-up costs real time).
    jumpMs = 0
    const now = yield* Clock.currentTimeMillis
    const plain = yield* Effect.fork(untilClockReads(now + 3_600_000))
    yield* TestClock.adjust("59 minutes")
    expect(plain.unsafePoll()).toBeNull()
    yield* TestClock.adjust("1 minute")
    yield* Fiber.join(plain)
    expect(yield* Effect.exit(Effect.timeout(untilClockReads(now), "1 millis"))).toMatchObject({ _tag: "Success" })
  }))
