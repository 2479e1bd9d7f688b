/**
 * The service layers wired together, for `main.ts` and for apps that embed the service. Each layer is defined
 * once (layers are memoized by reference), and what remains open is only `AppConfig`.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Duration, Effect, Layer, Option } from "effect"
import { createServer, type Server } from "node:http"
import { AppConfig, fileStorageOf } from "./Config.js"
import type * as SqlClient from "@effect/sql/SqlClient"
import { type Auth, AuthLive, HostCheckLive } from "./auth/Auth.js"
import { BatchRunnerLive } from "./batches/BatchRunner.js"
import { BatchStore, BatchStoreLive } from "./batches/BatchStore.js"
import { RerunLive } from "./batches/Rerun.js"
import { BatchCommandsLive } from "./batches/BatchCommands.js"
import { FileCommandsLive } from "./files/FileCommands.js"
import { WorkLeases, WorkLeasesLive } from "./batches/WorkLeases.js"
import { FileStore, FileStoreLive } from "./files/FileStore.js"
import { UploadsLive } from "./files/Uploads.js"
import type { Inference } from "./inference/Inference.js"
import { withCheckedAnswers } from "./inference/checkedAnswers.js"
import { InferenceFromConfig } from "./inference/Recordings.js"
import { awaitHandlers } from "./http/awaitHandlers.js"
import { oneAppPerServer } from "./http/oneAppPerServer.js"
import { answerClientErrors } from "./http/clientErrors.js"
import { closeWhenAnswered } from "./http/closeWhenAnswered.js"
import { continueWhenRead } from "./http/continueWhenRead.js"
import { capConnections } from "./http/connectionCap.js"
import { holdEarlyRequests } from "./http/holdEarlyRequests.js"
import { lingerAfterEarlyAnswers } from "./http/lingerAfterEarlyAnswers.js"
import { readTraceparentAsW3c } from "./http/traceContext.js"
import { HttpLive } from "./http/Http.js"
import { MetricsServerLive } from "./http/MetricsHttp.js"
import { type Metrics, MetricsLive } from "./observability/Metrics.js"
import { TracingLive } from "./observability/Tracing.js"
import { ServerLifecycleLive, ServerShutdownTimeout } from "./observability/Lifecycle.js"
import { type Readiness, ReadinessLive, StorageOfTheApp } from "./observability/Readiness.js"
import { type BlobStore, BlobStoreLocal } from "./storage/BlobStore.js"
import { BlobStoreSql } from "./storage/BlobStoreSql.js"
import { DiskReserveLive } from "./storage/DiskReserve.js"
import { SchedulerLive } from "./Scheduler.js"
import { sqlLiveWith } from "./storage/Sql.js"
import { DatabaseClockLive } from "./storage/databaseClock.js"
import { NodeIdLockLive } from "./storage/NodeIdLock.js"
import { SqliteRunnerLockLive } from "./storage/SqliteRunnerLock.js"
import { WebhooksLive } from "./webhooks/Webhooks.js"
import { type WebhookTargets, WebhookTargetsLive } from "./webhooks/WebhookTargets.js"

/** The file bytes where `fileStorageOf` the configuration says. */
export const BlobStoreLive = Layer.unwrapEffect(
  Effect.map(AppConfig, (config) => (fileStorageOf(config) === "sql" ? BlobStoreSql : BlobStoreLocal))
)

/**
 * Storage: the SQL database and the file bytes, once no other process runs under this node's id
 * (`NodeIdLockLive`), as the blob store frees what an earlier run of the node left staged, and on SQLite no other
 * process runs its batches (`SqliteRunnerLockLive`); both taken before the migrations, so that a start they refuse
 * leaves the schema as it was. On SQLite, the space kept back for deletes and cancels on a full disk (`DiskReserve`).
 */
export const StorageLive = BlobStoreLive.pipe(
  Layer.provideMerge(sqlLiveWith(Layer.merge(NodeIdLockLive, SqliteRunnerLockLive))),
  // First: on a full disk, the start needs the reserve's room.
  Layer.provideMerge(DiskReserveLive)
)

/**
 * The parts the services are built on, each its live layer unless given: replace any of them (a scripted
 * `Inference`, your own `FileStore`, storage on a database of your own) and every service that uses it gets yours.
 */
export interface ServiceParts {
  /**
   * A storage of your own on a database other processes use too should take `NodeIdLockLive` before its migrations,
   * as `StorageLive` does (`layerPg(url, {}, NodeIdLockLive)`, `layerSqlite(path, NodeIdLockLive)`).
   */
  readonly storage?: Layer.Layer<SqlClient.SqlClient | BlobStore, unknown, AppConfig>
  readonly inference?: Layer.Layer<Inference, unknown, AppConfig>
  readonly auth?: Layer.Layer<Auth, unknown, AppConfig>
  readonly fileStore?: Layer.Layer<FileStore, unknown, SqlClient.SqlClient | BlobStore | AppConfig>
  readonly batchStore?: Layer.Layer<BatchStore, unknown, SqlClient.SqlClient>
  readonly workLeases?: Layer.Layer<WorkLeases, unknown, SqlClient.SqlClient>
  readonly readiness?: Layer.Layer<Readiness, unknown, SqlClient.SqlClient | AppConfig>
  readonly metrics?: Layer.Layer<Metrics, unknown, AppConfig>
  /** Where batch events are sent (`WebhookTargetsTest` fixes them). */
  readonly webhookTargets?: Layer.Layer<WebhookTargets, unknown, AppConfig | Auth>
}

/** No key but the parts' own: a misspelled part (`infrence`) is refused, not left for the live one. */
type OnlyParts<P> = { readonly [K in Exclude<keyof P, keyof ServiceParts>]: never }

/** What a part given in `parts` may fail with as it is built. */
export type PartsError<P extends ServiceParts> = ErrorOf<P[keyof P]>
type ErrorOf<L> = L extends Layer.Layer<infer _A, infer E, infer _R> ? E : never

/** What the live parts and services may fail with as they are built (a part given instead may not, but is not told apart). */
export type LiveServicesError = Layer.Layer.Error<
  | typeof StorageLive
  | typeof InferenceFromConfig
  | typeof AuthLive
  | typeof FileStoreLive
  | typeof BatchStoreLive
  | typeof WorkLeasesLive
  | typeof ReadinessLive
  | typeof MetricsLive
  | typeof WebhookTargetsLive
  | typeof WebhooksLive
  | typeof SqliteRunnerLockLive
  | typeof BatchRunnerLive
  | typeof RerunLive
  | typeof UploadsLive
>

/**
 * Every service the HTTP handlers use (and the storage under them), built on `parts`; its error type names what
 * the live parts and those of `parts` fail with (a start that fails: a database that cannot be reached or migrated,
 * a bad keys file, the node's id in use…).
 */
export const makeServices = <P extends ServiceParts = {}>(parts: P & OnlyParts<P> = {} as P & OnlyParts<P>) =>
  composeServices(parts) as Layer.Layer<
    Layer.Layer.Success<ReturnType<typeof composeServices>>,
    LiveServicesError | PartsError<P>,
    AppConfig
  >

/** The services on `parts` (their error type `unknown`: `makeServices` says which). */
const composeServices = (parts: ServiceParts) =>
  BatchCommandsLive.pipe(
    Layer.provideMerge(Layer.mergeAll(BatchRunnerLive, RerunLive, UploadsLive, FileCommandsLive)),
    Layer.provideMerge(Layer.mergeAll(
      parts.fileStore ?? FileStoreLive,
      parts.batchStore ?? BatchStoreLive,
      parts.workLeases ?? WorkLeasesLive,
      // An app's own answers are checked as the service's own calls' are: its text goes into the output file as is.
      parts.inference === undefined ? InferenceFromConfig : withCheckedAnswers(parts.inference),
      // On an app's own storage, the configuration does not say where the database is: its lines say whose it is.
      parts.readiness ?? (parts.storage === undefined ? ReadinessLive : Layer.provide(ReadinessLive, Layer.succeed(StorageOfTheApp, true))),
      WebhooksLive
    )),
    // Everything above reads PostgreSQL's time, where nodes share their leases and stored times (SQLite: the machine's).
    Layer.provide(DatabaseClockLive),
    // Before the services that free what a previous run held: on SQLite, only once no other process runs batches
    // (`StorageLive` takes it before migrating; an app's own storage, here).
    Layer.provide(parts.storage === undefined ? StorageLive : Layer.provideMerge(SqliteRunnerLockLive, parts.storage)),
    Layer.provide(parts.webhookTargets ?? WebhookTargetsLive),
    Layer.provide(HostCheckLive),
    Layer.provideMerge(parts.auth ?? AuthLive),
    Layer.provideMerge(parts.metrics ?? MetricsLive)
  )

/** Every service the HTTP handlers use, on the configured storage and upstream. */
export const ServicesLive = makeServices()

/** How long a request's line and headers may take to arrive: longer than an idle connection is kept (65 s). */
const HEADERS_TIMEOUT = Duration.seconds(66)

/** How long a shutdown waits for the handlers it interrupted to clean up (`awaitHandlers`). */
const HANDLER_CLEAN_UP = Duration.seconds(5)

/**
 * A Node HTTP server on the configured host and port (the services refuse a non-loopback one when the `Auth` in use
 * asks for no key: `HostCheckLive`). On shutdown it stops accepting at once and gives open
 * requests `shutdownTimeout` to finish; then their connections are closed, which interrupts their handlers (an
 * upload cut short that way leaves no file behind, nor staged bytes: the release waits, up to `HANDLER_CLEAN_UP`, for
 * the handlers so interrupted to finish). A request sent while the app is still starting (the socket
 * listens before the handler is attached) is answered once it is; an answer given before the request's body was
 * read reaches the client even when the connection closes after it.
 */
export const NodeServerLive = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ host, maxConnections, port, shutdownTimeout }) => makeNodeServer({ host, port, shutdownTimeout, maxConnections }))
)

export interface NodeServerOptions {
  readonly host?: string | undefined
  readonly port: number
  /** How long open requests may take to finish at shutdown before their connections are closed. */
  readonly shutdownTimeout: Duration.DurationInput
  /**
   * How long a request's line and headers may take to arrive (default 66 s: a connection opened ahead of use lasts as
   * long as an idle one): a connection that has not sent them all by then gets a 408 and is closed (one that sent
   * nothing, closed without an answer), or it would be held for ever. A `server` given keeps its own settings.
   */
  readonly headersTimeout?: Duration.DurationInput | undefined
  /**
   * Connections held open at once, on the server made or given; one more is closed at once, said at most once a
   * minute (`connectionCap.ts`). None: the server's own setting (Node's default: no bound).
   */
  readonly maxConnections?: number | undefined
  /**
   * The Node server to listen with, with no request listener of its own (the layer attaches the app's). By default
   * a new one whose idle connections are kept 65 s.
   */
  readonly server?: Server | undefined
}

/**
 * `NodeServerLive` on the options given instead of `AppConfig`'s, for an app that embeds the service. The server and
 * its listeners are made as the layer is built (a server given should be built on once).
 */
export const makeNodeServer = (options: NodeServerOptions) => Layer.unwrapEffect(Effect.sync(() => {
  // Idle connections are kept longer than the clients and proxies in front keep theirs (load balancers 60 s,
  // Python's httpx 5 s): with Node's 5 s, a client could reuse a connection the server was just closing and get a
  // reset. Nor do they hold a shutdown back: `close()` ends the idle ones at once, `closeWhenAnswered` the others.
  // And no limit on receiving a whole request (Node's `requestTimeout`, 5 minutes, refused uploads slower than
  // ~1.7 MB/s): a body the app reads that stops coming, or comes slower than `MIN_BODY_RATE`, is ended by
  // `STALL_TIMEOUT` and that rate instead (`RequestBody.ts`); the rest of one answered early, by `lingerAfterEarlyAnswers`.
  // And the headers' own limit set, as Node's follows `requestTimeout` and was off with it (a connection that sent half
  // its headers was held for ever); checked at a quarter of it (Node's default check is every 30 s). Whole
  // milliseconds, as Node requires; an infinite one is none.
  const headersMs = Duration.toMillis(options.headersTimeout ?? HEADERS_TIMEOUT)
  const headersTimeout = Number.isFinite(headersMs) ? Math.max(1, Math.ceil(headersMs)) : 0
  const server = options.server ?? createServer({
    keepAliveTimeout: 65_000,
    requestTimeout: 0,
    headersTimeout,
    connectionsCheckingInterval: headersTimeout === 0 ? 30_000 : Math.min(30_000, Math.max(250, Math.ceil(headersTimeout / 4)))
  })
  answerClientErrors(server)
  readTraceparentAsW3c(server)
  continueWhenRead(server)
  // In this order: the held requests go to the first request listener attached after `holdEarlyRequests`'.
  lingerAfterEarlyAnswers(server)
  const closeAsAnswered = closeWhenAnswered(server)
  holdEarlyRequests(server)
  const capped = options.maxConnections === undefined ? Layer.empty : capConnections(server, options.maxConnections)
  // Built after the server, so released before it: the timer runs while `server.close()` waits.
  const closeRemainingConnections = Layer.scopedDiscard(Effect.addFinalizer(() =>
    Effect.sync(() => {
      closeAsAnswered()
      setTimeout(() => server.closeAllConnections(), Duration.toMillis(options.shutdownTimeout)).unref()
    })
  ))
  return Layer.merge(closeRemainingConnections, capped).pipe(
    Layer.provideMerge(
      NodeHttpServer.layer(() => server, { host: options.host, port: options.port }).pipe(
        awaitHandlers(HANDLER_CLEAN_UP),
        Layer.map(oneAppPerServer),
        Layer.merge(Layer.succeed(ServerShutdownTimeout, Option.some(Duration.decode(options.shutdownTimeout))))
      )
    )
  )
}))

/**
 * The whole application on a Node HTTP server, on `parts` (see `makeServices`); needs only `AppConfig`. The
 * services (migrations, crash clean-up) are built before the server starts listening: the platform attaches its
 * request handler only once `HttpLive` is built, and a request that arrives before that waits for it
 * (`NodeServerLive` holds it). The lifecycle lines come last (the listening line once the app serves), so their
 * shutdown step comes first: readiness turns 503 before the server stops accepting. The services, the server and
 * their fibers run on `SchedulerLive`'s scheduler (sockets are read between the batches' steps, requests first); it is provided
 * last, so built first (what is provided around the app, such as `TracingLive`, is built before it and keeps
 * Effect's default).
 */
export const makeApp = <P extends ServiceParts = {}>(parts: P & OnlyParts<P> = {} as P & OnlyParts<P>) =>
  ServerLifecycleLive.pipe(
    Layer.provide(HttpLive),
    // The metrics' own port (when set) listens before the server is built.
    Layer.provide(NodeServerLive.pipe(Layer.provide(MetricsServerLive), Layer.provideMerge(makeServices(parts)))),
    Layer.provide(SchedulerLive)
  )

/**
 * The whole application on its live parts, traced when the `OTEL_*` variables name an endpoint
 * (`observability/Tracing.ts`; built first, so it is released last: the spans of the shutdown are flushed).
 */
export const AppLive = makeApp().pipe(Layer.provide(TracingLive))
