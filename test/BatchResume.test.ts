/**
 * A server killed mid-batch (SIGKILL) and started again finishes the batch, repeating no stored request and counting
 * no token twice.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { startSimulator } from "../scripts/simulator.js"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { startServer } from "./support/ServerProcess.js"
import { backends, TestDatabase } from "./support/TestApp.js"

for (const backend of backends) describe.concurrent(backend, () => it.live("SIGKILL mid-batch, restart: every custom_id exactly once, usage as an uninterrupted run's, upstream repeats bounded by twice the window", () =>
  Effect.gen(function*() {
    const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))
    const dataDir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-resume-"))),
      (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
    )
    const window = 4
    const database = Context.get(yield* Layer.build(TestDatabase.layer(backend)), TestDatabase)
    const env = {
      DATA_DIR: dataDir,
      NODE_ID: "resume-node", // the same node restarted: it takes back its leases at once
      INFERENCE_BASE_URL: sim.url,
      MAX_CONCURRENT_REQUESTS_PER_BATCH: String(window),
      ...Option.match(database.url, { onNone: () => ({}), onSome: (url) => ({ DATABASE_URL: Redacted.value(url) }) })
    }
    const total = 200
    const first = yield* Effect.promise(() => startServer(env))
    let openai = sdk(first.url)
    // Every answer reports cached and reasoning tokens of its own.
    const prompt = (i: number) => `prompt ${i} [sleep:20] [cached:${i % 5}] [reasoning:${i % 3}]`
    const file = yield* upload(openai, Array.from({ length: total }, (_, i) => chatLine(`id-${i}`, prompt(i))))
    const batch = yield* createBatch(openai, file.id)
    const before = yield* waitFor(openai, batch.id, (b) => b.request_counts!.completed >= 60)
    yield* Effect.promise(() => first.stop("SIGKILL"))
    expect(before.status).toBe("in_progress")

    const second = yield* Effect.acquireRelease(Effect.promise(() => startServer(env)), (s) => Effect.promise(() => s.stop()))
    openai = sdk(second.url)
    const done = yield* waitFor(openai, batch.id, terminal, 30_000)
    expect(done.status).toBe("completed")
    expect(done.request_counts).toEqual({ total, completed: total, failed: 0 })
    const output = yield* readLines(openai, done.output_file_id)
    expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: total }, (_, i) => `id-${i}`))
    expect(done.error_file_id).toBeNull()

    // Only requests a worker held when the process died went twice: one in flight, one answered but not yet stored.
    const repeated = [...sim.stats.byPrompt.values()].filter((n) => n > 1).length
    expect(sim.stats.byPrompt.size).toBe(total)
    expect(repeated).toBeLessThanOrEqual(2 * window)
    expect(sim.stats.requests).toBe(total + repeated)

    // No token counted twice: the sums of what the answers reported, as a run of the same file without a crash.
    const sum = (f: (i: number) => number) => Array.from({ length: total }, (_, i) => f(i)).reduce((a, b) => a + b, 0)
    expect(done.usage!.input_tokens_details.cached_tokens).toBe(sum((i) => i % 5))
    expect(done.usage!.output_tokens_details.reasoning_tokens).toBe(sum((i) => i % 3))
    expect(done.usage!.input_tokens).toBe(output.reduce((n, l) => n + l.response.body.usage.prompt_tokens, 0))
    const uninterrupted = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 30_000)
    expect(uninterrupted.status).toBe("completed")
    expect(done.usage).toEqual(uninterrupted.usage)
  }).pipe(Effect.scoped)))
