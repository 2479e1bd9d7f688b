/** The node's batch permits, shared by project: round-robin in turns, and in time. */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, TestClock } from "effect"
import { type FairPermits, heldAWhile, holderTurn, makeFairPermits, type Readiness } from "../src/batches/fairPermits.js"

/** Lets the forked fibers run until they wait. */
const settle = Effect.repeatN(Effect.yieldNow(), 20)

/** Whether a holder of `project` would be asked to give its permit back (a claim made and given back at once). */
const othersWaiting = (permits: FairPermits, project: string) => {
  const claimed = permits.claimYield(project)
  if (claimed) permits.endYield()
  return claimed
}

/**
 * Drives batches of `project` for ever, as `BatchRunner` does: a permit, slices of `sliceMs` each until its turn ends
 * (at a slice's end when another project waits, or at `turnMs`), and again; `held` counts its slices' time.
 */
const driver = (
  permits: FairPermits,
  project: string,
  sliceMs: number,
  turnMs: number,
  held: Map<string, number>,
  readiness?: Readiness
) =>
  Effect.forever(Effect.gen(function*() {
    const clock = yield* Effect.clock
    const turnOver = clock.unsafeCurrentTimeMillis() + turnMs
    yield* permits.withPermit(project, Effect.gen(function*() {
      const turn = holderTurn(permits, project, () => clock.unsafeCurrentTimeMillis() >= turnOver)
      for (;;) {
        yield* Effect.sleep(Duration.millis(sliceMs))
        held.set(project, (held.get(project) ?? 0) + sliceMs)
        if (turn.afterSlice() || turn.now()) break
      }
      turn.done()
    }), readiness)
  }))

/** Runs the forked drivers for `seconds` of test time, `step` seconds at a time. */
const runFor = (seconds: number, step = 10) =>
  Effect.repeatN(Effect.zipRight(TestClock.adjust(Duration.seconds(step)), settle), seconds / step - 1)

/** The share of `project` in the time held between two readings of `held`. */
const shareOf = (project: string, before: Map<string, number>, after: Map<string, number>) => {
  const gained = (p: string) => (after.get(p) ?? 0) - (before.get(p) ?? 0)
  let total = 0
  for (const p of after.keys()) total += gained(p)
  return gained(project) / total
}

describe("fair permits", () => {
  it.effect("time banked is bounded: a project back after ten minutes alone, or after its upstream's ten-minute outage, waits or is owed MAX_LAG_MS at most", () =>
    Effect.gen(function*() {
      const clock = yield* Effect.clock
      const held = new Map<string, number>()
      const permits = makeFairPermits(1, () => clock.unsafeCurrentTimeMillis())
      // A runs alone for ten minutes (20 × MAX_LAG_MS) and leaves; B runs alone two minutes; A comes back. (Each
      // wake-up under the test clock costs some real time: longer spans only made the test slower.)
      const alone = yield* Effect.fork(driver(permits, "A", 10_000, 10_000, held))
      yield* runFor(600)
      yield* Fiber.interrupt(alone)
      const b = yield* Effect.fork(driver(permits, "B", 10_000, 10_000, held))
      yield* runFor(120)
      const back = yield* Effect.fork(driver(permits, "A", 10_000, 10_000, held))
      const before = new Map(held)
      yield* runFor(300)
      // Level after B's 30 s of credit: A held none of those 5 minutes with its history counted.
      expect(shareOf("A", before, held)).toBeGreaterThan(0.35)
      yield* Fiber.interrupt(Fiber.zip(b, back))

      // C's batch waits ten minutes for its upstream (not ready) while D runs; then both compete.
      let ready = false
      const upSignal = yield* Deferred.make<void>()
      const readiness: Readiness = {
        ready: () => ready,
        awaitReady: Effect.suspend(() => (ready ? Effect.void : Deferred.await(upSignal))),
        awaitNotReady: Effect.never
      }
      const c = yield* Effect.fork(driver(permits, "C", 10_000, 10_000, held, readiness))
      const d = yield* Effect.fork(driver(permits, "D", 10_000, 10_000, held))
      yield* runFor(600)
      ready = true
      yield* Deferred.succeed(upSignal, undefined)
      const after = new Map(held)
      yield* runFor(300)
      expect(shareOf("D", after, held)).toBeGreaterThan(0.35) // D was not shut out for C's ten minutes
      expect(shareOf("C", after, held)).toBeGreaterThan(0.35)
      yield* Fiber.interrupt(Fiber.zip(c, d))
    }), 60_000)

  it.effect("shared in time: a project of fast slices gets as much time as one whose turns run to their 10 s", () =>
    Effect.gen(function*() {
      const clock = yield* Effect.clock
      const held = new Map<string, number>()
      const permits = makeFairPermits(1, () => clock.unsafeCurrentTimeMillis())
      const slow = yield* Effect.fork(driver(permits, "slow", 10_000, 10_000, held)) // a slice as long as a turn
      yield* settle
      const fast = yield* Effect.fork(driver(permits, "fast", 500, 10_000, held))
      for (let second = 0; second < 120; second++) {
        yield* TestClock.adjust(Duration.seconds(1))
        yield* settle
      }
      yield* Fiber.interrupt(Fiber.zip(slow, fast))
      // Counted in turns, "fast" got 0.5 s for each of "slow"'s 10 s (a twentieth of the time).
      const share = (held.get("fast") ?? 0) / ((held.get("fast") ?? 0) + (held.get("slow") ?? 0))
      expect(share).toBeGreaterThan(0.4)
      expect(share).toBeLessThan(0.6)
    }))


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
      expect(othersWaiting(permits, "A")).toBe(false) // only A's own batch waits
      const b1 = yield* take("B", "B1")
      const a3 = yield* take("A", "A3")
      const c1 = yield* take("C", "C1")
      yield* settle
      expect(othersWaiting(permits, "A")).toBe(true)
      expect(othersWaiting(permits, "B")).toBe(true)
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

  it.effect("a holder gives its permit back before its end, once: the next batch runs beside the rest of it, and the turn claims no more", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(1)
      const gate = yield* Deferred.make<void>()
      const turn = holderTurn(permits, "A", () => false)
      const holder = yield* Effect.fork(permits.withPermitUntil("A", (giveBack) =>
        Effect.gen(function*() {
          yield* Deferred.await(gate)
          yield* giveBack
          turn.done()
          yield* giveBack // a second time gives nothing back: no third holder below
          yield* Effect.never // the rest of its run (calls still out)
        })))
      yield* settle
      const next = yield* Effect.fork(permits.withPermit("A", Effect.succeed("ran")))
      yield* settle
      expect(next.unsafePoll()).toBeNull() // one permit, held
      yield* Deferred.succeed(gate, undefined)
      expect(yield* Fiber.join(next)).toBe("ran")
      // One permit, free again: a batch of B waits for nobody, and the drained holder's turn claims nothing.
      const b = yield* Effect.fork(permits.withPermit("B", Effect.never))
      yield* settle
      const c = yield* Effect.fork(permits.withPermit("C", Effect.never))
      yield* settle
      expect(othersWaiting(permits, "B")).toBe(true) // C waits: the permit was given back once
      expect([turn.now(), turn.afterSlice()]).toEqual([false, false])
      yield* Fiber.interrupt(c)
      yield* Fiber.interrupt(b)
      yield* Fiber.interrupt(holder)
      // Interrupted after giving the permit back, the holder gives nothing more: the permit is B's, given back.
      expect(yield* permits.withPermit("D", Effect.succeed("free"))).toBe("free")
      expect(othersWaiting(permits, "D")).toBe(false)
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
      expect(othersWaiting(permits, "A")).toBe(false)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(holder)
      // The permit is free again: a new batch gets it at once.
      expect(yield* permits.withPermit("C", Effect.succeed("ran"))).toBe("ran")
    }))

  it.effect("a batch not ready (its upstream down) is not served, keeps its turn, and is served first once ready", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(1)
      const served: Array<string> = []
      let up = true
      let upSignal = yield* Deferred.make<void>()
      let downSignal = yield* Deferred.make<void>()
      yield* Deferred.succeed(upSignal, undefined)
      const readiness = {
        ready: () => up,
        awaitReady: Effect.suspend(() => Deferred.await(upSignal)),
        awaitNotReady: Effect.suspend(() => Deferred.await(downSignal))
      }
      const setUp = (value: boolean) =>
        Effect.gen(function*() {
          up = value
          if (value) {
            downSignal = yield* Deferred.make<void>()
            yield* Deferred.succeed(upSignal, undefined)
          } else {
            upSignal = yield* Deferred.make<void>()
            yield* Deferred.succeed(downSignal, undefined)
          }
        })
      const gate = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(permits.withPermit("A", Deferred.await(gate), readiness))
      yield* settle
      const b = yield* Effect.fork(permits.withPermit("B", Effect.sync(() => served.push("B")), readiness))
      yield* settle
      expect(othersWaiting(permits, "A")).toBe(true)
      // The upstream goes down: A gives its permit back, and B, whose upstream it is too, is not served.
      yield* setUp(false)
      yield* settle
      expect(othersWaiting(permits, "A")).toBe(false)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(holder)
      const a = yield* Effect.fork(permits.withPermit("A", Effect.sync(() => served.push("A")), readiness))
      yield* settle
      expect(served).toEqual([]) // the permit is free, but both wait for their upstream
      yield* setUp(true)
      yield* Fiber.join(Fiber.zip(a, b))
      // B's turn comes first: A was served last, and B was never served meanwhile.
      expect(served).toEqual(["B", "A"])
    }))

  it.effect("with several permits, one waiter makes one holder give its permit back, not every one", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(2)
      const gate = yield* Deferred.make<void>()
      const holders = yield* Effect.forEach(["A", "C"], (project) => Effect.fork(permits.withPermit(project, Deferred.await(gate))))
      yield* settle
      expect(permits.claimYield("A")).toBe(false) // nobody waits
      const waiter = yield* Effect.fork(permits.withPermit("B", Effect.void))
      yield* settle
      expect(permits.claimYield("A")).toBe(true)
      expect(permits.claimYield("C")).toBe(false) // A gives one back: enough for B
      permits.endYield()
      expect(permits.claimYield("C")).toBe(true)
      permits.endYield()
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(Fiber.zip(waiter, Fiber.zip(holders[0]!, holders[1]!)))
    }))

  it.effect("a running batch's turn ends, at a slice's end or when too long, for one holder per waiter", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(2)
      let over = false
      const turns = [holderTurn(permits, "A", () => over), holderTurn(permits, "A", () => over)] as const
      const gates = yield* Effect.all([Deferred.make<void>(), Deferred.make<void>(), Deferred.make<void>()])
      const holders = yield* Effect.forEach([0, 1] as const, (i) =>
        Effect.fork(permits.withPermit("A", Effect.ensuring(Deferred.await(gates[i]), Effect.sync(turns[i].done)))))
      yield* settle
      expect(turns.map((turn) => turn.afterSlice())).toEqual([false, false]) // nobody else waits
      const b = yield* Effect.fork(permits.withPermit("B", Deferred.await(gates[2])))
      yield* settle
      // One waiter: the first holder at a slice's end gives its permit back; the other goes on, slice or not.
      expect(turns.map((turn) => turn.now())).toEqual([false, false])
      expect([turns[0].afterSlice(), turns[1].afterSlice()]).toEqual([true, false])
      expect(turns[0].now()).toBe(true) // once ended, ended
      // The slice's last requests are awaited, until the turn's time is over: then those still waiting are wanted back.
      expect(turns[0].handBack.wanted()).toBe(false)
      over = true
      expect([turns[0].now(), turns[0].handBack.wanted()]).toEqual([true, true])
      expect([turns[1].now(), turns[1].handBack.wanted()]).toEqual([false, false])
      yield* Deferred.succeed(gates[0], undefined)
      yield* Fiber.join(holders[0])
      expect(turns[1].now()).toBe(false) // B holds the permit A gave back: nobody waits
      const c = yield* Effect.fork(permits.withPermit("C", Effect.void))
      yield* settle
      expect(turns[1].now()).toBe(true) // a new waiter: the other holder's turn is over too
      yield* Deferred.succeed(gates[1], undefined)
      yield* Deferred.succeed(gates[2], undefined)
      yield* Fiber.join(Fiber.zip(holders[1], Fiber.zip(b, c)))
    }))

  it.effect("a holder whose upstream holds its calls gives its permit to a ready batch of its own project, not to one held too", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(1)
      let held = false
      const turn = holderTurn(permits, "A", () => false, () => held)
      const gate = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(permits.withPermit("A", Effect.ensuring(Deferred.await(gate), Effect.sync(turn.done))))
      yield* settle
      // A batch of A's own project whose upstream holds its calls as well: nothing to give the permit to.
      let otherHeld = true
      const heldToo = { ready: () => !otherHeld, awaitReady: Effect.never, awaitNotReady: Effect.never }
      const waiter = yield* Effect.fork(permits.withPermit("A", Effect.void, heldToo))
      yield* settle
      held = true
      expect([turn.now(), turn.handBack.wanted()]).toEqual([false, false])
      // Its upstream lets calls through: the holder's own project waits, and the holder cannot use its permit.
      otherHeld = false
      expect([turn.now(), turn.handBack.wanted()]).toEqual([true, true])
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(Fiber.zip(holder, waiter))
    }))

  it("a hold counts once it lasted: a brief pause (a 429 storm's) is no reason to give the permit away", () => {
    let held = false
    let now = 0
    const long = heldAWhile(() => held, () => now, 1000)
    held = true
    expect(long()).toBe(false)
    now = 999
    expect(long()).toBe(false)
    now = 1000
    expect(long()).toBe(true)
    held = false // a break starts it over
    expect(long()).toBe(false)
    held = true
    now = 1500
    expect(long()).toBe(false)
    now = 2500
    expect(long()).toBe(true)
  })

  it.effect("a holder whose upstream lets its calls through keeps its permit from its own project's batches", () =>
    Effect.gen(function*() {
      const permits = makeFairPermits(1)
      const turn = holderTurn(permits, "A", () => false, () => false)
      const gate = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(permits.withPermit("A", Effect.ensuring(Deferred.await(gate), Effect.sync(turn.done))))
      yield* settle
      const waiter = yield* Effect.fork(permits.withPermit("A", Effect.void))
      yield* settle
      expect([turn.now(), turn.afterSlice()]).toEqual([false, false])
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(Fiber.zip(holder, waiter))
    }))
})
