/**
 * A full disk or database is a fault of the server that passes once space is freed: batches wait for it (never
 * `failed`), requests get a 507 in the OpenAI envelope, and nothing half-written is listed.
 *
 * SQLite stands in for a full disk deterministically: `PRAGMA max_page_count` on the app's one connection makes
 * it answer `SQLITE_FULL` ("database or disk is full") as soon as the file would have to grow, and raising it
 * frees the space again. The runner retries faster than in production (`FaultRetry`): other faults fail a batch
 * after 30 + 60 + 120 + 240 = 450 ms of retries here (1 + 2 + 4 + 8 s in production).
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as FileSystem from "@effect/platform/FileSystem"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Layer, Logger, LogLevel, Option, Stream } from "effect"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import type { Batch } from "openai/resources/batches"
import { BatchRunner, BatchRunnerLive } from "../src/batches/BatchRunner.js"
import { FaultRetry } from "../src/batches/supervision.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { BatchId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { InferenceLive } from "../src/inference/Inference.js"
import { StorageLive } from "../src/Layers.js"
import { layerSqlite } from "../src/storage/Sql.js"
import { isCapacityFault, storageFault, storageFaultOf, storageState } from "../src/storage/Faults.js"
import { chatLine, createBatch, newChatBatch, readLines, sdk, upload, waitFor } from "./support/Batches.js"
import {
  backends,
  baseUrl,
  configFor,
  eventuallyEffect,
  storedBlobs,
  TestDatabase,
  TestDataDir,
  testAppWithUpstream,
  Upstream
} from "./support/TestApp.js"

/**
 * Retries as in production, 33 times faster; storage waits capped at 120 ms (30 s in production). The waits that
 * prove a storage fault is not given up on are multiples of the budget below, so a shorter budget shortens them.
 */
const fastRetries = Layer.succeed(FaultRetry, {
  baseDelay: Duration.millis(30),
  maxRetries: 4,
  maxStorageDelay: Duration.millis(120)
})
/** How long other faults are retried before the batch fails, with `fastRetries`. */
const OTHER_FAULT_BUDGET_MS = 450

/** Warnings logged by the app under test (the runner's fibers inherit the logger from the layer). */
const warnings: Array<string> = []
const recorder = Logger.make(({ logLevel, message }) => {
  if (logLevel._tag === "Warning") warnings.push(String(Array.isArray(message) ? message[0] : message))
})

/**
 * The whole app on SQLite with an upstream simulator, plus its `SqlClient`: `StorageLive` is the very layer the
 * app is built on (layers are shared by reference within a build), so statements run here use the app's one
 * SQLite connection, pragmas included.
 */
const app = (
  overrides: Parameters<typeof testAppWithUpstream>[0] = {},
  simulator: Parameters<typeof testAppWithUpstream>[1] = {},
  retries: Layer.Layer<never> = fastRetries
) =>
  StorageLive.pipe(
    Layer.provideMerge(testAppWithUpstream({ maxConcurrentRequestsPerBatch: 4, ...overrides }, simulator)),
    Layer.provide(retries),
    // The waits are logged as warnings by design: recorded, not printed.
    Layer.provide(Logger.replace(Logger.defaultLogger, recorder))
  )

const run = (text: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<Record<string, unknown>>(text)).pipe(Effect.orDie)

const pageCount = Effect.map(run("PRAGMA page_count"), (rows) => Number(rows[0]!.page_count))

/** The database can grow by `pages` more pages, no more. */
const allowPages = (pages: number) => Effect.flatMap(pageCount, (count) => run(`PRAGMA max_page_count = ${count + pages}`))

/** No page can be added and the free ones are taken by a filler table: the next write that needs a page fails. */
const fillDatabase = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* run("CREATE TABLE IF NOT EXISTS test_filler (b BLOB)")
  yield* run("PRAGMA max_page_count = 1") // clamped to the current page count
  for (let size = 4096; size >= 1;) {
    const inserted = yield* Effect.exit(sql.unsafe(`INSERT INTO test_filler VALUES (zeroblob(${size}))`))
    if (Exit.isFailure(inserted)) size = Math.floor(size / 2)
  }
})

/** Space again: the filler rows go and the database may grow as it likes. */
const freeDatabase = Effect.zipRight(
  Effect.flatMap(SqlClient.SqlClient, (sql) => Effect.ignore(sql`DELETE FROM test_filler`)),
  run("PRAGMA max_page_count = 1073741823")
)

const client = Effect.map(baseUrl, sdk)

/** Polls the batch for `ms` (real time), expecting `check` to hold every time. */
const holdsFor = (openai: ReturnType<typeof sdk>, id: string, ms: number, check: (b: Batch) => void) =>
  Effect.promise(async () => {
    const until = Date.now() + ms
    let polls = 0
    while (Date.now() < until) {
      check(await openai.batches.retrieve(id))
      polls++
      await new Promise((r) => setTimeout(r, 50))
    }
    return polls
  })

const INSUFFICIENT_STORAGE = {
  error: {
    message: "The server is out of storage space; try again later.",
    type: "server_error",
    param: null,
    code: "insufficient_storage"
  }
}

describe("storage faults are classified", () => {
  it.effect("a real SQLITE_FULL (the SqlError @effect/sql-sqlite-node raises) is a capacity fault", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE t (b BLOB)`
      yield* sql`PRAGMA max_page_count = 1`
      const error = yield* Effect.flip(sql`INSERT INTO t VALUES (zeroblob(100000))`)
      expect(error._tag).toBe("SqlError")
      expect((error.cause as any).code).toBe("SQLITE_FULL")
      expect(storageFaultOf(error)).toBe("capacity")
      expect(storageFaultOf(error.cause)).toBe("capacity")
      // As the stores raise it (Effect.orDie): a defect.
      expect(isCapacityFault(Cause.die(error))).toBe(true)
      expect(isCapacityFault(Cause.fail(error))).toBe(true)
    }).pipe(Effect.provide(SqliteClient.layer({ filename: ":memory:" }))))

  it.effect("a full SQLite database within a transaction is a capacity fault too: the ROLLBACK SQLite had done already hid it", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE filler (b BLOB)`
      const [{ page_count }] = yield* sql<{ page_count: number }>`PRAGMA page_count`
      yield* sql.unsafe(`PRAGMA max_page_count = ${page_count + 20}`)
      const fill = Effect.forEach(Array.from({ length: 100 }), () => sql`INSERT INTO filler VALUES (${new Uint8Array(4000)})`)
      const exit = yield* Effect.exit(sql.withTransaction(fill))
      expect(Exit.isFailure(exit) ? storageFault(exit.cause) : "no fault").toBe("capacity")
      // Within another (a savepoint: as a write under WorkLeases.whileHolding is).
      const nested = yield* Effect.exit(sql.withTransaction(Effect.zipRight(sql`SELECT 1`, sql.withTransaction(fill))))
      expect(Exit.isFailure(nested) ? storageFault(nested.cause) : "no fault").toBe("capacity")
    }).pipe(Effect.provide(Layer.unwrapScoped(Effect.map(
      Effect.acquireRelease(Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "full-tx-"))), (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))),
      (dir) => layerSqlite(Path.join(dir, "batches.sqlite"))
    )))))

  it.effect.skipIf(!existsSync("/dev/full"))("a real ENOSPC from a file write (the platform's SystemError) is a capacity fault", () =>
    Effect.gen(function*() {
      const fs = yield* FileSystem.FileSystem
      const error = yield* Effect.scoped(Effect.flatMap(fs.open("/dev/full", { flag: "w" }), (file) =>
        file.writeAll(new Uint8Array(1024)))).pipe(Effect.flip)
      expect(error._tag).toBe("SystemError")
      expect(storageFaultOf(error)).toBe("capacity")
      // As BlobStore raises it (Effect.orDie): a defect.
      expect(isCapacityFault(Cause.die(error))).toBe(true)
    }).pipe(Effect.provide(NodeFileSystem.layer)))

  it("PostgreSQL: disk_full is capacity; resource and connection faults are unavailable only under an SqlError", () => {
    const pg = (code: string, message = "pg") => Object.assign(new Error(message), { code, severity: "ERROR" })
    const sqlError = (cause: unknown) => new SqlError({ cause, message: "Failed to execute statement" })
    expect(storageFaultOf(sqlError(pg("53100", "could not extend file")))).toBe("capacity")
    expect(storageFaultOf(pg("53100"))).toBe("capacity")
    for (const code of ["53000", "53200", "53300", "57P01", "08006"]) {
      expect(storageFaultOf(sqlError(pg(code)))).toBe("unavailable")
      expect(storageFaultOf(pg(code))).toBeUndefined()
    }
    expect(storageFaultOf(sqlError(new Error("Connection terminated unexpectedly")))).toBe("unavailable")
    expect(storageFaultOf(new Error("Connection terminated unexpectedly"))).toBeUndefined()
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" })
    expect(storageFaultOf(new SqlError({ cause: new AggregateError([refused]), message: "Failed to acquire connection" })))
      .toBe("unavailable")
    expect(storageFaultOf(refused)).toBeUndefined() // an upstream's refused connection is not the database's
  })

  it("SQLite: a write lock another process held past the busy timeout is unavailable, under an SqlError", () => {
    for (const code of ["SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT"]) {
      const busy = Object.assign(new Error("database is locked"), { code })
      expect(storageFaultOf(new SqlError({ cause: busy, message: "Failed to execute statement" }))).toBe("unavailable")
      expect(storageFaultOf(busy)).toBeUndefined()
    }

  })

  it("a read-only file system or permissions taken away are refused writes, waited out as the others", () => {
    for (const code of ["EROFS", "EACCES", "EPERM"]) expect(storageFaultOf(Object.assign(new Error(code), { code }))).toBe("refused")
    for (const code of ["SQLITE_READONLY", "SQLITE_READONLY_DBMOVED"]) {
      expect(storageFaultOf(new SqlError({ cause: Object.assign(new Error("attempt to write a readonly database"), { code }), message: "x" }))).toBe("refused")
    }
    const pg = Object.assign(new Error("cannot execute INSERT in a read-only transaction"), { code: "25006" })
    expect(storageFaultOf(new SqlError({ cause: pg, message: "Failed to execute statement" }))).toBe("refused") // a standby
    expect(storageFaultOf(pg)).toBeUndefined()
    expect(storageState("refused")).toBe("not writable")
  })

  it("other faults are not storage faults; capacity wins in a cause that holds several", () => {
    const sqlError = (code: string) => new SqlError({ cause: Object.assign(new Error(code), { code }), message: "x" })
    expect(storageFaultOf(sqlError("SQLITE_IOERR_WRITE"))).toBeUndefined() // a failing device, not a full one
    expect(storageFaultOf(sqlError("SQLITE_CORRUPT"))).toBeUndefined()
    expect(storageFaultOf(sqlError("53400"))).toBeUndefined() // e.g. temp_file_limit: waiting does not help
    expect(storageFaultOf(new Error("database or disk is full"))).toBeUndefined() // text alone says nothing
    expect(storageFaultOf("SQLITE_FULL")).toBeUndefined()
    expect(storageFault(Cause.interrupt(0 as any))).toBeUndefined()
    expect(storageFault(Cause.die(new Error("boom")))).toBeUndefined()
    const full = Cause.die(sqlError("SQLITE_FULL"))
    expect(storageFault(Cause.parallel(Cause.die(new Error("cannot rollback")), full))).toBe("capacity")
    expect(storageFault(Cause.sequential(Cause.die(sqlError("53300")), full))).toBe("capacity")
    expect(storageFault(Cause.parallel(Cause.die(new Error("boom")), Cause.die(sqlError("53300"))))).toBe("unavailable")
    // A cycle in a cause chain ends.
    const a: any = new Error("a")
    a.cause = { cause: a }
    expect(storageFaultOf(a)).toBeUndefined()
  })
})

describe("a full SQLite database", () => {
  it.live("validation waits for space (never failed), then the batch completes with every line", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const sim = yield* Upstream
      const total = 300
      const lines = Array.from({ length: total }, (_, i) => chatLine(`id-${i}`, `prompt ${i} ${"x".repeat(500)}`))
      const file = yield* upload(openai, lines)
      // Room for the batch's row, not for its ~170 KB of request rows.
      yield* allowPages(2)
      const created = yield* createBatch(openai, file.id)

      // Four times as long as other faults are retried before the batch fails.
      const polls = yield* holdsFor(openai, created.id, 4 * OTHER_FAULT_BUDGET_MS, (b) => {
        expect(b.status).toBe("validating")
        expect(b.errors).toBeNull()
      })
      // Seen validating all along (a poll every 50 ms at most; under the whole suite on two cores each took up to
      // 200 ms: 8 and 9 polls, where 10 were asked for).
      expect(polls).toBeGreaterThanOrEqual(5)
      expect(sim.stats.requests).toBe(0)

      yield* freeDatabase
      const done = yield* waitFor(openai, created.id, (b) => b.status !== "validating" && b.status !== "in_progress" && b.status !== "finalizing")
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total, completed: total, failed: 0 })
      const output = yield* readLines(openai, done.output_file_id)
      expect(output.map((l) => l.custom_id)).toEqual(lines.map((_, i) => `id-${i}`))
      expect(sim.stats.requests).toBe(total)
    }).pipe(Effect.provide(app())), 30_000)

  it.live("a validation cut short gives its rows' space back while it waits; its retry starts over cleanly", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const total = 2500
      const lines = Array.from({ length: total }, (_, i) => chatLine(`id-${i}`, `p ${i} ${"x".repeat(300)}`))
      const file = yield* upload(openai, lines)
      // Room for the first 1,000 rows stored (~140 pages), not for all 2,500 (~350).
      yield* allowPages(200)
      warnings.length = 0
      const created = yield* createBatch(openai, file.id)
      const waits = `Batch ${created.id} waits: storage full (database or disk is full)` // what the driver said, in one line
      yield* eventuallyEffect(Effect.sync(() => expect(warnings).toContain(waits)), 10_000)
      // The first retry is a second away: the rows of the first page are already gone, their pages free.
      const rows = yield* run(`SELECT COUNT(*) AS n FROM batch_requests WHERE batch_id = '${created.id}'`)
      expect(Number(rows[0]!.n)).toBe(0)
      expect(Number((yield* run("PRAGMA freelist_count"))[0]!.freelist_count)).toBeGreaterThan(100)
      expect((yield* Effect.promise(() => openai.batches.retrieve(created.id))).status).toBe("validating")

      yield* freeDatabase
      const done = yield* waitFor(openai, created.id, (b) => b.status === "completed" || b.status === "failed", 30_000)
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total, completed: total, failed: 0 })
      const output = yield* readLines(openai, done.output_file_id)
      expect(output.map((l) => l.custom_id)).toEqual(lines.map((_, i) => `id-${i}`))
    }).pipe(Effect.provide(app({}, {}, Layer.succeed(FaultRetry, {
      baseDelay: Duration.seconds(1),
      maxRetries: 4,
      maxStorageDelay: Duration.seconds(1)
    })))), 60_000)

  it.live("a running batch waits for space, then completes with every request's outcome once", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const total = 200
      const file = yield* upload(openai, Array.from({ length: total }, (_, i) => chatLine(`id-${i}`, `prompt ${i}`)))
      const created = yield* createBatch(openai, file.id)
      yield* waitFor(openai, created.id, (b) => b.request_counts!.completed >= 20)
      yield* fillDatabase
      // Unhindered, the rest would take about a second (50 rounds of 4 requests of 20 ms).
      yield* holdsFor(openai, created.id, 4 * OTHER_FAULT_BUDGET_MS, (b) => {
        expect(b.status).toBe("in_progress")
        expect(b.request_counts!.completed).toBeLessThan(total)
      })

      yield* freeDatabase
      const done = yield* waitFor(openai, created.id, (b) => b.status === "completed" || b.status === "failed")
      expect(done.status).toBe("completed")
      expect(done.request_counts).toEqual({ total, completed: total, failed: 0 })
      const output = yield* readLines(openai, done.output_file_id)
      expect(output.map((l) => l.custom_id)).toEqual(Array.from({ length: total }, (_, i) => `id-${i}`))
    }).pipe(Effect.provide(app({}, { latencyMs: 20 }))), 30_000)

  it.live("a batch waiting for space past its expires_at takes the expiry path", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const sim = yield* Upstream
      const file = yield* upload(openai, Array.from({ length: 300 }, (_, i) => chatLine(`id-${i}`, `prompt ${i} ${"x".repeat(500)}`)))
      yield* allowPages(2)
      const created = yield* createBatch(openai, file.id)
      const done = yield* waitFor(openai, created.id, (b) => b.status !== "validating", 10_000)
      expect(done.status).toBe("expired")
      expect(done.errors).toBeNull()
      expect(done.request_counts).toEqual({ total: 0, completed: 0, failed: 0 })
      expect(sim.stats.requests).toBe(0)
    }).pipe(Effect.provide(app({ completionWindow: Duration.seconds(2) }))), 30_000)

  it.live("an upload or a create while full gets a 507 envelope and leaves nothing listed; after freeing space both work", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const url = yield* baseUrl
      const first = yield* upload(openai, [chatLine("a", "hello")], "first.jsonl")
      const body = Array.from({ length: 400 }, (_, i) => chatLine(`id-${i}`, `prompt ${i} ${"x".repeat(500)}`)).join("\n") + "\n"
      const post = (path: string, init: RequestInit) =>
        Effect.promise(async () => {
          const res = await fetch(`${url}${path}`, { method: "POST", ...init })
          return { status: res.status, requestId: res.headers.get("x-request-id"), retryAfter: res.headers.get("retry-after"), json: await res.json() as unknown }
        })
      const uploadForm = () => {
        const form = new FormData()
        form.append("purpose", "batch")
        form.append("file", new Blob([body]), "big.jsonl")
        return { body: form }
      }
      // Metadata this large needs overflow pages: the batch's row cannot fit in a page that has room left.
      const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`key-${i}`, "v".repeat(512)]))
      const createBody = () => ({
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input_file_id: first.id, endpoint: "/v1/chat/completions", completion_window: "24h", metadata })
      })

      yield* fillDatabase
      warnings.length = 0
      const refused = yield* post("/v1/files", uploadForm())
      expect([refused.status, refused.retryAfter]).toEqual([507, "5"]) // passing: when to try again
      expect(refused.json).toEqual(INSUFFICIENT_STORAGE)
      expect(refused.requestId).toEqual(expect.any(String))
      const refusedBatch = yield* post("/v1/batches", createBody())
      expect(refusedBatch.status).toBe(507)
      expect(refusedBatch.json).toEqual(INSUFFICIENT_STORAGE)
      // Every request meets it: said once (within 10 s), not once a request.
      expect(warnings.filter((w) => w.startsWith("Storage full: requests that write get a 507"))).toHaveLength(1)
      // Reads still work, and show nothing of what was refused.
      const listed = yield* Effect.promise(() => openai.files.list())
      expect(listed.data.map((f) => f.id)).toEqual([first.id])
      expect((yield* Effect.promise(() => openai.batches.list())).data).toEqual([])
      const blobs = yield* storedBlobs
      expect(blobs.blobs).toEqual([first.id])
      expect(blobs.staging).toEqual([])

      yield* freeDatabase
      const accepted = yield* post("/v1/files", uploadForm())
      expect(accepted.status).toBe(200)
      expect(accepted.json).toMatchObject({ object: "file", filename: "big.jsonl", bytes: Buffer.byteLength(body) })
      const text = yield* Effect.promise(async () => (await openai.files.content((accepted.json as any).id)).text())
      expect(text).toBe(body)
      const batch = yield* post("/v1/batches", createBody())
      expect(batch.status).toBe(200)
      expect(batch.json).toMatchObject({ object: "batch", metadata })
    }).pipe(Effect.provide(app({ fileStorage: Option.some("sql") }))), 30_000)

  it.live("a database that refuses writes (read-only) gets a 503 storage_unavailable envelope, said once; writes work once it accepts them", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const url = yield* baseUrl
      const file = yield* upload(openai, [chatLine("a", "hello")], "first.jsonl")
      const create = () =>
        Effect.promise(async () => {
          const res = await fetch(`${url}/v1/batches`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
          })
          return { status: res.status, retryAfter: res.headers.get("retry-after"), json: await res.json() as any }
        })
      // SQLITE_READONLY, as a database file made read-only or a DATA_DIR remounted so answers it.
      yield* run("PRAGMA query_only = ON")
      warnings.length = 0
      for (let i = 0; i < 2; i++) {
        const refused = yield* create()
        expect([refused.status, refused.retryAfter, refused.json.error.code, refused.json.error.type]).toEqual([503, "5", "storage_unavailable", "server_error"])
      }
      // Once, with what SQLite said (not the wrapper's "Failed to execute statement").
      expect(warnings.filter((w) => w.startsWith("Storage refuses the server (read-only, or permissions)"))).toEqual([
        expect.stringContaining("(attempt to write a readonly database)")
      ])
      expect(warnings.filter((w) => w.startsWith("The database is unavailable"))).toEqual([])
      expect((yield* Effect.promise(() => openai.batches.list())).data).toEqual([]) // reads work; nothing half-made
      yield* run("PRAGMA query_only = OFF")
      expect((yield* create()).status).toBe(200)
    }).pipe(Effect.provide(app())), 30_000)
})

/**
 * The runner alone, on each backend, with a store whose request-row writes fail as told: a storage fault shaped
 * as each driver raises it (SQLite `SQLITE_FULL`, PostgreSQL `53100`), or another fault.
 */
let fault: "none" | "full" | "refused" | "other" = "none"
const storeWithFaults = (backend: string) =>
  Layer.effect(
    BatchStore,
    Effect.map(BatchStore, (live) => {
      const driverError = backend === "sqlite"
        ? Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" })
        : Object.assign(new Error("could not extend file \"base/16384/16397\": No space left on device"), { code: "53100" })
      return BatchStore.of({
        ...live,
        insertRequests: (id, rows) =>
          fault === "full"
            ? Effect.die(new SqlError({ cause: driverError, message: "Failed to execute statement" }))
            : fault === "refused" // as a file's write in a DATA_DIR made read-only raises it (BlobStore: a defect)
            ? Effect.die(Object.assign(new Error("EACCES: permission denied, open '/data/files/staging/x'"), { code: "EACCES" }))
            : fault === "other"
            ? Effect.dieMessage("a bug")
            : live.insertRequests(id, rows)
      })
    })
  ).pipe(Layer.provide(BatchStoreLive))

const runnerLayer = (backend: "sqlite" | "postgres") =>
  Layer.unwrapEffect(Effect.map(Upstream, (sim) =>
    BatchRunnerLive.pipe(
      Layer.provideMerge(Layer.mergeAll(FileStoreLive, storeWithFaults(backend), WorkLeasesLive, InferenceLive)),
      Layer.provide(StorageLive),
      Layer.provide(configFor({ inferenceBaseUrl: sim.url })),
      Layer.provide(fastRetries),
      Layer.provide(Logger.minimumLogLevel(LogLevel.None))
    ))).pipe(
      Layer.provideMerge(Layer.mergeAll(Upstream.layer(), TestDataDir.Default, TestDatabase.layer(backend)))
    )

for (const backend of backends) describe(`runner supervision (${backend})`, () => {
  const submitBatch = (id: BatchId, total: number) =>
    Effect.gen(function*() {
      const files = yield* FileStore
      const store = yield* BatchStore
      const text = Array.from({ length: total }, (_, i) => chatLine(`id-${i}`, `prompt ${i}`)).join("\n") + "\n"
      const input = yield* files.create({ filename: "in.jsonl", purpose: "batch", project: "default" }, Stream.make(new TextEncoder().encode(text)))
      const { record } = yield* store.create(newChatBatch(id, input.id))
      yield* (yield* BatchRunner).submit(record.batch.id)
      return record.batch.id
    })
  const statusOf = (id: BatchId) => Effect.flatMap(BatchStore, (store) => Effect.orDie(store.get(id, "all")))

  it.live.each(["full", "refused"] as const)("a storage fault (%s) keeps the batch validating for as long as it lasts; then it completes", (kind) =>
    Effect.gen(function*() {
      fault = kind
      const id = yield* submitBatch(BatchId.make(`batch_storage_wait_${kind}`), 10)
      yield* Effect.sleep(Duration.millis(4 * OTHER_FAULT_BUDGET_MS))
      expect((yield* statusOf(id)).batch.status).toBe("validating")
      fault = "none"
      const done = yield* eventuallyEffect(
        Effect.map(statusOf(id), ({ batch }) => {
          expect(batch.status).toBe("completed")
          return batch
        }),
        10_000
      )
      expect(done.request_counts).toEqual({ total: 10, completed: 10, failed: 0 })
    }).pipe(Effect.ensuring(Effect.sync(() => (fault = "none"))), Effect.provide(runnerLayer(backend))), 30_000)

  it.live("another fault still fails the batch with internal_error after its retries", () =>
    Effect.gen(function*() {
      fault = "other"
      const started = Date.now()
      const id = yield* submitBatch(BatchId.make("batch_other_fault"), 3)
      const failed = yield* eventuallyEffect(
        Effect.map(statusOf(id), ({ batch }) => {
          expect(batch.status).toBe("failed")
          return batch
        }),
        10_000
      )
      expect(Date.now() - started).toBeGreaterThanOrEqual(OTHER_FAULT_BUDGET_MS)
      expect(failed.errors?.data?.[0]).toMatchObject({ code: "internal_error" })
      // The fault's own text is the server's, for its log: the client is told where it is, not what it said.
      expect(failed.errors?.data?.[0]?.message).toBe(
        "The batch could not be processed: an internal error (the server's log names it, with the batch's id)"
      )
    }).pipe(Effect.ensuring(Effect.sync(() => (fault = "none"))), Effect.provide(runnerLayer(backend))), 30_000)
})
