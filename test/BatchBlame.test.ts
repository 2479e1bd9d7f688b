/**
 * A batch whose requests fail on their own (`upstreams/batchBlame.ts`), in test time: once its run of failures took
 * the upstream down and another batch's request succeeded, its next run makes no outage; unless `GET /models` fails
 * too, or its own request succeeded meanwhile (the outage was the upstream's).
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, TestClock } from "effect"
import { OTHERS_SERVED_WITHIN_MS } from "../src/upstreams/batchBlame.js"
import { OUTAGE_AFTER } from "../src/upstreams/judge.js"
import { scriptedUpstream } from "./support/ScriptedUpstream.js"

const PROBE = Duration.seconds(1)

/** One upstream whose calls and `GET /models` answer the statuses set in `answers`. */
const upstreamOf = Effect.gen(function*() {
  const answers = { call: 500, models: 200 }
  const upstream = yield* scriptedUpstream({
    answer: () => new Response(`{"error":{"message":"boom"}}`, { status: answers.call }),
    models: () => new Response(`{"object":"list","data":[{"id":"m"}]}`, { status: answers.models }),
    maxConcurrency: 8,
    probeInterval: PROBE
  })
  let requests = 0
  /** A new request of `batch` (of `project`), its first attempt answered `status`: its verdict. */
  const send = (batch: string, status: number, project = "p") =>
    Effect.suspend(() => {
      answers.call = status
      return Effect.map(upstream.attempt("/v1/chat/completions", "{}", { project, batch, deadline: requests++ }, 1), ([, v]) => v)
    })
  /** `OUTAGE_AFTER` requests of `batch` failing at their first attempt: their verdicts. */
  const run = (batch: string, project = "p") => Effect.forEach(Array.from({ length: OUTAGE_AFTER }), () => send(batch, 500, project))
  /** Batch A's run takes it down, the probe puts it on trial, and batch B's request brings it up. */
  const downByAUpByB = Effect.gen(function*() {
    expect((yield* run("A")).at(-1)).toBe("again")
    expect(upstream.isDown()).toBe(true)
    yield* TestClock.adjust(PROBE)
    expect(yield* send("B", 200)).toBe("final")
    expect(upstream.state().state).toBe("up")
  })
  return { answers, downByAUpByB, run, send, upstream }
})

describe("a batch whose requests fail on their own", () => {
  it.scoped("took the upstream down once, and another batch's request succeeded since: its runs make no outage", () =>
    Effect.gen(function*() {
      const { downByAUpByB, run, send, upstream } = yield* upstreamOf
      yield* downByAUpByB
      for (let i = 0; i < 4; i++) expect(yield* run("A")).toEqual(Array(OUTAGE_AFTER).fill("retry"))
      expect(upstream.state().state).toBe("up")
      // Another batch's run is an outage as before; it ends the suspicion.
      expect((yield* run("B")).at(-1)).toBe("again")
      expect(upstream.isDown()).toBe(true)
      yield* TestClock.adjust(PROBE)
      expect(yield* send("A", 200)).toBe("final")
      expect(upstream.state().state).toBe("up")
    }))

  it.scoped("its project's next batches, while another project is served, make no outage either: one new failing batch a second held every project's", () =>
    Effect.gen(function*() {
      const { run, send, upstream } = yield* upstreamOf
      // Project p's batch A takes it down, project q's request brings it up, A's next run makes A a suspect.
      expect((yield* run("A")).at(-1)).toBe("again")
      yield* TestClock.adjust(PROBE)
      expect(yield* send("Q1", 200, "q")).toBe("final")
      expect(yield* run("A")).toEqual(Array(OUTAGE_AFTER).fill("retry"))
      // p's new batches fail on their own as A did: no outage, while q is served.
      for (const batch of ["C", "D", "E"]) {
        expect(yield* run(batch)).toEqual(Array(OUTAGE_AFTER).fill("retry"))
        expect(upstream.state().state).toBe("up")
        expect(yield* send("Q1", 200, "q")).toBe("final")
      }
      // p's batch that succeeded is not suspect: its run (a real outage, as it worked) takes the upstream down.
      expect(yield* send("F", 200)).toBe("final")
      expect((yield* run("F")).at(-1)).toBe("again")
      expect(upstream.isDown()).toBe(true)
    }))

  it.scoped("a project of its own, with no other project served lately: its new batch's run is an outage as before", () =>
    Effect.gen(function*() {
      const { downByAUpByB, run, upstream } = yield* upstreamOf
      yield* downByAUpByB // A and B both of project p
      expect(yield* run("A")).toEqual(Array(OUTAGE_AFTER).fill("retry"))
      expect((yield* run("C")).at(-1)).toBe("again")
      expect(upstream.isDown()).toBe(true)
    }))

  it.scoped("its run still takes the upstream down when GET /models answers 5xx", () =>
    Effect.gen(function*() {
      const { answers, downByAUpByB, run, upstream } = yield* upstreamOf
      yield* downByAUpByB
      expect(yield* run("A")).toEqual(Array(OUTAGE_AFTER).fill("retry"))
      answers.models = 503
      expect((yield* run("A")).at(-1)).toBe("again")
      expect(upstream.isDown()).toBe(true)
    }))

  it.scoped("with no other batch served for OTHERS_SERVED_WITHIN_MS (it alone sends), its runs make outages again", () =>
    Effect.gen(function*() {
      const { downByAUpByB, run, upstream } = yield* upstreamOf
      yield* downByAUpByB
      expect(yield* run("A")).toEqual(Array(OUTAGE_AFTER).fill("retry"))
      // A server failing everything now, A's turn alone: after the window its lines are kept, not failed.
      yield* TestClock.adjust(Duration.millis(OTHERS_SERVED_WITHIN_MS + 1))
      expect((yield* run("A")).at(-1)).toBe("again")
      expect(upstream.isDown()).toBe(true)
    }))

  it.scoped("a request of its own that succeeded since says the outage was the upstream's: its next run is one", () =>
    Effect.gen(function*() {
      const { downByAUpByB, run, send, upstream } = yield* upstreamOf
      yield* downByAUpByB
      expect(yield* send("A", 200)).toBe("final")
      expect((yield* run("A")).at(-1)).toBe("again")
      expect(upstream.isDown()).toBe(true)
    }))
})
