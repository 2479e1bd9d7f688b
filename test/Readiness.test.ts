/**
 * `GET /v1/ready`: 200 while the database answers, 503 with the reason while it does not (PostgreSQL cut off by a
 * TCP forwarder in front of the shared server, then restored), and 503 as soon as a shutdown starts; `/v1/health`
 * stays the liveness check throughout. While it is away requests get a 503 `database_unavailable`, and a batch
 * waiting it out resumes as soon as the node's heartbeat gets through again.
 */
import { expect, it, layer } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Fiber, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import { AuthTest } from "../src/auth/Auth.js"
import type { AppConfigShape } from "../src/Config.js"
import { FaultRetry } from "../src/batches/supervision.js"
import { createScratchSchema, dropScratchSchema, testDatabaseUrl } from "./support/Postgres.js"
import { startServer } from "./support/ServerProcess.js"
import { sideBySide } from "./support/SideBySide.js"
import { startForwarder, type TcpForwarder } from "./support/TcpForwarder.js"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, eventuallyEffect, testApp, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const get = (path: string) =>
  Effect.flatMap(baseUrl, (base) =>
    Effect.promise(async () => {
      const res = await fetch(`${base}${path}`)
      return { status: res.status, retryAfter: res.headers.get("retry-after") ?? undefined, body: await res.json() as any }
    }))

sideBySide("readiness on SQLite", () => layer(testApp({}, "sqlite", { auth: AuthTest({ apiKeys: ["sk-ready-test:projR"] }) }))((it) => {
  it.effect("is 200 {status: ready}, with no key needed, beside the unchanged liveness check", () =>
    Effect.gen(function*() {
      expect(yield* get("/v1/ready")).toEqual({ status: 200, body: { status: "ready" } })
      expect(yield* get("/v1/health")).toEqual({ status: 200, body: { status: "OK" } })
    }))
}))

/** A password in the URL (ignored by the test server, which trusts local connections): it must never be shown. */
const PASSWORD = "pw-never-shown-7731"

/** The shared PostgreSQL behind a forwarder this test controls, on a scratch schema. */
class ProxiedPostgres extends Context.Tag("test/ProxiedPostgres")<ProxiedPostgres, {
  readonly forwarder: TcpForwarder
  readonly url: string
  readonly schema: string
  /** The same schema, not through the forwarder. */
  readonly direct: string
}>() {
  static readonly layer = Layer.scoped(
    ProxiedPostgres,
    Effect.gen(function*() {
      const { schema, url } = yield* Effect.acquireRelease(
        Effect.orDie(createScratchSchema("ready")),
        ({ schema }) => Effect.orDie(dropScratchSchema(schema))
      )
      const target = new URL(testDatabaseUrl)
      const forwarder = yield* Effect.acquireRelease(
        Effect.promise(() => startForwarder({ host: target.hostname, port: Number(target.port || 5432) })),
        (f) => Effect.promise(() => f.close())
      )
      const proxied = new URL(url)
      proxied.host = `127.0.0.1:${forwarder.port}`
      proxied.password = PASSWORD
      // A first schema that does not exist: PostgreSQL uses the next, which the node names (not the URL's first).
      proxied.searchParams.set("options", `-c search_path=ready_absent,${schema}`)
      return { forwarder, url: proxied.toString(), schema, direct: url }
    })
  )
}

/** Every line the app logs, at every level, as text: each app its own (their suites run side by side). */
class Logged extends Context.Tag("test/Readiness/Logged")<Logged, Array<string>>() {}

/** `app` with its lines recorded in `Logged`. */
const recorded = <A, E, R>(app: Layer.Layer<A, E, R>) =>
  Layer.unwrapEffect(Effect.sync(() => {
    const lines: Array<string> = []
    const recorder = Logger.make(({ annotations, logLevel, message }) =>
      void lines.push(`${logLevel.label} ${String(message)} ${JSON.stringify(Object.fromEntries(annotations))}`)
    )
    return Layer.merge(app.pipe(Layer.provide(Logger.replace(Logger.defaultLogger, recorder))), Layer.succeed(Logged, lines))
  }))

const proxiedApp = (overrides: Partial<AppConfigShape> = {}) => recorded(Layer.unwrapEffect(
  Effect.map(ProxiedPostgres, ({ url }) =>
    testApp({ databaseUrl: Option.some(Redacted.make(url)), ...overrides }, "sqlite", { logLevel: LogLevel.All }))
).pipe(Layer.provideMerge(ProxiedPostgres.layer)))

sideBySide("readiness on PostgreSQL", () => layer(proxiedApp(), { timeout: 60_000, excludeTestServices: true })((it) => {
  it.effect("turns 503 while the database is unreachable, saying so without its password, and 200 once it is back", () =>
    Effect.gen(function*() {
      const { forwarder, schema } = yield* ProxiedPostgres
      const logged = yield* Logged
      expect(yield* get("/v1/ready")).toEqual({ status: 200, body: { status: "ready" } })

      forwarder.cut()
      const down = yield* eventuallyEffect(
        Effect.tap(get("/v1/ready"), (res) => Effect.sync(() => expect(res.status).toBe(503))),
        5000
      )
      expect(down.body.status).toBe("not_ready")
      expect(down.body.reasons).toHaveLength(1)
      expect(down.body.reasons[0].code).toBe("database_unreachable")
      expect(down.body.reasons[0].message).toMatch(new RegExp(`^PostgreSQL at 127\\.0\\.0\\.1:${forwarder.port}/\\w+, schema ${schema} does not answer: .+`))
      expect(JSON.stringify(down.body)).not.toContain(PASSWORD)
      expect(yield* get("/v1/health")).toEqual({ status: 200, body: { status: "OK" } }) // alive all the same
      yield* Effect.sleep("2500 millis") // a few heartbeats fail meanwhile

      forwarder.restore()
      yield* eventuallyEffect(
        Effect.tap(get("/v1/ready"), (res) => Effect.sync(() => expect(res).toEqual({ status: 200, body: { status: "ready" } }))),
        10_000
      )
      // Logged once each way, and the password nowhere (the heartbeat's faults meanwhile included).
      expect(logged.filter((l) => l.includes("Not ready: PostgreSQL at"))).toHaveLength(1)
      expect(logged.filter((l) => l.includes("Ready again: PostgreSQL at"))).toHaveLength(1)
      // The heartbeat failed every second meanwhile: said once, a warning of one line saying what the driver said
      // (its cause at debug level), then once when it works again.
      yield* eventuallyEffect(Effect.sync(() => expect(logged.filter((l) => l.includes("Heartbeat works again"))).toHaveLength(1)), 5000)
      expect(logged.filter((l) => l.includes("Heartbeat failed")).map((l) => l.split(" {")[0]!.replace(/\(.*\)$/, "(…)"))).toEqual([
        "WARN Heartbeat failed: storage unavailable (…)",
        "DEBUG Heartbeat failed"
      ])
      expect(logged.filter((l) => l.includes("Heartbeat still failing"))).toEqual([])
      expect(logged.join("\n")).not.toContain(PASSWORD)
    }), 30_000)
}))

const STATEMENT_TIMEOUT_MS = 2000

sideBySide("a PostgreSQL that hangs", () => layer(proxiedApp({ databaseStatementTimeout: Duration.millis(STATEMENT_TIMEOUT_MS) }), { timeout: 60_000, excludeTestServices: true })((it) => {
  it.effect("requests fail in bounded time instead of waiting for it, and all is well once it answers again", () =>
    Effect.gen(function*() {
      const { forwarder } = yield* ProxiedPostgres
      expect((yield* get("/v1/batches")).status).toBe(200)
      forwarder.stall() // connections accepted, never answered
      yield* get("/v1/batches") // may fail at once, on a connection just lost: the next ones need new connections
      const started = Date.now()
      const list = yield* get("/v1/batches")
      expect([list.status, list.retryAfter]).toEqual([503, "5"]) // passing: the SDKs wait and retry
      expect(list.body.error).toEqual({
        message: "The server's database is unavailable for now; try again shortly.",
        type: "server_error",
        param: null,
        code: "database_unavailable"
      })
      expect(Date.now() - started).toBeLessThan(15_000)
      expect((yield* get("/v1/ready")).status).toBe(503)
      forwarder.restore()
      yield* eventuallyEffect(
        Effect.tap(get("/v1/ready"), (res) => Effect.sync(() => expect(res.status).toBe(200))),
        15_000
      )
      expect((yield* get("/v1/batches")).status).toBe(200)
    }), 45_000)

  it.effect("a statement on an open connection that stops answering fails after DATABASE_STATEMENT_TIMEOUT, and its connection is dropped", () =>
    Effect.gen(function*() {
      const { forwarder } = yield* ProxiedPostgres
      expect((yield* get("/v1/batches")).status).toBe(200) // on a pooled connection, open
      forwarder.freeze() // open connections kept, not a byte carried; new ones never answered
      const started = Date.now()
      const list = yield* get("/v1/batches")
      const took = Date.now() - started
      expect([list.status, list.body.error.code]).toEqual([503, "database_unavailable"])
      expect(took).toBeGreaterThanOrEqual(STATEMENT_TIMEOUT_MS - 100)
      expect(took).toBeLessThan(15_000)
      // Once the network carries connections again, new ones serve (the frozen ones were dropped, not lent again).
      forwarder.restore()
      yield* eventuallyEffect(
        Effect.tap(get("/v1/batches"), (res) => Effect.sync(() => expect(res.status).toBe(200))),
        15_000
      )
      for (let i = 0; i < 12; i++) expect((yield* get("/v1/batches")).status).toBe(200)
    }), 45_000)

  it.effect("a scrape answers within its 5 s while a lock holds the batches table, the active batches left out", () =>
    Effect.gen(function*() {
      const { direct } = yield* ProxiedPostgres
      // Another client holds the lock in a transaction until the scrape is done.
      const sql = yield* PgClient.make({ url: Redacted.make(direct) }).pipe(Effect.provide(Reactivity.layer))
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(sql.withTransaction(Effect.gen(function*() {
        yield* sql`LOCK TABLE batches IN ACCESS EXCLUSIVE MODE`
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(release)
      })))
      yield* Deferred.await(locked)
      const started = Date.now()
      const scrape = yield* Effect.flatMap(baseUrl, (base) =>
        Effect.promise(async () => {
          const res = await fetch(`${base}/metrics`)
          return { status: res.status, text: await res.text() }
        }))
      const took = Date.now() - started
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      expect(scrape.status).toBe(200)
      expect(took).toBeLessThan(8000)
      expect(scrape.text).toContain("batch_http_requests_total")
      expect(scrape.text).not.toMatch(/^batch_batches_active\{/m)
    }).pipe(Effect.scoped), 30_000)
}))

/** A batch's first wait on the database: 10 s, far longer than the outage, so only a heartbeat can end it early. */
const storageRetries = Layer.succeed(FaultRetry, { baseDelay: Duration.seconds(10), maxRetries: 4, maxStorageDelay: Duration.seconds(30) })

const runningApp = recorded(Layer.unwrapEffect(
  Effect.map(ProxiedPostgres, ({ url }) =>
    testAppWithUpstream(
      { databaseUrl: Option.some(Redacted.make(url)), heartbeatInterval: Duration.millis(200), maxConcurrentRequestsPerBatch: 2 },
      {},
      "sqlite",
      { logLevel: LogLevel.All }
    ))
).pipe(
  Layer.provideMerge(ProxiedPostgres.layer),
  Layer.provide(storageRetries)
))

sideBySide("a batch on PostgreSQL through an outage", () => layer(runningApp, { timeout: 60_000, excludeTestServices: true })((it) => {
  it.effect("waits while the database is away, and resumes as soon as a heartbeat gets through, not at the end of its wait", () =>
    Effect.gen(function*() {
      const { forwarder } = yield* ProxiedPostgres
      const logged = yield* Logged
      const openai = sdk(yield* baseUrl)
      const file = yield* upload(openai, Array.from({ length: 30 }, (_, i) => chatLine(`o${i}`, `outage ${i} [sleep:100]`)))
      const batch = yield* createBatch(openai, file.id)
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 2)
      forwarder.cut()
      yield* eventuallyEffect(Effect.sync(() => expect(logged.some((l) => l.includes(`Batch ${batch.id} waits`))).toBe(true)), 20_000)
      yield* Effect.sleep("1 second")
      forwarder.restore()
      // Said only when a heartbeat ends the wait (a busy machine's heartbeats come late, 10 s has been missed): the
      // timer's end, 10 s after the wait began, would say nothing.
      yield* eventuallyEffect(
        Effect.sync(() => expect(logged.filter((l) => l.includes(`The database answers again; batch ${batch.id} resumes`))).toHaveLength(1)),
        20_000
      )
      const done = yield* waitFor(openai, batch.id, terminal, 30_000)
      expect(done.request_counts).toEqual({ total: 30, completed: 30, failed: 0 })
    }), 45_000)

  it.effect("a cut of a second sends nothing twice: the outcomes answered meanwhile are stored once it is back", () =>
    Effect.gen(function*() {
      const { forwarder } = yield* ProxiedPostgres
      const logged = yield* Logged
      const sim = yield* Upstream
      const openai = sdk(yield* baseUrl)
      const prompts = Array.from({ length: 30 }, (_, i) => `blip ${i} [sleep:100]`)
      const file = yield* upload(openai, prompts.map((prompt, i) => chatLine(`b${i}`, prompt)))
      const batch = yield* createBatch(openai, file.id)
      yield* waitFor(openai, batch.id, (b) => (b.request_counts?.completed ?? 0) >= 4)
      forwarder.cut()
      yield* Effect.sleep("1 second")
      forwarder.restore()
      const done = yield* waitFor(openai, batch.id, terminal, 30_000)
      expect(done.request_counts).toEqual({ total: 30, completed: 30, failed: 0 })
      // Each sent once: a write that failed at once failed the run, and its calls were sent again.
      expect(prompts.map((p) => sim.stats.byPrompt.get(p))).toEqual(prompts.map(() => 1))
      expect(logged.filter((l) => l.includes(`Batch ${batch.id} waits`))).toEqual([])
    }), 45_000)
}))

const keyedApp = Layer.unwrapEffect(
  Effect.map(ProxiedPostgres, ({ url }) =>
    testApp({ databaseUrl: Option.some(Redacted.make(url)), apiKeys: [Redacted.make("sk-ready-keyed:projK")] }))
).pipe(Layer.provideMerge(ProxiedPostgres.layer))

sideBySide("readiness on PostgreSQL with API keys", () => layer(keyedApp, { timeout: 60_000, excludeTestServices: true })((it) => {
  it.effect("tells an anonymous caller what is wrong, not where the database is nor what it said", () =>
    Effect.gen(function*() {
      const { forwarder } = yield* ProxiedPostgres
      forwarder.cut()
      const down = yield* eventuallyEffect(
        Effect.tap(get("/v1/ready"), (res) => Effect.sync(() => expect(res.status).toBe(503))),
        5000
      )
      expect(down.body.reasons).toEqual([
        { code: "database_unreachable", message: "The database does not answer (the server's log says why)." }
      ])
      expect(JSON.stringify(down.body)).not.toContain(String(forwarder.port))
      forwarder.restore()
    }), 30_000)
}))

sideBySide("readiness of the server process", () => {
  it.live("turns 503 as soon as SIGTERM arrives, while the node still serves (SHUTDOWN_DELAY), then the node stops", () =>
    Effect.promise(async () => {
      const dataDir = mkdtempSync(Path.join(tmpdir(), "batch-ready-"))
      try {
        const server = await startServer({ DATA_DIR: dataDir, SHUTDOWN_DELAY: "3 seconds", LOG_FORMAT: "json" })
        const ready = async () => {
          const res = await fetch(`${server.url}/v1/ready`)
          return { status: res.status, body: await res.json() as any }
        }
        expect(await ready()).toEqual({ status: 200, body: { status: "ready" } })

        const signalled = Date.now()
        server.child.kill("SIGTERM")
        let answer = await ready()
        while (answer.status === 200 && Date.now() - signalled < 2000) answer = await ready()
        expect(answer.status).toBe(503)
        expect(answer.body).toEqual({ status: "not_ready", reasons: [{ code: "draining", message: expect.any(String) }] })
        expect((await fetch(`${server.url}/v1/health`)).status).toBe(200) // still serving meanwhile

        // Not `stop()`: a second signal ends the process at once (runMain listens for the first only).
        const code = await new Promise((resolve) =>
          server.child.exitCode !== null
            ? resolve(server.child.exitCode)
            : server.child.once("exit", (exitCode, signal) => resolve(exitCode ?? signal)))
        expect(code).toBe(0)
        const events = server.stdout().split("\n").filter((l) => l !== "").map((l) => JSON.parse(l).event)
        expect(events.filter((e) => e?.startsWith("server."))).toEqual([
          "server.listening",
          "server.shutdown_started",
          "server.shutdown_finished"
        ])
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }), 60_000)
})
