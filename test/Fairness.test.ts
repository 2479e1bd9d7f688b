/**
 * A node's upstream capacity is shared round-robin by project: a small batch of project B does not wait for the end
 * of project A's large batch, even with one batch permit and a slow upstream.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import OpenAI from "openai"
import { AuthTest } from "../src/auth/Auth.js"
import { chatLine, createBatch, terminal, upload, waitFor } from "./support/Batches.js"
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
