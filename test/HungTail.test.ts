/**
 * A batch whose last calls never answer gives its permit back once it has nothing left to send: the next batch of
 * the project runs meanwhile, in the request slots the hung calls leave (`requestSlots.ts`), so that the node still
 * never sends more than MAX_CONCURRENT_BATCHES × MAX_CONCURRENT_REQUESTS_PER_BATCH requests at once. A request
 * waiting to try again keeps the permit (`test/RunDrained.test.ts`).
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import type OpenAI from "openai"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, eventually, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const client = Effect.map(baseUrl, sdk)

/** A batch of `prompts` (custom ids `prefix-i`), created with `openai`. */
const batchOf = (openai: OpenAI, prefix: string, prompts: ReadonlyArray<string>) =>
  Effect.flatMap(upload(openai, prompts.map((p, i) => chatLine(`${prefix}-${i}`, p))), (file) => createBatch(openai, file.id))

layer(
  testAppWithUpstream({
    maxConcurrentBatches: 1,
    maxConcurrentRequestsPerBatch: 3,
    inferenceRetryBaseDelay: Duration.millis(10),
    // Far past the test's time: the hung call is answered by nothing but the cancel.
    inferenceTimeout: Duration.minutes(10)
  }),
  { excludeTestServices: true }
)("a batch's hung last call", (it) => {
  it.effect("does not hold the project's next batch, and the node's bound on calls at once holds meanwhile", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const sim = yield* Upstream
      sim.reset()
      const hung = yield* createBatch(openai, (yield* upload(openai, [
        ...Array.from({ length: 3 }, (_, i) => chatLine(`quick-${i}`, `quick ${i}`)),
        chatLine("hung", "hung [hang]")
      ])).id)
      yield* waitFor(openai, hung.id, (b) => b.request_counts!.completed === 3)
      yield* eventually(() => expect(sim.stats.inFlight).toBe(1))

      // Long enough (3 rounds of 100 ms) that its window is seen full, in the two slots the hung call leaves.
      const next = yield* createBatch(openai, (yield* upload(openai,
        Array.from({ length: 6 }, (_, i) => chatLine(`next-${i}`, `next ${i} [sleep:100]`))
      )).id)
      const done = yield* waitFor(openai, next.id, terminal, 10_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: 6, completed: 6, failed: 0 })
      expect((yield* Effect.promise(() => openai.batches.retrieve(hung.id))).status).toBe("in_progress")
      expect(sim.stats.maxInFlight).toBe(3)

      yield* Effect.promise(() => openai.batches.cancel(hung.id))
      const cancelled = yield* waitFor(openai, hung.id, terminal, 5000)
      expect(cancelled).toMatchObject({ status: "cancelled", request_counts: { total: 4, completed: 3, failed: 1 } })
      yield* eventually(() => expect(sim.stats.inFlight).toBe(0))
    }), 30_000)
})

layer(
  testAppWithUpstream({ maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 2, inferenceRetryBaseDelay: Duration.millis(200) }),
  { excludeTestServices: true }
)("a batch's last line waiting to try again", (it) => {
  it.effect("keeps the permit: its retry does not wait for a slot behind the project's next batch", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const first = yield* batchOf(openai, "first", ["quick", "flaky [flaky:500x1]"])
      const next = yield* batchOf(openai, "next", Array.from({ length: 40 }, (_, i) => `next ${i} [sleep:100]`))
      const done = yield* waitFor(openai, first.id, terminal, 10_000)
      expect(done.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })
      // The next batch's 40 lines take 2 s at a window of 2: the first one's retry did not wait for them.
      expect((yield* Effect.promise(() => openai.batches.retrieve(next.id))).status).toBe("in_progress")
      expect((yield* waitFor(openai, next.id, terminal, 10_000)).status).toBe("completed")
    }), 30_000)
})
