/**
 * The HTTP application: the API with its handlers, the error envelope, the OpenAPI document and docs page. It
 * needs the services the handlers use and an `HttpServer`; `main.ts` (or an embedding app) provides both.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import { Effect, Layer } from "effect"
import { AppConfig } from "../Config.js"
import { OpenAIApi } from "./Api.js"
import { BatchesHttpLive } from "./BatchesHttp.js"
import { docsRoute } from "./Docs.js"
import { FilesHttpLive } from "./FilesHttp.js"
import { HealthHttpLive } from "./HealthHttp.js"
import { ErrorEnvelopeLive, sdkHeaders } from "./Middleware.js"
import { boundBodies } from "./RequestBody.js"

/** The API with every group implemented (requires the services the handlers use). */
export const ApiLive = HttpApiBuilder.api(OpenAIApi).pipe(
  Layer.provide([HealthHttpLive, FilesHttpLive, BatchesHttpLive, ErrorEnvelopeLive])
)

/**
 * Serves `ApiLive` plus `/openapi.json` and `/docs` on whatever `HttpServer` is provided, with request bodies
 * bounded by `maxJsonBodyBytes`.
 */
export const HttpLive = Layer.unwrapEffect(Effect.map(AppConfig, ({ maxJsonBodyBytes }) =>
  HttpApiBuilder.serve((app) => HttpMiddleware.logger(sdkHeaders(boundBodies(maxJsonBodyBytes)(app))))
)).pipe(
  Layer.provide(docsRoute("/docs")),
  Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
  Layer.provide(HttpApiBuilder.middlewareCors()),
  Layer.provide(ApiLive)
)
