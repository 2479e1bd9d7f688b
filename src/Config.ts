/**
 * Every knob of the service, read from the environment in one place. An invalid value fails the start with a
 * message naming the variable (Effect's `ConfigError` does that; `main.ts` prints it).
 */
import { Config, ConfigError, Context, Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { hostname, tmpdir } from "node:os"
import * as Path from "node:path"
import { getHeapStatistics } from "node:v8"
import { commaList, exposedWithoutKeys, keysConfigured, validateConfig } from "./configRules.js"
import type { AppConfigShape } from "./configShape.js"
import { isServiceAddress } from "./configTypos.js"
import { parseDuration } from "./durationText.js"
import { OPENAI_MAX_REQUESTS_PER_BATCH } from "./domain/Batches.js"
import { defaultMaxConnections } from "./http/connectionCap.js"
import { defaultAnswerBudget } from "./inference/answerMemory.js"
import { upstreamSpecs } from "./upstreams/upstreamsFile.js"

export type { AppConfigShape } from "./configShape.js"

/** What a SIGHUP line adds: the settings other than the keys file are read once, at start. */
export const RESTART_TO_APPLY = "UPSTREAMS_FILE and the other settings are read at start: a restart applies a change to them"

export const defaults: AppConfigShape = {
  port: 8321,
  host: "127.0.0.1",
  metricsPort: Option.none(),
  dataDir: "./.data",
  databaseUrl: Option.none(),
  databaseStatementTimeout: Duration.seconds(60), // far above any statement of ours on a server that answers
  fileStorage: Option.none(),
  nodeId: `${hostname()}:8321`, // `layerWith` and the environment derive it from the port
  leaseTtl: Duration.seconds(15),
  heartbeatInterval: Duration.seconds(1),
  maxUploadBytes: 512 * 1024 * 1024,
  maxJsonBodyBytes: 1024 * 1024,
  maxJsonBodiesBytes: 64 * 1024 * 1024,
  maxUploadsAtOnce: 64,
  maxConnections: defaultMaxConnections(),
  fileSweepInterval: Duration.seconds(60),
  batchFilesExpireAfter: Option.none(),
  shutdownTimeout: Duration.seconds(10),
  shutdownDelay: Duration.zero,
  resultPagesAtOnce: 8,
  stallTimeout: Duration.seconds(30),
  minBodyRate: 1024,
  diskReserveBytes: 16 * 1024 * 1024,
  maxDownloadsAtOnce: 256,
  logFormat: process.stdout.isTTY === true ? "pretty" : "json",
  logLevel: "info",
  inferenceBaseUrl: "http://127.0.0.1:8000/v1",
  inferenceApiKey: Option.none(),
  inferenceTimeout: Duration.minutes(10),
  inferenceMaxResponseBytes: 64 * 1024 * 1024,
  inferenceMaxBufferedBytes: defaultAnswerBudget(getHeapStatistics().heap_size_limit),
  inferenceMaxConcurrency: 256,
  inferenceMinConcurrency: 1,
  upstreamsFile: Option.none(),
  upstreams: Option.none(),
  upstreamProbeInterval: Duration.seconds(2),
  extraBatchEndpoints: [],
  inferenceMode: "live",
  inferenceRecordings: Option.none(),
  inferenceMaxAttempts: 5,
  inferenceRetryBaseDelay: Duration.seconds(1),
  inferenceRetryMaxDelay: Duration.seconds(60),
  maxConcurrentBatches: 1,
  maxConcurrentRequestsPerBatch: 32,
  maxRequestsPerBatch: OPENAI_MAX_REQUESTS_PER_BATCH,
  maxBatchInputBytes: 200 * 1024 * 1024,
  maxActiveBatchesPerProject: Option.none(),
  maxEnqueuedRequestsPerProject: Option.none(),
  maxFileBytesPerProject: Option.none(),
  maxRequestsPerMinutePerProject: Option.none(),
  completionWindow: Duration.hours(24),
  apiKeys: [],
  adminApiKeys: [],
  apiKeysFile: Option.none(),
  corsOrigins: [],
  allowUnauthenticated: false,
  webhookUrl: Option.none(),
  webhookSecret: Option.none(),
  webhookRetryBaseDelay: Duration.seconds(5),
  webhookRetryMaxDelay: Duration.hours(1),
  webhookRetryFor: Duration.hours(72)
}

export { exposedWithoutKeys, isLoopbackName, keysConfigured, validateConfig } from "./configRules.js"

/** This node's default name in leases: unique per host and port, the same across restarts. */
const defaultNodeId = (port: number) => `${hostname()}:${port}`

/**
 * The node's id as the environment gives it (`NODE_ID`, else the host name and `PORT`), for the line saying the
 * configuration is invalid: written before the configuration could be read, it names its node as the others do.
 */
export const nodeIdOfEnvironment = (env: Record<string, string | undefined> = process.env): string => {
  if (env.NODE_ID !== undefined && env.NODE_ID !== "") return env.NODE_ID
  const port = Number(env.PORT)
  return defaultNodeId(Number.isInteger(port) && port > 0 && port < 65536 ? port : defaults.port)
}

/** A comma-separated secret as its entries, each still a secret. */
const redactedList = (text: Option.Option<Redacted.Redacted>): ReadonlyArray<Redacted.Redacted> =>
  Option.match(text, { onNone: () => [], onSome: (t) => commaList(Redacted.value(t)).map((entry) => Redacted.make(entry)) })

/**
 * An integer written in decimal digits (a sign allowed): Effect's `Config.integer` reads with `Number`, which takes
 * an empty value for 0 (`PORT=` from a template that rendered nothing listened on a random port; `MAX_CONCURRENT_BATCHES=`
 * ran no batch), `0x50` for 80 and `1e3` for 1000. Past 2^53, an integer is no longer exact: refused as well.
 */
const integerSetting = (name: string): Config.Config<number> =>
  Config.string(name).pipe(Config.mapOrFail((text) => {
    const value = /^\s*[-+]?\d+\s*$/.test(text) ? Number(text) : NaN
    return Number.isSafeInteger(value)
      ? Either.right(value === 0 ? 0 : value) // -0 is 0
      : Either.left(ConfigError.InvalidData([], Number.isNaN(value)
        ? `Expected an integer (decimal digits) but received ${JSON.stringify(text)}`
        : `Expected an integer within ±${Number.MAX_SAFE_INTEGER} but received ${text.trim()}`))
  }))

/** A duration setting, in Effect's words or the short form (`durationText.ts`); refused as `Config.duration` refuses. */
const durationSetting = (name: string): Config.Config<Duration.Duration> =>
  Config.string(name).pipe(Config.mapOrFail((text) =>
    Either.fromOption(parseDuration(text), () => ConfigError.InvalidData([], `Expected a duration but received ${JSON.stringify(text)}`))
  ))

/**
 * A port, or none when the variable is Kubernetes' service link of a Service so named (`METRICS_PORT=tcp://10.0.0.7:9090`
 * for a Service `metrics` in the pod's namespace): that is no setting of ours, and stopped the start (`main.ts` says it
 * is passed over).
 */
const portUnlessServiceLink = (name: string): Config.Config<Option.Option<number>> =>
  Config.option(Config.string(name).pipe(Config.mapOrFail((text) =>
    isServiceAddress(text)
      ? Either.right(Option.none())
      : /^\s*\d+\s*$/.test(text)
      ? Either.right(Option.some(Number(text)))
      : Either.left(ConfigError.InvalidData([], `Expected a port number but received ${JSON.stringify(text)}`))
  ))).pipe(Config.map(Option.flatten))

/** The `Config` description of `AppConfigShape`, read from the environment (or any ConfigProvider). */
export const appConfig: Config.Config<AppConfigShape> = Config.all({
  port: integerSetting("PORT").pipe(Config.withDefault(defaults.port)),
  // An IPv6 address as URLs write it (`[::1]`), which Node cannot listen on: the address itself.
  host: Config.string("HOST").pipe(Config.map((host) => host.replace(/^\[(.*)\]$/, "$1")), Config.withDefault(defaults.host)),
  metricsPort: portUnlessServiceLink("METRICS_PORT"),
  dataDir: Config.string("DATA_DIR").pipe(Config.withDefault(defaults.dataDir)),
  maxUploadBytes: integerSetting("MAX_UPLOAD_BYTES").pipe(Config.withDefault(defaults.maxUploadBytes)),
  maxJsonBodyBytes: integerSetting("MAX_JSON_BODY_BYTES").pipe(Config.withDefault(defaults.maxJsonBodyBytes)),
  maxJsonBodiesBytes: integerSetting("MAX_JSON_BODIES_BYTES").pipe(Config.withDefault(defaults.maxJsonBodiesBytes)),
  maxUploadsAtOnce: integerSetting("MAX_UPLOADS_AT_ONCE").pipe(Config.withDefault(defaults.maxUploadsAtOnce)),
  maxConnections: integerSetting("MAX_CONNECTIONS").pipe(Config.withDefault(defaults.maxConnections)),
  databaseUrl: Config.option(Config.redacted("DATABASE_URL")),
  databaseStatementTimeout: durationSetting("DATABASE_STATEMENT_TIMEOUT").pipe(
    Config.withDefault(defaults.databaseStatementTimeout)
  ),
  fileStorage: Config.option(Config.literal("local", "sql")("FILE_STORAGE")),
  nodeId: Config.option(Config.string("NODE_ID")),
  leaseTtl: durationSetting("LEASE_TTL").pipe(Config.withDefault(defaults.leaseTtl)),
  heartbeatInterval: durationSetting("HEARTBEAT_INTERVAL").pipe(Config.withDefault(defaults.heartbeatInterval)),
  fileSweepInterval: durationSetting("FILE_SWEEP_INTERVAL").pipe(Config.withDefault(defaults.fileSweepInterval)),
  batchFilesExpireAfter: Config.option(durationSetting("BATCH_FILES_EXPIRE_AFTER")),
  shutdownTimeout: durationSetting("SHUTDOWN_TIMEOUT").pipe(Config.withDefault(defaults.shutdownTimeout)),
  shutdownDelay: durationSetting("SHUTDOWN_DELAY").pipe(Config.withDefault(defaults.shutdownDelay)),
  resultPagesAtOnce: integerSetting("RESULT_PAGES_AT_ONCE").pipe(Config.withDefault(defaults.resultPagesAtOnce)),
  stallTimeout: durationSetting("STALL_TIMEOUT").pipe(Config.withDefault(defaults.stallTimeout)),
  minBodyRate: integerSetting("MIN_BODY_RATE").pipe(Config.withDefault(defaults.minBodyRate)),
  diskReserveBytes: integerSetting("DISK_RESERVE_BYTES").pipe(Config.withDefault(defaults.diskReserveBytes)),
  maxDownloadsAtOnce: integerSetting("MAX_DOWNLOADS_AT_ONCE").pipe(Config.withDefault(defaults.maxDownloadsAtOnce)),
  logFormat: Config.literal("json", "pretty")("LOG_FORMAT").pipe(Config.withDefault(defaults.logFormat)),
  // In any case, and `warn` for `warning` (its lines print as `WARN`; other tools name it so): the rules check the rest.
  logLevel: Config.string("LOG_LEVEL").pipe(
    Config.map((text) => {
      const level = text.trim().toLowerCase()
      return (level === "warn" ? "warning" : level) as AppConfigShape["logLevel"]
    }),
    Config.withDefault(defaults.logLevel)
  ),
  inferenceBaseUrl: Config.option(Config.string("INFERENCE_BASE_URL").pipe(Config.map((url) => url.replace(/\/+$/, "")))),
  inferenceApiKey: Config.option(Config.redacted("INFERENCE_API_KEY")),
  inferenceTimeout: durationSetting("INFERENCE_TIMEOUT").pipe(Config.withDefault(defaults.inferenceTimeout)),
  inferenceMaxResponseBytes: integerSetting("INFERENCE_MAX_RESPONSE_BYTES").pipe(
    Config.withDefault(defaults.inferenceMaxResponseBytes)
  ),
  inferenceMaxBufferedBytes: integerSetting("INFERENCE_MAX_BUFFERED_BYTES").pipe(
    Config.withDefault(defaults.inferenceMaxBufferedBytes)
  ),
  inferenceMaxAttempts: integerSetting("INFERENCE_MAX_ATTEMPTS").pipe(Config.withDefault(defaults.inferenceMaxAttempts)),
  inferenceMaxConcurrency: integerSetting("INFERENCE_MAX_CONCURRENCY").pipe(
    Config.withDefault(defaults.inferenceMaxConcurrency)
  ),
  inferenceMinConcurrency: integerSetting("INFERENCE_MIN_CONCURRENCY").pipe(
    Config.withDefault(defaults.inferenceMinConcurrency)
  ),
  upstreamsFile: Config.option(Config.string("UPSTREAMS_FILE")),
  upstreamProbeInterval: durationSetting("UPSTREAM_PROBE_INTERVAL").pipe(Config.withDefault(defaults.upstreamProbeInterval)),
  extraBatchEndpoints: Config.string("EXTRA_BATCH_ENDPOINTS").pipe(
    Config.map(commaList),
    Config.withDefault(defaults.extraBatchEndpoints)
  ),
  inferenceMode: Config.literal("live", "record", "replay")("INFERENCE_MODE").pipe(Config.withDefault(defaults.inferenceMode)),
  inferenceRecordings: Config.option(Config.string("INFERENCE_RECORDINGS")),
  inferenceRetryBaseDelay: durationSetting("INFERENCE_RETRY_BASE_DELAY").pipe(
    Config.withDefault(defaults.inferenceRetryBaseDelay)
  ),
  inferenceRetryMaxDelay: durationSetting("INFERENCE_RETRY_MAX_DELAY").pipe(
    Config.withDefault(defaults.inferenceRetryMaxDelay)
  ),
  maxConcurrentBatches: integerSetting("MAX_CONCURRENT_BATCHES").pipe(Config.withDefault(defaults.maxConcurrentBatches)),
  maxConcurrentRequestsPerBatch: integerSetting("MAX_CONCURRENT_REQUESTS_PER_BATCH").pipe(
    Config.withDefault(defaults.maxConcurrentRequestsPerBatch)
  ),
  maxRequestsPerBatch: integerSetting("MAX_REQUESTS_PER_BATCH").pipe(Config.withDefault(defaults.maxRequestsPerBatch)),
  maxBatchInputBytes: integerSetting("MAX_BATCH_INPUT_BYTES").pipe(Config.withDefault(defaults.maxBatchInputBytes)),
  maxActiveBatchesPerProject: Config.option(integerSetting("MAX_ACTIVE_BATCHES_PER_PROJECT")),
  maxEnqueuedRequestsPerProject: Config.option(integerSetting("MAX_ENQUEUED_REQUESTS_PER_PROJECT")),
  maxFileBytesPerProject: Config.option(integerSetting("MAX_FILE_BYTES_PER_PROJECT")),
  maxRequestsPerMinutePerProject: Config.option(integerSetting("MAX_REQUESTS_PER_MINUTE_PER_PROJECT")),
  completionWindow: durationSetting("COMPLETION_WINDOW").pipe(Config.withDefault(defaults.completionWindow)),
  apiKeys: Config.option(Config.redacted("API_KEYS")),
  adminApiKeys: Config.option(Config.redacted("ADMIN_API_KEYS")),
  apiKeysFile: Config.option(Config.string("API_KEYS_FILE")),
  corsOrigins: Config.string("CORS_ORIGINS").pipe(Config.map(commaList), Config.withDefault(defaults.corsOrigins)),
  allowUnauthenticated: Config.boolean("ALLOW_UNAUTHENTICATED").pipe(Config.withDefault(defaults.allowUnauthenticated)),
  webhookUrl: Config.option(Config.string("WEBHOOK_URL")),
  webhookSecret: Config.option(Config.redacted("WEBHOOK_SECRET")),
  webhookRetryBaseDelay: durationSetting("WEBHOOK_RETRY_BASE_DELAY").pipe(Config.withDefault(defaults.webhookRetryBaseDelay)),
  webhookRetryMaxDelay: durationSetting("WEBHOOK_RETRY_MAX_DELAY").pipe(Config.withDefault(defaults.webhookRetryMaxDelay)),
  webhookRetryFor: durationSetting("WEBHOOK_RETRY_FOR").pipe(Config.withDefault(defaults.webhookRetryFor))
}).pipe(
  Config.mapOrFail(({ adminApiKeys, apiKeys, inferenceBaseUrl, nodeId, ...rest }) =>
    // Only here can a base URL set be told from the default one: set beside the file, it would be ignored.
    Option.isSome(inferenceBaseUrl) && Option.isSome(rest.upstreamsFile)
      ? Either.left(ConfigError.InvalidData(
        ["INFERENCE_BASE_URL"],
        "Expected unset with UPSTREAMS_FILE, which lists the upstreams: give this one an entry there"
      ))
      : Either.flatMap(
        validateConfig({
          ...rest,
          upstreams: Option.none(),
          inferenceBaseUrl: Option.getOrElse(inferenceBaseUrl, () => defaults.inferenceBaseUrl),
          apiKeys: redactedList(apiKeys),
          adminApiKeys: redactedList(adminApiKeys),
          nodeId: Option.getOrElse(nodeId, () => defaultNodeId(rest.port))
        }),
        // Said before anything starts; the services check it again on the keys in use (`HostCheckLive`).
        (config) =>
          Option.match(exposedWithoutKeys(config, keysConfigured(config)), {
            onNone: () => Either.right(config),
            onSome: Either.left
          })
      )
  )
)

/**
 * Whether this node runs batches (and delivers their webhooks); one with `MAX_CONCURRENT_BATCHES=0` serves the API
 * only and leaves that work to the others on its database.
 */
export const runsBatches = (config: Pick<AppConfigShape, "maxConcurrentBatches">) => config.maxConcurrentBatches > 0

/** Where file bytes live: `FILE_STORAGE`, by default in the database with Postgres and on local disk with SQLite. */
export const fileStorageOf = (config: Pick<AppConfigShape, "fileStorage" | "databaseUrl">): "local" | "sql" =>
  Option.getOrElse(config.fileStorage, () => (Option.isSome(config.databaseUrl) ? "sql" : "local"))

/**
 * `config`, once its upstreams (given in code, or `UPSTREAMS_FILE`'s) are checked: a mistake there is said before
 * anything starts (a bad file had left a new data directory and database behind). Replayed answers use no upstream:
 * none is checked.
 */
const upstreamsChecked = (config: AppConfigShape): Effect.Effect<AppConfigShape, ConfigError.ConfigError> =>
  config.inferenceMode === "replay" ? Effect.succeed(config) : Effect.as(upstreamSpecs(config), config)

export class AppConfig extends Context.Tag("AppConfig")<AppConfig, AppConfigShape>() {
  /** Reads the configuration from the environment. */
  static readonly layer: Layer.Layer<AppConfig, ConfigError.ConfigError> = Layer.effect(
    AppConfig,
    Effect.flatMap(appConfig, upstreamsChecked)
  )
  /**
   * A configuration given in code (tests, embedding): the defaults with `overrides` on top, `nodeId` derived from
   * the port unless given, checked by the same rules as the environment; `upstreams` given here, as an upstreams
   * file's are at start (a bad `base_url` said now, not once the services start).
   */
  static readonly layerWith = (overrides: Partial<AppConfigShape> = {}): Layer.Layer<AppConfig, ConfigError.ConfigError> =>
    Layer.effect(AppConfig, configWith(overrides))
  /**
   * `layerWith` for a test: the data directory one of its own, made in the OS's temporary directory and removed with
   * all it holds when the layer is released (the services built on it are released first), no disk reserve in it
   * unless given (nothing there outlives the test; a reserve is 16 MiB a test app left behind), and a node id of its
   * own unless given (test apps on one PostgreSQL schema all took the port's, and the second waited 15 s to be
   * refused as the same node).
   */
  static readonly layerTest = (
    overrides: Partial<Omit<AppConfigShape, "dataDir">> = {}
  ): Layer.Layer<AppConfig, ConfigError.ConfigError> =>
    Layer.scoped(
      AppConfig,
      Effect.flatMap(
        Effect.acquireRelease(
          Effect.sync(() => mkdtempSync(Path.join(tmpdir(), "openai-batch-test-"))),
          (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
        ),
        (dataDir) => configWith({ diskReserveBytes: 0, nodeId: `test-${Path.basename(dataDir).slice(-6)}`, ...overrides, dataDir })
      )
    )
}

/** The defaults with `overrides` on top, as `AppConfig.layerWith` describes. */
const configWith = (overrides: Partial<AppConfigShape>): Effect.Effect<AppConfigShape, ConfigError.ConfigError> =>
  Effect.flatMap(validateConfig({ ...defaults, nodeId: defaultNodeId(overrides.port ?? defaults.port), ...overrides }), upstreamsChecked)
