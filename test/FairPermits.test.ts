/** The node's batch permits, shared round-robin by project. */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import { makeFairPermits } from "../src/batches/fairPermits.js"

/** Lets the forked fibers run until they wait. */
const settle = Effect.repeatN(Effect.yieldNow(), 20)

describe("fair permits", () => {
  it.effect("a freed permit goes to the next project in turn, not to the holder's own queued batch", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(1)
      const served: Array<string> = []
      const gate = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(permits.withPermit("A", Deferred.await(gate)))
      yield* settle
      const take = (project: string, name: string) =>
        Effect.fork(permits.withPermit(project, Effect.sync(() => served.push(name))))
      const a2 = yield* take("A", "A2")
      yield* settle
      expect(permits.othersWaiting("A")).toBe(false) // only A's own batch waits
      const b1 = yield* take("B", "B1")
      const a3 = yield* take("A", "A3")
      const c1 = yield* take("C", "C1")
      yield* settle
      expect(permits.othersWaiting("A")).toBe(true)
      expect(permits.othersWaiting("B")).toBe(true)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(Fiber.zip(holder, Fiber.zip(a2, Fiber.zip(b1, Fiber.zip(a3, c1)))))
      // A was served last: then B, then C, then A's two in their order.
      expect(served).toEqual(["B1", "C1", "A2", "A3"])
    }))

  it.effect("never more holders than permits", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(2)
      let holding = 0
      let most = 0
      const hold = (project: string) =>
        permits.withPermit(project, Effect.gen(function*() {
          most = Math.max(most, ++holding)
          yield* Effect.yieldNow()
          holding--
        }))
      yield* Effect.all(["A", "B", "A", "C", "B", "A"].map(hold), { concurrency: "unbounded" })
      expect(most).toBe(2)
    }))

  it.effect("a waiter interrupted leaves the queue; one interrupted as the permit came gives it back", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(1)
      const gate = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(permits.withPermit("A", Deferred.await(gate)))
      yield* settle
      const waiting = yield* Effect.fork(permits.withPermit("B", Effect.never))
      yield* settle
      yield* Fiber.interrupt(waiting)
      expect(permits.othersWaiting("A")).toBe(false)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(holder)
      // The permit is free again: a new batch gets it at once.
      expect(yield* permits.withPermit("C", Effect.succeed("ran"))).toBe("ran")
    }))
})
