/**
 * A node's upstream capacity is shared round-robin by project: a small batch of project B does not wait for the end
 * of project A's large batch, even with one batch permit and a slow upstream.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { TurnLength } from "../src/batches/BatchRunner.js"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

const client = (apiKey: string) =>
  Effect.map(baseUrl, (base) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 }))

const app = testAppWithUpstream(
  { maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 4, maxRequestsPerBatch: 5000 },
  { latencyMs: 20 },
  "sqlite",
  { auth: AuthTest({ apiKeys: ["key-a:projA", "key-b:projB"] }) }
)

layer(app, { excludeTestServices: true })("fairness between projects", (it) => {
  it.effect("a 10-line batch of project B finishes while project A's large batch is still running", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      // 2,000 requests: four slices of 500, about 2.5 s each at a window of 4 and 20 ms an answer.
      const large = yield* upload(a, Array.from({ length: 2000 }, (_, i) => chatLine(`a-${i}`, `large ${i}`)))
      const big = yield* createBatch(a, large.id)
      yield* waitFor(a, big.id, (batch) => batch.request_counts!.completed > 0)

      const small = yield* upload(b, Array.from({ length: 10 }, (_, i) => chatLine(`b-${i}`, `small ${i}`)))
      const little = yield* createBatch(b, small.id)
      const done = yield* waitFor(b, little.id, terminal, 15_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: 10, completed: 10, failed: 0 })

      const meanwhile = yield* Effect.promise(() => a.batches.retrieve(big.id))
      expect(meanwhile.status).toBe("in_progress")
      expect(meanwhile.request_counts!.completed).toBeLessThan(2000)
      // A's batch goes on after B's: cancel it to end the test.
      yield* Effect.promise(() => a.batches.cancel(big.id))
      expect((yield* waitFor(a, big.id, terminal)).status).toBe("cancelled")
    }))
})

/** Short outage timings: a request's retry budget and the probe, so that the upstream goes down and back quickly. */
const poisonApp = testAppWithUpstream(
  {
    maxConcurrentBatches: 1,
    maxConcurrentRequestsPerBatch: 4,
    upstreamProbeInterval: Duration.millis(200),
    inferenceRetryBaseDelay: Duration.millis(50),
    inferenceRetryMaxDelay: Duration.millis(200)
  },
  {},
  "sqlite",
  { auth: AuthTest({ apiKeys: ["key-a:projA", "key-b:projB"] }) }
)

layer(poisonApp, { excludeTestServices: true })("fairness through an upstream's outages", (it) => {
  it.effect("project A's batch whose every line gets a 500 does not hold project B's batch", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      // Every line 500: five different requests failing in a row take the shared upstream down, over and over.
      const poisonFile = yield* upload(a, Array.from({ length: 200 }, (_, i) => chatLine(`a-${i}`, `[fail:500] poison ${i}`)))
      const poison = yield* createBatch(a, poisonFile.id)
      yield* waitFor(a, poison.id, (batch) => batch.status === "in_progress")

      const small = yield* upload(b, Array.from({ length: 3 }, (_, i) => chatLine(`b-${i}`, `small ${i}`)))
      const little = yield* createBatch(b, small.id)
      const done = yield* waitFor(b, little.id, terminal, 10_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })

      // A's batch was still at work: B did not simply wait for its end.
      const meanwhile = yield* Effect.promise(() => a.batches.retrieve(poison.id))
      expect(meanwhile.status).toBe("in_progress")
      yield* Effect.promise(() => a.batches.cancel(poison.id))
      expect((yield* waitFor(a, poison.id, terminal)).status).toBe("cancelled")
    }), { timeout: 30_000 })
})

/** A turn of 1 s (10 s in production), so that a slow slice's turn ends within the test. */
const slowSliceApp = testAppWithUpstream(
  { maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 4 },
  {},
  "sqlite",
  { auth: AuthTest({ apiKeys: ["key-a:projA", "key-b:projB"] }) }
).pipe(Layer.provide(Layer.succeed(TurnLength, Duration.seconds(1))))

layer(slowSliceApp, { excludeTestServices: true })("fairness within a slow slice", (it) => {
  it.effect("project A's slice whose requests are slow (or refused, retried) holds project B's batch no longer than a turn", () =>
    Effect.gen(function*() {
      const a = yield* client("key-a")
      const b = yield* client("key-b")
      // One slice of 200 requests of 300 ms each at a window of 4: about 15 s.
      const slowFile = yield* upload(a, Array.from({ length: 200 }, (_, i) => chatLine(`a-${i}`, `[sleep:300] slow ${i}`)))
      const slow = yield* createBatch(a, slowFile.id)
      yield* waitFor(a, slow.id, (batch) => batch.request_counts!.completed > 0)

      const started = Date.now()
      const small = yield* upload(b, Array.from({ length: 3 }, (_, i) => chatLine(`b-${i}`, `small ${i}`)))
      const little = yield* createBatch(b, small.id)
      const done = yield* waitFor(b, little.id, terminal, 10_000)
      expect(done.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      expect(Date.now() - started).toBeLessThan(5000) // a turn, the requests in flight, and B's own

      // A takes its turn again where it stopped: every line once.
      const finished = yield* waitFor(a, slow.id, terminal, 30_000)
      expect(finished.request_counts).toEqual({ total: 200, completed: 200, failed: 0 })
      const lines = yield* readLines(a, finished.output_file_id)
      expect(new Set(lines.map((line) => line.custom_id)).size).toBe(200)
    }), { timeout: 60_000 })
})
