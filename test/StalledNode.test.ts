/**
 * A node that stalled past its lease (a pause, a partition) and wakes up writes nothing into a batch another node
 * took over meanwhile: its validation, cut short, is that node's now. Before, a woken validator started over by
 * deleting the batch's request rows, or failed the batch for an input deleted since, while another node ran it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect, Fiber, Layer, Logger, LogLevel, Option, Stream } from "effect"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { makeValidating } from "../src/batches/validating.js"
import { WorkLeases, WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { makeFinishing } from "../src/batches/finishing.js"
import { BatchId, derivedFileId, FileId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { InferenceLive } from "../src/inference/Inference.js"
import { MetricsTest } from "../src/observability/Metrics.js"
import { StorageLive } from "../src/Layers.js"
import { chatLine, newChatBatch, requestRows, responseOutcome } from "./support/Batches.js"
import { backends, configFor, storedBlobs, TestDatabase, TestDataDir, Upstream } from "./support/TestApp.js"

/** The stores, SQL client and upstreams of node `stalled`, without its runner: the test plays its work by hand. */
const services = (backend: "sqlite" | "postgres") =>
  Layer.unwrapEffect(Effect.map(Upstream, (sim) =>
    Layer.mergeAll(FileStoreLive, BatchStoreLive, WorkLeasesLive, InferenceLive).pipe(
      Layer.provideMerge(StorageLive),
      Layer.provideMerge(configFor({ inferenceBaseUrl: sim.url, nodeId: "stalled" })),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
    ))).pipe(Layer.provideMerge(Layer.mergeAll(Upstream.layer(), TestDataDir.Default, TestDatabase.layer(backend), MetricsTest)))

/** A running batch of `lines` requests in one slice, its first two answered. */
const runningBatch = (name: string, lines: number) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const id = BatchId.make(name)
    yield* store.create(newChatBatch(id, FileId.make("file-in")))
    yield* store.insertRequests(id, requestRows(lines))
    expect(yield* store.startRunning(id, { model: "m", total: lines }, [{ firstLine: 1, lastLine: lines }])).toBe(true)
    yield* store.recordOutcomes(id, [responseOutcome(1), responseOutcome(2)])
    return id
  })

/** The other node takes batch `id`'s lease: this node stalled past its own. */
const takenOver = (id: BatchId) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.orDie(sql`UPDATE batches SET lease_owner = 'other', lease_until = ${Date.now() + 60_000} WHERE id = ${id}`))

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
        const rows = Effect.map(store.pendingRequests(id, 0, 10, { rows: 10, bytes: 1e6 }), (pending) => pending.rows.map((r) => r.customId))
        expect(yield* rows).toEqual(["c1", "c2"])
        expect((yield* store.get(id, "all")).batch.status).toBe("validating")
        expect(lines).toEqual([expect.stringMatching(new RegExp(`^Batch ${id}: validation stopped, the batch no longer this node's to validate`))])

        // The input deleted meanwhile: not this node's to fail either.
        yield* files.remove(input.id, { project: "default" })
        yield* validating.validate(record).pipe(Effect.provide(recorded))
        expect((yield* store.get(id, "all")).batch.status).toBe("validating")
        expect(yield* rows).toEqual(["c1", "c2"])
      }).pipe(Effect.provide(services(backend))), 30_000)

    it.live("writes none of a batch's files, nor its final move, once another node took its finishing over", () =>
      Effect.gen(function*() {
        const files = yield* FileStore
        const store = yield* BatchStore
        const leases = yield* WorkLeases
        const id = yield* runningBatch(`batch_finish_${backend}`, 4)
        // Another node still runs the slice as the batch is cancelled: the finishing waits for its lease to end.
        const now = Date.now()
        expect(Option.isSome(yield* leases.claimSlice(id, { owner: "other", now, until: now + 1_000 }))).toBe(true)
        expect(Option.isSome(yield* store.transition(id, "cancel"))).toBe(true)
        const finishing = yield* Effect.fork((yield* makeFinishing).finish(id, "cancelDone"))
        yield* Effect.sleep("300 millis")
        yield* takenOver(id) // meanwhile
        expect(yield* Fiber.join(finishing)).toBe(true)
        const { batch } = yield* store.get(id, "all")
        expect([batch.status, batch.output_file_id, batch.request_counts]).toEqual(["cancelling", null, { total: 4, completed: 2, failed: 0 }])
        expect(yield* Effect.either(files.get(derivedFileId(`${id}:succeeded`), "all"))).toMatchObject({ _tag: "Left" })
      }).pipe(Effect.provide(services(backend))), 30_000)

    it.live("an expiry chosen before a cancel moved the batch writes none of its lines: the cancel's finishing does", () =>
      Effect.gen(function*() {
        const store = yield* BatchStore
        const id = yield* runningBatch(`batch_expire_cancelled_${backend}`, 4)
        // The runner chose to expire it (past its expires_at); a cancel came before it took the lease.
        expect(Option.isSome(yield* store.transition(id, "cancel"))).toBe(true)
        const finishing = yield* makeFinishing
        expect(yield* finishing.finish(id, "expire")).toBe(false) // not its to finish: its lease not taken
        expect((yield* store.get(id, "all")).batch.request_counts).toEqual({ total: 4, completed: 2, failed: 0 })
        expect(yield* finishing.finish(id, "cancelDone")).toBe(true)
        const { batch } = yield* store.get(id, "all")
        expect([batch.status, batch.request_counts]).toEqual(["cancelled", { total: 4, completed: 2, failed: 2 }])
        const errors = yield* store.resultLines(id, "failed", 0, 10)
        expect(new TextDecoder().decode(errors.bytes)).not.toContain("batch_expired")
      }).pipe(Effect.provide(services(backend))), 30_000)

    it.live("a file it was writing as another node took the batch over is not published: a deleted output stays deleted", () =>
      Effect.gen(function*() {
        const files = yield* FileStore
        const store = yield* BatchStore
        const id = yield* runningBatch(`batch_files_${backend}`, 2)
        expect(yield* store.completeSlice(id, 0)).toBe(true) // finalizing
        // This node stalls while its output file is written; the other node takes the batch over meanwhile.
        const takeOver = Effect.provideService(takenOver(id), SqlClient.SqlClient, yield* SqlClient.SqlClient)
        const stalling = FileStore.of({
          ...files,
          create: (meta, content, check) => Effect.zipRight(takeOver, files.create(meta, content, check))
        })
        const finishing = yield* makeFinishing.pipe(Effect.provideService(FileStore, stalling))
        expect(yield* finishing.finish(id, "complete")).toBe(true)
        const { batch } = yield* store.get(id, "all")
        expect([batch.status, batch.output_file_id]).toEqual(["finalizing", null])
        expect(yield* Effect.either(files.get(derivedFileId(`${id}:succeeded`), "all"))).toMatchObject({ _tag: "Left" })
        expect((yield* storedBlobs).staging).toEqual([]) // its bytes, staged and refused, not left behind
      }).pipe(Effect.provide(services(backend))), 30_000)
  })
}
