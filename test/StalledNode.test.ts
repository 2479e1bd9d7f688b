/**
 * A node that stalled past its lease (a pause, a partition) and wakes up writes nothing into a batch another node
 * took over meanwhile: its validation, cut short, is that node's now. Before, a woken validator started over by
 * deleting the batch's request rows, or failed the batch for an input deleted since, while another node ran it.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Stream } from "effect"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { makeValidating } from "../src/batches/validating.js"
import { WorkLeases, WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { BatchId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { InferenceLive } from "../src/inference/Inference.js"
import { MetricsTest } from "../src/observability/Metrics.js"
import { StorageLive } from "../src/Layers.js"
import { chatLine, newChatBatch, requestRows } from "./support/Batches.js"
import { backends, configFor, TestDatabase, TestDataDir, Upstream } from "./support/TestApp.js"

/** The stores and the upstreams of node `stalled`, without its runner: the test plays its validation by hand. */
const services = (backend: "sqlite" | "postgres") =>
  Layer.unwrapEffect(Effect.map(Upstream, (sim) =>
    Layer.mergeAll(FileStoreLive, BatchStoreLive, WorkLeasesLive, InferenceLive).pipe(
      Layer.provide(StorageLive),
      Layer.provideMerge(configFor({ inferenceBaseUrl: sim.url, nodeId: "stalled" })),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
    ))).pipe(Layer.provideMerge(Layer.mergeAll(Upstream.layer(), TestDataDir.Default, TestDatabase.layer(backend), MetricsTest)))

for (const backend of backends) {
  describe(`a node woken after its lease passed to another (${backend})`, () => {
    it.live("writes nothing of its validation: the other node's rows stay, and the batch is not failed for an input gone since", () =>
      Effect.gen(function*() {
        const files = yield* FileStore
        const store = yield* BatchStore
        const leases = yield* WorkLeases
        const lines: Array<string> = []
        const text = Array.from({ length: 5 }, (_, i) => chatLine(`id-${i}`, `prompt ${i}`)).join("\n") + "\n"
        const input = yield* files.create({ filename: "in.jsonl", purpose: "batch", project: "default" }, Stream.make(new TextEncoder().encode(text)))
        const { record } = yield* store.create(newChatBatch(BatchId.make(`batch_stalled_${backend}`), input.id))
        const id = record.batch.id
        // The other node holds the batch now, and has stored some of its rows.
        const now = Date.now()
        expect(yield* leases.claimBatch(id, { owner: "other", now, until: now + 60_000 })).toBe(true)
        yield* store.insertRequests(id, requestRows(2))
        const validating = yield* makeValidating
        const recorded = Layer.merge(
          Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => void lines.push(String(message)))),
          Logger.minimumLogLevel(LogLevel.Info)
        )

        // Its validation from the start (a delete of the rows first, then its own), as it resumes after the stall.
        yield* validating.validate(record).pipe(Effect.provide(recorded))
        const rows = Effect.map(store.pendingRequests(id, 0, 10, 10), (pending) => pending.map((r) => r.customId))
        expect(yield* rows).toEqual(["c1", "c2"])
        expect((yield* store.get(id, "all")).batch.status).toBe("validating")
        expect(lines).toEqual([expect.stringMatching(new RegExp(`^Batch ${id}: validation stopped, the batch no longer this node's to validate`))])

        // The input deleted meanwhile: not this node's to fail either.
        yield* files.remove(input.id, { project: "default" })
        yield* validating.validate(record).pipe(Effect.provide(recorded))
        expect((yield* store.get(id, "all")).batch.status).toBe("validating")
        expect(yield* rows).toEqual(["c1", "c2"])
      }).pipe(Effect.provide(services(backend))), 30_000)
  })
}
