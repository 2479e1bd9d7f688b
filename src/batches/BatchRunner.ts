/**
 * The background work on batches, one fiber per batch (a `FiberMap` keyed by batch id), driven by the status
 * stored in `BatchStore`, so that the same code starts, resumes after a restart, and finishes a batch:
 *
 *   validating  → stream the input file, validate every line, store one row per request → in_progress | failed
 *   in_progress → run the pending rows against the upstream, a sliding window of `maxConcurrentRequestsPerBatch`,
 *                 store outcomes in groups → finalizing (or expired when `expires_at` passes first)
 *   finalizing  → write the output and error files from the rows, in line order → completed
 *   cancelling  → (its fiber was interrupted: in-flight requests aborted, finished outcomes kept) → cancelled
 *
 * At most `maxConcurrentBatches` batches validate or run at once (a semaphore); finalizing is not limited, so a
 * cancel is never queued behind other batches.
 */
import {
  Cause,
  Chunk,
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  FiberMap,
  Layer,
  Option,
  Queue,
  Schedule,
  Stream
} from "effect"
import { AppConfig } from "../Config.js"
import type { BatchEndpoint, BatchError, BatchStatus } from "../domain/Batches.js"
import { batchRequestId, derivedFileId } from "../domain/Ids.js"
import { FileStore } from "../files/FileStore.js"
import { Inference } from "../inference/Inference.js"
import { type BatchRecord, BatchStore, type RequestOutcome, type RequestRow, type ResultRow } from "./BatchStore.js"
import { jsonlLines } from "./lines.js"
import { isValidLine, usageOf, validateLine, zeroUsage } from "./validation.js"

export interface BatchRunnerShape {
  /** Starts or resumes work on a batch (no-op when it is already being worked on here). */
  readonly submit: (id: string) => Effect.Effect<void>
  /**
   * For a batch already marked `cancelling`: interrupts its work (aborting in-flight upstream requests, keeping
   * finished outcomes), then writes its files and marks it `cancelled`.
   */
  readonly cancel: (id: string) => Effect.Effect<void>
}

export class BatchRunner extends Context.Tag("BatchRunner")<BatchRunner, BatchRunnerShape>() {}

/** Requests read from the store at a time, and the most outcomes written in one transaction. */
const PAGE = 1000
const OUTCOME_GROUP = 500
/** Validation errors kept in `errors.data`; the rest are summarized in one last entry. */
const MAX_REPORTED_ERRORS = 1000
const MAX_LINE_BYTES = 16 * 1024 * 1024

const EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
const CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."

const ACTIVE: ReadonlyArray<BatchStatus> = ["validating", "in_progress", "finalizing", "cancelling"]

/** One line of an output or error file, with the upstream body embedded as it was received (a JSON object). */
export const formatResultLine = (row: ResultRow): string =>
  row.statusCode !== null && row.response !== null
    ? `{"id":${JSON.stringify(row.resultId)},"custom_id":${JSON.stringify(row.customId)},"response":{"status_code":${row.statusCode},"request_id":${
      JSON.stringify(row.requestId)
    },"body":${row.response}},"error":null}\n`
    : `{"id":${JSON.stringify(row.resultId)},"custom_id":${JSON.stringify(row.customId)},"response":null,"error":${
      JSON.stringify({ code: row.errorCode, message: row.errorMessage })
    }}\n`

const nowMillis = Clock.currentTimeMillis

/**
 * Resumes after the event loop has handled the I/O already waiting (a `setImmediate`): unlike `Effect.yieldNow`,
 * which only lets other fibers run, this lets responses sitting in sockets be read first.
 */
const afterPendingIo = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

export const make = Effect.gen(function*() {
  const store = yield* BatchStore
  const files = yield* FileStore
  const inference = yield* Inference
  const config = yield* AppConfig
  const running = yield* FiberMap.make<string>()
  const permits = yield* Effect.makeSemaphore(config.maxConcurrentBatches)

  const load = (id: string) => store.get(id).pipe(Effect.orDie)

  // ---- validating ----------------------------------------------------------------------------------------------

  const failValidation = (id: string, errors: ReadonlyArray<BatchError>) =>
    Effect.zipRight(store.deleteRequests(id), store.transition(id, ["validating"], "failed", "failed_at", { errors }))

  const validate = (record: BatchRecord) =>
    Effect.gen(function*() {
      const { batch } = record
      const endpoint = batch.endpoint as BatchEndpoint
      const content = yield* Effect.option(files.content(batch.input_file_id))
      if (Option.isNone(content)) {
        return yield* failValidation(batch.id, [{
          code: "invalid_request",
          message: `Cannot find file ${batch.input_file_id}, or it was deleted.`,
          param: "input_file_id",
          line: null
        }])
      }
      if (content.value.file.bytes > config.maxBatchInputBytes) {
        return yield* failValidation(batch.id, [{
          code: "file_too_large",
          message: `The input file is ${content.value.file.bytes} bytes; the limit is ${config.maxBatchInputBytes} bytes.`,
          param: "input_file_id",
          line: null
        }])
      }
      yield* store.deleteRequests(batch.id) // a validation cut short by a restart starts over

      const errors: Array<BatchError> = []
      let omitted = 0
      const report = (e: BatchError) => {
        if (errors.length < MAX_REPORTED_ERRORS) errors.push(e)
        else omitted++
      }
      const customIds = new Set<string>()
      let model: { readonly name: string; readonly line: number } | undefined
      let count = 0
      let pending: Array<RequestRow> = []
      const flushRows = Effect.suspend(() => {
        const rows = pending
        pending = []
        return errors.length > 0 || rows.length === 0 ? Effect.void : store.insertRequests(batch.id, rows)
      })

      yield* content.value.stream.pipe(
        jsonlLines(MAX_LINE_BYTES),
        Stream.runForEach((item) => {
          if (item._tag === "TooLong") {
            report({ code: "invalid_request", message: `This line is longer than ${MAX_LINE_BYTES} bytes.`, param: null, line: item.line })
            return Effect.void
          }
          if (item.text.trim() === "") return Effect.void
          const result = validateLine(item.text, endpoint)
          if (!isValidLine(result)) {
            for (const p of result) report({ ...p, line: item.line })
            return Effect.void
          }
          if (customIds.has(result.customId)) {
            report({ code: "duplicate_custom_id", message: `The custom_id '${result.customId}' is used more than once in this file.`, param: "custom_id", line: item.line })
            return Effect.void
          }
          customIds.add(result.customId)
          if (model === undefined) model = { name: result.model, line: item.line }
          else if (model.name !== result.model) {
            report({ code: "model_mismatch", message: `All requests of a batch must use the same model: this line uses '${result.model}', line ${model.line} uses '${model.name}'.`, param: "body.model", line: item.line })
            return Effect.void
          }
          count++
          if (count === config.maxRequestsPerBatch + 1) {
            report({ code: "too_many_tasks", message: `The batch has more than ${config.maxRequestsPerBatch} requests, the most one batch may hold.`, param: null, line: item.line })
          }
          if (count > config.maxRequestsPerBatch) return Effect.void
          pending.push({ line: item.line, customId: result.customId, resultId: batchRequestId(), body: result.body })
          return pending.length >= PAGE ? flushRows : Effect.void
        })
      )
      yield* flushRows
      if (count === 0 && errors.length === 0) {
        report({ code: "empty_file", message: "The input file is empty. Please ensure that the batch contains at least one request.", param: null, line: null })
      }
      if (model !== undefined && errors.length === 0) {
        const known = yield* inference.models
        if (Option.isSome(known) && !known.value.has(model.name)) {
          report({ code: "model_not_found", message: `The provided model '${model.name}' is not supported by the upstream.`, param: "body.model", line: model.line })
        }
      }
      if (errors.length > 0) {
        if (omitted > 0) {
          errors.push({ code: "too_many_errors", message: `${omitted} more problems were found and are not listed.`, param: null, line: null })
        }
        return yield* failValidation(batch.id, errors)
      }
      yield* store.transition(batch.id, ["validating"], "in_progress", "in_progress_at", { model: model!.name, total: count })
    }).pipe(Effect.withSpan("BatchRunner.validate", { attributes: { id: record.batch.id } }))

  // ---- in_progress ---------------------------------------------------------------------------------------------

  /**
   * The batch's pending rows, one at a time, read from the store a page at a time: shared by the workers, so
   * each row is handed out once. `None` when every row has been handed out.
   */
  const pendingRowSource = (id: string) =>
    Effect.map(Effect.makeSemaphore(1), (mutex) => {
      let page: ReadonlyArray<RequestRow> = []
      let index = 0
      let exhausted = false
      const fetchPage = Effect.suspend(() =>
        Effect.map(store.pendingRequests(id, page.at(-1)?.line ?? 0, PAGE), (rows) => {
          page = rows
          index = 0
          exhausted = rows.length < PAGE
        })
      )
      const take = Effect.suspend((): Effect.Effect<Option.Option<RequestRow>> => {
        if (index < page.length) return Effect.succeed(Option.some(page[index++]!))
        if (exhausted) return Effect.succeed(Option.none())
        return Effect.zipRight(fetchPage, take)
      })
      return mutex.withPermits(1)(take)
    })

  const callUpstream = (endpoint: BatchEndpoint, deadline: number) => (row: RequestRow) =>
    inference.send(endpoint, row.body, { deadline }).pipe(
      Effect.map((res): RequestOutcome => ({
        _tag: "Response",
        line: row.line,
        statusCode: res.status,
        body: res.text,
        requestId: res.requestId,
        usage: res.status >= 200 && res.status < 300 ? usageOf(res.json) : zeroUsage
      })),
      Effect.catchTag("UpstreamFailure", (e) => Effect.succeed<RequestOutcome>({ _tag: "Error", line: row.line, code: e.code, message: e.message }))
    )

  /**
   * Sends every pending request through `maxConcurrentRequestsPerBatch` workers: a sliding window, each worker
   * takes the next row as soon as its previous one is done. Outcomes are stored by one writer fiber in groups
   * (whatever arrived while the previous group was being written: one transaction per group, not per request),
   * and a worker moves on only once its outcome is stored. So a crash can lose at most one unstored outcome per
   * worker, and an interruption (cancel, expiry) aborts the calls in flight while the writer still stores every
   * outcome already received.
   */
  const runRequests = (record: BatchRecord) =>
    Effect.scoped(Effect.gen(function*() {
      const { batch } = record
      type Stored = readonly [RequestOutcome, Deferred.Deferred<void>]
      const queue = yield* Queue.unbounded<Stored>()
      const write = (group: ReadonlyArray<Stored>) =>
        group.length === 0 ? Effect.void : store.recordOutcomes(batch.id, group.map(([o]) => o)).pipe(
          Effect.zipRight(Effect.forEach(group, ([, done]) => Deferred.succeed(done, undefined), { discard: true })),
          Effect.uninterruptible
        )
      // Wait for one outcome, then let the event loop run a turn so that every response already received joins
      // the group. Interruptible only while waiting: a group once taken is always written.
      const takeGroup = Effect.flatMap(Queue.take(queue), (first) =>
        Effect.zipRight(
          afterPendingIo,
          Effect.map(Queue.takeUpTo(queue, OUTCOME_GROUP - 1), (rest) => [first, ...rest])
        ))
      yield* Effect.uninterruptibleMask((restore) => Effect.flatMap(restore(takeGroup), write)).pipe(
        Effect.forever,
        Effect.forkScoped
      )
      // Runs before the writer is interrupted: outcomes still queued are stored too.
      yield* Effect.addFinalizer(() => Effect.flatMap(Queue.takeAll(queue), (rest) => write(Chunk.toReadonlyArray(rest))))
      const send = callUpstream(batch.endpoint as BatchEndpoint, batch.expires_at! * 1000)
      const nextRow = yield* pendingRowSource(batch.id)
      const worker = Effect.gen(function*() {
        for (;;) {
          const row = yield* nextRow
          if (Option.isNone(row)) return
          const outcome = yield* send(row.value)
          const stored = yield* Deferred.make<void>()
          yield* Queue.offer(queue, [outcome, stored])
          yield* Deferred.await(stored)
        }
      })
      yield* Effect.all(Array.from({ length: config.maxConcurrentRequestsPerBatch }, () => worker), {
        concurrency: "unbounded",
        discard: true
      })
    })).pipe(Effect.withSpan("BatchRunner.run", { attributes: { id: record.batch.id } }))

  // ---- finishing -----------------------------------------------------------------------------------------------

  const resultStream = (id: string, kind: "succeeded" | "failed"): Stream.Stream<Uint8Array> => {
    const encoder = new TextEncoder()
    return Stream.paginateEffect(0, (after: number) =>
      Effect.map(store.resultRows(id, kind, after, PAGE), (rows) => [
        encoder.encode(rows.map(formatResultLine).join("")),
        rows.length < PAGE ? Option.none() : Option.some(rows.at(-1)!.line)
      ]))
  }

  const writeResultFile = (record: BatchRecord, kind: "succeeded" | "failed") => {
    const id = record.batch.id
    return Effect.map(
      files.create({
        id: derivedFileId(`${id}:${kind}`),
        filename: `${id}_${kind === "succeeded" ? "output" : "error"}.jsonl`,
        purpose: "batch_output",
        expiresAfterSeconds: record.outputExpiresAfterSeconds ?? undefined
      }, resultStream(id, kind)),
      (file) => file.id
    )
  }

  /** Writes the output and error files (each only when it has lines) and moves the batch to `to`. */
  const finish = (
    id: string,
    from: ReadonlyArray<BatchStatus>,
    to: "completed" | "cancelled" | "expired",
    pendingCode?: { readonly code: string; readonly message: string }
  ) =>
    Effect.gen(function*() {
      let record = yield* load(id)
      if (record.batch.in_progress_at === null) {
        // Never got past validation: there are no requests to report.
        yield* store.deleteRequests(id)
      } else if (pendingCode !== undefined) {
        yield* store.failPending(id, pendingCode.code, pendingCode.message)
        record = yield* load(id)
      }
      const counts = record.batch.request_counts
      const outputFileId = counts.completed > 0 ? yield* writeResultFile(record, "succeeded") : null
      const errorFileId = counts.failed > 0 ? yield* writeResultFile(record, "failed") : null
      yield* store.transition(id, from, to, `${to}_at`, { outputFileId, errorFileId })
    }).pipe(Effect.withSpan("BatchRunner.finish", { attributes: { id, to } }))

  /** Validates and runs, racing the batch's expiry (which also ends a wait for a permit). */
  const validateAndRun = (id: string) =>
    Effect.gen(function*() {
      const expiresAt = (yield* load(id)).batch.expires_at! * 1000
      const work = Effect.gen(function*() {
        for (;;) {
          const record = yield* load(id)
          if (record.batch.status === "validating") yield* validate(record)
          else if (record.batch.status === "in_progress") {
            yield* runRequests(record)
            yield* store.transition(id, ["in_progress"], "finalizing", "finalizing_at")
          } else return
        }
      })
      const remaining = expiresAt - (yield* nowMillis)
      const expired = yield* permits.withPermits(1)(work).pipe(
        Effect.as(false),
        Effect.raceFirst(Effect.sleep(Duration.millis(Math.max(0, remaining))).pipe(Effect.as(true)))
      )
      if (expired) {
        yield* finish(id, ["validating", "in_progress"], "expired", { code: "batch_expired", message: EXPIRED_MESSAGE })
      }
    })

  /** Moves a batch through its statuses until it reaches a terminal one. */
  const drive = (id: string): Effect.Effect<void> =>
    Effect.gen(function*() {
      for (;;) {
        const { batch } = yield* load(id)
        switch (batch.status) {
          case "validating":
          case "in_progress":
            yield* validateAndRun(id)
            break
          case "finalizing":
            yield* finish(id, ["finalizing"], "completed")
            break
          case "cancelling":
            yield* finish(id, ["cancelling"], "cancelled", { code: "batch_cancelled", message: CANCELLED_MESSAGE })
            break
          default:
            return
        }
      }
    })

  /** A fault (not a client mistake) retries with backoff; if it persists, the batch fails with `internal_error`. */
  const supervised = (id: string) =>
    drive(id).pipe(
      Effect.sandbox,
      Effect.tapError((cause) => Effect.logError(`Batch ${id} hit a fault; retrying`, cause)),
      Effect.retry(Schedule.exponential(Duration.seconds(1)).pipe(Schedule.intersect(Schedule.recurs(4)))),
      Effect.catchAll((cause) =>
        store.transition(id, ACTIVE, "failed", "failed_at", {
          errors: [{ code: "internal_error", message: `The batch could not be processed: ${Cause.pretty(cause).split("\n")[0]}`, param: null, line: null }]
        })
      ),
      Effect.asVoid,
      Effect.annotateLogs("batch_id", id)
    )

  const submit = (id: string) => Effect.asVoid(FiberMap.run(running, id, supervised(id), { onlyIfMissing: true }))

  const cancel = (id: string) =>
    Effect.gen(function*() {
      yield* FiberMap.remove(running, id) // waits until the interrupted work has stored its finished outcomes
      yield* FiberMap.run(running, id, supervised(id))
    })

  // Resume whatever a previous process left unfinished.
  const unfinished = yield* store.idsWithStatus(ACTIVE)
  if (unfinished.length > 0) yield* Effect.logInfo(`Resuming ${unfinished.length} unfinished batch(es)`)
  yield* Effect.forEach(unfinished, submit, { discard: true })

  return BatchRunner.of({ submit, cancel })
})

export const BatchRunnerLive: Layer.Layer<BatchRunner, never, BatchStore | FileStore | Inference | AppConfig> = Layer
  .scoped(BatchRunner, make)
