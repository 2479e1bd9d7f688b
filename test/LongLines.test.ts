/**
 * A batch of long lines (150 KB images, up to the 16 MiB a line may hold) runs within bounded memory: validation
 * stores its rows in statements of at most ~8 MiB of bodies, not 1,000 rows (1,000 lines of 150 KB took a 160 MB
 * heap past its limit, and again at every restart), and the run reads its pending requests in pages as bounded.
 */
import { expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel, Stream } from "effect"
import { BatchRunner, BatchRunnerLive } from "../src/batches/BatchRunner.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { BatchId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { InferenceLive } from "../src/inference/Inference.js"
import { StorageLive } from "../src/Layers.js"
import { chatLine, newChatBatch } from "./support/Batches.js"
import { configFor, eventuallyEffect, TestDatabase, TestDataDir, Upstream } from "./support/TestApp.js"

const MIB = 1024 * 1024
const LINES = 40
const PROMPT_CHARACTERS = 600_000

/** The characters of the bodies each insert of request rows, and each page of pending requests read, held. */
const inserted: Array<number> = []
const paged: Array<number> = []
const characters = (rows: ReadonlyArray<{ readonly body: string }>) => rows.reduce((sum, r) => sum + r.body.length, 0)

const measuredStore = Layer.effect(
  BatchStore,
  Effect.map(BatchStore, (live) =>
    BatchStore.of({
      ...live,
      insertRequests: (id, rows) => Effect.zipRight(Effect.sync(() => inserted.push(characters(rows))), live.insertRequests(id, rows)),
      pendingRequests: (id, after, last, limit) =>
        Effect.tap(live.pendingRequests(id, after, last, limit), (page) => Effect.sync(() => paged.push(characters(page.rows))))
    }))
).pipe(Layer.provide(BatchStoreLive))

const runner = Layer.unwrapEffect(Effect.map(Upstream, (sim) =>
  BatchRunnerLive.pipe(
    Layer.provideMerge(Layer.mergeAll(FileStoreLive, measuredStore, WorkLeasesLive, InferenceLive)),
    Layer.provide(StorageLive),
    Layer.provide(configFor({ inferenceBaseUrl: sim.url })),
    Layer.provide(Logger.minimumLogLevel(LogLevel.None))
  ))).pipe(Layer.provideMerge(Layer.mergeAll(Upstream.layer(), TestDataDir.Default, TestDatabase.layer("sqlite"))))

layer(runner, { excludeTestServices: true })("a batch of long lines", (it) => {
  it.effect("is stored and read in bounded pieces, and completes with every line", () =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const store = yield* BatchStore
      const text = Array.from({ length: LINES }, (_, i) => chatLine(`id-${i}`, `${i} ${"x".repeat(PROMPT_CHARACTERS)}`)).join("\n") + "\n"
      const input = yield* files.create({ filename: "long.jsonl", purpose: "batch", project: "default" }, Stream.make(new TextEncoder().encode(text)))
      const { record } = yield* store.create(newChatBatch(BatchId.make("batch_long_lines"), input.id))
      yield* (yield* BatchRunner).submit(record.batch.id)
      const done = yield* eventuallyEffect(
        Effect.map(Effect.orDie(store.get(record.batch.id, "all")), ({ batch }) => {
          expect(batch.status).toBe("completed")
          return batch
        }),
        30_000
      )
      expect(done.request_counts).toEqual({ total: LINES, completed: LINES, failed: 0 })
      // 24 MB of bodies: at most 8 MiB a piece, plus the step of lines checked (1 MiB) and a line.
      expect(inserted.reduce((a, b) => a + b, 0)).toBeGreaterThan(LINES * PROMPT_CHARACTERS)
      expect(Math.max(...inserted)).toBeLessThanOrEqual(9 * MIB + PROMPT_CHARACTERS + 1000)
      expect(inserted.length).toBeGreaterThanOrEqual(3)
      expect(paged.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(LINES * PROMPT_CHARACTERS)
      expect(Math.max(...paged)).toBeLessThanOrEqual(8 * MIB + PROMPT_CHARACTERS + 1000)
    }), 60_000)
})
