/** Shared test fixtures: a scratch data directory and the whole app served on a random local port. */
import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Logger, LogLevel } from "effect"
import { mkdtempSync, readdirSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { AppConfig, type AppConfigShape } from "../../src/Config.js"
import { HttpLive } from "../../src/http/Http.js"
import { ServicesLive } from "../../src/Layers.js"
import { type Simulator, type SimulatorOptions, startSimulator } from "../../scripts/simulator.js"

/** A fresh directory, removed when the scope closes. */
export const scratchDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "batch-test-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/** The configuration of a test app: defaults, a scratch `DATA_DIR`, then `overrides`. */
export class TestDataDir extends Effect.Service<TestDataDir>()("test/TestDataDir", {
  scoped: Effect.map(scratchDir, (path) => ({ path }))
}) {}

/** Names of the files under `dataDir/files/{blobs,staging}`: what a leak of bytes would leave. */
export const storedBlobs = (dataDir: string) => ({
  blobs: readdirSync(Path.join(dataDir, "files", "blobs")),
  staging: readdirSync(Path.join(dataDir, "files", "staging"))
})

export const configFor = (overrides: Partial<AppConfigShape> = {}) =>
  Layer.unwrapEffect(Effect.map(TestDataDir, ({ path }) => AppConfig.layerWith({ dataDir: path, ...overrides })))

/**
 * The real application (SQLite + local files in a scratch directory) on a random port, with an `HttpClient`
 * pointed at it, the `AppConfig` and the `TestDataDir` it uses.
 */
export const testApp = (overrides: Partial<AppConfigShape> = {}) =>
  HttpLive.pipe(
    Layer.provide(ServicesLive),
    Layer.provideMerge(NodeHttpServer.layerTest),
    Layer.provideMerge(configFor(overrides)),
    Layer.provideMerge(TestDataDir.Default),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
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
export const testAppWithUpstream = (overrides: Partial<AppConfigShape> = {}, simulator: SimulatorOptions = {}) =>
  Layer.unwrapEffect(Effect.map(Upstream, (sim) => testApp({ inferenceBaseUrl: sim.url, ...overrides }))).pipe(
    Layer.provideMerge(Upstream.layer(simulator))
  )

/** `http://127.0.0.1:<port>` of the server under test. */
export const baseUrl = Effect.map(HttpServer.HttpServer, (server) => {
  const address = server.address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  return `http://127.0.0.1:${address.port}`
})

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
