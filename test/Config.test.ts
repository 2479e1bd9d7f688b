/** The configuration: the same rules whether it comes from the environment or from code (`AppConfig.layerWith`). */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { existsSync } from "node:fs"
import { hostname } from "node:os"
import { AppConfig, appConfig, defaults } from "../src/Config.js"
import { maxConnectionsFor } from "../src/http/connectionCap.js"

const fromCode = (overrides: Parameters<typeof AppConfig.layerWith>[0]) =>
  Effect.exit(Effect.provide(AppConfig, AppConfig.layerWith(overrides)))

const fromEnv = (env: Record<string, string>) =>
  Effect.exit(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))

/** The message of a failed configuration, which must name the variable. */
const failure = (exit: Exit.Exit<unknown, unknown>) => {
  expect(Exit.isFailure(exit)).toBe(true)
  return Exit.isFailure(exit) ? String(exit.cause) : ""
}

describe("configuration", () => {
  it.effect("layerWith derives the node id from the port, as the environment does", () =>
    Effect.gen(function*() {
      const config = yield* Effect.provide(AppConfig, AppConfig.layerWith({ port: 9999 }))
      expect(config.nodeId).toBe(`${hostname()}:9999`)
      expect((yield* Effect.provide(AppConfig, AppConfig.layerWith({ port: 9999, nodeId: "mine" }))).nodeId).toBe("mine")
      const env = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map([["PORT", "9999"]])))
      expect(env.nodeId).toBe(`${hostname()}:9999`)
    }))

  it.effect("a DATABASE_URL naming its database in its path is taken, the driver's socket forms with no host too", () =>
    Effect.gen(function*() {
      for (const url of [
        "postgres://batch@db:5432/batches?sslmode=verify-full",
        "postgresql://user:pw@/batches?host=/var/run/postgresql",
        "postgres:///batches?host=/var/run/postgresql",
        "postgres://%2Fvar%2Frun%2Fpostgresql/my%20db"
      ]) {
        expect(Exit.isSuccess(yield* fromCode({ databaseUrl: Option.some(Redacted.make(url)) })), url).toBe(true)
        expect(Exit.isSuccess(yield* fromEnv({ DATABASE_URL: url })), url).toBe(true)
      }
    }))

  it.effect("layerWith refuses what the environment refuses, naming the variable", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [Parameters<typeof AppConfig.layerWith>[0], Record<string, string>, string]> = [
        [{ maxConcurrentBatches: 1.5 }, { MAX_CONCURRENT_BATCHES: "-1" }, "MAX_CONCURRENT_BATCHES"],
        [{ port: -5 }, { PORT: "-5" }, "PORT"],
        [{ maxJsonBodyBytes: 1.5 }, { MAX_JSON_BODY_BYTES: "-1" }, "MAX_JSON_BODY_BYTES"],
        [{ maxJsonBodiesBytes: 1024 }, { MAX_JSON_BODY_BYTES: "2048", MAX_JSON_BODIES_BYTES: "1024" }, "MAX_JSON_BODIES_BYTES"],
        [{ resultPagesAtOnce: 0 }, { RESULT_PAGES_AT_ONCE: "0" }, "RESULT_PAGES_AT_ONCE"],
        [{ maxUploadsAtOnce: 0 }, { MAX_UPLOADS_AT_ONCE: "-1" }, "MAX_UPLOADS_AT_ONCE"],
        [{ maxDownloadsAtOnce: 1.5 }, { MAX_DOWNLOADS_AT_ONCE: "0" }, "MAX_DOWNLOADS_AT_ONCE"],
        [{ stallTimeout: Duration.zero }, { STALL_TIMEOUT: "0 seconds" }, "STALL_TIMEOUT"],
        [{ minBodyRate: -1 }, { MIN_BODY_RATE: "-1" }, "MIN_BODY_RATE"],
        [{ dataDir: " " }, { DATA_DIR: " " }, "DATA_DIR"],
        [{ inferenceBaseUrl: "ftp://x/v1" }, { INFERENCE_BASE_URL: "ftp://x/v1" }, "INFERENCE_BASE_URL"],
        [{ inferenceBaseUrl: "http://u:p@x/v1" }, { INFERENCE_BASE_URL: "http://x/v1?key=k" }, "INFERENCE_BASE_URL"],
        [{ inferenceBaseUrl: "http://x/v1/embeddings" }, { INFERENCE_BASE_URL: "http://x/v1/chat/completions" }, "INFERENCE_BASE_URL"],
        [{ inferenceApiKey: Option.some(Redacted.make("sk-1\n")) }, { INFERENCE_API_KEY: " sk-1" }, "INFERENCE_API_KEY"],
        [{ inferenceApiKey: Option.some(Redacted.make("sk-…")) }, { INFERENCE_API_KEY: "sk-…" }, "INFERENCE_API_KEY"],
        [{ inferenceMinConcurrency: 9, inferenceMaxConcurrency: 4 }, { INFERENCE_MAX_CONCURRENCY: "0" }, "INFERENCE_M"],
        [{ inferenceMaxBufferedBytes: 0 }, { INFERENCE_MAX_BUFFERED_BYTES: "1.5" }, "INFERENCE_MAX_BUFFERED_BYTES"],
        [{ heartbeatInterval: Duration.seconds(20) }, { HEARTBEAT_INTERVAL: "20 seconds" }, "HEARTBEAT_INTERVAL"],
        [{ leaseTtl: Duration.zero }, { LEASE_TTL: "0 millis" }, "LEASE_TTL"],
        // A Node timer set longer than 2^31-1 ms fires at once: every statement would time out after 1 ms.
        [{ databaseStatementTimeout: Duration.days(30) }, { DATABASE_STATEMENT_TIMEOUT: "25 days" }, "DATABASE_STATEMENT_TIMEOUT"],
        [{ batchFilesExpireAfter: Option.some(Duration.millis(10)) }, { BATCH_FILES_EXPIRE_AFTER: "soon" }, "BATCH_FILES_EXPIRE_AFTER"],
        [{ upstreamsFile: Option.some("u.yaml"), upstreams: Option.some([{ name: "a", base_url: "http://127.0.0.1:1/v1", models: ["m"] }]) }, { UPSTREAMS_FILE: " " }, "UPSTREAMS_FILE"],
        [{ batchFilesExpireAfter: Option.some(Duration.infinity) }, { BATCH_FILES_EXPIRE_AFTER: "100000000000000 weeks" }, "BATCH_FILES_EXPIRE_AFTER"],
        [{ maxActiveBatchesPerProject: Option.some(0) }, { MAX_ACTIVE_BATCHES_PER_PROJECT: "0" }, "MAX_ACTIVE_BATCHES_PER_PROJECT"],
        [{ maxEnqueuedRequestsPerProject: Option.some(-1) }, { MAX_ENQUEUED_REQUESTS_PER_PROJECT: "-1" }, "MAX_ENQUEUED_REQUESTS_PER_PROJECT"],
        [{ maxFileBytesPerProject: Option.some(1.5) }, { MAX_FILE_BYTES_PER_PROJECT: "lots" }, "MAX_FILE_BYTES_PER_PROJECT"],
        [{ maxRequestsPerMinutePerProject: Option.some(0) }, { MAX_REQUESTS_PER_MINUTE_PER_PROJECT: "0" }, "MAX_REQUESTS_PER_MINUTE_PER_PROJECT"],
        [{ extraBatchEndpoints: ["/rerank"] }, { EXTRA_BATCH_ENDPOINTS: "/v1/rerank, /v1/../admin" }, "EXTRA_BATCH_ENDPOINTS"],
        [{ extraBatchEndpoints: ["/v1/re rank"] }, { EXTRA_BATCH_ENDPOINTS: "/v1/rerank?x=1" }, "EXTRA_BATCH_ENDPOINTS"],
        [{ inferenceMode: "replay" }, { INFERENCE_MODE: "record" }, "INFERENCE_MODE"],
        [{ inferenceMode: "rewind" as "live" }, { INFERENCE_MODE: "rewind", INFERENCE_RECORDINGS: "/tmp/r" }, "INFERENCE_MODE"],
        [{ logFormat: "xml" as "json" }, { LOG_FORMAT: "xml" }, "LOG_FORMAT"],
        [{ logLevel: "verbose" as "info" }, { LOG_LEVEL: "verbose" }, "LOG_LEVEL"],
        [{ shutdownDelay: 5 as unknown as Duration.Duration }, { SHUTDOWN_DELAY: "soon" }, "SHUTDOWN_DELAY"],
        // Node timers too: set past 24.8 days, they fired after 1 ms (every upload cut after 64 KiB, a drain at once).
        [{ stallTimeout: Duration.days(100) }, { STALL_TIMEOUT: "100 days" }, "STALL_TIMEOUT"],
        [{ shutdownTimeout: Duration.days(25) }, { SHUTDOWN_TIMEOUT: "25d" }, "SHUTDOWN_TIMEOUT"],
        [{ shutdownDelay: Duration.days(100) }, { SHUTDOWN_DELAY: "100 days" }, "SHUTDOWN_DELAY"],
        [{ maxConnections: 0 }, { MAX_CONNECTIONS: "0" }, "MAX_CONNECTIONS"],
        // No database named: the driver took the user's name, and the node ran on its own (empty) database.
        [{ databaseUrl: Option.some(Redacted.make("postgres://postgres@127.0.0.1:5432/")) }, { DATABASE_URL: "postgresql://db:5432" }, "DATABASE_URL"],
        // A query's database is overwritten by the path's, even an empty one.
        [{ databaseUrl: Option.some(Redacted.make("postgres://u@h:5432/?database=batches")) }, { DATABASE_URL: "postgres://u@h?database=batches" }, "DATABASE_URL"]
      ]
      for (const [code, env, variable] of cases) {
        expect(failure(yield* fromCode(code))).toContain(variable)
        expect(failure(yield* fromEnv(env))).toContain(variable)
      }
    }))

  it.effect("every variable refused is named at once, not only the first", () =>
    Effect.gen(function*() {
      // Values out of bounds together…
      const said = failure(yield* fromEnv({ MAX_CONCURRENT_BATCHES: "-1", LOG_LEVEL: "loud", SHUTDOWN_DELAY: "100 days" }))
      for (const variable of ["MAX_CONCURRENT_BATCHES", "LOG_LEVEL", "SHUTDOWN_DELAY"]) expect(said).toContain(`at ${variable}:`)
      // … and values that cannot be read together (those first: the bounds are checked on what was read).
      const unread = failure(yield* fromEnv({ PORT: "x", MAX_CONNECTIONS: "many", LOG_LEVEL: "loud" }))
      for (const variable of ["PORT", "MAX_CONNECTIONS"]) expect(unread).toContain(`at ${variable}:`)
    }))

  it.effect("layerWith checks its upstreams as an upstreams file's are checked at start, not once the services start", () =>
    Effect.gen(function*() {
      const said = failure(yield* fromCode({ upstreams: Option.some([{ name: "a", base_url: "ftp://x/v1", models: ["m"] }]) }))
      expect(said).toContain("Invalid data at upstreams")
      expect(said).toContain("upstream 'a': base_url")
      expect(Exit.isSuccess(yield* fromCode({ upstreams: Option.some([{ name: "a", base_url: "http://127.0.0.1:1/v1", models: ["m"] }]) }))).toBe(true)
    }))

  it.effect("INFERENCE_BASE_URL beside UPSTREAMS_FILE stops the start (it would be ignored); either alone is read", () =>
    Effect.gen(function*() {
      const both = failure(yield* fromEnv({ UPSTREAMS_FILE: "upstreams.yaml", INFERENCE_BASE_URL: "http://127.0.0.1:8000/v1" }))
      expect(both).toContain("INFERENCE_BASE_URL")
      expect(both).toContain("give this one an entry there")
      // INFERENCE_API_KEY may stay: an entry's api_key_env can name it.
      const file = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map([
        ["UPSTREAMS_FILE", "upstreams.yaml"],
        ["INFERENCE_API_KEY", "sk-1"]
      ])))
      expect([file.upstreamsFile, file.inferenceBaseUrl]).toEqual([Option.some("upstreams.yaml"), "http://127.0.0.1:8000/v1"])
      const shortcut = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map([["INFERENCE_BASE_URL", "http://x:1/v1/"]])))
      expect(shortcut.inferenceBaseUrl).toBe("http://x:1/v1")
    }))

  it.effect("an integer is written in decimal digits: empty, hexadecimal, exponent or past 2^53 is refused, naming the variable", () =>
    Effect.gen(function*() {
      // An empty value (a template that rendered nothing) read as 0: PORT= listened on a random port.
      for (const [variable, value] of [["PORT", ""], ["MAX_CONCURRENT_BATCHES", " "], ["DISK_RESERVE_BYTES", ""], ["PORT", "0x50"], ["MAX_UPLOAD_BYTES", "1e3"]]) {
        const said = failure(yield* fromEnv({ [variable!]: value! }))
        expect(said).toContain(variable)
        expect(said).toContain(`Expected an integer (decimal digits) but received ${JSON.stringify(value)}`)
      }
      expect(failure(yield* fromEnv({ MAX_UPLOAD_BYTES: "99999999999999999999999" }))).toContain("Expected an integer within ±9007199254740991")
      const read = yield* fromEnv({ PORT: " 8080 ", MAX_CONCURRENT_BATCHES: "-0", SHUTDOWN_TIMEOUT: "0 seconds", SHUTDOWN_DELAY: "24 days", MAX_CONNECTIONS: "+500" })
      expect(Exit.map(read, (c) => [c.port, Object.is(c.maxConcurrentBatches, 0), Duration.toMillis(c.shutdownTimeout), Duration.toDays(c.shutdownDelay), c.maxConnections]))
        .toEqual(Exit.succeed([8080, true, 0, 24, 500]))
    }))

  it.effect("LOG_LEVEL is read in any case, warn standing for warning", () =>
    Effect.gen(function*() {
      for (const [text, level] of [["WARN", "warning"], ["warn", "warning"], ["Info", "info"], [" error ", "error"]]) {
        const env = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map([["LOG_LEVEL", text!]])))
        expect(env.logLevel).toBe(level)
      }
    }))

  it.effect("METRICS_PORT holding Kubernetes' link to a Service named metrics is unset; another value not a port is refused", () =>
    Effect.gen(function*() {
      const read = (value: string) => Effect.map(fromEnv({ METRICS_PORT: value }), Exit.map((c) => c.metricsPort))
      expect(yield* read("tcp://10.0.0.9:9090")).toEqual(Exit.succeed(Option.none()))
      expect(yield* read("9464")).toEqual(Exit.succeed(Option.some(9464)))
      expect(failure(yield* read("9464x"))).toContain("METRICS_PORT")
      expect(failure(yield* read("http://10.0.0.9:9090"))).toContain("Expected a port number")
    }))

  it.effect("HOST written as URLs write an IPv6 address ([::1]) is the address", () =>
    Effect.gen(function*() {
      expect(yield* Effect.map(fromEnv({ HOST: "[::1]" }), Exit.map((c) => c.host))).toEqual(Exit.succeed("::1"))
    }))

  it.effect("layerTest's data directory and node id are its own, without a disk reserve, and gone once the layer is released", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const first = yield* Effect.provide(AppConfig, Layer.extendScope(AppConfig.layerTest({ maxConcurrentBatches: 3 }))).pipe(Scope.extend(scope))
      const second = yield* Effect.provide(AppConfig, AppConfig.layerTest())
      expect([first.maxConcurrentBatches, first.diskReserveBytes, existsSync(first.dataDir)]).toEqual([3, 0, true])
      expect(second.dataDir).not.toBe(first.dataDir)
      // Two test apps on one PostgreSQL schema are two nodes, not one started twice; a node id given is kept.
      expect(second.nodeId).not.toBe(first.nodeId)
      expect((yield* Effect.provide(AppConfig, AppConfig.layerTest({ nodeId: "mine" }))).nodeId).toBe("mine")
      expect(existsSync(second.dataDir)).toBe(false)
      yield* Scope.close(scope, Exit.void)
      expect(existsSync(first.dataDir)).toBe(false)
    }))

  it.effect("the per-project limits are off unless set", () =>
    Effect.gen(function*() {
      const none = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map()))
      const limits = (c: typeof none) =>
        [c.maxActiveBatchesPerProject, c.maxEnqueuedRequestsPerProject, c.maxFileBytesPerProject, c.maxRequestsPerMinutePerProject]
      expect(limits(none)).toEqual([Option.none(), Option.none(), Option.none(), Option.none()])
      const set = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map([
        ["MAX_ACTIVE_BATCHES_PER_PROJECT", "3"], ["MAX_ENQUEUED_REQUESTS_PER_PROJECT", "1000"], ["MAX_FILE_BYTES_PER_PROJECT", "4096"],
        ["MAX_REQUESTS_PER_MINUTE_PER_PROJECT", "600"]
      ])))
      expect(limits(set)).toEqual([Option.some(3), Option.some(1000), Option.some(4096), Option.some(600)])
    }))

  it.effect("EXTRA_BATCH_ENDPOINTS is a comma-separated list of paths under /v1/", () =>
    Effect.gen(function*() {
      const env = yield* Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map([
        ["EXTRA_BATCH_ENDPOINTS", " /v1/rerank, /v1/score,,/v1/classify "]
      ])))
      expect(env.extraBatchEndpoints).toEqual(["/v1/rerank", "/v1/score", "/v1/classify"])
    }))

  it("MAX_CONNECTIONS' default: half the open files the process may have, at most 10,000", () => {
    const limits = (soft: number) =>
      `Limit                     Soft Limit           Hard Limit           Units     \nMax open files            ${soft}                ${soft}                files     \n`
    expect([limits(1_048_576), limits(20_000), limits(4_096), limits(1)].map(maxConnectionsFor)).toEqual([10_000, 10_000, 2_048, 1])
    expect(maxConnectionsFor(undefined)).toBe(10_000) // not Linux
    expect(defaults.maxConnections).toBeGreaterThan(0)
  })

  it.effect("the defaults pass every rule", () =>
    Effect.gen(function*() {
      expect(Exit.isSuccess(yield* fromCode({}))).toBe(true)
      expect(Exit.isSuccess(yield* fromEnv({}))).toBe(true)
      expect(Exit.isSuccess(yield* Effect.exit(Layer.build(AppConfig.layerWith({ port: 0 })).pipe(Effect.scoped)))).toBe(true)
    }))
})
