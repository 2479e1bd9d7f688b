/**
 * The validating phase of a batch whose batch-wide lease this node holds: streams the input file through the
 * fold of `inputValidation.ts`, stores its request rows a page at a time, and moves the batch to `in_progress`
 * (with its slices) or `failed` (with every problem found, and no row left). Each write checks, in its
 * transaction, that the batch is still this node's to validate (`WorkLeases.whileHolding`): a node that stalled
 * past its lease stops there, writing nothing.
 */
import { type Cause, Chunk, Effect, Option, Stream } from "effect"
import { AppConfig } from "../Config.js"
import type { BatchError } from "../domain/Batches.js"
import { type BatchId, batchRequestId } from "../domain/Ids.js"
import { echo } from "../domain/Text.js"
import { FileStore } from "../files/FileStore.js"
import { Inference } from "../inference/Inference.js"
import * as BatchLines from "../observability/batchLines.js"
import { isMissingBlob } from "../storage/BlobStore.js"
import { isCapacityFault } from "../storage/Faults.js"
import { type BatchRecord, BatchStore } from "./BatchStore.js"
import { afterPendingIo } from "./eventLoop.js"
import * as Input from "./inputValidation.js"
import { type JsonlLine, jsonlLines, MAX_LINE_BYTES } from "./lines.js"
import { WorkLeases } from "./WorkLeases.js"

/**
 * Request rows stored per statement: this many, or fewer once their bodies hold `CHARACTERS_PER_INSERT` (1,000 lines of
 * 150 KB images waiting to be stored took a 160 MB heap past its limit, at every restart).
 */
const ROWS_PER_INSERT = 1000
const CHARACTERS_PER_INSERT = 8 * 1024 * 1024
/**
 * Input lines validated between two turns of the event loop (a few milliseconds of work): at most this many, and
 * none more once they hold `STEP_CHARACTERS` of text (long lines: a turn held 0.8 s by a file of 16 MiB lines).
 */
const VALIDATION_STEP = 250
const STEP_CHARACTERS = 1024 * 1024

export interface Validating {
  /** Validates the batch and moves it on (a validation cut short, by a restart or a fault, starts over). */
  readonly validate: (record: BatchRecord) => Effect.Effect<void>
  /**
   * After a validation cut short by `cause`: when it was a full disk, deletes the request rows it stored at once,
   * still under its lease, instead of at its retry, so the rest of the server gets that space back while the batch
   * waits. Only while the batch is still `validating` (best effort: on a full disk the delete may fail too; the
   * retry deletes them).
   */
  readonly giveBackSpace: (id: BatchId, cause: Cause.Cause<unknown>) => Effect.Effect<void>
}

export const makeValidating = Effect.gen(function*() {
  const store = yield* BatchStore
  const files = yield* FileStore
  const inference = yield* Inference
  const config = yield* AppConfig
  const leases = yield* WorkLeases

  /** `write`, while the batch is this node's to validate; else `LeaseLost`, writing nothing. */
  const held = <A>(id: BatchId, write: Effect.Effect<A>) => leases.holding(id, config.nodeId, "validating", write)

  // The move its own compare-and-set under the lease, after the rows' delete: in `held`'s transaction, the metrics
  // would count it (`moved`) before it was committed.
  const fail = (id: BatchId, errors: ReadonlyArray<BatchError>) =>
    Effect.zipRight(held(id, store.deleteRequests(id)), store.transition(id, "validationFailed", { errors }, config.nodeId)).pipe(
      Effect.tap((moved) => (Option.isSome(moved) ? BatchLines.validationFailed(id, errors) : Effect.void))
    )

  /** OpenAI's words for an input file that is not there, or is another project's. */
  const inputNotFound = (id: string): BatchError => ({
    code: "invalid_request",
    message: `Cannot find file ${echo(id)}, or organization does not have access to it.`,
    param: "input_file_id",
    line: null
  })

  const validate = (record: BatchRecord) =>
    Effect.gen(function*() {
      const { batch } = record
      // A batch reads only its own project's files: another project's is missing, as one that does not exist.
      const content = yield* Effect.option(files.content(batch.input_file_id, { project: record.project }))
      if (Option.isNone(content)) return yield* fail(batch.id, [inputNotFound(batch.input_file_id)])
      if (content.value.file.bytes > config.maxBatchInputBytes) {
        return yield* fail(batch.id, [{
          code: "file_too_large",
          message: `The input file is ${content.value.file.bytes} bytes; the limit is ${config.maxBatchInputBytes} bytes.`,
          param: "input_file_id",
          line: null
        }])
      }
      yield* held(batch.id, store.deleteRequests(batch.id)) // a validation cut short by a restart starts over

      let state = Input.initial({
        endpoint: batch.endpoint,
        maxRequests: config.maxRequestsPerBatch,
        maxLineBytes: MAX_LINE_BYTES,
        resultId: batchRequestId
      })
      const storeRows = Effect.suspend(() => {
        const rows = Input.takeRows(state)
        return rows.length === 0 ? Effect.void : held(batch.id, store.insertRequests(batch.id, rows))
      })
      // The lines are checked a step at a time, in one go (an effect per line cost more than the checks), and their
      // rows stored a page at a time (a statement per step cost a third more time); after each step the event loop
      // gets a turn, so that API calls never wait for more than a step (steps of a page held polls up to ~60 ms).
      // The lines of one read of the file at most are held (not gathered into steps: 250 long lines are gigabytes).
      const checkFrom = (items: Chunk.Chunk<JsonlLine>, from: number): Effect.Effect<void, Effect.Effect.Error<typeof storeRows>> => {
        let at = from
        let characters = 0
        while (at < items.length && at - from < VALIDATION_STEP && characters < STEP_CHARACTERS) {
          const item = Chunk.unsafeGet(items, at++)
          if (item._tag === "Line") characters += item.text.length
          state = Input.step(state, item)
        }
        const waiting = Input.rowsWaiting(state)
        const full = waiting.rows >= ROWS_PER_INSERT || waiting.characters >= CHARACTERS_PER_INSERT
        const stepped = full ? Effect.zipRight(storeRows, afterPendingIo) : afterPendingIo
        return at < items.length ? Effect.zipRight(stepped, Effect.suspend(() => checkFrom(items, at))) : stepped
      }
      let read = 0
      const missing = yield* content.value.stream.pipe(
        Stream.map((bytes) => {
          read += bytes.length
          return bytes
        }),
        jsonlLines(MAX_LINE_BYTES),
        // A long line read in many pieces comes with empty chunks in between: no turn for those.
        Stream.runForEachChunk((items) => (items.length === 0 ? Effect.void : checkFrom(items, 0))),
        Effect.map(() => read === 0 && content.value.file.bytes > 0),
        Effect.catchSomeDefect((fault) => (isMissingBlob(fault) ? Option.some(Effect.succeed(true)) : Option.none()))
      )
      // Its bytes gone (a database restored beside older files): said, where retries ended in an `internal_error`;
      // unless the file itself went meanwhile (deleted as it was read): as if it had not been found.
      if (missing) {
        const gone = Option.isNone(yield* Effect.option(files.get(batch.input_file_id, { project: record.project })))
        if (gone) return yield* fail(batch.id, [inputNotFound(batch.input_file_id)])
        yield* Effect.logError(`The bytes of file ${batch.input_file_id} are missing from file storage: batch ${batch.id} cannot read its input`)
        return yield* fail(batch.id, [{
          code: "file_content_missing",
          message: `The content of input file ${batch.input_file_id} is missing from the server's storage: upload it again.`,
          param: "input_file_id",
          line: null
        }])
      }
      yield* storeRows
      const model = Input.modelToCheck(state)
      // Checked only against a complete list (an upstream serving any model that gives none may serve it).
      const list = model === undefined ? undefined : yield* (inference.modelsOf?.(record.project) ?? inference.models)
      const known = list?.complete ? new Set(list.data.map((m) => m.id)) : undefined
      const verdict = Input.verdict(state, known)
      if (verdict._tag === "Invalid") return yield* fail(batch.id, verdict.errors)
      if (Option.isSome(config.maxEnqueuedRequestsPerProject)) {
        // Best effort across batches validated at the same moment: each counts only those already running.
        const max = config.maxEnqueuedRequestsPerProject.value
        const enqueued = yield* store.enqueuedRequests(record.project, batch.id)
        if (enqueued + verdict.total > max) {
          return yield* fail(batch.id, [{
            code: "request_limit_exceeded",
            message: `The batch has ${verdict.total} requests and this project's unfinished batches hold ${enqueued}: ` +
              `together more than the ${max} requests a project may have enqueued. Try again once some have finished.`,
            param: null,
            line: null
          }])
        }
      }
      // Unchecked: not found in a list that may lack it (an upstream serving any model gave none yet).
      const modelUnchecked = list !== undefined && !list.complete && !list.data.some((m) => m.id === verdict.model)
      if (yield* store.startRunning(batch.id, { model: verdict.model, total: verdict.total, modelUnchecked }, verdict.slices, config.nodeId)) {
        yield* BatchLines.validated(batch.id, verdict.total, verdict.model, record.project)
      }
    }).pipe(
      Effect.catchTag("LeaseLost", () =>
        Effect.logInfo(`Batch ${record.batch.id}: validation stopped, the batch no longer this node's to validate (taken over after a stall, or cancelled)`)),
      Effect.withSpan("BatchRunner.validate", { attributes: { "batch.id": record.batch.id } })
    )

  const giveBackSpace = (id: BatchId, cause: Cause.Cause<unknown>) =>
    isCapacityFault(cause)
      ? leases.whileHolding(id, config.nodeId, "validating", store.deleteRequests(id)).pipe(Effect.catchAllCause(() => Effect.void))
      : Effect.void

  return { validate, giveBackSpace } satisfies Validating
})
