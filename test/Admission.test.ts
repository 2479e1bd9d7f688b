/** The adaptive limit (AIMD) and the admission of calls to an upstream: limit, order, pauses, outages. */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Clock, Duration, Effect, Exit, Fiber, Option, TestClock } from "effect"
import { HandedBack } from "../src/inference/answers.js"
import { AdaptiveLimit } from "../src/upstreams/adaptiveLimit.js"
import { Admission, type LoadGauge, type Permit } from "../src/upstreams/Admission.js"
import { manualHandBack } from "./support/HandBack.js"

describe("AdaptiveLimit", () => {
  it("halves once per window of calls on overload, down to the floor, and grows back one per window", () => {
    const limit = new AdaptiveLimit(2, 16)
    expect(limit.current).toBe(16)
    const generation = limit.generation
    // Sixteen calls sent together all see the overload: one decrease.
    for (let i = 0; i < 16; i++) limit.overloaded(generation)
    expect(limit.current).toBe(8)
    limit.overloaded(limit.generation)
    limit.overloaded(limit.generation)
    limit.overloaded(limit.generation)
    expect(limit.current).toBe(2)
    expect(limit.atFloor).toBe(true)
    // Growth: +1 after `limit` successes while the limit is in use.
    limit.succeeded(2)
    expect(limit.current).toBe(2)
    limit.succeeded(2)
    expect(limit.current).toBe(3)
    for (let i = 0; i < 3; i++) limit.succeeded(3)
    expect(limit.current).toBe(4)
    // Successes of an upstream used at less than half its limit say nothing: no growth.
    for (let i = 0; i < 100; i++) limit.succeeded(1)
    expect(limit.current).toBe(4)
    for (let i = 0; i < 1000; i++) limit.succeeded(16)
    expect(limit.current).toBe(16)
  })
})

describe("Admission", () => {
  /** A call's permit given back: the admission counts them, not which (its load gauge counts nothing here). */
  const anyPermit: Permit = { generation: 0, call: { written: () => {}, finished: () => {} } }
  const make = (ceiling: number, gauge?: LoadGauge) =>
    Effect.map(Effect.clock, (clock: Clock.Clock) => new Admission(new AdaptiveLimit(1, ceiling), clock, gauge))

  it.effect("at most `limit` calls hold a permit; waiters are served by project in turn, earliest deadline first", () =>
    Effect.gen(function*() {
      const admission = yield* make(1)
      yield* admission.acquire({ project: "a", deadline: 0 })
      const order: Array<string> = []
      const wait = (project: string, deadline: number, name: string) =>
        Effect.fork(Effect.map(admission.acquire({ project, deadline }), () => order.push(name)))
      const fibers = [
        yield* wait("a", 300, "a-late"),
        yield* wait("a", 100, "a-early"),
        yield* wait("a", 200, "a-middle"),
        yield* wait("b", 500, "b-1"),
        yield* wait("b", 600, "b-2")
      ]
      yield* Effect.yieldNow()
      expect(order).toEqual([])
      for (let i = 0; i < fibers.length; i++) {
        admission.release(anyPermit)
        yield* Effect.yieldNow()
      }
      yield* Fiber.joinAll(fibers)
      // The last served was a (the first permit): b's turn first, then a's earliest, and so on.
      expect(order).toEqual(["b-1", "a-early", "b-2", "a-middle", "a-late"])
    }))

  it.effect("on trial, the one call goes to each batch in turn, whatever their deadlines; up again, the usual order", () =>
    Effect.gen(function*() {
      const admission = yield* make(8)
      admission.setTrial(true)
      yield* admission.acquire({ project: "a", batch: "hanging", deadline: 0 })
      const order: Array<string> = []
      const wait = (batch: string, deadline: number, name: string) =>
        Effect.fork(Effect.map(admission.acquire({ project: "a", batch, deadline }), () => order.push(name)))
      const fibers = [
        yield* wait("hanging", 100, "hanging-1"),
        yield* wait("hanging", 100, "hanging-2"),
        yield* wait("hanging", 100, "hanging-3"),
        yield* wait("later", 500, "later-1"),
        yield* wait("later", 500, "later-2"),
        yield* wait("latest", 900, "latest-1")
      ]
      yield* Effect.yieldNow()
      const nextCall = Effect.zipRight(Effect.sync(() => admission.release(anyPermit)), Effect.yieldNow())
      // The hanging batch had the first call: the next goes to a batch that had none, the earliest deadline first.
      yield* nextCall
      expect(order).toEqual(["later-1"])
      yield* nextCall
      expect(order).toEqual(["later-1", "latest-1"])
      yield* nextCall // each has had one: the one whose turn is longest past
      expect(order).toEqual(["later-1", "latest-1", "hanging-1"])
      yield* nextCall
      expect(order).toEqual(["later-1", "latest-1", "hanging-1", "later-2"])
      admission.setTrial(false) // up: the limit's room, in the usual order
      yield* Fiber.joinAll(fibers)
      expect(order).toEqual(["later-1", "latest-1", "hanging-1", "later-2", "hanging-2", "hanging-3"])
    }))

  it.effect("the turns last the outage: trials that fail (down again, on trial again) still go to each batch in turn", () =>
    Effect.gen(function*() {
      const admission = yield* make(8)
      const order: Array<string> = []
      /** A request of `batch` waiting for its call; one that hangs waits again once given it (its retry). */
      const request = (batch: string, deadline: number): Effect.Effect<void> =>
        Effect.flatMap(Effect.orDie(admission.acquire({ project: "a", batch, deadline })), () => {
          order.push(batch)
          return batch === "fine" ? Effect.void : request(batch, deadline)
        })
      admission.setDown(true)
      yield* Effect.fork(request("hanging-0", 100))
      yield* Effect.fork(request("hanging-1", 101))
      yield* Effect.fork(request("fine", 900))
      yield* Effect.yieldNow()
      // Each trial's one call fails and takes the upstream down again (a blind trial's does, at once).
      for (let trial = 0; trial < 4; trial++) {
        admission.setTrial(true)
        admission.setDown(false)
        yield* Effect.yieldNow()
        admission.setDown(true)
        admission.setTrial(false)
        admission.release(anyPermit)
        yield* Effect.yieldNow()
      }
      expect(order).toEqual(["hanging-0", "hanging-1", "fine", "hanging-0"])
    }))

  it.effect("up again, the turns are forgotten: the next outage's first trial call goes by deadline again", () =>
    Effect.gen(function*() {
      const admission = yield* make(8)
      const order: Array<string> = []
      const wait = (batch: string, deadline: number, name: string) =>
        Effect.fork(Effect.map(admission.acquire({ project: "a", batch, deadline }), () => order.push(name)))
      admission.setDown(true)
      for (const name of ["a1", "a2", "a3"]) yield* wait("a", 100, name)
      for (const name of ["b1", "b2"]) yield* wait("b", 200, name)
      yield* Effect.yieldNow()
      /** A trial: its one call, ended failed (down again) or not (up). */
      const trial = (fails: boolean) =>
        Effect.gen(function*() {
          admission.setTrial(true)
          admission.setDown(false)
          yield* Effect.yieldNow()
          if (fails) admission.setDown(true)
          admission.setTrial(false)
          admission.release(anyPermit)
          yield* Effect.yieldNow()
        })
      yield* trial(true)
      yield* trial(true)
      yield* trial(false) // b had the last call but one: up with a's
      expect(order.slice(0, 3)).toEqual(["a1", "b1", "a2"])
      expect(order).toHaveLength(5) // up: the others at once
      for (let i = 0; i < 2; i++) admission.release(anyPermit)
      // The next outage: a's turn was the later, but that outage is over; the earliest deadline goes first again.
      admission.setDown(true)
      yield* wait("b", 200, "b3")
      yield* wait("a", 100, "a4")
      yield* Effect.yieldNow()
      yield* trial(true)
      expect(order.slice(5)).toEqual(["a4"])
    }))

  it.effect("an interrupted waiter leaves the queue; one granted meanwhile gives its permit back", () =>
    Effect.gen(function*() {
      const admission = yield* make(1)
      yield* admission.acquire({ project: "a", deadline: 0 })
      const waiter = yield* Effect.fork(admission.acquire({ project: "a", deadline: 0 }))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(waiter)
      admission.release(anyPermit)
      expect(admission.inflight).toBe(0)
      yield* admission.acquire({ project: "b", deadline: 0 })
      expect(admission.inflight).toBe(1)
    }))

  it.effect("callEnded: at once when none is out; else one waiter per call that ended with room made, oldest first; all once none is out", () =>
    Effect.gen(function*() {
      const admission = yield* make(4)
      yield* admission.callEnded() // none in flight
      for (let i = 0; i < 3; i++) yield* admission.acquire({ project: "a", deadline: 0 })
      const waiting = () => Effect.fork(admission.callEnded())
      const interrupted = yield* waiting() // the oldest, gone before any call ends
      const first = yield* waiting()
      const second = yield* waiting()
      const third = yield* waiting()
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(interrupted)
      const done = (fiber: Fiber.RuntimeFiber<void>) => Effect.map(Effect.zipRight(Effect.yieldNow(), Fiber.poll(fiber)), Option.isSome)
      admission.release(anyPermit, false) // a refused call: no room made at the server
      expect([yield* done(first), yield* done(second), yield* done(third)]).toEqual([false, false, false])
      admission.release(anyPermit) // room for one: the oldest still waiting
      expect([yield* done(first), yield* done(second), yield* done(third)]).toEqual([true, false, false])
      admission.release(anyPermit, false) // the last call out, refused: nothing else would wake them
      expect([yield* done(second), yield* done(third)]).toEqual([true, true])
    }))

  it.effect("a pause holds every call until it ends; down holds them until up", () =>
    Effect.gen(function*() {
      const admission = yield* make(8)
      const now = yield* Clock.currentTimeMillis
      yield* admission.pauseUntil(now + 30_000)
      const paused = yield* Effect.fork(admission.acquire({ project: "a", deadline: 0 }))
      yield* TestClock.adjust(Duration.seconds(29))
      expect(paused.unsafePoll()).toBeNull()
      yield* TestClock.adjust(Duration.seconds(1))
      yield* Fiber.join(paused)
      admission.setDown(true)
      const held = yield* Effect.fork(admission.acquire({ project: "a", deadline: 0 }))
      yield* TestClock.adjust(Duration.hours(1))
      expect(held.unsafePoll()).toBeNull()
      admission.setDown(false)
      yield* Fiber.join(held)
      expect(admission.inflight).toBe(2)
    }))

  it.effect("a pause ends though its timer fires before the admission's clock reads the pause's end", () =>
    Effect.gen(function*() {
      // A clock of 10 ms ticks (as Date.now's whole milliseconds against a timer's fractions): 3 ms into a tick, a
      // pause to 55 sets a timer of 55 ms, which fires when this clock still reads 50.
      const clock = yield* Effect.clock
      const ticks: Clock.Clock = Object.assign(Object.create(clock), {
        unsafeCurrentTimeMillis: () => Math.floor(clock.unsafeCurrentTimeMillis() / 10) * 10
      })
      const admission = new Admission(new AdaptiveLimit(1, 8), ticks)
      yield* TestClock.adjust(Duration.millis(3))
      yield* admission.pauseUntil(55)
      const paused = yield* Effect.fork(admission.acquire({ project: "a", deadline: 0 }))
      yield* TestClock.adjust(Duration.millis(55))
      expect(paused.unsafePoll()).toBeNull()
      yield* TestClock.adjust(Duration.millis(10))
      expect(Option.isSome(yield* Fiber.poll(paused))).toBe(true)
      expect(admission.inflight).toBe(1)
    }))

  it.effect("a full load gauge holds calls until it says there is room", () =>
    Effect.gen(function*() {
      let full = true
      const admission = yield* make(8, { full: () => full, sent: () => anyPermit.call })
      const held = yield* Effect.fork(admission.acquire({ project: "a", deadline: 0 }))
      yield* Effect.yieldNow()
      expect(held.unsafePoll()).toBeNull()
      full = false
      admission.pump()
      yield* Fiber.join(held)
    }))

  it.effect("a call waiting for a permit and handed back holds none, even when one was granted in the same instant", () =>
    Effect.gen(function*() {
      const admission = yield* make(1)
      yield* admission.acquire({ project: "a", deadline: 0 }) // the holder
      for (const order of ["handed back, then granted", "granted, then handed back"] as const) {
        const { handBack, want } = manualHandBack()
        const waiting = yield* Effect.fork(admission.acquire({ project: "b", deadline: 0, handBack }))
        yield* Effect.repeatN(Effect.yieldNow(), 10) // both sides of its wait are waiting
        yield* Effect.sync(() => {
          if (order === "granted, then handed back") admission.release(anyPermit)
          want()
          if (order === "handed back, then granted") admission.release(anyPermit) // the holder's answer came at that instant
        })
        const exit = yield* Fiber.await(waiting)
        // Either the call got the permit (and goes to the upstream with it), or it was handed back holding none.
        expect(admission.queued()).toBe(0)
        expect(admission.inflight).toBe(Exit.isSuccess(exit) ? 1 : 0)
        if (Exit.isFailure(exit)) expect(Cause.failureOption(exit.cause)).toEqual(Option.some(new HandedBack()))
        if (Exit.isFailure(exit)) yield* admission.acquire({ project: "a", deadline: 0 }) // a holder again
      }
    }))
})
