/**
 * What changes a batch from outside, with every check the API makes: create (from a file or inline requests), rerun
 * (`retry`) and cancel, each run to its end once begun (a caller that gives up leaves no batch half made). `http/BatchesHttp.ts` answers with it, and an embedding app calls it directly; its failures
 * are the API's errors (`domain/Errors.ts`), the same statuses, codes and messages. Reads are `BatchStore`'s.
 */
import { Context, Data, Duration, Effect, Layer, Option, Schema, Stream } from "effect"
import { createHash } from "node:crypto"
import type { Caller } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import { type Batch, CreateBatchBody, RetryBatchBody } from "../domain/Batches.js"
import { fromParseError } from "../domain/decodeErrors.js"
import { type ApiError, type Conflict, conflict, invalidRequest, type NotFound, notFound, overQuota, type RateLimited, rateLimited } from "../domain/Errors.js"
import { type BatchId, batchId, fileId } from "../domain/Ids.js"
import { visibilityOf } from "../domain/Projects.js"
import { echo } from "../domain/Text.js"
import { FileStore, soonest } from "../files/FileStore.js"
import { type Comparison, sameBytes } from "../files/sameBytes.js"
import { nowSeconds } from "../storage/Sql.js"
import * as BatchLines from "../observability/batchLines.js"
import { inBackground } from "../Scheduler.js"
import { DiskReserve, usingReserve } from "../storage/DiskReserve.js"
import { BatchRunner } from "./BatchRunner.js"
import { type BatchRecord, BatchStore, type NewBatch } from "./BatchStore.js"
import { inlineFilename, inlineFingerprint, inlineJsonl, inputOf } from "./inlineInput.js"
import { ALL_KINDS, chosenKinds, nothingToRerun, refusal, Rerun, rerunFilename, rerunMetadata } from "./Rerun.js"
import { isProblem, validateCreateBatch, type ValidCreateBatch } from "./validation.js"

/** A create's or rerun's refusals: 400, 404, 409, 413 (storage quota), 429 (`MAX_ACTIVE_BATCHES_PER_PROJECT`), 507 (storage full). */
export type CommandError = ApiError | RateLimited

export interface BatchCommandsShape {
  /**
   * `POST /v1/batches`: a batch in `caller`'s project, started on this node (on an API-only node, by the nodes that
   * run batches). `bodyText`, the body as sent, keeps inline requests' JSON as written (they are printed from `body`
   * without it).
   */
  readonly create: (body: CreateBatchBody, caller: Caller, bodyText?: string) => Effect.Effect<Batch, CommandError>
  /** `POST /v1/batches/{id}/retry` (extension): a new batch of batch `id`'s lines of the kinds `body.only` names. */
  readonly retry: (id: BatchId, body: RetryBatchBody, caller: Caller) => Effect.Effect<Batch, CommandError>
  /** `POST /v1/batches/{id}/cancel`: this node's work on it stops at once, other nodes' at their next heartbeat. */
  readonly cancel: (id: BatchId, caller: Caller) => Effect.Effect<Batch, NotFound | Conflict>
}

export class BatchCommands extends Context.Tag("BatchCommands")<BatchCommands, BatchCommandsShape>() {}

export const batchNotFound = (id: string) => notFound(`No batch found with id '${echo(id)}'.`, "batch_id")

/**
 * `body` as its schema checks it: an app's call gets the 400 a request with that body gets (over HTTP the body was
 * decoded already; checking it again costs little next to a create).
 */
const checked = <A, I>(schema: Schema.Schema<A, I>, body: A) =>
  Effect.catchTag(Schema.validate(schema)(body), "ParseError", fromParseError)

/**
 * What makes two creates with the same idempotency key "the same request": the checked parameters, metadata in
 * key order (JSON objects are unordered: the same metadata sent with its keys in another order is the same).
 * `input` is the input file, or what stands for it when the server writes one (inline requests, a rerun).
 */
const fingerprint = (valid: ValidCreateBatch, input: string = valid.inputFileId) =>
  createHash("sha256").update(JSON.stringify([
    input,
    valid.endpoint,
    valid.completionWindow,
    valid.metadata === null ? null : Object.fromEntries(Object.entries(valid.metadata).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    valid.outputExpiresAfterSeconds === null ? null : { anchor: "created_at", seconds: valid.outputExpiresAfterSeconds }
  ])).digest("hex")

/** Whether an earlier batch's request was the same one, by more than its fingerprint (`sameBytesAs`). */
type SameInput = (record: BatchRecord) => Effect.Effect<Comparison>

/** A create with the same idempotency key made its batch first: the input file written for this one is not kept. */
class KeyTaken extends Data.TaggedError("KeyTaken")<{ readonly record: BatchRecord }> {}

const inputFileGone = (id: BatchId, file: string) =>
  `Batch ${id}'s input file ${file} no longer exists (deleted or expired): its lines cannot be rerun.`

export const make = Effect.gen(function*() {
  const store = yield* BatchStore
  const runner = yield* BatchRunner
  const files = yield* FileStore
  // Part of the storage when it keeps one (SQLite's default storage): a cancel goes through on a full disk.
  const reserve = yield* Effect.serviceOption(DiskReserve)
  const rerun = yield* Rerun
  const { completionWindow, extraBatchEndpoints, maxActiveBatchesPerProject, maxFileBytesPerProject, maxRequestsPerBatch } = yield* AppConfig

  /**
   * The 409 of an idempotency key used before, unless `record` was made by the same request, or by one that
   * `sameInput` tells the same (its input file another upload of the same bytes).
   */
  const sameRequest = (record: BatchRecord, requestHash: string, sameInput?: SameInput) =>
    Effect.flatMap(
      record.requestHash === requestHash ? Effect.succeed("same" as const) : sameInput?.(record) ?? Effect.succeed("other" as const),
      (input) =>
        input === "same"
          ? Effect.succeed(record.batch)
          : input === "gone"
          ? conflict(
            `This idempotency_key was already used to create batch ${record.batch.id} from file ${record.batch.input_file_id}, ` +
              "which can no longer be read (deleted or expired): its bytes cannot be compared with this input file's.",
            "idempotency_key"
          )
          : conflict("This idempotency_key was already used to create a batch with different parameters.", "idempotency_key")
    )

  /**
   * Whether `record` was made by the request `valid` describes but for its input file, which another upload of the
   * same bytes: a script that uploads and creates as one step (`openai-batch submit --idempotency-key`), run again,
   * gets the batch made the first time (a CI job run twice made two). Read only then: both files, to compare digests
   * (at the background's priority: other requests go on meanwhile; interruptible: a client gone stops it).
   */
  const sameBytesAs = (valid: ValidCreateBatch, project: string): SameInput => (record) => {
    const earlier = record.batch.input_file_id
    if (earlier === valid.inputFileId || fingerprint(valid, earlier) !== record.requestHash) return Effect.succeed("other")
    return Effect.interruptible(inBackground(sameBytes(files, [earlier, valid.inputFileId], { project })))
  }

  /**
   * Creates the batch `valid` describes and hands it to this node's runner; with an idempotency key its project used
   * before, gives the batch made then (`requestHash` tells the same request from another). `writeInput` writes the
   * input file (`valid.inputFileId`) of inline requests or a rerun once a batch is to be made, with `insertBatch` as
   * its `FileStore.create` check: the batch's row and the file's commit together (with the built-in stores, which
   * share a database), so that a process killed in between leaves neither; written one after the other, it left the
   * file listed for good, naming a batch that never was.
   */
  const insert = (
    caller: Caller,
    valid: ValidCreateBatch,
    requestHash: string,
    { sameInput, writeInput }: {
      readonly writeInput?: (batch: BatchId, insertBatch: Effect.Effect<void, KeyTaken>) => Effect.Effect<unknown, ApiError | KeyTaken>
      readonly sameInput?: SameInput
    } = {}
  ) =>
    Effect.gen(function*() {
      // The quota is for new batches: a retry with an idempotency key already used gets its batch (or a 409).
      if (valid.idempotencyKey !== null) {
        const replay = yield* store.idempotentBatch(caller.project, valid.idempotencyKey)
        if (Option.isSome(replay)) return yield* sameRequest(replay.value, requestHash, sameInput)
      }
      if (Option.isSome(maxActiveBatchesPerProject)) {
        const max = maxActiveBatchesPerProject.value
        const active = yield* store.activeBatches(caller.project)
        if (active >= max) {
          return yield* rateLimited(
            `This project has ${active} ${active === 1 ? "batch" : "batches"} not yet finished, the most it may have at once (${max}). ` +
              "Wait for one to finish, or cancel one, and try again."
          )
        }
      }
      const id = batchId()
      const newBatch: NewBatch = {
        id,
        project: caller.project,
        endpoint: valid.endpoint,
        inputFileId: valid.inputFileId,
        completionWindow: valid.completionWindow,
        expiresAfterSeconds: windowSeconds,
        metadata: valid.metadata,
        outputExpiresAfterSeconds: valid.outputExpiresAfterSeconds,
        idempotencyKey: valid.idempotencyKey,
        requestHash
      }
      /** The batch's row; `KeyTaken` when a create with the key made its own first (`dropInput` then runs). */
      const insertRow = (dropInput: Effect.Effect<void> = Effect.void) =>
        Effect.flatMap(Effect.onError(store.create(newBatch), () => dropInput), (made) =>
          made.created ? Effect.succeed(made.record) : Effect.zipRight(dropInput, new KeyTaken({ record: made.record })))
      const withInput = (write: NonNullable<typeof writeInput>) =>
        Effect.gen(function*() {
          const made: { record?: BatchRecord } = {}
          yield* write(id, Effect.map(insertRow(), (record) => void (made.record = record)))
          if (made.record !== undefined) return made.record
          // An app's own FileStore that runs no check: the batch's row after its file, removed if no batch is made.
          yield* Effect.logWarning("FileStore.create ran no check: a batch's row is written after its input file's")
          return yield* insertRow(Effect.ignore(files.remove(valid.inputFileId, "all")))
        })
      const inserted = yield* (writeInput === undefined ? insertRow() : withInput(writeInput)).pipe(
        Effect.map((record) => ({ record })),
        Effect.catchTag("KeyTaken", ({ record }) => Effect.succeed({ taken: record }))
      )
      if ("taken" in inserted) return yield* sameRequest(inserted.taken, requestHash, sameInput) // a create with the key won
      const { record } = inserted
      yield* BatchLines.created(record.batch, record.project)
      yield* runner.submit(record.batch.id)
      return record.batch
    })

  /** What the caller's project may still store, in bytes (`MAX_FILE_BYTES_PER_PROJECT`). */
  const roomOf = (project: string) =>
    Option.match(maxFileBytesPerProject, {
      onNone: () => Effect.succeed({ quota: Infinity, room: Infinity }),
      onSome: (quota) => Effect.map(files.projectBytes(project), (used) => ({ quota, room: quota - used }))
    })

  /** How long a batch may run, in seconds. */
  const windowSeconds = Math.max(1, Math.round(Duration.toSeconds(completionWindow)))
  /**
   * How long a copy of prompts the server writes (an inline batch's input, a rerun's) is kept: while the batch may run
   * and its own files after it (`output_expires_after`), and no longer than the file a rerun copies has left, but
   * for the batch's window (it must outlive the run); undefined: the batch files' default. Such copies were kept
   * for good, though the user's own file expired.
   */
  const copyLife = (outputExpiresAfterSeconds: number | null, sourceLeft?: number) =>
    soonest(
      outputExpiresAfterSeconds === null ? undefined : windowSeconds + outputExpiresAfterSeconds,
      sourceLeft === undefined ? undefined : Math.max(sourceLeft, windowSeconds)
    )

  /** Stores inline requests as the input file `valid.inputFileId` of batch `batch`. */
  const writeInline = (jsonl: string, valid: ValidCreateBatch, project: string) => (batch: BatchId, insertBatch: Effect.Effect<void, KeyTaken>) =>
    Effect.gen(function*() {
      const bytes = Buffer.from(jsonl)
      const { quota, room } = yield* roomOf(project)
      if (bytes.length > room) return yield* overQuota(quota, room, "requests")
      const expiresAfterSeconds = copyLife(valid.outputExpiresAfterSeconds)
      const meta = { id: valid.inputFileId, filename: inlineFilename(batch), purpose: "batch", project, expiresAfterSeconds }
      return yield* files.create(meta, Stream.make(bytes), insertBatch)
    })

  const create = (unchecked: CreateBatchBody, caller: Caller, bodyText?: string) =>
    Effect.gen(function*() {
      const body = yield* checked(CreateBatchBody, unchecked)
      const input = inputOf(body, maxRequestsPerBatch)
      if ("code" in input) return yield* invalidRequest(input.message, input.param, input.code)
      const inputFileId = input._tag === "File" ? input.id : fileId()
      const valid = validateCreateBatch({ ...body, input_file_id: inputFileId }, extraBatchEndpoints)
      if (isProblem(valid)) return yield* invalidRequest(valid.message, valid.param, valid.code)
      if (input._tag === "Inline") {
        const jsonl = inlineJsonl(input.requests, bodyText)
        return yield* insert(caller, valid, fingerprint(valid, inlineFingerprint(jsonl)), { writeInput: writeInline(jsonl, valid, caller.project) })
      }
      // The batch belongs to the caller's project (an operator's too) and reads only that project's files. A file
      // that does not exist, or is another project's, is not refused here: as OpenAI, the batch is created and
      // fails validation ("Cannot find file …, or organization does not have access to it."). But an operator, who
      // sees every project's files (the dashboard lists them with a "Start batch" button), is told at once.
      const file = yield* Effect.option(files.get(valid.inputFileId, { project: caller.project }))
      if (Option.isNone(file) && caller.admin && Option.isSome(yield* Effect.option(files.get(valid.inputFileId, "all")))) {
        return yield* invalidRequest(
          `File ${valid.inputFileId} is another project's: an operator's batch is its own project's and reads only ` +
            "that project's files. Start it with a key of the file's project.",
          "input_file_id",
          "invalid_value"
        )
      }
      if (Option.isSome(file) && file.value.purpose !== "batch") {
        return yield* invalidRequest(
          `File ${file.value.id} has purpose '${file.value.purpose}'; a batch input file must be uploaded with purpose 'batch'.`,
          "input_file_id",
          "invalid_value"
        )
      }
      return yield* insert(caller, valid, fingerprint(valid), { sameInput: sameBytesAs(valid, caller.project) })
    }).pipe(Effect.uninterruptible, Effect.withSpan("Batches.create"))

  const retry = (id: BatchId, unchecked: RetryBatchBody, caller: Caller) =>
    Effect.gen(function*() {
      const body = yield* checked(RetryBatchBody, unchecked)
      const original = yield* store.get(id, visibilityOf(caller))
      const kinds = chosenKinds(body?.only ?? undefined)
      if (kinds.length === 0) {
        return yield* invalidRequest(`'only' must name at least one of ${ALL_KINDS.map((k) => `'${k}'`).join(", ")}.`, "only", "invalid_value")
      }
      const refused = refusal(original.batch)
      if (refused !== undefined) return yield* conflict(refused)
      const metadata = rerunMetadata(original.batch, body?.metadata)
      if ("code" in metadata) return yield* invalidRequest(metadata.message, metadata.param, metadata.code)
      const seconds = original.outputExpiresAfterSeconds
      const valid = validateCreateBatch({
        input_file_id: fileId(),
        endpoint: original.batch.endpoint,
        completion_window: original.batch.completion_window,
        metadata: metadata.metadata,
        output_expires_after: seconds === null ? null : { anchor: "created_at", seconds },
        idempotency_key: body?.idempotency_key ?? null
      }, extraBatchEndpoints)
      if (isProblem(valid)) return yield* invalidRequest(valid.message, valid.param, valid.code)
      // Asked first: once the input file is gone, the batch's request rows go too (`sweepSpentRows`).
      const inputFile = original.batch.input_file_id
      const source = yield* Effect.option(files.get(inputFile, "all"))
      if (Option.isNone(source)) return yield* conflict(inputFileGone(id, inputFile))
      const sourceExpiresAt = source.value.expires_at
      const sourceLeft = sourceExpiresAt === null ? undefined : sourceExpiresAt - (yield* nowSeconds)
      if ((yield* rerun.count(id, kinds)) === 0) return yield* conflict(nothingToRerun(id, kinds))
      // A whole file written within the request: at the background's priority, so that it leaves the event loop
      // turns between its steps (on Effect's microtasks synchronous storage could hold the loop for long).
      const writeInput = (batch: BatchId, insertBatch: Effect.Effect<void, KeyTaken>) =>
        inBackground(Effect.flatMap(roomOf(caller.project), ({ quota, room }) =>
          rerun.writeInput(original, kinds, {
            id: valid.inputFileId,
            filename: rerunFilename(batch),
            project: caller.project,
            maxBytes: room,
            expiresAfterSeconds: copyLife(valid.outputExpiresAfterSeconds, sourceLeft)
          }, insertBatch).pipe(
            Effect.catchTags({
              InputFileGone: ({ id: file }) => conflict(inputFileGone(id, file)),
              InputTooLarge: () => overQuota(quota, room, null)
            })
          )))
      return yield* insert(caller, valid, fingerprint(valid, `retry:${id}:${kinds.join(",")}`), { writeInput })
    }).pipe(
      Effect.catchTag("BatchNotFound", () => batchNotFound(id)),
      Effect.uninterruptible,
      Effect.withSpan("Batches.retry", { attributes: { id } })
    )

  const cancel = (id: BatchId, caller: Caller) =>
    Effect.gen(function*() {
      const visibility = visibilityOf(caller)
      const { batch } = yield* store.get(id, visibility)
      if (batch.status === "cancelling" || batch.status === "cancelled") return batch
      const moved = yield* store.transition(id, "cancel").pipe(usingReserve(reserve, `cancelling batch ${id}`))
      if (Option.isNone(moved)) {
        const now = (yield* store.get(id, visibility)).batch
        if (now.status === "cancelling" || now.status === "cancelled") return now
        // As OpenAI's 409 (`code` null). One running still is being expired (`transition` says why).
        return yield* conflict(
          now.status === "in_progress"
            ? "Cannot cancel a batch whose expiry has begun: it ends 'expired'."
            : `Cannot cancel a batch with status '${now.status}'.`,
          null,
          null
        )
      }
      // Interrupts this node's work on it at once; other nodes notice at their next heartbeat.
      yield* runner.restart(id)
      return moved.value
    }).pipe(
      Effect.catchTag("BatchNotFound", () => batchNotFound(id)),
      Effect.uninterruptible,
      Effect.withSpan("Batches.cancel", { attributes: { id } })
    )

  return BatchCommands.of({ create, retry, cancel })
})

export const BatchCommandsLive: Layer.Layer<BatchCommands, never, BatchStore | BatchRunner | FileStore | Rerun | AppConfig> =
  Layer.effect(BatchCommands, make)
