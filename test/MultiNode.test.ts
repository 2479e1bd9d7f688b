/**
 * Two server processes on one PostgreSQL database, each with its own upstream simulator (so each node's share
 * of the work is visible): they share one large batch, a cancel sent to one stops the other, and when one is
 * killed the other finishes its work with every custom_id once.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { type Simulator, startSimulator } from "../scripts/simulator.js"
import { SLICE } from "../src/batches/inputValidation.js"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { type ServerProcess, startServer } from "./support/ServerProcess.js"
import { eventually, TestDatabase } from "./support/TestApp.js"

const WINDOW = 8
/** Four slices: each node's share is one slice or more, a quarter of the batch at least. */
const TOTAL = 4 * SLICE

interface Node {
  readonly name: string
  readonly sim: Simulator
  readonly server: ServerProcess
}

/** Two nodes on a fresh Postgres schema; node files in SQL (the default with Postgres). */
const cluster = Effect.gen(function*() {
  const database = Context.get(yield* Layer.build(TestDatabase.layer("postgres")), TestDatabase)
  const url = Redacted.value(Option.getOrThrow(database.url))
  const start = (name: string) =>
    Effect.gen(function*() {
      const sim = yield* Effect.acquireRelease(
        Effect.promise(() => startSimulator({ latencyMs: 20 })),
        (s) => Effect.promise(() => s.close())
      )
      const dataDir = yield* Effect.acquireRelease(
        Effect.sync(() => mkdtempSync(Path.join(tmpdir(), `batch-${name}-`))),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
      )
      const server = yield* Effect.acquireRelease(
        Effect.promise(() =>
          startServer({
            DATABASE_URL: url,
            DATA_DIR: dataDir,
            NODE_ID: name,
            INFERENCE_BASE_URL: sim.url,
            MAX_CONCURRENT_REQUESTS_PER_BATCH: String(WINDOW),
            MAX_CONCURRENT_BATCHES: "1",
            // The other node learns of a new batch at its next heartbeat: soon, so that it gets its share.
            HEARTBEAT_INTERVAL: "200 millis",
            LEASE_TTL: "3 seconds"
          })
        ),
        (s) => Effect.promise(() => s.stop("SIGKILL"))
      )
      return { name, sim, server } satisfies Node
    })
  return yield* Effect.all([start("node-a"), start("node-b")], { concurrency: 2 })
})

/** Every prompt of a large batch is unique, so the simulators can tell repeats apart. */
const bigBatch = (tag: string) => Array.from({ length: TOTAL }, (_, i) => chatLine(`${tag}-${i}`, `${tag} prompt ${i}`))

const sleep = (ms: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, ms)))

/** How many times each prompt reached either upstream. */
const promptsSeen = (nodes: ReadonlyArray<Node>) => {
  const seen = new Map<string, number>()
  for (const { sim } of nodes) for (const [prompt, n] of sim.stats.byPrompt) seen.set(prompt, (seen.get(prompt) ?? 0) + n)
  return seen
}
const repeatedPrompts = (nodes: ReadonlyArray<Node>) => [...promptsSeen(nodes).values()].filter((n) => n > 1).length

describe("two nodes on one Postgres", () => {
  it.live("share one large batch (each > 20%), finish it once, and stop together on a cancel sent to either; a SIGKILLed node's work is finished by the other", () =>
    Effect.gen(function*() {
      const [a, b] = yield* cluster
      const openai = sdk(a.server.url)
      const viaB = sdk(b.server.url)

      // 1. One batch of four slices, created on A, is worked on by both nodes.
      const file = yield* upload(openai, bigBatch("share"))
      const batch = yield* createBatch(openai, file.id)
      const done = yield* waitFor(viaB, batch.id, terminal, 60_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total: TOTAL, completed: TOTAL, failed: 0 })
      const output = yield* readLines(viaB, done.output_file_id) // written by whichever node finished it
      expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: TOTAL }, (_, i) => `share-${i}`))
      expect(a.sim.stats.requests + b.sim.stats.requests).toBe(TOTAL)
      expect(repeatedPrompts([a, b])).toBe(0)
      expect(a.sim.stats.requests / TOTAL).toBeGreaterThan(0.2)
      expect(b.sim.stats.requests / TOTAL).toBeGreaterThan(0.2)
      // MAX_CONCURRENT_REQUESTS_PER_BATCH holds per node.
      expect(a.sim.stats.maxInFlight).toBeLessThanOrEqual(WINDOW)
      expect(b.sim.stats.maxInFlight).toBeLessThanOrEqual(WINDOW)

      // 2. A cancel sent to A stops the work on B within 2 s.
      a.sim.reset()
      b.sim.reset()
      const toCancel = yield* createBatch(openai, (yield* upload(openai, bigBatch("cancel"))).id)
      yield* eventually(() => expect(b.sim.stats.requests).toBeGreaterThan(100), 10_000)
      const cancelling = yield* Effect.promise(() => openai.batches.cancel(toCancel.id))
      expect(["cancelling", "cancelled"]).toContain(cancelling.status)
      yield* sleep(2000)
      const callsOnB = b.sim.stats.requests
      expect(b.sim.stats.inFlight).toBe(0)
      const cancelled = yield* waitFor(viaB, toCancel.id, terminal, 10_000)
      expect(cancelled.status).toBe("cancelled")
      yield* sleep(500)
      expect(b.sim.stats.requests).toBe(callsOnB)
      const kept = yield* readLines(openai, cancelled.output_file_id)
      const notRun = yield* readLines(openai, cancelled.error_file_id)
      expect(kept.length + notRun.length).toBe(TOTAL)
      expect(new Set([...kept, ...notRun].map((l) => l.custom_id)).size).toBe(TOTAL)
      expect(new Set(notRun.map((l) => l.error.code))).toEqual(new Set(["batch_cancelled"]))
      expect(kept.length).toBe(cancelled.request_counts!.completed)

      // 3. B dies (SIGKILL) mid-batch, in the middle of its first slice: A takes over its slices once their leases
      // run out.
      a.sim.reset()
      b.sim.reset()
      const survivor = yield* createBatch(openai, (yield* upload(openai, bigBatch("failover"))).id)
      yield* eventually(() => expect(b.sim.stats.requests).toBeGreaterThan(200), 20_000)
      yield* Effect.promise(() => b.server.stop("SIGKILL"))
      const finished = yield* waitFor(openai, survivor.id, terminal, 60_000)
      expect(finished.status).toBe("completed")
      expect(finished.request_counts).toEqual({ total: TOTAL, completed: TOTAL, failed: 0 })
      const lines = yield* readLines(openai, finished.output_file_id)
      expect(lines.map((l) => l.custom_id)).toEqual(Array.from({ length: TOTAL }, (_, i) => `failover-${i}`))
      // Only what B's workers held when it died went upstream twice: two per slot at most (one in flight, one
      // answered but not yet stored).
      expect(repeatedPrompts([a, b])).toBeLessThanOrEqual(2 * WINDOW)
      expect(promptsSeen([a, b]).size).toBe(TOTAL)
      // A says so: the logs tell who ran the dead node's lines.
      const tookOver = a.server.output().split("\n").filter((l) => l.includes('"event":"batch.took_over"') && l.includes(survivor.id))
      expect(tookOver.length).toBeGreaterThan(0)
    }).pipe(Effect.scoped), 120_000)
})
