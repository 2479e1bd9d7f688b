/**
 * A node's upstream capacity is shared round-robin by project: a small batch of project B does not wait for the end
 * of project A's large batch, even with one batch permit and a slow upstream.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { BatchRunner, TurnLength } from "../src/batches/BatchRunner.js"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { sideBySide } from "./support/SideBySide.js"
import { baseUrl, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const client = (apiKey: string) =>
  Effect.map(baseUrl, (base) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 }))

/** The app with keys of two projects (A, B), one batch permit and a window of 4, on SQLite. */
const twoProjects = (overrides: Parameters<typeof testAppWithUpstream>[0] = {}, simulator: Parameters<typeof testAppWithUpstream>[1] = {}) =>
  testAppWithUpstream(
    { maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 4, ...overrides },
    simulator,
    "sqlite",
    { auth: AuthTest({ apiKeys: ["key-a:projA", "key-b:projB"] }) }
  )

/** A batch of `lines` chat requests saying `prompt(i)`, created with `openai`'s key. */
const batchOf = (openai: OpenAI, lines: number, prompt: (i: number) => string) =>
  Effect.flatMap(
    upload(openai, Array.from({ length: lines }, (_, i) => chatLine(`line-${i}`, prompt(i)))),
    (file) => createBatch(openai, file.id)
  )

/** A small batch of `lines` made with `openai`'s key, once it completed every line (within `timeoutMs`). */
const smallBatchCompletes = (openai: OpenAI, lines: number, timeoutMs: number) =>
  Effect.gen(function*() {
    const batch = yield* batchOf(openai, lines, (i) => `small ${i}`)
    const done = yield* waitFor(openai, batch.id, terminal, timeoutMs)
    expect([done.status, done.request_counts]).toEqual(["completed", { total: lines, completed: lines, failed: 0 }])
    return done
  })

const app = twoProjects({ maxRequestsPerBatch: 5000 }, { latencyMs: 20 })

sideBySide("fairness between projects", () => layer(app, { excludeTestServices: true })((it) => {
  it.effect("a 10-line batch of project B finishes while project A's large batch is still running", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      // 2,000 requests: four slices of 500, about 2.5 s each at a window of 4 and 20 ms an answer.
      const big = yield* batchOf(a, 2000, (i) => `large ${i}`)
      yield* waitFor(a, big.id, (batch) => batch.request_counts!.completed > 0)
      yield* smallBatchCompletes(b, 10, 15_000)

      const meanwhile = yield* Effect.promise(() => a.batches.retrieve(big.id))
      expect(meanwhile.status).toBe("in_progress")
      expect(meanwhile.request_counts!.completed).toBeLessThan(2000)
      // A's batch goes on after B's: cancel it to end the test.
      yield* Effect.promise(() => a.batches.cancel(big.id))
      expect((yield* waitFor(a, big.id, terminal)).status).toBe("cancelled")
    }))
}))

// A heartbeat every 30 s: the batches the cap leaves are taken up as room comes, not by the heartbeat.
const floodApp = twoProjects({ heartbeatInterval: Duration.seconds(30), leaseTtl: Duration.seconds(90) }, { latencyMs: 20 })

sideBySide("a flood of one project's batches", () => layer(floodApp, { excludeTestServices: true })((it) => {
  it.effect("the node drives at most 16 of its validating batches (the rest wait in the database); B's batch is not held behind them; all complete", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      const runner = yield* BatchRunner
      const file = yield* upload(a, [chatLine("only", "flood")])
      // B flooded first, and is done: its room later must not take up A's batches beyond A's own room.
      const fileB = yield* upload(b, [chatLine("only", "earlier flood")])
      const earlier = yield* Effect.forEach(Array.from({ length: 30 }), () => createBatch(b, fileB.id), { concurrency: 4 })
      for (const batch of earlier) expect((yield* waitFor(b, batch.id, terminal, 30_000)).status).toBe("completed")
      let mostDriven = 0
      const watching = yield* Effect.fork(Effect.forever(Effect.flatMap(runner.driving, (n) =>
        Effect.sync(() => void (mostDriven = Math.max(mostDriven, n)))).pipe(Effect.zipRight(Effect.sleep("5 millis")))))
      // 60 batches created back to back, as a client in a loop would (each waited for a fiber of its own).
      const flood = yield* Effect.forEach(Array.from({ length: 60 }), () => createBatch(a, file.id), { concurrency: 4 })
      yield* smallBatchCompletes(b, 2, 15_000)
      for (const batch of flood) expect((yield* waitFor(a, batch.id, terminal, 30_000)).status).toBe("completed")
      yield* Fiber.interrupt(watching)
      // B's batch, the heartbeat's turns and batches finishing (uncounted: 18 alone, 19 under load) add a few at once
      // beyond the 16, never the flood's 60.
      expect(mostDriven).toBeGreaterThan(0)
      expect(mostDriven).toBeLessThanOrEqual(16 + 4)
    }))
}))

/** Short outage timings: a request's retry budget and the probe, so that the upstream goes down and back quickly. */
const poisonApp = twoProjects({
  upstreamProbeInterval: Duration.millis(200),
  inferenceRetryBaseDelay: Duration.millis(50),
  inferenceRetryMaxDelay: Duration.millis(200)
})

sideBySide("fairness through an upstream's outages", () => layer(poisonApp, { excludeTestServices: true })((it) => {
  it.effect("project A's batch whose every line gets a 500 does not hold project B's batch", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      // Every line 500: five different requests failing in a row take the shared upstream down, over and over.
      const poison = yield* batchOf(a, 200, (i) => `[fail:500] poison ${i}`)
      yield* waitFor(a, poison.id, (batch) => batch.status === "in_progress")
      yield* smallBatchCompletes(b, 3, 10_000)

      // A's batch was still at work: B did not simply wait for its end.
      const meanwhile = yield* Effect.promise(() => a.batches.retrieve(poison.id))
      expect(meanwhile.status).toBe("in_progress")
      yield* Effect.promise(() => a.batches.cancel(poison.id))
      expect((yield* waitFor(a, poison.id, terminal)).status).toBe("cancelled")
    }), { timeout: 30_000 })
}))

/**
 * A turn of 6 s (10 s in production), so that a slow slice's turn ends within the test, and a batch validated at its
 * turn rather than as it came is told apart on a loaded machine (validation took 3 s once under the whole suite).
 */
const slowSliceApp = twoProjects().pipe(Layer.provide(Layer.succeed(TurnLength, Duration.seconds(6))))

sideBySide("fairness within a slow slice", () => layer(slowSliceApp, { excludeTestServices: true })((it) => {
  it.effect("project A's slice whose requests are slow (or refused, retried) holds project B's batch no longer than a turn", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      // One slice of 200 requests of 600 ms each at a window of 4: about 30 s.
      const slow = yield* batchOf(a, 200, (i) => `[sleep:600] slow ${i}`)
      yield* waitFor(a, slow.id, (batch) => batch.request_counts!.completed > 0)
      const started = Date.now()
      const small = yield* smallBatchCompletes(b, 3, 20_000)
      // The rest of a turn, the requests in flight, and B's own: ~7 s alone, more with the whole suite on two cores;
      // A's whole slice, had B waited for it, ~30 s.
      expect(Date.now() - started).toBeLessThan(18_000)
      // B was validated as it came, not at its turn to run (~6 s later; timestamps in seconds).
      expect(small.in_progress_at! - small.created_at).toBeLessThanOrEqual(3)

      // A takes its turn again where it stopped (it goes on after B), no line sent twice; cancelled then.
      const atB = (yield* Effect.promise(() => a.batches.retrieve(slow.id))).request_counts!.completed
      yield* waitFor(a, slow.id, (batch) => batch.request_counts!.completed >= atB + 8, 30_000)
      yield* Effect.promise(() => a.batches.cancel(slow.id))
      const finished = yield* waitFor(a, slow.id, terminal, 20_000)
      expect(finished.status).toBe("cancelled")
      const ids = [...(yield* readLines(a, finished.output_file_id)), ...(yield* readLines(a, finished.error_file_id))].map((l) => l.custom_id)
      expect([ids.length, new Set(ids).size]).toEqual([200, 200])
      const sim = yield* Upstream
      expect([...sim.stats.byPrompt.entries()].filter(([p, n]) => p.includes("slow") && n !== 1)).toEqual([])
    }), { timeout: 100_000 })
}))

/**
 * A turn of 0.5 s, two attempts a request and a retry's backoff of `backoff` (jittered by a fifth): project A's
 * requests refused with 429 spend their turn waiting for their retry.
 */
const refusedApp = (backoff: Duration.Duration) =>
  twoProjects({ inferenceMaxAttempts: 2, inferenceRetryBaseDelay: backoff }).pipe(
    Layer.provide(Layer.succeed(TurnLength, Duration.millis(500)))
  )

/** Project A's batch of 4 lines each refused with 429, once in progress, then B's batch of 3 run to its end (in `bTookMs`). */
const refusedBesideB = Effect.gen(function*() {
  const a = yield* client("key-a")
  const b = yield* client("key-b")
  const refused = yield* batchOf(a, 4, (i) => `[fail:429] refused ${i}`)
  yield* waitFor(a, refused.id, (batch) => batch.status === "in_progress")
  const started = Date.now()
  yield* smallBatchCompletes(b, 3, 22_000)
  return { a, refused, bTookMs: Date.now() - started }
})

// A backoff of 24–36 s: B's wait tells a permit held through it from one handed back.
sideBySide("fairness through a 429 storm", () => layer(refusedApp(Duration.seconds(30)), { excludeTestServices: true })((it) => {
  it.effect("project A's requests waiting out a 429's backoff are handed back at the turn's end: B does not wait for their retries", () =>
    Effect.gen(function*() {
      const { a, bTookMs, refused } = yield* refusedBesideB
      // The turn and B's own lines (~0.6 s alone, 3.6–12 s with the whole suite on two cores); A's retries 24 s
      // away at the soonest would have held the permit until then.
      expect(bTookMs).toBeLessThan(20_000)
      const meanwhile = yield* Effect.promise(() => a.batches.retrieve(refused.id))
      expect(meanwhile.request_counts).toEqual({ total: 4, completed: 0, failed: 0 }) // handed back, not failed

      // What becomes of them then (sent again, after their backoff): the next suite's, on a shorter backoff.
      yield* Effect.promise(() => a.batches.cancel(refused.id))
      expect((yield* waitFor(a, refused.id, terminal)).status).toBe("cancelled")
    }), { timeout: 100_000 })
}))

// A backoff of 4–6 s: the lines handed back come round again within the test.
sideBySide("fairness through a 429 storm, the lines handed back", () => layer(refusedApp(Duration.seconds(5)), { excludeTestServices: true })((it) => {
  it.effect("project A's lines handed back are sent again at its next turn, after the rest of their backoff: each ends once, refused", () =>
    Effect.gen(function*() {
      const { a, refused } = yield* refusedBesideB
      const finished = yield* waitFor(a, refused.id, terminal, 60_000)
      expect(finished.request_counts).toEqual({ total: 4, completed: 0, failed: 4 })
      // Sent again: each at least twice (a 429 is also taken for the upstream's overload, and tried again for it).
      const sends = [...(yield* Upstream).stats.byPrompt].filter(([prompt]) => prompt.includes("refused")).map(([, n]) => n)
      expect(sends).toHaveLength(4)
      expect(Math.min(...sends)).toBeGreaterThanOrEqual(2)
      const lines = yield* readLines(a, finished.error_file_id)
      expect(lines.map((line) => [line.custom_id, line.response?.status_code]).sort()).toEqual(
        [0, 1, 2, 3].map((i) => [`line-${i}`, 429])
      )
    }), { timeout: 100_000 })
}))
