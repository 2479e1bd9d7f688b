/**
 * A batch queued behind a running one (one batch permit) is validated as it comes, not at its turn to run: a
 * mistake in its file fails it at once, and a good one shows its request count while it waits, in `in_progress`.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

// One batch runs at a time, 4 requests at once, 20 ms an answer: 2,000 lines take ~10 s.
const app = testAppWithUpstream({ maxConcurrentBatches: 1, maxConcurrentRequestsPerBatch: 4, maxRequestsPerBatch: 5000 }, { latencyMs: 20 })

layer(app, { excludeTestServices: true })("a batch queued behind a running one", (it) => {
  it.effect("fails its validation, or is counted and waits in_progress, while the first still runs", () =>
    Effect.gen(function*() {
      const openai = sdk(yield* baseUrl)
      const first = yield* Effect.flatMap(
        upload(openai, Array.from({ length: 2000 }, (_, i) => chatLine(`line-${i}`, `large ${i}`))),
        (file) => createBatch(openai, file.id)
      )
      yield* waitFor(openai, first.id, (batch) => batch.request_counts!.completed > 0)

      const broken = yield* Effect.flatMap(upload(openai, [chatLine("a", "fine"), "not json"]), (file) => createBatch(openai, file.id))
      const failed = yield* waitFor(openai, broken.id, terminal, 5_000)
      expect(failed.status).toBe("failed")
      expect(failed.errors?.data?.[0]?.line).toBe(2)

      const queued = yield* Effect.flatMap(
        upload(openai, [chatLine("a", "one"), chatLine("b", "two"), chatLine("c", "three")]),
        (file) => createBatch(openai, file.id)
      )
      const waiting = yield* waitFor(openai, queued.id, (batch) => batch.status !== "validating", 5_000)
      expect([waiting.status, waiting.request_counts]).toEqual(["in_progress", { total: 3, completed: 0, failed: 0 }])

      const meanwhile = yield* Effect.promise(() => openai.batches.retrieve(first.id))
      expect(meanwhile.status).toBe("in_progress")
      // The first ends (cancelled, to end the test sooner); the queued one then runs.
      yield* Effect.promise(() => openai.batches.cancel(first.id))
      const done = yield* waitFor(openai, queued.id, terminal, 15_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 3, completed: 3, failed: 0 }])
    }))
})
