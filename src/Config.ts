/**
 * Every knob of the service, read from the environment in one place. An invalid value fails the start with a
 * message naming the variable (Effect's `ConfigError` does that; `main.ts` prints it).
 */
import { Config, Context, Duration, Layer, Option, Redacted } from "effect"
import { hostname } from "node:os"

export interface AppConfigShape {
  /** TCP port of the HTTP server (`PORT`). */
  readonly port: number
  /** Interface the HTTP server binds to (`HOST`). */
  readonly host: string
  /** Directory holding the SQLite database and the bytes of uploaded files (`DATA_DIR`). */
  readonly dataDir: string
  /** `postgres://…` (`DATABASE_URL`): keep the metadata in Postgres instead of SQLite. */
  readonly databaseUrl: Option.Option<Redacted.Redacted>
  /**
   * Where file bytes live (`FILE_STORAGE`): `local` (files under `DATA_DIR`) or `sql` (chunks in the database, so
   * every node reads every file). Default: `sql` with Postgres, `local` with SQLite.
   */
  readonly fileStorage: Option.Option<"local" | "sql">
  /** This node's name in leases (`NODE_ID`); unique among live nodes, stable across restarts. Default `host:port`. */
  readonly nodeId: string
  /** How long a node's claim on work lasts without renewal (`LEASE_TTL`): the time before a dead node's work moves on. */
  readonly leaseTtl: Duration.Duration
  /** How often a node renews its leases, looks for work and notices cancels from other nodes (`HEARTBEAT_INTERVAL`). */
  readonly heartbeatInterval: Duration.Duration
  /** Largest accepted upload, in bytes (`MAX_UPLOAD_BYTES`); larger uploads get a 413. */
  readonly maxUploadBytes: number
  /** Largest accepted JSON (any non-multipart) request body, in bytes (`MAX_JSON_BODY_BYTES`); larger get a 413. */
  readonly maxJsonBodyBytes: number
  /** How often expired files are deleted from storage (`FILE_SWEEP_INTERVAL`, e.g. `60 seconds`). */
  readonly fileSweepInterval: Duration.Duration
  /** On SIGINT/SIGTERM, how long open requests may take to finish before their connections are closed (`SHUTDOWN_TIMEOUT`). */
  readonly shutdownTimeout: Duration.Duration
  /** Base URL of the OpenAI-compatible upstream, including its `/v1` (`INFERENCE_BASE_URL`). */
  readonly inferenceBaseUrl: string
  /** Bearer token for the upstream (`INFERENCE_API_KEY`); none: no Authorization header. */
  readonly inferenceApiKey: Option.Option<Redacted.Redacted>
  /** Time limit of one whole upstream attempt, headers and body (`INFERENCE_TIMEOUT`). */
  readonly inferenceTimeout: Duration.Duration
  /** Largest upstream answer read, in bytes (`INFERENCE_MAX_RESPONSE_BYTES`); a larger one is an error line. */
  readonly inferenceMaxResponseBytes: number
  /** Attempts per request, the first included, on 429/5xx/network errors (`INFERENCE_MAX_ATTEMPTS`). */
  readonly inferenceMaxAttempts: number
  /** First retry delay; doubles each attempt, with jitter (`INFERENCE_RETRY_BASE_DELAY`). */
  readonly inferenceRetryBaseDelay: Duration.Duration
  /** Longest wait between two attempts, `Retry-After` included (`INFERENCE_RETRY_MAX_DELAY`). */
  readonly inferenceRetryMaxDelay: Duration.Duration
  /** Batches validated or run at the same time (`MAX_CONCURRENT_BATCHES`). */
  readonly maxConcurrentBatches: number
  /** Upstream requests in flight per batch, a sliding window (`MAX_CONCURRENT_REQUESTS_PER_BATCH`). */
  readonly maxConcurrentRequestsPerBatch: number
  /** Largest number of requests in one batch (`MAX_REQUESTS_PER_BATCH`). */
  readonly maxRequestsPerBatch: number
  /** Largest batch input file, in bytes (`MAX_BATCH_INPUT_BYTES`). */
  readonly maxBatchInputBytes: number
  /**
   * What the `24h` completion window means (`COMPLETION_WINDOW`): the API accepts only `24h`, as OpenAI; a shorter
   * duration here makes batches expire sooner (demos, tests).
   */
  readonly completionWindow: Duration.Duration
}

export const defaults: AppConfigShape = {
  port: 8321,
  host: "127.0.0.1",
  dataDir: "./.data",
  databaseUrl: Option.none(),
  fileStorage: Option.none(),
  nodeId: `${hostname()}:8321`,
  leaseTtl: Duration.seconds(15),
  heartbeatInterval: Duration.seconds(1),
  maxUploadBytes: 512 * 1024 * 1024,
  maxJsonBodyBytes: 1024 * 1024,
  fileSweepInterval: Duration.seconds(60),
  shutdownTimeout: Duration.seconds(10),
  inferenceBaseUrl: "http://127.0.0.1:8000/v1",
  inferenceApiKey: Option.none(),
  inferenceTimeout: Duration.minutes(10),
  inferenceMaxResponseBytes: 64 * 1024 * 1024,
  inferenceMaxAttempts: 5,
  inferenceRetryBaseDelay: Duration.seconds(1),
  inferenceRetryMaxDelay: Duration.seconds(60),
  maxConcurrentBatches: 1,
  maxConcurrentRequestsPerBatch: 32,
  maxRequestsPerBatch: 50_000,
  maxBatchInputBytes: 200 * 1024 * 1024,
  completionWindow: Duration.hours(24)
}

const positiveInt = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "Expected a positive integer", validation: (n) => n > 0 }),
    Config.withDefault(fallback)
  )

/** The `Config` description of `AppConfigShape`, read from the environment (or any ConfigProvider). */
export const appConfig: Config.Config<AppConfigShape> = Config.all({
  port: Config.port("PORT").pipe(Config.withDefault(defaults.port)),
  host: Config.string("HOST").pipe(
    Config.validate({ message: "Expected a non-empty host name", validation: (s) => s.trim() !== "" }),
    Config.withDefault(defaults.host)
  ),
  dataDir: Config.string("DATA_DIR").pipe(
    Config.validate({ message: "Expected a non-empty path", validation: (s) => s.trim() !== "" }),
    Config.withDefault(defaults.dataDir)
  ),
  maxUploadBytes: positiveInt("MAX_UPLOAD_BYTES", defaults.maxUploadBytes),
  maxJsonBodyBytes: positiveInt("MAX_JSON_BODY_BYTES", defaults.maxJsonBodyBytes),
  databaseUrl: Config.option(Config.string("DATABASE_URL").pipe(
    Config.validate({
      message: "Expected a postgres:// or postgresql:// URL",
      validation: (url) => /^postgres(ql)?:\/\//.test(url)
    }),
    Config.map(Redacted.make)
  )),
  fileStorage: Config.option(Config.literal("local", "sql")("FILE_STORAGE")),
  nodeId: Config.option(Config.nonEmptyString("NODE_ID")),
  leaseTtl: Config.duration("LEASE_TTL").pipe(Config.withDefault(defaults.leaseTtl)),
  heartbeatInterval: Config.duration("HEARTBEAT_INTERVAL").pipe(Config.withDefault(defaults.heartbeatInterval)),
  fileSweepInterval: Config.duration("FILE_SWEEP_INTERVAL").pipe(Config.withDefault(defaults.fileSweepInterval)),
  shutdownTimeout: Config.duration("SHUTDOWN_TIMEOUT").pipe(Config.withDefault(defaults.shutdownTimeout)),
  inferenceBaseUrl: Config.url("INFERENCE_BASE_URL").pipe(
    Config.map((url) => url.toString().replace(/\/+$/, "")),
    Config.withDefault(defaults.inferenceBaseUrl)
  ),
  inferenceApiKey: Config.option(Config.redacted("INFERENCE_API_KEY")),
  inferenceTimeout: Config.duration("INFERENCE_TIMEOUT").pipe(Config.withDefault(defaults.inferenceTimeout)),
  inferenceMaxResponseBytes: positiveInt("INFERENCE_MAX_RESPONSE_BYTES", defaults.inferenceMaxResponseBytes),
  inferenceMaxAttempts: positiveInt("INFERENCE_MAX_ATTEMPTS", defaults.inferenceMaxAttempts),
  inferenceRetryBaseDelay: Config.duration("INFERENCE_RETRY_BASE_DELAY").pipe(
    Config.withDefault(defaults.inferenceRetryBaseDelay)
  ),
  inferenceRetryMaxDelay: Config.duration("INFERENCE_RETRY_MAX_DELAY").pipe(
    Config.withDefault(defaults.inferenceRetryMaxDelay)
  ),
  maxConcurrentBatches: positiveInt("MAX_CONCURRENT_BATCHES", defaults.maxConcurrentBatches),
  maxConcurrentRequestsPerBatch: positiveInt(
    "MAX_CONCURRENT_REQUESTS_PER_BATCH",
    defaults.maxConcurrentRequestsPerBatch
  ),
  maxRequestsPerBatch: positiveInt("MAX_REQUESTS_PER_BATCH", defaults.maxRequestsPerBatch),
  maxBatchInputBytes: positiveInt("MAX_BATCH_INPUT_BYTES", defaults.maxBatchInputBytes),
  completionWindow: Config.duration("COMPLETION_WINDOW").pipe(Config.withDefault(defaults.completionWindow))
}).pipe(Config.map(({ nodeId, ...rest }) => ({
  ...rest,
  nodeId: Option.getOrElse(nodeId, () => `${hostname()}:${rest.port}`)
})))

/** Where file bytes live: `FILE_STORAGE`, by default in the database with Postgres and on local disk with SQLite. */
export const fileStorageOf = (config: Pick<AppConfigShape, "fileStorage" | "databaseUrl">): "local" | "sql" =>
  Option.getOrElse(config.fileStorage, () => (Option.isSome(config.databaseUrl) ? "sql" : "local"))

export class AppConfig extends Context.Tag("AppConfig")<AppConfig, AppConfigShape>() {
  /** Reads the configuration from the environment. */
  static readonly layer: Layer.Layer<AppConfig, import("effect/ConfigError").ConfigError> = Layer.effect(
    AppConfig,
    appConfig
  )
  /** A fixed configuration: the defaults with `overrides` on top (tests, embedding). */
  static readonly layerWith = (overrides: Partial<AppConfigShape> = {}): Layer.Layer<AppConfig> =>
    Layer.succeed(AppConfig, { ...defaults, ...overrides })
}
