/**
 * A request waiting between two attempts gives its place in its batch's window to the batch's other requests
 * (`batches/windowSlots.ts`): a few failing lines no longer slow the whole batch down (2 % of lines answered 500
 * took a batch from 909 to 92 requests a second, each holding a place through its backoff), and the window still
 * bounds what the upstream sees at once.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const WINDOW = 3

layer(testAppWithUpstream({
  maxConcurrentRequestsPerBatch: WINDOW,
  // Four attempts: waits of ~0.5, 1 and 2 s, far longer than the other lines take.
  inferenceMaxAttempts: 4,
  inferenceRetryBaseDelay: Duration.millis(500),
  inferenceRetryMaxDelay: Duration.seconds(2)
}), { excludeTestServices: true })("a batch whose first lines fail and are retried", (it) => {
  it.effect("runs its other lines while they wait between attempts, never more than its window at the upstream", () =>
    Effect.gen(function*() {
      const openai = sdk(yield* baseUrl)
      const sim = yield* Upstream
      sim.reset()
      const failing = Array.from({ length: WINDOW }, (_, i) => chatLine(`bad-${i}`, `bad ${i} [fail:500]`))
      const healthy = Array.from({ length: 60 }, (_, i) => chatLine(`ok-${i}`, `ok ${i} [sleep:20]`))
      const batch = yield* createBatch(openai, (yield* upload(openai, [...failing, ...healthy])).id)
      // As the healthy lines are all done, the failing ones are still between attempts (they held the whole
      // window through their 3.5 s of waits, and nothing else ran meanwhile).
      const seen = yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 60 || (b.request_counts?.failed ?? 0) > 0, 10_000)
      expect(seen.request_counts).toEqual({ total: 63, completed: 60, failed: 0 })
      const done = yield* waitFor(openai, batch.id, terminal, 20_000)
      expect(done.request_counts).toEqual({ total: 63, completed: 60, failed: 3 })
      expect(sim.stats.maxInFlight).toBeLessThanOrEqual(WINDOW)
      expect(sim.stats.requests).toBe(60 + 3 * 4)
    }), { timeout: 30_000 })
})
