/**
 * Public entry for embedding: the API definition, the HTTP layers, the services and their live layers. Compose
 * them in your own Effect app, swap any of them (e.g. `FileStore`) for your own, or serve `HttpLive` on your server.
 */
export { audit, Auth, AuthLive, type AuthShape, AuthTest, type Caller, CurrentCaller, type KeysSummary, localCaller } from "./auth/Auth.js"
export type { WebhookEntry } from "./auth/keyEntries.js"
export { AppConfig, appConfig, type AppConfigShape, defaults as configDefaults } from "./Config.js"
export { BatchCommands, BatchCommandsLive, type BatchCommandsShape, type CommandError } from "./batches/BatchCommands.js"
export { FileCommands, FileCommandsLive, type FileCommandsShape, type UploadQuota, type UploadRequest } from "./files/FileCommands.js"
export { BatchRunner, BatchRunnerLive, type BatchRunnerShape, TurnLength } from "./batches/BatchRunner.js"
export { FaultRetry, type FaultRetryPolicy } from "./batches/supervision.js"
export {
  BatchNotFound,
  type BatchRecord,
  BatchStore,
  BatchStoreLive,
  type BatchStoreShape,
  type NewBatch,
  UnknownBatchCursor
} from "./batches/BatchStore.js"
export { Rerun, RerunLive, type RerunShape } from "./batches/Rerun.js"
export { type Move, transitions } from "./batches/transitions.js"
export { type Lease, LeaseLost, WorkLeases, WorkLeasesLive, type WorkLeasesShape } from "./batches/WorkLeases.js"
export * as Batches from "./domain/Batches.js"
export * as Errors from "./domain/Errors.js"
export * as Files from "./domain/Files.js"
export * as Ids from "./domain/Ids.js"
export { type FileMetadata, FileNotFound, type FileStoreShape, FileStore, FileStoreLive, UnknownCursor } from "./files/FileStore.js"
export { DEFAULT_PROJECT, type Visibility, visibilityOf } from "./domain/Projects.js"
export { Uploads, UploadsLive, type UploadsShape } from "./files/Uploads.js"
export * as UploadObjects from "./domain/Uploads.js"
export { BatchesGroup, FilesGroup, HealthGroup, ModelsGroup, OpenAIApi, UploadsGroup, WebhooksGroup } from "./http/Api.js"
export {
  type AttemptsUsed,
  type HandBack,
  HandedBack,
  Inference,
  InferenceLive,
  InferenceOverHttpClient,
  InferenceScripted,
  type InferenceShape,
  type ModelList,
  type ScriptedRequest,
  scriptedAnswer,
  type SendOptions,
  UpstreamFailure,
  type UpstreamReport,
  type UpstreamResponse
} from "./inference/Inference.js"
export { InferenceFromConfig, InferenceRecord, InferenceReplay, type RecordingsOptions } from "./inference/Recordings.js"
export { DEFAULT_MAX_RECORDING_BYTES, recordingKey, type RecordingKey, recordingPath } from "./inference/recordingFormat.js"
export { ApiApp, ApiAppLive, ApiLive, HttpLive } from "./http/Http.js"
export { requestIdFrom, requestLog } from "./http/RequestLog.js"
export { ApiMountPath, ServerLifecycleLive } from "./observability/Lifecycle.js"
export { jsonLineLogger, jsonLineLoggerOf, loggerLayer, LoggingLive } from "./observability/Logging.js"
export { httpMetrics, MetricsListenFailed, metricsRoute, MetricsServerLive } from "./http/MetricsHttp.js"
export { Metrics, MetricsLive, MetricsNone, type MetricsShape, MetricsTest } from "./observability/Metrics.js"
export { makeMetrics } from "./observability/metricsRegistry.js"
export { NotReady } from "./domain/Health.js"
export { Readiness, ReadinessLive, type ReadinessShape, ReadinessTest } from "./observability/Readiness.js"
export { layerWith as layerTracing, TracingLive } from "./observability/Tracing.js"
export { tracingSettings, type TracingSettings } from "./observability/tracingSettings.js"
export { layerUpstreamCallTracing, UpstreamCallTracing } from "./observability/upstreamCallSpans.js"
export { ErrorEnvelopeLive } from "./http/Middleware.js"
export { Authenticated, AuthenticatedLive, PublicPaths, secure, type SecurityOptions } from "./http/Security.js"
export {
  AppLive,
  BlobStoreLive,
  type LiveServicesError,
  makeApp,
  makeNodeServer,
  makeServices,
  NodeServerLive,
  type NodeServerOptions,
  type PartsError,
  type ServiceParts,
  ServicesLive,
  StorageLive
} from "./Layers.js"
export { UpstreamEntry, type UpstreamSpec } from "./upstreams/UpstreamSpec.js"
export { RequestRates } from "./http/requestRates.js"
export { inBackground, ioFirstScheduler, REQUEST_PRIORITY, SchedulerLive, serverScheduler } from "./Scheduler.js"
export {
  BlobStore,
  BlobStoreLocal,
  type BlobStoreShape,
  makeLocal as makeLocalBlobStore,
  type StagedBlob,
  type StagingWriter
} from "./storage/BlobStore.js"
export { BlobStoreSql } from "./storage/BlobStoreSql.js"
export { ReadConnection, type ReadConnectionShape, type ReadValues, sqliteReadConnection } from "./storage/ReadConnection.js"
export { layerPg, layerSqlite, MigrationsLive, SqlLive } from "./storage/Sql.js"
export { NodeIdInUse, NodeIdLockLive, NodeIdTakenOver, OnNodeIdTakenOver } from "./storage/NodeIdLock.js"
export { BatchesRunElsewhere, SqliteRunnerLockLive } from "./storage/SqliteRunnerLock.js"
export { SessionPoolingRequired, Utf8DatabaseRequired } from "./storage/pgSessions.js"
export { DeliveryPolicy, Webhooks, WebhooksLive, type WebhooksShape } from "./webhooks/Webhooks.js"
export {
  type WebhookTarget,
  WebhookTargets,
  WebhookTargetsLive,
  type WebhookTargetsShape,
  WebhookTargetsTest
} from "./webhooks/WebhookTargets.js"
export * as WebhookObjects from "./domain/Webhooks.js"
