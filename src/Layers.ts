/**
 * The service layers wired together, for `main.ts` and for apps that embed the service. Each layer is defined
 * once (layers are memoized by reference), and what remains open is only `AppConfig`.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { HttpServer } from "@effect/platform"
import { Effect, Layer } from "effect"
import { createServer } from "node:http"
import { AppConfig } from "./Config.js"
import { FileStoreLive } from "./files/FileStore.js"
import { HttpLive } from "./http/Http.js"
import { BlobStoreLocal } from "./storage/BlobStore.js"
import { SqlLive } from "./storage/Sql.js"

/** Storage: the SQL database (migrated) and the file bytes. */
export const StorageLive = Layer.merge(SqlLive, BlobStoreLocal)

/** Every service the HTTP handlers use, on the configured storage. */
export const ServicesLive = FileStoreLive.pipe(Layer.provide(StorageLive))

/** A Node HTTP server on the configured host and port. */
export const NodeServerLive = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ host, port }) => NodeHttpServer.layer(createServer, { host, port }))
)

/** The whole application on a Node HTTP server; needs only `AppConfig`. */
export const AppLive = HttpLive.pipe(
  Layer.provide(ServicesLive),
  HttpServer.withLogAddress,
  Layer.provide(NodeServerLive)
)
