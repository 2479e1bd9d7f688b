/**
 * The service layers wired together, for `main.ts` and for apps that embed the service. Each layer is defined
 * once (layers are memoized by reference), and what remains open is only `AppConfig`.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpServer from "@effect/platform/HttpServer"
import { Duration, Effect, Layer } from "effect"
import { createServer } from "node:http"
import { AppConfig, fileStorageOf } from "./Config.js"
import { BatchRunnerLive } from "./batches/BatchRunner.js"
import { BatchStoreLive } from "./batches/BatchStore.js"
import { FileStoreLive } from "./files/FileStore.js"
import { InferenceLive } from "./inference/Inference.js"
import { HttpLive } from "./http/Http.js"
import { BlobStoreLocal } from "./storage/BlobStore.js"
import { BlobStoreSql } from "./storage/BlobStoreSql.js"
import { SqlLive } from "./storage/Sql.js"

/** The file bytes where `fileStorageOf` the configuration says. */
export const BlobStoreLive = Layer.unwrapEffect(
  Effect.map(AppConfig, (config) => (fileStorageOf(config) === "sql" ? BlobStoreSql : BlobStoreLocal))
)

/** Storage: the SQL database (migrated) and the file bytes. */
export const StorageLive = BlobStoreLive.pipe(Layer.provideMerge(SqlLive))

/** Every service the HTTP handlers use, on the configured storage and upstream. */
export const ServicesLive = BatchRunnerLive.pipe(
  Layer.provideMerge(Layer.mergeAll(FileStoreLive, BatchStoreLive, InferenceLive)),
  Layer.provide(StorageLive)
)

/**
 * A Node HTTP server on the configured host and port. On shutdown it stops accepting at once and gives open
 * requests `shutdownTimeout` to finish; then their connections are closed, which interrupts their handlers (an
 * upload cut short that way leaves no file behind).
 */
export const NodeServerLive = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ host, port, shutdownTimeout }) => {
    const server = createServer()
    // Built after the server, so released before it: the timer runs while `server.close()` waits.
    const closeLingeringConnections = Layer.scopedDiscard(Effect.addFinalizer(() =>
      Effect.sync(() => setTimeout(() => server.closeAllConnections(), Duration.toMillis(shutdownTimeout)).unref())
    ))
    return closeLingeringConnections.pipe(Layer.provideMerge(NodeHttpServer.layer(() => server, { host, port })))
  })
)

/**
 * The whole application on a Node HTTP server; needs only `AppConfig`. The services (migrations, crash clean-up)
 * are built before the server starts listening: the platform attaches its request handler only once every layer
 * is up, and a connection accepted before that would never be answered.
 */
export const AppLive = HttpLive.pipe(
  HttpServer.withLogAddress,
  Layer.provide(NodeServerLive.pipe(Layer.provideMerge(ServicesLive)))
)
