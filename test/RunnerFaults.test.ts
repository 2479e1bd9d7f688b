/**
 * The runner under a storage fault: a failed write of outcomes must not leave the batch waiting forever. The run
 * fails, is retried from the stored rows, and the batch completes with every request once.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Stream } from "effect"
import { BatchRunner, BatchRunnerLive } from "../src/batches/BatchRunner.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { BatchId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { InferenceLive } from "../src/inference/Inference.js"
import { Metrics, MetricsTest } from "../src/observability/Metrics.js"
import { StorageLive } from "../src/Layers.js"
import { chatLine, newChatBatch, storedLines } from "./support/Batches.js"
import { configFor, eventuallyEffect, TestDatabase, TestDataDir, Upstream } from "./support/TestApp.js"

/** The live BatchStore, except that its first write of outcomes fails (a defect, as a lost database would be). */
const FlakyBatchStore = Layer.effect(
  BatchStore,
  Effect.map(BatchStore, (live) => {
    let failures = 1
    return BatchStore.of({
      ...live,
      recordOutcomes: (id, outcomes) =>
        failures-- > 0 ? Effect.dieMessage("disk I/O error") : live.recordOutcomes(id, outcomes)
    })
  })
).pipe(Layer.provide(BatchStoreLive))

const runnerLayer = Layer.unwrapEffect(Effect.map(Upstream, (sim) =>
  BatchRunnerLive.pipe(
    Layer.provideMerge(Layer.mergeAll(FileStoreLive, FlakyBatchStore, WorkLeasesLive, InferenceLive)),
    Layer.provide(StorageLive),
    Layer.provide(configFor({ inferenceBaseUrl: sim.url, maxConcurrentRequestsPerBatch: 4 })),
    // The fault is logged as an error by design; this test expects it.
    Layer.provide(Logger.minimumLogLevel(LogLevel.None))
  ))).pipe(
    Layer.provideMerge(Layer.mergeAll(Upstream.layer(), TestDataDir.Default, TestDatabase.layer("sqlite"), MetricsTest))
  )

describe("runner faults", () => {
  it.live("a failed write of outcomes fails the run, which is retried and completes every request once", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const store = yield* BatchStore
      const runner = yield* BatchRunner
      const sim = yield* Upstream
      const total = 20
      const text = Array.from({ length: total }, (_, i) => chatLine(`id-${i}`, `prompt ${i}`)).join("\n") + "\n"
      const input = yield* files.create({ filename: "in.jsonl", purpose: "batch", project: "default" }, Stream.make(new TextEncoder().encode(text)))
      const { record } = yield* store.create(newChatBatch(BatchId.make("batch_faulty"), input.id))
      yield* runner.submit(record.batch.id)
      const done = yield* eventuallyEffect(
        Effect.map(Effect.orDie(store.get(record.batch.id, "all")), ({ batch }) => {
          expect(batch.status).toBe("completed")
          return batch
        }),
        10_000
      )
      expect(done.request_counts).toEqual({ total, completed: total, failed: 0 })
      const stored = yield* storedLines(store, record.batch.id, "succeeded")
      expect(stored.map((l) => l.custom_id)).toEqual(Array.from({ length: total }, (_, i) => `id-${i}`))
      // Only what the workers held when the write failed was sent again: two requests per slot at most (one in
      // the failed group, one in flight or queued after it), a window of 4.
      expect(sim.stats.requests).toBeGreaterThanOrEqual(total)
      expect(sim.stats.requests).toBeLessThanOrEqual(total + 2 * 4)
      // The metrics count each request once, as stored: not the answers of the group whose write failed.
      const metrics = yield* (yield* Metrics).render(undefined)
      expect(/^batch_requests_total\{[^}]*outcome="success"[^}]*\} (\d+)$/m.exec(metrics)?.[1]).toBe(String(total))
    }).pipe(Effect.provide(runnerLayer)), 20_000)
})
