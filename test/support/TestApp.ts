/** Shared test fixtures: a scratch data directory and the whole app served on a random local port. */
import { HttpServer } from "@effect/platform"
import { NodeHttpClient, NodeHttpServer } from "@effect/platform-node"
import * as SqlClient from "@effect/sql/SqlClient"
import { Context, Effect, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs"
import { createServer } from "node:http"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { type Auth, AuthLive } from "../../src/auth/Auth.js"
import { AppConfig, type AppConfigShape, fileStorageOf } from "../../src/Config.js"
import { HttpLive } from "../../src/http/Http.js"
import { makeServices, type ServiceParts, ServicesLive } from "../../src/Layers.js"
import { SchedulerLive } from "../../src/Scheduler.js"
import { createScratchSchema, dropScratchSchema } from "./Postgres.js"
import { type Simulator, type SimulatorOptions, startSimulator } from "../../scripts/simulator.js"
import { chatLine, sdk, upload } from "./Batches.js"

/** A fresh directory, removed when the scope closes. */
export const scratchDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-test-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/** The configuration of a test app: defaults, a scratch `DATA_DIR`, then `overrides`. */
export class TestDataDir extends Effect.Service<TestDataDir>()("test/TestDataDir", {
  scoped: Effect.map(scratchDir, (path) => ({ path }))
}) {}

/** The files under `dir`, at any depth (paths relative to it). */
export const filesUnder = (dir: string) =>
  readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((name) => statSync(Path.join(dir, name)).isFile()).sort()

/**
 * Names of the files under `dataDir/files/blobs` and of those under `dataDir/files/staging` (in each node's
 * directory): what a leak of bytes would leave.
 */
export const localBlobs = (dataDir: string) => ({
  blobs: readdirSync(Path.join(dataDir, "files", "blobs")).sort(),
  staging: filesUnder(Path.join(dataDir, "files", "staging"))
})

/** The published keys and staging areas of whichever file storage the configuration uses. */
export const storedBlobs = Effect.gen(function*() {
  const config = yield* AppConfig
  if (fileStorageOf(config) === "local") return localBlobs(config.dataDir)
  const sql = yield* SqlClient.SqlClient
  const blobs = yield* sql<{ key: string }>`SELECT key FROM blobs ORDER BY key`
  const staging = yield* sql<{ token: string }>`SELECT token FROM blob_staging ORDER BY token`
  const chunks = yield* sql<{ token: string }>`SELECT DISTINCT token FROM blob_chunks
    WHERE token NOT IN (SELECT token FROM blobs)`
  return { blobs: blobs.map((r) => r.key), staging: [...staging, ...chunks].map((r) => r.token) }
}).pipe(Effect.orDie)

/** The SQL backends every store and runner suite runs against. */
export type Backend = "sqlite" | "postgres"
export const backends: ReadonlyArray<Backend> = ["sqlite", "postgres"]
/** Backends with each file storage they are used with (SQLite: local disk by default; Postgres: SQL). */
export const storages: ReadonlyArray<{ readonly backend: Backend; readonly fileStorage: "local" | "sql" }> = [
  { backend: "sqlite", fileStorage: "local" },
  { backend: "sqlite", fileStorage: "sql" },
  { backend: "postgres", fileStorage: "sql" }
]

/**
 * The database of a test: none for SQLite (it lives in `TestDataDir`); for Postgres a fresh schema in the test
 * database, dropped when the layer closes, and a URL whose connections use it (through `search_path`), so test
 * runs never see each other's tables. Every start of the app within the layer sees the same database.
 */
export class TestDatabase extends Context.Tag("test/TestDatabase")<TestDatabase, {
  readonly url: Option.Option<Redacted.Redacted>
}>() {
  static readonly layer = (backend: Backend) =>
    backend === "sqlite" ? Layer.succeed(TestDatabase, { url: Option.none() }) : Layer.scoped(
      TestDatabase,
      Effect.acquireRelease(
        Effect.map(createScratchSchema("test"), ({ schema, url }) => ({ schema, url: Option.some(Redacted.make(url)) })),
        ({ schema }) => Effect.orDie(dropScratchSchema(schema))
      ).pipe(Effect.orDie)
    )
}

/** The test configuration: defaults, the scratch `DATA_DIR`, the test database, then `overrides`. */
export const configFor = (overrides: Partial<AppConfigShape> = {}) =>
  Layer.unwrapEffect(Effect.gen(function*() {
    const { path } = yield* TestDataDir
    const { url } = yield* TestDatabase
    // A small disk reserve: each test app makes its own, and 16 MiB of random bytes at each start adds up.
    return AppConfig.layerWith({ dataDir: path, databaseUrl: url, diskReserveBytes: 64 * 1024, ...overrides })
  }))

/** Options of a test app beyond its configuration. */
export interface TestAppOptions {
  /** The keys (e.g. `AuthTest({ apiKeys: […] })`); by default `AuthLive` on the test configuration (no key needed). */
  readonly auth?: Layer.Layer<Auth, unknown, AppConfig>
  /** The lowest level logged (default: warnings). */
  readonly logLevel?: LogLevel.LogLevel
  /** A `BatchStore` of the test's own (e.g. one whose reads fail); by default the live one. */
  readonly batchStore?: ServiceParts["batchStore"]
  /** A `FileStore` of the test's own (e.g. one whose bytes go mid-read); by default the live one. */
  readonly fileStore?: ServiceParts["fileStore"]
}

/**
 * `NodeHttpServer.layerTest` (a server on a random port, an `HttpClient` pointed at it), except that closing it
 * closes the connections still open: the `openai` client keeps its sockets alive for ~3 s after its last request,
 * and the server's `close()` waited for them at every test app's teardown.
 */
export const TestHttpServer = Layer.unwrapEffect(Effect.sync(() => {
  const server = createServer()
  // Built after the server, so released before it: the server's `close()` then finds no connection to wait for.
  const closeConnections = Layer.scopedDiscard(Effect.addFinalizer(() => Effect.sync(() => server.closeAllConnections())))
  return HttpServer.layerTestClient.pipe(
    Layer.provide(NodeHttpClient.layerWithoutAgent),
    Layer.provide(NodeHttpClient.makeAgentLayer({ keepAlive: false })),
    Layer.provideMerge(closeConnections.pipe(Layer.provideMerge(NodeHttpServer.layer(() => server, { port: 0, host: "127.0.0.1" }))))
  )
}))

/**
 * The real application (SQLite + local files in a scratch directory) on a random port, with an `HttpClient`
 * pointed at it, its services, the `AppConfig` and the `TestDataDir` it uses; on the server's scheduler, as `makeApp`
 * runs it.
 */
export const testApp = (overrides: Partial<AppConfigShape> = {}, backend: Backend = "sqlite", options: TestAppOptions = {}) =>
  HttpLive.pipe(
    Layer.provide(options.auth ?? AuthLive),
    // Its services too, for the tests that look at them (the runner, the stores).
    Layer.provideMerge(
      options.batchStore || options.fileStore
        ? makeServices({
          ...(options.batchStore ? { batchStore: options.batchStore } : {}),
          ...(options.fileStore ? { fileStore: options.fileStore } : {})
        })
        : ServicesLive
    ),
    Layer.provideMerge(TestHttpServer),
    Layer.provideMerge(configFor(overrides)),
    Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend))),
    Layer.provide(Logger.minimumLogLevel(options.logLevel ?? LogLevel.Warning)),
    Layer.provide(SchedulerLive)
  )

/** The upstream simulator (`scripts/simulator.ts`) on a random port, for as long as the layer lives. */
export class Upstream extends Context.Tag("test/Upstream")<Upstream, Simulator>() {
  static readonly layer = (options: SimulatorOptions = {}) =>
    Layer.scoped(
      Upstream,
      Effect.acquireRelease(Effect.promise(() => startSimulator(options)), (sim) => Effect.promise(() => sim.close()))
    )
}

/** `testApp` whose inference upstream is a fresh simulator (exposed as `Upstream`). */
export const testAppWithUpstream = (
  overrides: Partial<AppConfigShape> = {},
  simulator: SimulatorOptions = {},
  backend: Backend = "sqlite",
  options: TestAppOptions = {}
) =>
  Layer.unwrapEffect(Effect.map(Upstream, (sim) => testApp({ inferenceBaseUrl: sim.url, ...overrides }, backend, options))).pipe(
    Layer.provideMerge(Upstream.layer(simulator))
  )

/** `http://127.0.0.1:<port>` of the server under test. */
export const baseUrl = Effect.map(HttpServer.HttpServer, (server) => {
  const address = server.address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  return `http://127.0.0.1:${address.port}`
})

/**
 * The app on `dataDir` (its SQLite file and local files, as a server process makes them; its disk reserve smaller)
 * stores `count` small files and closes: their ids and sizes. For tests of what a server process does on it next.
 */
export const storedByAnApp = (dataDir: string, count = 1) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const openai = sdk(yield* Effect.provide(baseUrl, yield* Layer.build(testApp({ dataDir }))))
    return yield* Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) => upload(openai, [chatLine(`${i}`, "hello")]))
  })))

/** Retries `check` (with real time) until it passes or `timeoutMs` is over; for effects of background fibers. */
export const eventually = <A>(check: () => A, timeoutMs = 2000): Effect.Effect<A> =>
  Effect.promise(async () => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        return check()
      } catch (error) {
        if (Date.now() > deadline) throw error
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  })

/** `eventually` for an effectful check (which fails by throwing, i.e. dying); waits in real time, not `Clock` time. */
export const eventuallyEffect = <A, R>(check: Effect.Effect<A, never, R>, timeoutMs = 2000): Effect.Effect<A, never, R> =>
  Effect.suspend(() => {
    const deadline = Date.now() + timeoutMs
    const attempt: Effect.Effect<A, never, R> = Effect.catchAllDefect(check, (defect) =>
      Date.now() > deadline
        ? Effect.die(defect)
        : Effect.zipRight(Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20))), attempt))
    return attempt
  })
