/**
 * The API answers promptly while a batch keeps the event loop busy: the runner's work runs on the background
 * scheduler (`batches/backgroundScheduler.ts`), in slices after the requests of each turn of the loop. Here every
 * upstream answer costs 2 ms of CPU and 64 of them are in flight: on Effect's default scheduler a poll waited for
 * the whole window's work (~130 ms a turn).
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Logger, LogLevel } from "effect"
import { type UpstreamResponse, InferenceScripted } from "../src/inference/Inference.js"
import { HttpLive } from "../src/http/Http.js"
import { AuthLive } from "../src/auth/Auth.js"
import { makeServices } from "../src/Layers.js"
import { chatLine, createBatch, sdk, upload, waitFor } from "./support/Batches.js"
import { baseUrl, configFor, TestDatabase, TestDataDir, TestHttpServer } from "./support/TestApp.js"
import { busyFor } from "./support/Cpu.js"

const ANSWER = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
})

/** An upstream whose every answer takes 2 ms of CPU and no time otherwise. */
const cpuBoundUpstream = InferenceScripted(() =>
  Effect.sync((): UpstreamResponse => {
    busyFor(2)
    return { status: 200, text: ANSWER, json: JSON.parse(ANSWER), requestId: "req_1" }
  }), ["sim-model"])

const app = HttpLive.pipe(
  Layer.provide(AuthLive),
  Layer.provide(makeServices({ inference: cpuBoundUpstream })),
  Layer.provideMerge(TestHttpServer),
  Layer.provideMerge(configFor({ maxConcurrentRequestsPerBatch: 64 })),
  Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite"))),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

describe("the API while a batch keeps the event loop busy", () => {
  layer(app, { excludeTestServices: true })((it) => {
    it.effect("polls are answered within a slice of the batch's work, not after a whole window of it", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        const file = yield* upload(openai, Array.from({ length: 3000 }, (_, i) => chatLine(`r${i}`, `prompt ${i}`)))
        const batch = yield* createBatch(openai, file.id)
        yield* waitFor(openai, batch.id, (b) => b.status === "in_progress" && b.request_counts!.completed > 200)
        // 40 polls one after the other while the batch runs (3,000 answers of 2 ms: ~6 s of CPU in all).
        const times: Array<number> = []
        let last = batch
        for (let i = 0; i < 40; i++) {
          const started = performance.now()
          last = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
          times.push(performance.now() - started)
        }
        expect(last.status).toBe("in_progress") // all 40 were sent while it ran
        times.sort((a, b) => a - b)
        // A poll waits for at most a slice (8 ms, up to 40 ms when the loop is busy) plus its own handling; on the
        // default scheduler, for the 64 answers of a turn (~130 ms).
        expect(times[Math.floor(times.length / 2)]).toBeLessThan(60)
        const done = yield* waitFor(openai, batch.id, (b) => b.status === "completed", 60_000)
        expect(done.request_counts).toEqual({ total: 3000, completed: 3000, failed: 0 })
      }), 90_000)
  })
})
