/**
 * An upstream's outages (`upstreams/outage.ts`) on its admission gate, in test time: a probe's answer puts it on
 * trial (one call at a time); a failed trial is down again and lets none of the waiting calls out (leaving the trial
 * before closing the gate let them all out at once, 30 of them here); a call that succeeds brings it up, and so
 * does a trial no call comes to for a few probe intervals, whose failures then count toward no later run. Outage
 * lines that cannot be logged (a logger that throws) lose no permit and stop no probe nor trial.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, identity, Logger, TestClock } from "effect"
import { Admission } from "../src/upstreams/Admission.js"
import { AdaptiveLimit } from "../src/upstreams/adaptiveLimit.js"
import { FAILING_PROBES_BEFORE_TRIAL, IDLE_TRIAL_PROBES, makeOutage } from "../src/upstreams/outage.js"
import { OUTAGE_AFTER } from "../src/upstreams/judge.js"
import { failingEveryCall, scriptedUpstream } from "./support/ScriptedUpstream.js"

const PROBE = Duration.seconds(1)
const ticket = { project: "p", deadline: 0 }

/** A gate of 64 and its outage, whose probe is always answered; taken down, then on trial after one probe. */
const onTrial = Effect.gen(function*() {
  const gate = new Admission(new AdaptiveLimit(1, 64), yield* Effect.clock)
  const outage = yield* makeOutage({ name: "u", gate, probeInterval: PROBE, probe: Effect.succeed(Exit.succeed(200)), log: identity })
  yield* outage.markDown("connection refused", "unreachable")
  expect([outage.isDown(), gate.tryAcquire(ticket)]).toEqual([true, undefined])
  yield* TestClock.adjust(PROBE)
  expect([outage.isDown(), outage.onTrial()]).toEqual([false, true])
  return { gate, outage }
})

describe("an upstream's outage", () => {
  it.scoped("on trial, one call goes out; when the trial fails, none of the waiting calls do", () =>
    Effect.gen(function*() {
      const { gate, outage } = yield* onTrial
      const permit = gate.tryAcquire(ticket)
      expect(permit).toBeDefined()
      const waiting = yield* Effect.forEach(Array.from({ length: 30 }), () => Effect.fork(gate.acquire(ticket)))
      yield* Effect.yieldNow()
      expect(gate.inflight).toBe(1)
      yield* outage.markDown("status 503", "failing")
      gate.release(permit!)
      expect([outage.isDown(), gate.inflight]).toEqual([true, 0])
      // The next probe's trial lets one of them out, and no more.
      yield* TestClock.adjust(PROBE)
      expect(gate.inflight).toBe(1)
      yield* Effect.forEach(waiting, Fiber.interrupt)
    }))

  it.scoped("a probe answered 5xx a few times in a row puts its calls on trial all the same, said once; one never answered does not", () => {
    const lines: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => void lines.push(`${logLevel.label} ${String(message)}`))
    return Effect.gen(function*() {
      const outageWith = (probe: Effect.Effect<Exit.Exit<number, unknown>>) =>
        Effect.gen(function*() {
          const gate = new Admission(new AdaptiveLimit(1, 64), yield* Effect.clock)
          const outage = yield* makeOutage({ name: "u", gate, probeInterval: PROBE, probe, log: identity })
          yield* outage.markDown("5 requests failing in a row", "failing")
          return outage
        })
      // A gateway that routes only the inference paths: its GET /models answers 502 for good.
      const gateway = yield* outageWith(Effect.succeed(Exit.succeed(502)))
      const unreachable = yield* outageWith(Effect.succeed(Exit.fail("connection refused")))
      yield* TestClock.adjust(Duration.times(PROBE, FAILING_PROBES_BEFORE_TRIAL - 1))
      expect([gateway.isDown(), unreachable.isDown()]).toEqual([true, true])
      yield* TestClock.adjust(PROBE)
      expect([gateway.isDown(), gateway.onTrial(), unreachable.isDown()]).toEqual([false, true, true])
      // Its trial call fails: down again, and on trial again after as many probes, without saying it again.
      yield* gateway.markDown("status 500", "failing")
      yield* TestClock.adjust(Duration.times(PROBE, FAILING_PROBES_BEFORE_TRIAL))
      expect(gateway.onTrial()).toBe(true)
      expect(lines.filter((line) => line.includes("answers GET /models with status 502"))).toEqual([
        "WARN Upstream u answers GET /models with status 502: its calls are tried instead"
      ])
      // Its trial failing as the outage began (a status, however said) is no new reason: not warned of.
      expect(lines.filter((line) => line.includes("still down"))).toEqual([])
      yield* TestClock.adjust(Duration.times(PROBE, 20))
      expect(unreachable.isDown()).toBe(true)
      // A 401 there (a key that may call and not list) gets a trial too, said with its status: not "again" alone.
      const keyed = yield* outageWith(Effect.succeed(Exit.succeed(401)))
      const listing = yield* outageWith(Effect.succeed(Exit.succeed(200)))
      yield* TestClock.adjust(PROBE)
      expect([keyed.onTrial(), listing.onTrial()]).toEqual([true, true])
      expect(lines.filter((line) => line.includes("answers GET /models again")).sort()).toEqual([
        "INFO Upstream u answers GET /models again, with status 401: its calls go out one at a time until one succeeds",
        "INFO Upstream u answers GET /models again: its calls go out one at a time until one succeeds"
      ].sort())
    }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  })

  it.scoped("a call that succeeds on trial brings it up: the waiting calls go out up to the limit", () =>
    Effect.gen(function*() {
      const { gate, outage } = yield* onTrial
      expect(gate.tryAcquire(ticket)).toBeDefined()
      const waiting = yield* Effect.forEach(Array.from({ length: 30 }), () => Effect.fork(gate.acquire(ticket)))
      yield* Effect.yieldNow()
      yield* outage.succeeded() ?? Effect.void
      yield* Effect.yieldNow()
      expect([outage.onTrial(), gate.inflight]).toEqual([false, 31])
      yield* Effect.forEach(waiting, Fiber.interrupt)
    }))

  it.scoped("a trial no call comes to for a few probe intervals ends up; one a call came to does once calls stop coming", () =>
    Effect.gen(function*() {
      const { outage } = yield* onTrial
      yield* TestClock.adjust(Duration.times(PROBE, IDLE_TRIAL_PROBES - 1))
      expect(outage.onTrial()).toBe(true)
      yield* TestClock.adjust(PROBE)
      expect([outage.isDown(), outage.onTrial()]).toEqual([false, false])

      const other = yield* onTrial
      other.gate.release(other.gate.tryAcquire(ticket)!) // a call that neither succeeded nor failed an outage
      yield* TestClock.adjust(Duration.times(PROBE, IDLE_TRIAL_PROBES))
      expect(other.outage.onTrial()).toBe(true)
      other.gate.release(other.gate.tryAcquire(ticket)!) // another, in the next intervals
      yield* TestClock.adjust(Duration.times(PROBE, IDLE_TRIAL_PROBES))
      expect(other.outage.onTrial()).toBe(true)
      // The last batch's calls are over (failed, too few in a row for an outage): up, its gauge with it.
      yield* TestClock.adjust(Duration.times(PROBE, IDLE_TRIAL_PROBES))
      expect([other.outage.isDown(), other.outage.onTrial()]).toEqual([false, false])

      // A trial call still at it when the intervals end (a long generation), or one waiting, is no idle trial.
      const slow = yield* onTrial
      const first = slow.gate.tryAcquire(ticket)
      expect(first).toBeDefined()
      const waiting = yield* Effect.fork(slow.gate.acquire(ticket))
      yield* TestClock.adjust(Duration.times(PROBE, 3 * IDLE_TRIAL_PROBES))
      expect(slow.outage.onTrial()).toBe(true)
      yield* Fiber.interrupt(waiting)
      yield* TestClock.adjust(Duration.times(PROBE, IDLE_TRIAL_PROBES))
      expect(slow.outage.onTrial()).toBe(true) // the first call is still in flight
      slow.gate.release(first!)
      yield* TestClock.adjust(Duration.times(PROBE, 2 * IDLE_TRIAL_PROBES))
      expect(slow.outage.onTrial()).toBe(false)
    }))
})

describe("an upstream whose outage lines cannot be logged", () => {
  /** An embedder's logger that throws on the down and trial lines (a log sink gone, say): its fiber dies there. */
  const throwsOnOutageLines = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ message }) => {
      if (/is down|answers GET \/models again/.test(String(message))) throw new Error("log sink gone")
    })
  )

  it.scoped("gives back the failing call's permit and still probes: the upstream comes back, and its idle trial ends", () =>
    Effect.gen(function*() {
      const upstream = yield* scriptedUpstream({ answer: failingEveryCall, maxConcurrency: 8, probeInterval: PROBE })
      // Different requests failing in a row: the last one's verdict takes the upstream down, and logs it.
      const exits = yield* Effect.forEach(
        Array.from({ length: OUTAGE_AFTER }, (_, i) => ({ project: "p", deadline: i })),
        (ticket) => Effect.exit(upstream.attempt("/v1/chat/completions", "{}", ticket, 1))
      )
      const last = exits.at(-1)!
      expect(Exit.isFailure(last) && Cause.isDie(last.cause)).toBe(true)
      expect(upstream.isDown()).toBe(true)
      expect(upstream.admission.inflight).toBe(0)
      yield* TestClock.adjust(PROBE) // the probe gets its answer: on trial, calls may go out
      expect(upstream.isDown()).toBe(false)
      // No call comes: the trial ends after its idle intervals, and calls go out up to the limit again.
      yield* TestClock.adjust(Duration.times(PROBE, IDLE_TRIAL_PROBES + 1))
      const ticket = { project: "p", deadline: 0 }
      expect([upstream.admission.tryAcquire(ticket), upstream.admission.tryAcquire(ticket)]).toEqual([0, 0].map(() => expect.anything()))
    }).pipe(Effect.provide(throwsOnOutageLines)))
})

describe("an upstream whose trial ends with no call", () => {

  it.scoped("starts its next run of failures afresh: the trial's failures do not count toward it", () =>
    Effect.gen(function*() {
      const upstream = yield* scriptedUpstream({ answer: failingEveryCall, maxConcurrency: 8, probeInterval: PROBE })
      let requests = 0
      const failing = Effect.suspend(() => upstream.attempt("/v1/chat/completions", "{}", { project: "p", deadline: requests++ }, 1))
      // Different requests failing in a row: an outage.
      for (let i = 0; i < OUTAGE_AFTER; i++) yield* failing
      expect(upstream.isDown()).toBe(true)
      yield* TestClock.adjust(PROBE) // its probe answered: on trial
      // On trial, a few requests fail (too few for an outage), then no call comes: up again, with no success.
      for (let i = 0; i < OUTAGE_AFTER - 1; i++) expect((yield* failing)[1]).toBe("retry")
      expect(upstream.isDown()).toBe(false)
      yield* TestClock.adjust(Duration.times(PROBE, 2 * IDLE_TRIAL_PROBES + 1))
      const ticket = { project: "p", deadline: 0 }
      const permits = [upstream.admission.tryAcquire(ticket), upstream.admission.tryAcquire(ticket)]
      expect(permits).toEqual([0, 0].map(() => expect.anything()))
      for (const permit of permits) upstream.admission.release(permit!)
      // One more request failing is the first of a new run, not the fifth of the trial's: it is retried, and the
      // upstream stays up.
      expect((yield* failing)[1]).toBe("retry")
      expect(upstream.isDown()).toBe(false)
    }))
})
