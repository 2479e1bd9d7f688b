/**
 * Every knob of the service, read from the environment in one place. An invalid value fails the start with a
 * message naming the variable (Effect's `ConfigError` does that; `main.ts` prints it).
 */
import { Config, ConfigError, Context, Duration, Either, Layer, Option, Redacted } from "effect"
import { hostname } from "node:os"
import { parseAdminKey, parseKeyEntry } from "./auth/keyEntries.js"

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
  /** Batches of one project not yet finished, at most (`MAX_ACTIVE_BATCHES_PER_PROJECT`); a create beyond: 429. */
  readonly maxActiveBatchesPerProject: Option.Option<number>
  /** Requests in one project's unfinished batches, at most (`MAX_ENQUEUED_REQUESTS_PER_PROJECT`); checked at validation. */
  readonly maxEnqueuedRequestsPerProject: Option.Option<number>
  /** Bytes of one project's files, at most (`MAX_FILE_BYTES_PER_PROJECT`); an upload beyond: 413 (output files count, unrefused). */
  readonly maxFileBytesPerProject: Option.Option<number>
  /**
   * What the `24h` completion window means (`COMPLETION_WINDOW`): the API accepts only `24h`, as OpenAI; a shorter
   * duration here makes batches expire sooner (demos, tests).
   */
  readonly completionWindow: Duration.Duration
  /**
   * API keys (`API_KEYS`): entries `KEY` or `KEY:PROJECT` (`KEY` may also be `sha256:<64 lowercase hex>`), each a
   * secret. Keys naming the same project share it; a key without one is a project of its own.
   */
  readonly apiKeys: ReadonlyArray<Redacted.Redacted>
  /** Operator keys (`ADMIN_API_KEYS`): they see and may act on every project's objects. */
  readonly adminApiKeys: ReadonlyArray<Redacted.Redacted>
  /** A file of key entries, one a line (`API_KEYS_FILE`), re-read on SIGHUP; see `auth/Auth.ts` for its lines. */
  readonly apiKeysFile: Option.Option<string>
  /** Origins that may call the API from a browser (`CORS_ORIGINS`, exact origins); none: no CORS headers at all. */
  readonly corsOrigins: ReadonlyArray<string>
  /**
   * Serve without API keys on a non-loopback `HOST`, and answer any `Host` header (`ALLOW_UNAUTHENTICATED`): only
   * behind something else that authenticates. Without keys and without it, the server serves loopback only.
   */
  readonly allowUnauthenticated: boolean
}

export const defaults: AppConfigShape = {
  port: 8321,
  host: "127.0.0.1",
  dataDir: "./.data",
  databaseUrl: Option.none(),
  fileStorage: Option.none(),
  nodeId: `${hostname()}:8321`, // `layerWith` and the environment derive it from the port
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
  maxActiveBatchesPerProject: Option.none(),
  maxEnqueuedRequestsPerProject: Option.none(),
  maxFileBytesPerProject: Option.none(),
  completionWindow: Duration.hours(24),
  apiKeys: [],
  adminApiKeys: [],
  apiKeysFile: Option.none(),
  corsOrigins: [],
  allowUnauthenticated: false
}

/** A rule of the configuration: what `variable` must be, checked on the whole configuration. */
interface Rule {
  readonly variable: string
  readonly expected: string
  readonly holds: (config: AppConfigShape) => boolean
}

type Numeric = { [K in keyof AppConfigShape]: AppConfigShape[K] extends number ? K : never }[keyof AppConfigShape]
type Durations = { [K in keyof AppConfigShape]: AppConfigShape[K] extends Duration.Duration ? K : never }[keyof AppConfigShape]

const positiveInt = (field: Numeric, variable: string): Rule => ({
  variable,
  expected: "a positive integer",
  holds: (c) => Number.isSafeInteger(c[field]) && c[field] > 0
})
type OptionalNumeric = { [K in keyof AppConfigShape]: AppConfigShape[K] extends Option.Option<number> ? K : never }[keyof AppConfigShape]
const optionalPositiveInt = (field: OptionalNumeric, variable: string): Rule => ({
  variable,
  expected: "a positive integer (or unset: no limit)",
  holds: (c) => !Option.exists(c[field], (n) => !Number.isSafeInteger(n) || n <= 0)
})
const positiveDuration = (field: Durations, variable: string): Rule => ({
  variable,
  expected: "a duration longer than zero",
  holds: (c) => Duration.isDuration(c[field]) && Duration.greaterThan(c[field], Duration.zero)
})
const nonEmpty = (field: "host" | "dataDir" | "nodeId", variable: string): Rule => ({
  variable,
  expected: "a non-empty string",
  holds: (c) => typeof c[field] === "string" && c[field].trim() !== ""
})
const isUrl = (text: string, protocols: RegExp) => URL.canParse(text) && protocols.test(new URL(text).protocol)

/** Whether requests need an API key: any key variable is set (a keys file counts even when it lists none). */
export const keysConfigured = (config: Pick<AppConfigShape, "apiKeys" | "adminApiKeys" | "apiKeysFile">): boolean =>
  config.apiKeys.length > 0 || config.adminApiKeys.length > 0 || Option.isSome(config.apiKeysFile)

/** A loopback name or address: `localhost`, `127.0.0.0/8`, `::1` (bracketed or not). */
export const isLoopbackName = (name: string): boolean => {
  const n = name.toLowerCase()
  return n === "localhost" || n === "::1" || n === "[::1]" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(n)
}

/** `text` split at commas, each entry trimmed, empty ones dropped. */
export const commaList = (text: string): ReadonlyArray<string> =>
  text.split(",").map((entry) => entry.trim()).filter((entry) => entry !== "")

/** An exact origin (`https://app.example.com`, `http://localhost:3000`): scheme, host and port, nothing more. */
const isOrigin = (text: string) =>
  URL.canParse(text) && /^https?:$/.test(new URL(text).protocol) && new URL(text).origin === text

/**
 * Every rule, for the environment and for a configuration given in code alike (`AppConfig.layerWith`): the same
 * mistakes are refused whichever way a value comes in.
 */
const rules: ReadonlyArray<Rule> = [
  { variable: "PORT", expected: "a port number (0–65535)", holds: (c) => Number.isInteger(c.port) && c.port >= 0 && c.port <= 65535 },
  nonEmpty("host", "HOST"),
  nonEmpty("dataDir", "DATA_DIR"),
  nonEmpty("nodeId", "NODE_ID"),
  {
    variable: "DATABASE_URL",
    expected: "a postgres:// or postgresql:// URL",
    holds: (c) => !Option.exists(c.databaseUrl, (url) => !/^postgres(ql)?:\/\//.test(Redacted.value(url)))
  },
  { variable: "FILE_STORAGE", expected: "local or sql", holds: (c) => !Option.exists(c.fileStorage, (s) => s !== "local" && s !== "sql") },
  { variable: "INFERENCE_BASE_URL", expected: "an http:// or https:// URL", holds: (c) => isUrl(c.inferenceBaseUrl, /^https?:$/) },
  positiveInt("maxUploadBytes", "MAX_UPLOAD_BYTES"),
  positiveInt("maxJsonBodyBytes", "MAX_JSON_BODY_BYTES"),
  positiveInt("inferenceMaxResponseBytes", "INFERENCE_MAX_RESPONSE_BYTES"),
  positiveInt("inferenceMaxAttempts", "INFERENCE_MAX_ATTEMPTS"),
  positiveInt("maxConcurrentBatches", "MAX_CONCURRENT_BATCHES"),
  positiveInt("maxConcurrentRequestsPerBatch", "MAX_CONCURRENT_REQUESTS_PER_BATCH"),
  positiveInt("maxRequestsPerBatch", "MAX_REQUESTS_PER_BATCH"),
  positiveInt("maxBatchInputBytes", "MAX_BATCH_INPUT_BYTES"),
  optionalPositiveInt("maxActiveBatchesPerProject", "MAX_ACTIVE_BATCHES_PER_PROJECT"),
  optionalPositiveInt("maxEnqueuedRequestsPerProject", "MAX_ENQUEUED_REQUESTS_PER_PROJECT"),
  optionalPositiveInt("maxFileBytesPerProject", "MAX_FILE_BYTES_PER_PROJECT"),
  positiveDuration("leaseTtl", "LEASE_TTL"),
  positiveDuration("heartbeatInterval", "HEARTBEAT_INTERVAL"),
  positiveDuration("fileSweepInterval", "FILE_SWEEP_INTERVAL"),
  positiveDuration("inferenceTimeout", "INFERENCE_TIMEOUT"),
  positiveDuration("completionWindow", "COMPLETION_WINDOW"),
  {
    variable: "HEARTBEAT_INTERVAL",
    expected: "a duration shorter than LEASE_TTL (leases are renewed every heartbeat, or they run out)",
    holds: (c) => Duration.lessThan(c.heartbeatInterval, c.leaseTtl)
  },
  {
    variable: "API_KEYS",
    expected: "comma-separated entries KEY or KEY:PROJECT (PROJECT: 1–64 of A–Z a–z 0–9 _ -; KEY without spaces, " +
      "or sha256:<64 lowercase hex>)",
    holds: (c) => c.apiKeys.every((entry) => !("problem" in parseKeyEntry(Redacted.value(entry))))
  },
  {
    variable: "ADMIN_API_KEYS",
    expected: "comma-separated keys without spaces (or sha256:<64 lowercase hex>)",
    holds: (c) => c.adminApiKeys.every((key) => !("problem" in parseAdminKey(Redacted.value(key))))
  },
  {
    variable: "API_KEYS_FILE",
    expected: "a file path",
    holds: (c) => !Option.exists(c.apiKeysFile, (path) => path.trim() === "")
  },
  {
    variable: "CORS_ORIGINS",
    expected: "comma-separated exact origins such as https://app.example.com (scheme, host, port unless the default; " +
      "no path, no trailing slash, no *)",
    holds: (c) => c.corsOrigins.every(isOrigin)
  },
  {
    variable: "HOST",
    expected: "a loopback address (127.0.0.1, localhost or ::1) when no API key is configured: set API_KEYS, " +
      "ADMIN_API_KEYS or API_KEYS_FILE, or ALLOW_UNAUTHENTICATED=true to serve everyone on this interface without a key",
    holds: (c) => keysConfigured(c) || c.allowUnauthenticated || isLoopbackName(c.host)
  },
  {
    variable: "INFERENCE_RETRY_MAX_DELAY",
    expected: "a duration no shorter than INFERENCE_RETRY_BASE_DELAY",
    holds: (c) => Duration.greaterThanOrEqualTo(c.inferenceRetryMaxDelay, c.inferenceRetryBaseDelay)
  }
]

/** The configuration when every rule holds, else the first broken one, naming its variable. */
export const validateConfig = (config: AppConfigShape): Either.Either<AppConfigShape, ConfigError.ConfigError> => {
  const broken = rules.find((rule) => !rule.holds(config))
  return broken === undefined
    ? Either.right(config)
    : Either.left(ConfigError.InvalidData([broken.variable], `Expected ${broken.expected}`))
}

/** This node's default name in leases: unique per host and port, the same across restarts. */
const defaultNodeId = (port: number) => `${hostname()}:${port}`

/** A comma-separated secret as its entries, each still a secret. */
const redactedList = (text: Option.Option<Redacted.Redacted>): ReadonlyArray<Redacted.Redacted> =>
  Option.match(text, { onNone: () => [], onSome: (t) => commaList(Redacted.value(t)).map((entry) => Redacted.make(entry)) })

/** The `Config` description of `AppConfigShape`, read from the environment (or any ConfigProvider). */
export const appConfig: Config.Config<AppConfigShape> = Config.all({
  port: Config.integer("PORT").pipe(Config.withDefault(defaults.port)),
  host: Config.string("HOST").pipe(Config.withDefault(defaults.host)),
  dataDir: Config.string("DATA_DIR").pipe(Config.withDefault(defaults.dataDir)),
  maxUploadBytes: Config.integer("MAX_UPLOAD_BYTES").pipe(Config.withDefault(defaults.maxUploadBytes)),
  maxJsonBodyBytes: Config.integer("MAX_JSON_BODY_BYTES").pipe(Config.withDefault(defaults.maxJsonBodyBytes)),
  databaseUrl: Config.option(Config.redacted("DATABASE_URL")),
  fileStorage: Config.option(Config.literal("local", "sql")("FILE_STORAGE")),
  nodeId: Config.option(Config.string("NODE_ID")),
  leaseTtl: Config.duration("LEASE_TTL").pipe(Config.withDefault(defaults.leaseTtl)),
  heartbeatInterval: Config.duration("HEARTBEAT_INTERVAL").pipe(Config.withDefault(defaults.heartbeatInterval)),
  fileSweepInterval: Config.duration("FILE_SWEEP_INTERVAL").pipe(Config.withDefault(defaults.fileSweepInterval)),
  shutdownTimeout: Config.duration("SHUTDOWN_TIMEOUT").pipe(Config.withDefault(defaults.shutdownTimeout)),
  inferenceBaseUrl: Config.string("INFERENCE_BASE_URL").pipe(
    Config.map((url) => url.replace(/\/+$/, "")),
    Config.withDefault(defaults.inferenceBaseUrl)
  ),
  inferenceApiKey: Config.option(Config.redacted("INFERENCE_API_KEY")),
  inferenceTimeout: Config.duration("INFERENCE_TIMEOUT").pipe(Config.withDefault(defaults.inferenceTimeout)),
  inferenceMaxResponseBytes: Config.integer("INFERENCE_MAX_RESPONSE_BYTES").pipe(
    Config.withDefault(defaults.inferenceMaxResponseBytes)
  ),
  inferenceMaxAttempts: Config.integer("INFERENCE_MAX_ATTEMPTS").pipe(Config.withDefault(defaults.inferenceMaxAttempts)),
  inferenceRetryBaseDelay: Config.duration("INFERENCE_RETRY_BASE_DELAY").pipe(
    Config.withDefault(defaults.inferenceRetryBaseDelay)
  ),
  inferenceRetryMaxDelay: Config.duration("INFERENCE_RETRY_MAX_DELAY").pipe(
    Config.withDefault(defaults.inferenceRetryMaxDelay)
  ),
  maxConcurrentBatches: Config.integer("MAX_CONCURRENT_BATCHES").pipe(Config.withDefault(defaults.maxConcurrentBatches)),
  maxConcurrentRequestsPerBatch: Config.integer("MAX_CONCURRENT_REQUESTS_PER_BATCH").pipe(
    Config.withDefault(defaults.maxConcurrentRequestsPerBatch)
  ),
  maxRequestsPerBatch: Config.integer("MAX_REQUESTS_PER_BATCH").pipe(Config.withDefault(defaults.maxRequestsPerBatch)),
  maxBatchInputBytes: Config.integer("MAX_BATCH_INPUT_BYTES").pipe(Config.withDefault(defaults.maxBatchInputBytes)),
  maxActiveBatchesPerProject: Config.option(Config.integer("MAX_ACTIVE_BATCHES_PER_PROJECT")),
  maxEnqueuedRequestsPerProject: Config.option(Config.integer("MAX_ENQUEUED_REQUESTS_PER_PROJECT")),
  maxFileBytesPerProject: Config.option(Config.integer("MAX_FILE_BYTES_PER_PROJECT")),
  completionWindow: Config.duration("COMPLETION_WINDOW").pipe(Config.withDefault(defaults.completionWindow)),
  apiKeys: Config.option(Config.redacted("API_KEYS")),
  adminApiKeys: Config.option(Config.redacted("ADMIN_API_KEYS")),
  apiKeysFile: Config.option(Config.string("API_KEYS_FILE")),
  corsOrigins: Config.string("CORS_ORIGINS").pipe(Config.map(commaList), Config.withDefault(defaults.corsOrigins)),
  allowUnauthenticated: Config.boolean("ALLOW_UNAUTHENTICATED").pipe(Config.withDefault(defaults.allowUnauthenticated))
}).pipe(
  Config.map(({ adminApiKeys, apiKeys, nodeId, ...rest }) => ({
    ...rest,
    apiKeys: redactedList(apiKeys),
    adminApiKeys: redactedList(adminApiKeys),
    nodeId: Option.getOrElse(nodeId, () => defaultNodeId(rest.port))
  })),
  Config.mapOrFail(validateConfig)
)

/** Where file bytes live: `FILE_STORAGE`, by default in the database with Postgres and on local disk with SQLite. */
export const fileStorageOf = (config: Pick<AppConfigShape, "fileStorage" | "databaseUrl">): "local" | "sql" =>
  Option.getOrElse(config.fileStorage, () => (Option.isSome(config.databaseUrl) ? "sql" : "local"))

export class AppConfig extends Context.Tag("AppConfig")<AppConfig, AppConfigShape>() {
  /** Reads the configuration from the environment. */
  static readonly layer: Layer.Layer<AppConfig, ConfigError.ConfigError> = Layer.effect(
    AppConfig,
    appConfig
  )
  /**
   * A configuration given in code (tests, embedding): the defaults with `overrides` on top, `nodeId` derived from
   * the port unless given, checked by the same rules as the environment.
   */
  static readonly layerWith = (overrides: Partial<AppConfigShape> = {}): Layer.Layer<AppConfig, ConfigError.ConfigError> =>
    Layer.effect(
      AppConfig,
      validateConfig({ ...defaults, nodeId: defaultNodeId(overrides.port ?? defaults.port), ...overrides })
    )
}
