/**
 * An API-only node (`MAX_CONCURRENT_BATCHES=0`) beside a node that runs the batches, two server processes on one
 * SQLite file and one data directory (or one PostgreSQL database), each with its own upstream simulator: what is created or cancelled through
 * the API-only node is run or stopped by the other (a cancel also while the batch waits for its upstream), the
 * API-only node never sends an inference request, a restart of either leaves what the other has under way alone (and
 * a second process under either's `NODE_ID` does not start),
 * and the two write to the same file at once without a fault (its transactions begin with `BEGIN IMMEDIATE`).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Either, Layer, Option, Redacted } from "effect"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { startSimulator } from "../scripts/simulator.js"
import { layerSqlite } from "../src/storage/Sql.js"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { freePort, runServerToExit, STALLED_UPLOAD_END, stalledUpload, startServer } from "./support/ServerProcess.js"
import { type Backend, backends, eventually, eventuallyEffect, filesUnder, TestDatabase } from "./support/TestApp.js"

/** A batch's lines: long enough for a cancel or a restart to land while it runs. */
const LINES = 600
/** The lines of each of the six batches made through the API node and run by the other. */
const SIX_LINES = 200
const batchLines = (tag: string, lines = LINES) => Array.from({ length: lines }, (_, i) => chatLine(`${tag}-${i}`, `${tag} prompt ${i}`))

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-api-only-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/**
 * Two nodes started at once on a fresh database (so their migrations race): one SQLite file in a data directory
 * they share, or a PostgreSQL schema.
 */
const nodes = (backend: Backend = "sqlite") => Effect.gen(function*() {
  const dataDir = yield* tempDir
  const database = Context.get(yield* Layer.build(TestDatabase.layer(backend)), TestDatabase)
  const databaseUrl = Option.match(database.url, { onNone: () => ({}), onSome: (url) => ({ DATABASE_URL: Redacted.value(url) }) })
  const start = (name: string, maxConcurrentBatches: string) =>
    Effect.gen(function*() {
      const sim = yield* Effect.acquireRelease(
        Effect.promise(() => startSimulator({ latencyMs: 5 })),
        (s) => Effect.promise(() => s.close())
      )
      const env = {
        ...databaseUrl,
        DATA_DIR: dataDir,
        NODE_ID: name,
        LOG_FORMAT: "json",
        INFERENCE_BASE_URL: sim.url,
        MAX_CONCURRENT_BATCHES: maxConcurrentBatches,
        MAX_CONCURRENT_REQUESTS_PER_BATCH: "16",
        // The working node learns of a new batch or a cancel at its next heartbeat.
        HEARTBEAT_INTERVAL: "200 millis",
        UPSTREAM_PROBE_INTERVAL: "300 millis"
      }
      // On any free port (another port if one is taken before it listens: a fresh-clone CI run lost that race once).
      let server = yield* Effect.promise(() => startServer(env))
      yield* Effect.addFinalizer(() => Effect.promise(() => server.stop("SIGKILL")))
      /** Kills the node (SIGKILL) and starts it again, the same node (`NODE_ID`), on a free port (`server()` has it). */
      const restart = Effect.promise(async () => {
        await server.stop("SIGKILL")
        server = await startServer(env)
      })
      return { sim, server: () => server, restart }
    })
  const [api, worker] = yield* Effect.all([start("api", "0"), start("worker", "4")], { concurrency: 2 })
  return { api, worker, dataDir }
})

/**
 * A second server process on `dataDir` (its own simulator; `env` on top), which waits for a lock as long as a
 * predecessor may take to stop (SHUTDOWN_TIMEOUT 1 s and 5 s), then is refused: its output, simulator and environment.
 */
const refusedProcess = (dataDir: string, env: Record<string, string>) =>
  Effect.gen(function*() {
    const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))
    const full: Record<string, string> = {
      DATA_DIR: dataDir,
      INFERENCE_BASE_URL: sim.url,
      SHUTDOWN_TIMEOUT: "1 second",
      LOG_FORMAT: "json",
      HOST: "127.0.0.1",
      PORT: String(yield* Effect.promise(freePort)),
      ...env
    }
    const refused = yield* Effect.promise(() => runServerToExit(full, 30_000))
    expect(refused.code).toBe(1)
    expect(refused.output).toContain("waiting up to 6s for it to stop")
    return { output: refused.output, sim, env: full }
  })

describe.concurrent("an API-only node beside a node that runs the batches", () => {
  it.live.each(backends)("%s: leaves every batch to the other node (cancels included) and writes beside it without a fault", (backend) =>
    Effect.gen(function*() {
      const { api, worker } = yield* nodes(backend)
      const openai = sdk(api.server().url)
      const listening = yield* eventually(() => {
        const line = api.server().stdout().split("\n").find((l) => l.includes('"event":"server.listening"'))
        expect(line).toBeDefined()
        return JSON.parse(line!)
      }, 5_000)
      expect(listening.runs_batches).toBe(false)
      expect(listening.message).toContain("runs no batch")

      // Uploads and batches created through the API node while the other node writes their outcomes to the file.
      const ids: Array<string> = []
      for (let i = 0; i < 6; i++) {
        const file = yield* upload(openai, batchLines(`b${i}`, SIX_LINES))
        ids.push((yield* createBatch(openai, file.id)).id)
      }
      const done = yield* Effect.forEach(ids, (id) => waitFor(openai, id, terminal, 60_000), { concurrency: 6 })
      for (const [i, batch] of done.entries()) {
        expect(batch.status).toBe("completed")
        expect(batch.request_counts).toEqual({ total: SIX_LINES, completed: SIX_LINES, failed: 0 })
        const output = yield* readLines(openai, batch.output_file_id)
        expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: SIX_LINES }, (_, j) => `b${i}-${j}`))
      }
      expect(api.sim.stats.requests).toBe(0)
      expect(worker.sim.stats.requests).toBeGreaterThanOrEqual(6 * SIX_LINES)

      // A cancel sent to the API node stops the other node's work on the batch, which ends cancelled.
      worker.sim.latencyMs = 50
      const running = yield* createBatch(openai, (yield* upload(openai, batchLines("cancel"))).id)
      yield* eventually(() => expect(worker.sim.stats.requests).toBeGreaterThan(6 * SIX_LINES + 20), 10_000)
      yield* Effect.promise(() => openai.batches.cancel(running.id))
      const cancelled = yield* waitFor(openai, running.id, terminal, 10_000)
      expect(cancelled.status).toBe("cancelled")
      expect(cancelled.request_counts!.completed).toBeLessThan(LINES)
      const kept = yield* readLines(openai, cancelled.output_file_id)
      const notRun = yield* readLines(openai, cancelled.error_file_id)
      expect(new Set([...kept, ...notRun].map((l) => l.custom_id)).size).toBe(LINES)

      // The same while the batch waits for its upstream, down (its work then holds no permit).
      yield* Effect.promise(() => worker.sim.stop())
      const waiting = yield* createBatch(openai, (yield* upload(openai, batchLines("waiting"))).id)
      yield* waitFor(openai, waiting.id, (b) => b.status === "in_progress", 10_000)
      yield* Effect.sleep("1 second")
      yield* Effect.promise(() => openai.batches.cancel(waiting.id))
      const stopped = yield* waitFor(openai, waiting.id, terminal, 5_000)
      expect(stopped.status).toBe("cancelled")
      expect(stopped.request_counts).toEqual({ total: LINES, completed: 0, failed: LINES })
      yield* Effect.promise(() => worker.sim.start())

      expect(api.sim.stats.requests).toBe(0)
      // Nor does the API node pick up, validate or finish a batch (writing its files): the other node does all.
      const events = (node: typeof api) => node.server().stdout().split("\n").filter((l) => l.includes('"event":"batch.'))
      expect(events(api).filter((l) => !l.includes('"event":"batch.created"'))).toEqual([])
      // The line follows the final status by a moment (written once it is stored), and the pipe may lag behind.
      yield* eventually(() => expect(events(worker).filter((l) => l.includes('"event":"batch.finished"'))).toHaveLength(8), 5_000)
      for (const node of [api, worker]) expect(node.server().output()).not.toMatch(/SQLITE_BUSY|"level":"(ERROR|FATAL)"/)
    }).pipe(Effect.scoped), 120_000)

  it.live("sqlite: a restart of the node that runs the batches leaves an upload under way on the API node alone", () =>
    Effect.gen(function*() {
      const { api, worker, dataDir } = yield* nodes()
      const openai = sdk(api.server().url)
      const running = yield* createBatch(openai, (yield* upload(openai, batchLines("kept"))).id)
      const bytes = randomBytes(512 * 1024)
      const { req, response } = stalledUpload(api.server().url, bytes)
      const staged = () => filesUnder(Path.join(dataDir, "files", "staging")).filter((f) => f.startsWith("api/"))
      yield* eventually(() => expect(staged()).toHaveLength(1), 10_000)
      yield* worker.restart
      req.end(STALLED_UPLOAD_END)
      expect(yield* Effect.promise(() => response)).toBe(200)
      const [file] = (yield* Effect.promise(() => openai.files.list({ order: "desc", limit: 1 }))).data
      expect(file!.bytes).toBe(bytes.length)
      const content = Buffer.from(yield* Effect.promise(async () => (await openai.files.content(file!.id)).arrayBuffer()))
      expect(content.equals(bytes)).toBe(true)
      // And the batch the killed node was running is finished by the restarted one, every line once.
      const done = yield* waitFor(openai, running.id, terminal, 30_000)
      expect(done.request_counts).toEqual({ total: LINES, completed: LINES, failed: 0 })
      const output = yield* readLines(openai, done.output_file_id)
      expect(new Set(output.map((l) => l.custom_id)).size).toBe(LINES)
    }).pipe(Effect.scoped), 60_000)

  it.live("sqlite: a second process under a node's NODE_ID does not start, and leaves the node's upload under way alone", () =>
    Effect.gen(function*() {
      const { api, dataDir } = yield* nodes()
      const bytes = randomBytes(256 * 1024)
      const { req, response } = stalledUpload(api.server().url, bytes)
      const staged = () => filesUnder(Path.join(dataDir, "files", "staging")).filter((f) => f.startsWith("api/"))
      yield* eventually(() => expect(staged()).toHaveLength(1), 10_000)
      // An API-only process (it takes no runner lock), as the API node is: only the node id is in its way.
      const refused = yield* refusedProcess(dataDir, { NODE_ID: "api", MAX_CONCURRENT_BATCHES: "0" })
      expect(refused.output).toContain(`Another process (or another app in this one) runs as NODE_ID 'api' on the SQLite database ${Path.join(dataDir, "batches.sqlite")}`)
      expect(staged()).toHaveLength(1)
      req.end(STALLED_UPLOAD_END)
      expect(yield* Effect.promise(() => response)).toBe(200)
      const openai = sdk(api.server().url)
      const [file] = (yield* Effect.promise(() => openai.files.list({ order: "desc", limit: 1 }))).data
      const content = Buffer.from(yield* Effect.promise(async () => (await openai.files.content(file!.id)).arrayBuffer()))
      expect(content.equals(bytes)).toBe(true)
    }).pipe(Effect.scoped), 60_000)

  it.live("sqlite: a second node that runs batches on the file does not start, and the first runs on alone; one started as it stops waits for it", () =>
    Effect.gen(function*() {
      const { api, worker, dataDir } = yield* nodes()
      const openai = sdk(api.server().url)
      // A batch the worker is in the middle of while the second node tries to start (~6 s: it waits for the lock
      // as long as a node may take to stop, SHUTDOWN_TIMEOUT and 5 s).
      worker.sim.latencyMs = 150
      const running = yield* createBatch(openai, (yield* upload(openai, batchLines("alone"))).id)
      yield* eventually(() => expect(worker.sim.stats.requests).toBeGreaterThan(20), 10_000)
      const refused = yield* refusedProcess(dataDir, { NODE_ID: "second", MAX_CONCURRENT_BATCHES: "2", HEARTBEAT_INTERVAL: "200 millis" })
      const { sim, env } = refused
      expect(refused.output).toContain(`Another process runs batches on the SQLite database ${Path.join(dataDir, "batches.sqlite")}`)
      expect(refused.output).toContain("MAX_CONCURRENT_BATCHES=0")
      // It took nothing from the worker: every line sent once, by the worker alone.
      const done = yield* waitFor(openai, running.id, terminal, 30_000)
      expect(done.request_counts).toEqual({ total: LINES, completed: LINES, failed: 0 })
      expect(sim.stats.requests).toBe(0)
      expect(worker.sim.stats.byPrompt.size).toBe(LINES)
      expect([...worker.sim.stats.byPrompt.values()].every((n) => n === 1)).toBe(true)

      // Started as the worker stops (SIGTERM a moment later), the second node waits for it, then runs batches.
      const [second] = yield* Effect.all([
        Effect.acquireRelease(
          Effect.promise(() => startServer(env, Number(env.PORT))),
          (s) => Effect.promise(() => s.stop("SIGKILL"))
        ),
        Effect.delay(Effect.promise(() => worker.server().stop("SIGTERM")), "1 second")
      ], { concurrency: 2 })
      const next = yield* createBatch(openai, (yield* upload(openai, batchLines("next"))).id)
      expect((yield* waitFor(openai, next.id, terminal, 30_000)).status).toBe("completed")
      expect(sim.stats.requests).toBe(LINES)
      expect(second.stdout()).toContain('"runs_batches":true')
    }).pipe(Effect.scoped), 90_000)
})

/** Another process writing to `file` in short transactions, one after the other, until killed. */
const otherWriter = (file: string) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      spawn(process.execPath, ["-e", `
        const db = new (require("better-sqlite3"))(${JSON.stringify(file)})
        const insert = db.prepare("INSERT INTO other (n) VALUES (1)")
        for (;;) db.transaction(() => insert.run()).immediate()
      `], { cwd: Path.resolve(import.meta.dirname, ".."), stdio: "ignore" })
    ),
    (child) => Effect.sync(() => child.kill("SIGKILL"))
  )

describe("SQLite written by two processes", () => {
  it.live("a transaction that reads then writes gets through while the other process writes", () =>
    Effect.gen(function*() {
      const file = Path.join(yield* tempDir, "shared.sqlite")
      const sql = Context.get(yield* Layer.build(layerSqlite(file)), SqlClient.SqlClient)
      yield* sql`CREATE TABLE mine (n INTEGER)`
      yield* sql`CREATE TABLE other (n INTEGER)`
      yield* otherWriter(file)
      const written = Effect.orDie(sql<{ n: number }>`SELECT count(*) AS n FROM other`)
      yield* eventuallyEffect(Effect.map(written, ([row]) => expect(row.n).toBeGreaterThan(100)), 10_000)
      const readThenWrite = sql.withTransaction(Effect.gen(function*() {
        const [{ n }] = yield* sql<{ n: number }>`SELECT count(*) AS n FROM other`
        yield* sql`INSERT INTO mine (n) VALUES (${n})`
      }))
      const outcomes = yield* Effect.forEach(Array.from({ length: 200 }), () => Effect.either(readThenWrite))
      expect(outcomes.filter(Either.isLeft).map((e) => String(e.left.cause))).toEqual([])
      expect((yield* sql<{ n: number }>`SELECT count(*) AS n FROM mine`)[0].n).toBe(200)
    }).pipe(Effect.scoped), 60_000)
})
