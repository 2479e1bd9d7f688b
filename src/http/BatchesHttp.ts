/**
 * Handlers of the `batches` group: the changes (create, rerun, cancel) are `BatchCommands`', the reads the store's,
 * a batch's results `BatchResultsHttp.ts`'.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Effect, Option } from "effect"
import { BatchCommands, batchNotFound } from "../batches/BatchCommands.js"
import { BatchStore } from "../batches/BatchStore.js"
import { audit, Auth, CurrentCaller } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import type { CreateBatchBody } from "../domain/Batches.js"
import { invalidRequest } from "../domain/Errors.js"
import { visibilityOf } from "../domain/Projects.js"
import { FileStore } from "../files/FileStore.js"
import { OpenAIApi } from "./Api.js"
import { batchResults } from "./BatchResultsHttp.js"
import { Budget, holderOf } from "./holding.js"
import { echo } from "../domain/Text.js"
import { LARGE_PAGES_AT_ONCE, listAnswer, storedJson } from "./StoredResponse.js"

export const BatchesHttpLive = HttpApiBuilder.group(OpenAIApi, "batches", (handlers) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const commands = yield* BatchCommands
    const config = yield* AppConfig
    const holder = holderOf(yield* Auth)
    const results = batchResults(store, yield* FileStore, new Budget(config.resultPagesAtOnce), config.stallTimeout, holder)
    const listed = listAnswer(new Budget(LARGE_PAGES_AT_ONCE), config.stallTimeout, holder)

    /** The body as sent, for inline requests (their JSON kept as written); the request holds it read. */
    const bodyText = (body: CreateBatchBody): Effect.Effect<string | undefined, never, HttpServerRequest.HttpServerRequest> =>
      body.requests == null
        ? Effect.succeed(undefined)
        : Effect.map(Effect.option(Effect.flatMap(HttpServerRequest.HttpServerRequest, (r) => r.text)), Option.getOrUndefined)

    return handlers
      // Uninterruptible: a client that hangs up mid-call loses no audit line (the change itself runs to its end anyway).
      .handle("create", ({ payload }) =>
        Effect.flatMap(Effect.zip(CurrentCaller, bodyText(payload)), ([caller, text]) => commands.create(payload, caller, text)).pipe(
          Effect.tap((batch) => audit("batch.create", batch.id))
        ), { uninterruptible: true })
      .handle("retrieve", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => store.get(path.batch_id, visibilityOf(caller))).pipe(
          Effect.map((r) => storedJson(r.batch)),
          Effect.catchTag("BatchNotFound", ({ id }) => batchNotFound(id))
        ))
      .handle("cancel", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => commands.cancel(path.batch_id, caller)).pipe(
          Effect.tap((batch) => audit("batch.cancel", batch.id))
        ), { uninterruptible: true })
      .handle("retry", ({ path, payload }) =>
        Effect.flatMap(CurrentCaller, (caller) => commands.retry(path.batch_id, payload, caller)).pipe(
          Effect.tap((batch) => audit("batch.retry", batch.id))
        ), { uninterruptible: true })
      .handle("results", ({ path, urlParams }) =>
        Effect.flatMap(CurrentCaller, (caller) => results(path.batch_id, visibilityOf(caller), urlParams)).pipe(
          Effect.catchTag("BatchNotFound", ({ id }) => batchNotFound(id))
        ))
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(CurrentCaller, (caller) =>
          store.list({ visibility: visibilityOf(caller), after: urlParams.after, limit: urlParams.limit ?? 20 })).pipe(
          Effect.flatMap(listed),
          Effect.catchTag("UnknownBatchCursor", ({ after }) =>
            invalidRequest(`No batch found for the 'after' cursor: ${echo(after)}`, "after", "invalid_value"))
        ))
  }))
