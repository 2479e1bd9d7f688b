/**
 * One process per `NODE_ID` on PostgreSQL (`storage/NodeIdLock.ts`, `nodeIdLockPg.ts`): a second server process under
 * the id of a running one does not start and takes nothing from it; a node starting under the id of a session that
 * has run no statement for longer than `LEASE_TTL` (its process gone with its machine) ends that session and starts;
 * a live holder keeps its id (it shows it is alive every heartbeat); and a holder whose session is ended under it
 * takes its id again. (SQLite's lock file: `ApiOnlyNode.test.ts`.)
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Redacted, Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { startSimulator } from "../scripts/simulator.js"
import { AppConfig } from "../src/Config.js"
import { NodeIdInUse, NodeIdLockLive } from "../src/storage/NodeIdLock.js"
import { layerPg } from "../src/storage/Sql.js"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { forwardedSchema, freshSchemaUrl } from "./support/ForwardedPostgres.js"
import { freePort, runServerToExit, startServer } from "./support/ServerProcess.js"
import { eventuallyEffect } from "./support/TestApp.js"

const LINES = 400

/** A data directory of its own for the test's scope. */
const scratchDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-node-id-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/** A simulator for the test's scope. */
const simulatorWith = (options?: Parameters<typeof startSimulator>[0]) =>
  Effect.acquireRelease(Effect.promise(() => startSimulator(options)), (s) => Effect.promise(() => s.close()))

/** The server as a process on `env`, killed at the end of the test's scope if it still runs. */
const serverWith = (env: Record<string, string>) =>
  Effect.acquireRelease(Effect.promise(() => startServer(env)), (s) => Effect.promise(() => s.stop("SIGKILL")))

/** The sessions holding `nodeId`'s lock in the schema of `sql`. */
const holders = (nodeId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql<{ pid: number }>`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND classid = hashtext(current_schema())::oid AND objid = hashtext(${nodeId})::oid`).pipe(
    Effect.map((rows) => rows.map((r) => r.pid)),
    Effect.orDie
  )

/** A session that takes `nodeId`'s lock and then goes quiet (a process whose machine is gone): its connection. */
const silentHolder = (nodeId: string) =>
  Effect.gen(function*() {
    const connection = yield* (yield* SqlClient.SqlClient).reserve
    yield* connection.execute("SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext($1))", [nodeId], undefined)
    return connection
  })

/** A live lease of `nodeId`'s (a slice it works on), as a working node renews every heartbeat. */
const liveLease = (nodeId: string, batchId: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.orDie(sql`INSERT INTO batch_slices (batch_id, slice, first_line, last_line, owner, lease_until)
      VALUES (${batchId}, 0, 1, 500, ${nodeId}, ${Date.now() + 120_000})`))

/** Once one session holds the id and it is not `old`'s (within `ms`): its pid. */
const heldAnew = (holdersNow: Effect.Effect<ReadonlyArray<number>>, old: number | undefined, ms: number) =>
  eventuallyEffect(
    Effect.map(holdersNow, (pids) => {
      expect(pids).toHaveLength(1)
      expect(pids[0]).not.toBe(old)
      return pids[0]!
    }),
    ms
  )

/**
 * The node-id lock of `nodeId` as a node on `url` takes it, with short heartbeats and patience (LEASE_TTL 2 s and
 * SHUTDOWN_TIMEOUT 0.5 s, a patience of 5.5 s, unless given).
 */
const lockOf = (
  url: Redacted.Redacted,
  nodeId: string,
  options: { leaseTtl?: Duration.Duration; statementTimeout?: Duration.Duration; shutdownTimeout?: Duration.Duration } = {}
) =>
  NodeIdLockLive.pipe(
    Layer.provide(layerPg(url, options.statementTimeout === undefined ? {} : { statementTimeout: options.statementTimeout })),
    Layer.provide(AppConfig.layerWith({
      nodeId,
      leaseTtl: options.leaseTtl ?? Duration.seconds(2),
      heartbeatInterval: Duration.millis(200),
      shutdownTimeout: options.shutdownTimeout ?? Duration.millis(500)
    }))
  )

describe.concurrent("one process per NODE_ID on PostgreSQL", () => {
  it.live("a second server process under a running node's NODE_ID does not start, and takes none of its work", () =>
    Effect.gen(function*() {
      const url = Redacted.value(yield* freshSchemaUrl)
      const dataDir = yield* scratchDir
      const simulator = simulatorWith({ latencyMs: 100 })
      const sim = yield* simulator
      const env = {
        DATABASE_URL: url,
        DATA_DIR: dataDir,
        NODE_ID: "node-1",
        INFERENCE_BASE_URL: sim.url,
        MAX_CONCURRENT_REQUESTS_PER_BATCH: "8",
        HEARTBEAT_INTERVAL: "200 millis",
        SHUTDOWN_TIMEOUT: "1 second",
        LOG_FORMAT: "json"
      }
      const first = yield* serverWith(env)
      const openai = sdk(first.url)
      const lines = Array.from({ length: LINES }, (_, i) => chatLine(`once-${i}`, `once prompt ${i}`))
      const running = yield* createBatch(openai, (yield* upload(openai, lines)).id)
      yield* eventuallyEffect(Effect.sync(() => expect(sim.stats.requests).toBeGreaterThan(10)), 10_000)

      const other = yield* simulator
      const port = yield* Effect.promise(freePort)
      const refused = yield* Effect.promise(() =>
        runServerToExit({ ...env, INFERENCE_BASE_URL: other.url, HOST: "127.0.0.1", PORT: String(port) }, 30_000))
      expect(refused.code).toBe(1)
      expect(refused.output).toContain("waiting up to 6s for it to stop")
      expect(refused.output).toContain("Another process (or another app in this one) runs as NODE_ID 'node-1' on this PostgreSQL database and schema (held by PostgreSQL session")
      // It took nothing: every line sent once, by the first node alone.
      const done = yield* waitFor(openai, running.id, terminal, 60_000)
      expect(done.request_counts).toEqual({ total: LINES, completed: LINES, failed: 0 })
      expect(other.stats.requests).toBe(0)
      expect(sim.stats.byPrompt.size).toBe(LINES)
      expect([...sim.stats.byPrompt.values()].every((n) => n === 1)).toBe(true)
    }).pipe(Effect.scoped), 90_000)

  it.live("a server cut off for longer than LEASE_TTL, whose id another process took meanwhile, stops once it is back, saying why", () =>
    Effect.gen(function*() {
      const { direct, forwarded, forwarder } = yield* forwardedSchema
      const dataDir = yield* scratchDir
      const sim = yield* simulatorWith()
      const server = yield* serverWith({
        DATABASE_URL: Redacted.value(forwarded),
        DATA_DIR: dataDir,
        NODE_ID: "cut-off",
        INFERENCE_BASE_URL: sim.url,
        LEASE_TTL: "2 seconds",
        HEARTBEAT_INTERVAL: "200 millis",
        DATABASE_STATEMENT_TIMEOUT: "2 seconds",
        SHUTDOWN_TIMEOUT: "1 second",
        LOG_FORMAT: "json"
      })
      const sql = Context.get(yield* Layer.build(layerPg(direct)), SqlClient.SqlClient)
      const holdersNow = Effect.provideService(holders("cut-off"), SqlClient.SqlClient, sql)
      const [old] = yield* holdersNow
      forwarder.freeze() // the database away for the server, longer than LEASE_TTL
      // Another process starts under its id meanwhile: the server's session is silent, so it is taken for gone.
      yield* Layer.build(lockOf(direct, "cut-off"))
      const [taker] = yield* holdersNow
      expect(taker).not.toBe(old)
      const exited = new Promise<number | null>((resolve) => server.child.once("exit", (code) => resolve(code)))
      forwarder.restore()
      const code = yield* Effect.promise(() => exited).pipe(Effect.timeout("20 seconds"))
      expect(code).toBe(1)
      const line = server.stdout().split("\n").find((l) => l.includes('"event":"server.node_id_taken_over"'))
      expect(line).toBeDefined()
      expect(JSON.parse(line!).message).toContain(`Another process took NODE_ID 'cut-off' (held by PostgreSQL session ${taker}`)
      expect(yield* holdersNow).toEqual([taker]) // the other process keeps it
    }).pipe(Effect.scoped), 40_000)

  it.live("a SIGTERM while the database does not answer ends the process in bounded time, saying so", () =>
    Effect.gen(function*() {
      const { forwarded, forwarder } = yield* forwardedSchema
      const dataDir = yield* scratchDir
      const sim = yield* simulatorWith({ latencyMs: 100 })
      const server = yield* serverWith({
        DATABASE_URL: Redacted.value(forwarded),
        DATA_DIR: dataDir,
        NODE_ID: "frozen",
        INFERENCE_BASE_URL: sim.url,
        HEARTBEAT_INTERVAL: "200 millis",
        SHUTDOWN_TIMEOUT: "1 second",
        LOG_FORMAT: "json"
      })
      const openai = sdk(server.url)
      const lines = Array.from({ length: LINES }, (_, i) => chatLine(`frozen-${i}`, `frozen prompt ${i}`))
      yield* createBatch(openai, (yield* upload(openai, lines)).id)
      yield* eventuallyEffect(Effect.sync(() => expect(sim.stats.requests).toBeGreaterThan(10)), 10_000)
      forwarder.freeze() // leases, outcomes and the id's lock have nowhere to go: the release waits on them
      const signalled = Date.now()
      const code = yield* Effect.promise(() => server.stop("SIGTERM")).pipe(Effect.timeout("30 seconds"))
      // SHUTDOWN_TIMEOUT and 15 s (a statement's own limit, DATABASE_STATEMENT_TIMEOUT, is 60 s).
      expect(Date.now() - signalled).toBeGreaterThanOrEqual(16_000)
      expect(Date.now() - signalled).toBeLessThan(16_000 + 4_000)
      expect(code).toBe(143)
      const line = server.stdout().split("\n").find((l) => l.includes('"event":"server.stopped_at_once"'))
      expect(JSON.parse(line!).message).toBe(
        "The shutdown did not end within 16s (something it releases does not answer: the database?): stopping at once; " +
          "unfinished work resumes at the next start"
      )
    }).pipe(Effect.scoped), 60_000)

  it.live("a holder silent for longer than LEASE_TTL is taken for gone: its session is ended and the id taken over", () =>
    Effect.gen(function*() {
      const url = yield* freshSchemaUrl
      // A process that took the id and then went quiet (its machine gone): its session stays, idle.
      const gone = yield* Effect.scoped(Effect.gen(function*() {
        const connection = yield* silentHolder("quiet")
        const [silent] = yield* holders("quiet")
        const started = Date.now()
        // LEASE_TTL 2 s, a patience of 10 s: taken once silent for 2 s (5.9 s once under the whole suite's load)
        yield* Layer.build(lockOf(url, "quiet", { shutdownTimeout: Duration.seconds(5) }))
        const took = Date.now() - started
        expect(took).toBeGreaterThan(1_000)
        expect(took).toBeLessThan(9_000) // not at the end of its patience
        const [holder] = yield* holders("quiet")
        expect(holder).not.toBe(silent)
        return yield* Effect.exit(connection.execute("SELECT 1", [], undefined))
      })).pipe(Effect.provide(layerPg(url)))
      expect(Exit.isFailure(gone)).toBe(true) // its session was ended
    }).pipe(Effect.scoped), 30_000)

  it.live("a live holder keeps its id past LEASE_TTL, and takes it again when its session is ended under it", () =>
    Effect.gen(function*() {
      const url = yield* freshSchemaUrl
      const sql = yield* Effect.provide(SqlClient.SqlClient, yield* Layer.build(layerPg(url)))
      yield* Layer.build(lockOf(url, "alive", { leaseTtl: Duration.seconds(1) }))
      const [pid] = yield* Effect.provideService(holders("alive"), SqlClient.SqlClient, sql)
      // A second node under the same id, waiting past LEASE_TTL: the holder shows it is alive, so it is refused.
      const second = yield* Effect.flip(Effect.scoped(Layer.build(lockOf(url, "alive", { leaseTtl: Duration.seconds(1) }))))
      expect(second).toBeInstanceOf(NodeIdInUse)
      expect(yield* Effect.provideService(holders("alive"), SqlClient.SqlClient, sql)).toEqual([pid])

      // Its session ended (by an operator, or a server restart): it holds its id again, on a new session.
      yield* Effect.orDie(sql`SELECT pg_terminate_backend(${pid!})`)
      yield* heldAnew(Effect.provideService(holders("alive"), SqlClient.SqlClient, sql), pid, 5_000)
    }).pipe(Effect.scoped), 60_000) // ~7 s alone; three database clients started one after another (over 30 s once, in CI)

  it.live("a silent holder with a live lease is not taken over: its node works (its heartbeat renews leases on other connections)", () =>
    Effect.gen(function*() {
      const url = yield* freshSchemaUrl
      const refused = yield* Effect.scoped(Effect.gen(function*() {
        yield* silentHolder("leased")
        yield* liveLease("leased", "batch_x")
        return yield* Effect.flip(Layer.build(lockOf(url, "leased", { leaseTtl: Duration.seconds(1) })))
      })).pipe(Effect.provide(layerPg(url)))
      expect(refused).toBeInstanceOf(NodeIdInUse)
    }).pipe(Effect.scoped), 30_000)

  it.live("a holder whose lock connection stops answering while the rest works moves its hold to a new session, and keeps its id", () =>
    Effect.gen(function*() {
      const { direct, forwarded, forwarder } = yield* forwardedSchema
      const sql = Context.get(yield* Layer.build(layerPg(direct)), SqlClient.SqlClient)
      const holdersNow = Effect.provideService(holders("stuck"), SqlClient.SqlClient, sql)
      yield* Layer.build(lockOf(forwarded, "stuck", { leaseTtl: Duration.seconds(3) })) // pings answered within 1 s, or moved
      const [old] = yield* holdersNow
      const [{ port }] = yield* Effect.orDie(sql<{ port: number }>`SELECT client_port AS port FROM pg_stat_activity WHERE pid = ${old!}`)
      forwarder.freezeConnection(port) // that connection alone: the node's others go on working
      // A node started under the id meanwhile, past LEASE_TTL: the holder is never silent that long, so it is refused.
      const second = yield* Effect.fork(Effect.flip(Effect.scoped(Layer.build(lockOf(direct, "stuck", { leaseTtl: Duration.seconds(3) })))))
      const moved = yield* heldAnew(holdersNow, old, 5_000)
      const stillThere = yield* Effect.orDie(sql<{ pid: number }>`SELECT pid FROM pg_stat_activity WHERE pid = ${old!}`)
      expect(stillThere).toEqual([]) // its old session ended
      expect(yield* Fiber.join(second)).toBeInstanceOf(NodeIdInUse)
      expect(yield* holdersNow).toEqual([moved])
    }).pipe(Effect.scoped), 30_000)

  it.live("letting go of a held id whose connection stops answering takes about a second: a shutdown is not held up", () =>
    Effect.gen(function*() {
      const { forwarded, forwarder } = yield* forwardedSchema
      const scope = yield* Scope.make()
      yield* Scope.extend(Layer.build(lockOf(forwarded, "stopping")), scope)
      forwarder.freeze()
      const started = Date.now()
      yield* Effect.uninterruptible(Scope.close(scope, Exit.void)) // as a shutdown closes it
      expect(Date.now() - started).toBeLessThan(5_000)
    }).pipe(Effect.scoped), 30_000)

  it.live("after the database was away, a holder that could not end its own stuck session ends it and holds its id again", () =>
    Effect.gen(function*() {
      const { direct, forwarded, forwarder } = yield* forwardedSchema
      const sql = Context.get(yield* Layer.build(layerPg(direct)), SqlClient.SqlClient)
      const holdersNow = Effect.provideService(holders("away"), SqlClient.SqlClient, sql)
      // Its node works: a live lease of its id (a session of another process would not be ended).
      yield* Effect.provideService(liveLease("away", "batch_y"), SqlClient.SqlClient, sql)
      yield* Layer.build(lockOf(forwarded, "away", { leaseTtl: Duration.seconds(3), statementTimeout: Duration.seconds(2) }))
      const [old] = yield* holdersNow
      forwarder.freeze() // every connection, and new ones: the database is away for the node (not for PostgreSQL)
      yield* Effect.sleep("6 seconds")
      expect(yield* holdersNow).toEqual([old]) // its old session, kept open by PostgreSQL
      forwarder.restore()
      yield* heldAnew(holdersNow, old, 10_000)
    }).pipe(Effect.scoped), 40_000)
})
