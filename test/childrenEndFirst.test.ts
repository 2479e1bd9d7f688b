/**
 * `childrenEndFirst`: an interrupted effect's forks (a race's sides) end before the caller's finalizers run, as a
 * run's workers must before its slices are given back.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { childrenEndFirst } from "../src/batches/childrenEndFirst.js"

/** What happened, in order, when `wrap(a race whose side takes 20 ms to stop)` under a finalizer is interrupted. */
const order = (wrap: (effect: Effect.Effect<void>) => Effect.Effect<void>) =>
  Effect.gen(function*() {
    const seen: Array<string> = []
    const slowToStop = Effect.onInterrupt(Effect.never, () => Effect.zipRight(Effect.sleep("20 millis"), Effect.sync(() => seen.push("side stopped"))))
    const caller = Effect.ensuring(wrap(Effect.raceFirst(Effect.never, slowToStop)), Effect.sync(() => seen.push("finalizer")))
    const fiber = yield* Effect.fork(caller)
    yield* Effect.sleep("5 millis")
    yield* Fiber.interrupt(fiber)
    return seen
  })

describe("childrenEndFirst", () => {
  it.live("an interrupted race's sides stop before the caller's finalizer runs", () =>
    Effect.gen(function*() {
      expect(yield* order(childrenEndFirst)).toEqual(["side stopped", "finalizer"])
      // Without it (Effect 3), the finalizer runs first: what let a worker claim a slice after its run gave them back.
      expect(yield* order((effect) => effect)).toEqual(["finalizer", "side stopped"])
    }))

  it.live("gives the effect's value and failure as they are", () =>
    Effect.gen(function*() {
      expect(yield* childrenEndFirst(Effect.succeed(3))).toBe(3)
      expect(yield* Effect.flip(childrenEndFirst(Effect.fail("no")))).toBe("no")
    }))
})
