/** Handlers of the `batches` group: parameter checks and the cancel move here, the work in `BatchRunner`. */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Duration, Effect, Option } from "effect"
import { createHash } from "node:crypto"
import { BatchRunner } from "../batches/BatchRunner.js"
import { BatchStore } from "../batches/BatchStore.js"
import { isProblem, validateCreateBatch, type ValidCreateBatch } from "../batches/validation.js"
import { audit, type Caller, CurrentCaller } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import { BatchList, type CreateBatchBody } from "../domain/Batches.js"
import { conflict, invalidRequest, notFound, rateLimited } from "../domain/Errors.js"
import { type BatchId, batchId } from "../domain/Ids.js"
import { type Visibility, visibilityOf } from "../domain/Projects.js"
import { FileStore } from "../files/FileStore.js"
import * as BatchLines from "../observability/batchLines.js"
import { OpenAIApi } from "./Api.js"
import { listPage } from "../domain/List.js"
import { echo } from "../domain/Text.js"

const batchNotFound = (id: string) => notFound(`No batch found with id '${echo(id)}'.`, "batch_id")

/**
 * What makes two creates with the same idempotency key "the same request": the checked parameters, metadata in
 * key order (JSON objects are unordered: the same metadata sent with its keys in another order is the same).
 */
const fingerprint = (valid: ValidCreateBatch) =>
  createHash("sha256").update(JSON.stringify([
    valid.inputFileId,
    valid.endpoint,
    valid.completionWindow,
    valid.metadata === null ? null : Object.fromEntries(Object.entries(valid.metadata).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    valid.outputExpiresAfterSeconds === null ? null : { anchor: "created_at", seconds: valid.outputExpiresAfterSeconds }
  ])).digest("hex")

export const BatchesHttpLive = HttpApiBuilder.group(OpenAIApi, "batches", (handlers) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const runner = yield* BatchRunner
    const files = yield* FileStore
    const { completionWindow, extraBatchEndpoints, maxActiveBatchesPerProject } = yield* AppConfig

    const create = (body: CreateBatchBody, caller: Caller) =>
      Effect.gen(function*() {
        const valid = validateCreateBatch(body, extraBatchEndpoints)
        if (isProblem(valid)) return yield* invalidRequest(valid.message, valid.param, valid.code)
        // The batch belongs to the caller's project (an operator's too) and reads only that project's files. A file
        // that does not exist, or is another project's, is not refused here: as OpenAI, the batch is created and
        // fails validation ("Cannot find file …, or organization does not have access to it.").
        const input = yield* Effect.option(files.get(valid.inputFileId, { project: caller.project }))
        if (Option.isSome(input) && input.value.purpose !== "batch") {
          return yield* invalidRequest(
            `File ${input.value.id} has purpose '${input.value.purpose}'; a batch input file must be uploaded with purpose 'batch'.`,
            "input_file_id",
            "invalid_value"
          )
        }
        // The quota is for new batches: a retry with an idempotency key already used gets its batch (or a 409).
        const replay = valid.idempotencyKey === null
          ? Option.none()
          : yield* store.idempotentBatch(caller.project, valid.idempotencyKey)
        if (Option.isSome(maxActiveBatchesPerProject) && Option.isNone(replay)) {
          const max = maxActiveBatchesPerProject.value
          const active = yield* store.activeBatches(caller.project)
          if (active >= max) {
            return yield* rateLimited(
              `This project has ${active} batches not yet finished, the most it may have at once (${max}). ` +
                "Wait for one to finish, or cancel one, and try again."
            )
          }
        }
        const requestHash = fingerprint(valid)
        const { created, record } = yield* store.create({
          id: batchId(),
          project: caller.project,
          endpoint: valid.endpoint,
          inputFileId: valid.inputFileId,
          completionWindow: valid.completionWindow,
          expiresAfterSeconds: Math.max(1, Math.round(Duration.toSeconds(completionWindow))),
          metadata: valid.metadata,
          outputExpiresAfterSeconds: valid.outputExpiresAfterSeconds,
          idempotencyKey: valid.idempotencyKey,
          requestHash
        })
        if (!created && record.requestHash !== requestHash) {
          return yield* conflict(
            "This idempotency_key was already used to create a batch with different parameters.",
            "idempotency_key"
          )
        }
        if (created) {
          yield* BatchLines.created(record.batch, record.project)
          yield* runner.submit(record.batch.id)
        }
        return record.batch
      }).pipe(Effect.withSpan("Batches.create"))

    const cancel = (id: BatchId, visibility: Visibility) =>
      Effect.gen(function*() {
        const { batch } = yield* store.get(id, visibility)
        if (batch.status === "cancelling" || batch.status === "cancelled") return batch
        const moved = yield* store.transition(id, "cancel")
        if (Option.isNone(moved)) {
          const now = (yield* store.get(id, visibility)).batch
          if (now.status === "cancelling" || now.status === "cancelled") return now
          return yield* conflict(`Cannot cancel a batch with status '${now.status}'.`)
        }
        // Interrupts this node's work on it at once; other nodes notice at their next heartbeat.
        yield* runner.restart(id)
        return moved.value
      }).pipe(
        Effect.catchTag("BatchNotFound", () => batchNotFound(id)),
        Effect.withSpan("Batches.cancel", { attributes: { id } })
      )

    return handlers
      // Uninterruptible: a client that hangs up mid-call must not leave a batch created but never started.
      .handle("create", ({ payload }) =>
        Effect.flatMap(CurrentCaller, (caller) => create(payload, caller)).pipe(
          Effect.tap((batch) => audit("batch.create", batch.id))
        ), { uninterruptible: true })
      .handle("retrieve", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => store.get(path.batch_id, visibilityOf(caller))).pipe(
          Effect.map((r) => r.batch),
          Effect.catchTag("BatchNotFound", ({ id }) => batchNotFound(id))
        ))
      .handle("cancel", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => cancel(path.batch_id, visibilityOf(caller))).pipe(
          Effect.tap((batch) => audit("batch.cancel", batch.id))
        ), { uninterruptible: true })
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(CurrentCaller, (caller) =>
          store.list({ visibility: visibilityOf(caller), after: urlParams.after, limit: urlParams.limit ?? 20 })).pipe(
          Effect.map(({ data, hasMore }) => new BatchList(listPage(data, hasMore))),
          Effect.catchTag("UnknownBatchCursor", ({ after }) =>
            invalidRequest(`No batch found for the 'after' cursor: ${echo(after)}`, "after", "invalid_value"))
        ))
  }))
