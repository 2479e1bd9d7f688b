/**
 * What each knob of the service is (`AppConfigShape`), apart from how it is read (`Config.ts`: the environment, the
 * defaults, the layers) and checked (`configRules.ts`).
 */
import type { Duration, Option, Redacted } from "effect"
import type { UpstreamEntry } from "./upstreams/UpstreamSpec.js"

export interface AppConfigShape {
  /** TCP port of the HTTP server (`PORT`). */
  readonly port: number
  /** Interface the HTTP server binds to (`HOST`). */
  readonly host: string
  /**
   * A port of its own for `GET /metrics` (`METRICS_PORT`), on `HOST`, without a key; the main port then does not
   * serve them. None: `/metrics` on the main port (an operator key needed when keys are configured).
   */
  readonly metricsPort: Option.Option<number>
  /** Directory holding the SQLite database and the bytes of uploaded files (`DATA_DIR`). */
  readonly dataDir: string
  /** `postgres://…` (`DATABASE_URL`): keep the metadata in Postgres instead of SQLite. */
  readonly databaseUrl: Option.Option<Redacted.Redacted>
  /**
   * How long a PostgreSQL statement may go unanswered (`DATABASE_STATEMENT_TIMEOUT`) before it fails and its
   * connection is closed: a server that hangs, or a network that stops carrying an open connection. Migrations are
   * exempt.
   */
  readonly databaseStatementTimeout: Duration.Duration
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
  /**
   * Uploads a node receives at once (`MAX_UPLOADS_AT_ONCE`): `POST /v1/files` and the Uploads API's parts. One more
   * gets a 503 with `Retry-After` before its body is read; each holds up to ~1 MB while its client sends.
   */
  readonly maxUploadsAtOnce: number
  /**
   * Connections the server holds open at once (`MAX_CONNECTIONS`; by default half the open files the process may
   * have, at most 10,000): one more is closed at once, so that connections left open cannot take every file
   * descriptor and leave nothing served.
   */
  readonly maxConnections: number
  /** Largest accepted JSON (any non-multipart) request body, in bytes (`MAX_JSON_BODY_BYTES`); larger get a 413. */
  readonly maxJsonBodyBytes: number
  /**
   * Bytes of JSON request bodies a node holds at once, read and not yet done with (`MAX_JSON_BODIES_BYTES`): a body
   * that would pass it gets a 503 with `Retry-After`. Each body is bounded by `maxJsonBodyBytes`; this bounds them all.
   */
  readonly maxJsonBodiesBytes: number
  /** How often expired files are deleted from storage (`FILE_SWEEP_INTERVAL`, e.g. `60 seconds`). */
  readonly fileSweepInterval: Duration.Duration
  /**
   * How long batch files are kept when their creator gave no expiry (`BATCH_FILES_EXPIRE_AFTER`; `30 days` is
   * OpenAI's): files of purpose `batch` or `batch_output` created without one (uploaded without `expires_after`, a
   * batch's output and error files without `output_expires_after`, the input files the server writes for inline
   * requests and reruns). None: until deleted.
   */
  readonly batchFilesExpireAfter: Option.Option<Duration.Duration>
  /** On SIGINT/SIGTERM, how long open requests may take to finish before their connections are closed (`SHUTDOWN_TIMEOUT`). */
  readonly shutdownTimeout: Duration.Duration
  /**
   * On SIGINT/SIGTERM, how long the node keeps serving with `/v1/ready` answering 503 before it stops accepting
   * (`SHUTDOWN_DELAY`): time for a load balancer to take it out of rotation. Zero: it stops accepting at once.
   */
  readonly shutdownDelay: Duration.Duration
  /**
   * Result pages (`GET /v1/batches/{id}/results`) a node holds at once (`RESULT_PAGES_AT_ONCE`), each up to 8 MiB
   * of answers (or one larger answer), from their read until their client has taken them: the memory slow readers
   * can pin. One more gets a 503 with `Retry-After`.
   */
  readonly resultPagesAtOnce: number
  /**
   * A client that takes none of a results page or a file's content, or sends nothing of its request body while it is
   * read, for this long loses its connection, and what it held is let go (`STALL_TIMEOUT`).
   */
  readonly stallTimeout: Duration.Duration
  /**
   * The slowest a request body may come, in bytes a second on average over the time spent waiting for it, after a
   * grace of `stallTimeout` (`MIN_BODY_RATE`; 0: none). A body sent a byte now and then never stalls, yet would hold
   * its place among the uploads or JSON bodies a node receives at once for as long as its sender likes.
   */
  readonly minBodyRate: number
  /**
   * Bytes kept free on the SQLite database's disk for file deletes and batch cancels once it is full
   * (`DISK_RESERVE_BYTES`; 0: none). See `storage/DiskReserve.ts`.
   */
  readonly diskReserveBytes: number
  /**
   * File contents (`GET /v1/files/{id}/content`) a node sends at once (`MAX_DOWNLOADS_AT_ONCE`), each holding about
   * 1 MB while its client reads; one more gets a 503 with `Retry-After`.
   */
  readonly maxDownloadsAtOnce: number
  /**
   * Log lines as JSON objects, one a line, or Effect's pretty format (`LOG_FORMAT`; default: pretty on a terminal).
   * Read by `LoggingLive` only (as the server runs it): an embedding app's own logger is left as it is.
   */
  readonly logFormat: "json" | "pretty"
  /**
   * The least severe lines written (`LOG_LEVEL`); request lines of health and readiness probes are `debug`. Read by
   * `LoggingLive` only, as `logFormat`.
   */
  readonly logLevel: "trace" | "debug" | "info" | "warning" | "error"
  /** Base URL of the OpenAI-compatible upstream, including its `/v1` (`INFERENCE_BASE_URL`). */
  readonly inferenceBaseUrl: string
  /** Bearer token for the upstream (`INFERENCE_API_KEY`); none: no Authorization header. */
  readonly inferenceApiKey: Option.Option<Redacted.Redacted>
  /** Time limit of one whole upstream attempt, headers and body (`INFERENCE_TIMEOUT`). */
  readonly inferenceTimeout: Duration.Duration
  /** Largest upstream answer read, in bytes (`INFERENCE_MAX_RESPONSE_BYTES`); a larger one is an error line. */
  readonly inferenceMaxResponseBytes: number
  /** The most bytes of large upstream answers a node holds at once, read or waiting to be stored (`INFERENCE_MAX_BUFFERED_BYTES`). */
  readonly inferenceMaxBufferedBytes: number
  /** The shortcut upstream's (and the file's default) adaptive concurrency ceiling (`INFERENCE_MAX_CONCURRENCY`). */
  readonly inferenceMaxConcurrency: number
  /** Its floor (`INFERENCE_MIN_CONCURRENCY`): overload never shrinks the limit below it. */
  readonly inferenceMinConcurrency: number
  /** Several upstreams, routed by model (`UPSTREAMS_FILE`, YAML or JSON; see `upstreams/UpstreamSpec.ts`). */
  readonly upstreamsFile: Option.Option<string>
  /** The same entries given in code (embedding, tests), instead of the file (not beside it). */
  readonly upstreams: Option.Option<ReadonlyArray<UpstreamEntry>>
  /** How often an upstream that is down is probed (`UPSTREAM_PROBE_INTERVAL`). */
  readonly upstreamProbeInterval: Duration.Duration
  /**
   * Paths accepted as batch endpoints beside OpenAI's (`EXTRA_BATCH_ENDPOINTS`, comma-separated, each `/v1/…`, e.g.
   * vLLM's `/v1/rerank`): `model` required, the body passed through.
   */
  readonly extraBatchEndpoints: ReadonlyArray<string>
  /** Where answers come from (`INFERENCE_MODE`): the upstreams, the upstreams with each answer recorded, or recordings only. */
  readonly inferenceMode: "live" | "record" | "replay"
  /** The recordings' directory (`INFERENCE_RECORDINGS`), needed by `record` and `replay`. */
  readonly inferenceRecordings: Option.Option<string>
  /** Attempts per request, the first included, on 429/5xx/network errors (`INFERENCE_MAX_ATTEMPTS`). */
  readonly inferenceMaxAttempts: number
  /** First retry delay; doubles each attempt, with jitter (`INFERENCE_RETRY_BASE_DELAY`). */
  readonly inferenceRetryBaseDelay: Duration.Duration
  /** Longest wait between two attempts, `Retry-After` included (`INFERENCE_RETRY_MAX_DELAY`). */
  readonly inferenceRetryMaxDelay: Duration.Duration
  /**
   * Batches validated or run at the same time (`MAX_CONCURRENT_BATCHES`); 0 for a node that serves the API and
   * leaves every batch's work to the other nodes on its database.
   */
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
  /** Requests of one project a minute on this node, at most (`MAX_REQUESTS_PER_MINUTE_PER_PROJECT`); beyond: 429. */
  readonly maxRequestsPerMinutePerProject: Option.Option<number>
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
  /** Where batch events are posted (`WEBHOOK_URL`), for every project without a webhook of its own (keys file). */
  readonly webhookUrl: Option.Option<string>
  /** The secret that signs them (`WEBHOOK_SECRET`, `whsec_<base64>`; several while one is rotated), needed with `WEBHOOK_URL`. */
  readonly webhookSecret: Option.Option<Redacted.Redacted>
  /** The wait after a first failed delivery (`WEBHOOK_RETRY_BASE_DELAY`); it doubles with each attempt, with jitter. */
  readonly webhookRetryBaseDelay: Duration.Duration
  /** The longest wait between two delivery attempts (`WEBHOOK_RETRY_MAX_DELAY`): the doubling stops there. */
  readonly webhookRetryMaxDelay: Duration.Duration
  /** How long an event is retried before its delivery gives up (`WEBHOOK_RETRY_FOR`). */
  readonly webhookRetryFor: Duration.Duration
}
