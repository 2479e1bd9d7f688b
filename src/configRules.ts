/**
 * The rules of the configuration (`Config.ts`), checked on the whole of it, for the environment and for a
 * configuration given in code alike: each names the variable it is about and what it expects.
 */
import { ConfigError, Duration, Either, Option, Redacted } from "effect"
import { parseAdminKey, parseKeyEntry } from "./auth/keyEntries.js"
import type { AppConfigShape } from "./configShape.js"
import { badHeaderValue, isPlainBaseUrl } from "./upstreams/UpstreamSpec.js"
import { MAX_SECRETS, secretProblem, urlProblem } from "./webhooks/signing.js"

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
const countFromZero = (field: Numeric, variable: string, zero: string): Rule => ({
  variable,
  expected: `a positive integer, or 0 (${zero})`,
  holds: (c) => Number.isSafeInteger(c[field]) && c[field] >= 0
})
type OptionalNumeric = { [K in keyof AppConfigShape]: AppConfigShape[K] extends Option.Option<number> ? K : never }[keyof AppConfigShape]
const optionalPositiveInt = (field: OptionalNumeric, variable: string): Rule => ({
  variable,
  expected: "a positive integer (or unset: no limit)",
  holds: (c) => !Option.exists(c[field], (n) => !Number.isSafeInteger(n) || n <= 0)
})
/** The longest a Node timer waits: one set longer fires at once (a statement timed out after 1 ms). */
const LONGEST_TIMER = Duration.millis(2 ** 31 - 1)
const positiveDuration = (field: Durations, variable: string, timed = false): Rule => ({
  variable,
  expected: timed ? "a duration longer than zero, at most 24 days" : "a duration longer than zero",
  holds: (c) =>
    Duration.isDuration(c[field]) && Duration.greaterThan(c[field], Duration.zero) &&
    (!timed || Duration.lessThanOrEqualTo(c[field], LONGEST_TIMER))
})
/** A duration a Node timer waits, 0 allowed (saying what it does). */
const timerDuration = (field: Durations, variable: string, zero: string): Rule => ({
  variable,
  expected: `a duration of at most 24 days (0 seconds: ${zero})`,
  holds: (c) => Duration.isDuration(c[field]) && Duration.lessThanOrEqualTo(c[field], LONGEST_TIMER)
})
const nonEmpty = (field: "host" | "dataDir" | "nodeId", variable: string): Rule => ({
  variable,
  expected: "a non-empty string",
  holds: (c) => typeof c[field] === "string" && c[field].trim() !== ""
})

/** Whether requests need an API key: any key variable is set (a keys file counts even when it lists none). */
export const keysConfigured = (config: Pick<AppConfigShape, "apiKeys" | "adminApiKeys" | "apiKeysFile">): boolean =>
  config.apiKeys.length > 0 || config.adminApiKeys.length > 0 || Option.isSome(config.apiKeysFile)

/** A loopback name or address: `localhost`, `127.0.0.0/8` (IPv4-mapped too: `::ffff:127.0.0.1`), `::1` (bracketed or not). */
export const isLoopbackName = (name: string): boolean => {
  const n = name.toLowerCase()
  return n === "localhost" || n === "::1" || n === "[::1]" || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(n)
}

/**
 * A server that would serve everyone on a non-loopback `HOST` without asking for a key, as a `ConfigError` naming
 * `HOST`; `keysRequired`: whether the keys in use ask for one (those of the configuration, or of an `Auth` swapped
 * in by an app, which may have none though the configuration has some); `boundTo`: the address the server listens
 * on, when it is known (an app's own server may bind elsewhere than `HOST`).
 */
export const exposedWithoutKeys = (
  config: Pick<AppConfigShape, "host" | "allowUnauthenticated" | "apiKeys" | "adminApiKeys" | "apiKeysFile">,
  keysRequired: boolean,
  boundTo?: string
): Option.Option<ConfigError.ConfigError> =>
  keysRequired || config.allowUnauthenticated || isLoopbackName(boundTo ?? config.host)
    ? Option.none()
    : Option.some(ConfigError.InvalidData(
      ["HOST"],
      (boundTo === undefined ? "" : `The server listens on ${boundTo}, not a loopback address${
        isLoopbackName(config.host)
          // HOST is fine: the server is an app's own (makeNodeServer's `host`, which listens everywhere when not given).
          ? ` (HOST is ${config.host}, but the server given to the app binds elsewhere: give makeNodeServer a host, such as host: "127.0.0.1")`
          : ""
      }. `) +
        (keysConfigured(config)
          ? "Expected a loopback address (127.0.0.1, localhost or ::1): the Auth in use asks for no key, whatever the " +
            "configuration's keys (an app swapped in one without keys)"
          : "Expected a loopback address (127.0.0.1, localhost or ::1) when no API key is configured: set API_KEYS, " +
            "ADMIN_API_KEYS or API_KEYS_FILE, or ALLOW_UNAUTHENTICATED=true to serve everyone on this interface without a key " +
            "(in code, AppConfig's apiKeys, adminApiKeys, apiKeysFile or allowUnauthenticated)")
    ))

/** `text` split at commas, each entry trimmed, empty ones dropped. */
export const commaList = (text: string): ReadonlyArray<string> =>
  text.split(",").map((entry) => entry.trim()).filter((entry) => entry !== "")

const MAX_EXTRA_ENDPOINTS = 32
const MAX_ENDPOINT_LENGTH = 100

/** A path the batch API may target: `/v1/` and segments of URL-safe characters, none of them `.` or `..`. */
const isEndpointPath = (path: string) =>
  path.length <= MAX_ENDPOINT_LENGTH && /^\/v1(\/[A-Za-z0-9._-]+)+$/.test(path) &&
  !path.split("/").some((segment) => segment === "." || segment === "..")

/**
 * Whether a PostgreSQL URL gives its database as node-postgres reads it: in its path (a `?database=` is overwritten
 * by the path's, even an empty one), else from `PGDATABASE`. Read without `URL`, which refuses the forms the driver
 * takes with an empty host (`postgres://user@/db?host=/var/run/postgresql`).
 */
const namesDatabase = (text: string) =>
  (/^postgres(?:ql)?:\/\/[^/?#]*(\/[^?#]*)?/.exec(text)?.[1] ?? "").replace(/^\/+/, "") !== "" ||
  (process.env.PGDATABASE ?? "") !== ""

/** An exact origin (`https://app.example.com`, `http://localhost:3000`): scheme, host and port, nothing more. */
const isOrigin = (text: string) =>
  URL.canParse(text) && /^https?:$/.test(new URL(text).protocol) && new URL(text).origin === text

/**
 * Every rule, for the environment and for a configuration given in code alike (`AppConfig.layerWith`): the same
 * mistakes are refused whichever way a value comes in.
 */
const rules: ReadonlyArray<Rule> = [
  { variable: "PORT", expected: "a port number (0–65535)", holds: (c) => Number.isInteger(c.port) && c.port >= 0 && c.port <= 65535 },
  {
    variable: "METRICS_PORT",
    expected: "a port number (0–65535) other than PORT",
    holds: (c) =>
      !Option.exists(c.metricsPort, (p) => !Number.isInteger(p) || p < 0 || p > 65535 || (p !== 0 && p === c.port))
  },
  nonEmpty("host", "HOST"),
  nonEmpty("dataDir", "DATA_DIR"),
  nonEmpty("nodeId", "NODE_ID"),
  {
    variable: "DATABASE_URL",
    expected: "a postgres:// or postgresql:// URL naming its database in its path (postgres://user@host:5432/batches): " +
      "without one, the driver takes the user's name for it, a database other than the other nodes'",
    holds: (c) => !Option.exists(c.databaseUrl, (url) => !/^postgres(ql)?:\/\//.test(Redacted.value(url)) || !namesDatabase(Redacted.value(url)))
  },
  { variable: "FILE_STORAGE", expected: "local or sql", holds: (c) => !Option.exists(c.fileStorage, (s) => s !== "local" && s !== "sql") },
  {
    variable: "INFERENCE_BASE_URL",
    expected: "an http:// or https:// URL without user:password@, ?query, #fragment (the key goes in INFERENCE_API_KEY) or an endpoint's path such as /chat/completions (the base ends at the version path, as in http://host:8000/v1)",
    holds: (c) => isPlainBaseUrl(c.inferenceBaseUrl)
  },
  {
    variable: "INFERENCE_API_KEY",
    expected: "a key of printable Latin-1 characters, without line breaks, control characters, characters such as … or surrounding spaces (a trailing newline from a file?)",
    holds: (c) => !Option.exists(c.inferenceApiKey, (key) => badHeaderValue(Redacted.value(key)))
  },
  positiveInt("maxUploadBytes", "MAX_UPLOAD_BYTES"),
  positiveInt("maxJsonBodyBytes", "MAX_JSON_BODY_BYTES"),
  positiveInt("inferenceMaxResponseBytes", "INFERENCE_MAX_RESPONSE_BYTES"),
  positiveInt("inferenceMaxBufferedBytes", "INFERENCE_MAX_BUFFERED_BYTES"),
  positiveInt("inferenceMaxAttempts", "INFERENCE_MAX_ATTEMPTS"),
  positiveInt("inferenceMaxConcurrency", "INFERENCE_MAX_CONCURRENCY"),
  positiveInt("inferenceMinConcurrency", "INFERENCE_MIN_CONCURRENCY"),
  countFromZero("maxConcurrentBatches", "MAX_CONCURRENT_BATCHES", "this node runs no batch: other nodes do"),
  positiveInt("maxConcurrentRequestsPerBatch", "MAX_CONCURRENT_REQUESTS_PER_BATCH"),
  positiveInt("maxRequestsPerBatch", "MAX_REQUESTS_PER_BATCH"),
  positiveInt("maxBatchInputBytes", "MAX_BATCH_INPUT_BYTES"),
  positiveInt("resultPagesAtOnce", "RESULT_PAGES_AT_ONCE"),
  positiveInt("maxUploadsAtOnce", "MAX_UPLOADS_AT_ONCE"),
  positiveInt("maxConnections", "MAX_CONNECTIONS"),
  positiveInt("maxDownloadsAtOnce", "MAX_DOWNLOADS_AT_ONCE"),
  optionalPositiveInt("maxActiveBatchesPerProject", "MAX_ACTIVE_BATCHES_PER_PROJECT"),
  optionalPositiveInt("maxEnqueuedRequestsPerProject", "MAX_ENQUEUED_REQUESTS_PER_PROJECT"),
  optionalPositiveInt("maxFileBytesPerProject", "MAX_FILE_BYTES_PER_PROJECT"),
  optionalPositiveInt("maxRequestsPerMinutePerProject", "MAX_REQUESTS_PER_MINUTE_PER_PROJECT"),
  positiveDuration("leaseTtl", "LEASE_TTL"),
  positiveDuration("databaseStatementTimeout", "DATABASE_STATEMENT_TIMEOUT", true), // a Node timer (`pgPool.ts`)
  positiveDuration("heartbeatInterval", "HEARTBEAT_INTERVAL"),
  positiveDuration("fileSweepInterval", "FILE_SWEEP_INTERVAL"),
  {
    variable: "BATCH_FILES_EXPIRE_AFTER",
    expected: "a duration from 1 second to 36525 days (or unset: batch files are kept until deleted)",
    holds: (c) =>
      !Option.exists(c.batchFilesExpireAfter, (d) =>
        !Duration.isDuration(d) || Duration.lessThan(d, Duration.seconds(1)) || Duration.greaterThan(d, Duration.days(36_525)))
  },
  positiveDuration("inferenceTimeout", "INFERENCE_TIMEOUT"),
  positiveDuration("completionWindow", "COMPLETION_WINDOW"),
  positiveDuration("upstreamProbeInterval", "UPSTREAM_PROBE_INTERVAL"),
  positiveDuration("stallTimeout", "STALL_TIMEOUT", true), // a Node timer (`http/holding.ts`)
  countFromZero("minBodyRate", "MIN_BODY_RATE", "no rate: a body is cut only once it stops coming"),
  countFromZero("diskReserveBytes", "DISK_RESERVE_BYTES", "no space kept back for deletes on a full disk"),
  {
    variable: "INFERENCE_MIN_CONCURRENCY",
    expected: "an integer no larger than INFERENCE_MAX_CONCURRENCY",
    holds: (c) => c.inferenceMinConcurrency <= c.inferenceMaxConcurrency
  },
  timerDuration("shutdownTimeout", "SHUTDOWN_TIMEOUT", "close them at once"), // a Node timer (`Layers.ts`)
  timerDuration("shutdownDelay", "SHUTDOWN_DELAY", "stop accepting at once"),
  { variable: "LOG_FORMAT", expected: "json or pretty", holds: (c) => c.logFormat === "json" || c.logFormat === "pretty" },
  {
    variable: "LOG_LEVEL",
    expected: "trace, debug, info, warning (or warn) or error",
    holds: (c) => ["trace", "debug", "info", "warning", "error"].includes(c.logLevel)
  },
  { variable: "UPSTREAMS_FILE", expected: "a file path", holds: (c) => !Option.exists(c.upstreamsFile, (path) => path.trim() === "") },
  {
    variable: "UPSTREAMS_FILE",
    expected: "unset when the upstreams are given in code (`upstreams`): the file would be ignored",
    holds: (c) => Option.isNone(c.upstreamsFile) || Option.isNone(c.upstreams)
  },
  {
    variable: "EXTRA_BATCH_ENDPOINTS",
    expected: `comma-separated paths under /v1/ such as /v1/rerank (letters, digits, - _ . and /; at most ` +
      `${MAX_EXTRA_ENDPOINTS}, each at most ${MAX_ENDPOINT_LENGTH} characters)`,
    holds: (c) => c.extraBatchEndpoints.length <= MAX_EXTRA_ENDPOINTS && c.extraBatchEndpoints.every(isEndpointPath)
  },
  {
    variable: "INFERENCE_MODE",
    expected: "live, record or replay (record and replay need INFERENCE_RECORDINGS, the recordings' directory)",
    holds: (c) =>
      ["live", "record", "replay"].includes(c.inferenceMode) &&
      (c.inferenceMode === "live" || Option.exists(c.inferenceRecordings, (dir) => dir.trim() !== ""))
  },
  {
    variable: "MAX_JSON_BODIES_BYTES",
    expected: "a positive integer no smaller than MAX_JSON_BODY_BYTES (the largest body must fit)",
    holds: (c) => Number.isSafeInteger(c.maxJsonBodiesBytes) && c.maxJsonBodiesBytes >= c.maxJsonBodyBytes
  },
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
    variable: "INFERENCE_RETRY_MAX_DELAY",
    expected: "a duration no shorter than INFERENCE_RETRY_BASE_DELAY",
    holds: (c) => Duration.greaterThanOrEqualTo(c.inferenceRetryMaxDelay, c.inferenceRetryBaseDelay)
  },
  {
    variable: "WEBHOOK_URL",
    expected: "set, as WEBHOOK_SECRET is: the two go together",
    holds: (c) => Option.isSome(c.webhookUrl) || Option.isNone(c.webhookSecret)
  },
  {
    variable: "WEBHOOK_SECRET",
    expected: "set, as WEBHOOK_URL is: the two go together",
    holds: (c) => Option.isSome(c.webhookSecret) || Option.isNone(c.webhookUrl)
  },
  {
    variable: "WEBHOOK_URL",
    expected: "an http:// or https:// URL without user:password@ or #fragment",
    holds: (c) => !Option.exists(c.webhookUrl, (url) => urlProblem(url) !== undefined)
  },
  {
    variable: "WEBHOOK_SECRET",
    expected: "whsec_ followed by base64, as OpenAI's webhook secrets (the base64 decodes to the HMAC key); while one " +
      `is rotated, up to ${MAX_SECRETS} separated by spaces, each attempt signed with every one`,
    holds: (c) => !Option.exists(c.webhookSecret, (secret) => secretProblem(Redacted.value(secret)) !== undefined)
  },
  positiveDuration("webhookRetryBaseDelay", "WEBHOOK_RETRY_BASE_DELAY"),
  {
    variable: "WEBHOOK_RETRY_MAX_DELAY",
    expected: "a duration no shorter than WEBHOOK_RETRY_BASE_DELAY",
    holds: (c) => Duration.greaterThanOrEqualTo(c.webhookRetryMaxDelay, c.webhookRetryBaseDelay)
  },
  positiveDuration("webhookRetryFor", "WEBHOOK_RETRY_FOR")
]

/**
 * The configuration when every rule holds, else every broken one, naming its variable: a deployment fixed one
 * variable at a time, a restart each, when only the first was said.
 */
export const validateConfig = (config: AppConfigShape): Either.Either<AppConfigShape, ConfigError.ConfigError> => {
  const broken = rules.filter((rule) => !rule.holds(config))
  return broken.length === 0
    ? Either.right(config)
    : Either.left(broken.map((rule) => ConfigError.InvalidData([rule.variable], `Expected ${rule.expected}`)).reduce(ConfigError.And))
}
