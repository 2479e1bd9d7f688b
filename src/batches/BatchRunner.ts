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
  Clock,
  Context,
  Duration,
  Effect,
  Exit,
  FiberMap,
  Layer,
  Option,
  Schedule,
  Stream
} from "effect"
import { AppConfig } from "../Config.js"
import { activeStatuses, type BatchEndpoint, type BatchError, type BatchStatus } from "../domain/Batches.js"
import { batchRequestId, derivedFileId } from "../domain/Ids.js"
import { echo } from "../domain/Text.js"
import { FileStore } from "../files/FileStore.js"
import { Inference, type UpstreamFailure, type UpstreamResponse } from "../inference/Inference.js"
import { isCapacityFault, type StorageFault, storageFault } from "../storage/Faults.js"
import {
  type BatchRecord,
  BatchStore,
  type Lease,
  type RequestOutcome,
  type RequestRow,
  type Slice,
  type SliceBounds
} from "./BatchStore.js"
import { type JsonlLine, jsonlLines } from "./lines.js"
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

/** How the runner retries a batch's work after a fault (see `supervised`). */
export interface FaultRetryPolicy {
  /** The wait after a first fault; it doubles with every retry. */
  readonly baseDelay: Duration.DurationInput
  /** Retries of faults other than storage faults before the batch fails with `internal_error`. */
  readonly maxRetries: number
  /** The longest wait between two retries while storage is full or unavailable (retried for as long as it lasts). */
  readonly maxStorageDelay: Duration.DurationInput
}

/** The fault retry policy, read once when the runner starts: 1 s doubling, 4 retries, storage waits up to 30 s. */
export class FaultRetry extends Context.Reference<FaultRetry>()("BatchRunner/FaultRetry", {
  defaultValue: (): FaultRetryPolicy => ({
    baseDelay: Duration.seconds(1),
    maxRetries: 4,
    maxStorageDelay: Duration.seconds(30)
  })
}) {}

/** Requests read from the store at a time, and result rows read at a time while writing the files. */
const PAGE = 1000
/** Input lines validated between two turns of the event loop (a few milliseconds of work). */
const VALIDATION_STEP = 250
/**
 * Requests per slice, the unit of work a node claims: small enough that every node gets a share of one large
 * batch, large enough that claiming costs nothing next to running it.
 */
const SLICE = 500
/**
 * Validation errors kept in `errors.data`, by count and by size (every retrieve and list page carries them); the
 * rest are summarized in one last entry.
 */
const MAX_REPORTED_ERRORS = 1000
const MAX_REPORTED_ERROR_BYTES = 64 * 1024
const MAX_LINE_BYTES = 16 * 1024 * 1024

const EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
const CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


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
  const leaseTtlMs = Duration.toMillis(config.leaseTtl)
  const faultRetry = yield* FaultRetry

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
          message: `Cannot find file ${batch.input_file_id}, or organization does not have access to it.`,
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
      let errorBytes = 0
      const report = (e: BatchError) => {
        const size = JSON.stringify(e).length
        if (errors.length < MAX_REPORTED_ERRORS && errorBytes + size <= MAX_REPORTED_ERROR_BYTES) {
          errors.push(e)
          errorBytes += size
        } else omitted++
      }
      const customIds = new Set<string>()
      let model: { readonly name: string; readonly line: number } | undefined
      let count = 0
      let pending: Array<RequestRow> = []
      const slices: Array<SliceBounds> = []
      const flushRows = Effect.suspend(() => {
        const rows = pending
        pending = []
        return errors.length > 0 || rows.length === 0 ? Effect.void : store.insertRequests(batch.id, rows)
      })

      /** Checks one line and, when it is valid, adds its request row to `pending` (cross-line rules included). */
      const inspect = (item: JsonlLine): void => {
        if (item._tag === "TooLong") {
          report({ code: "invalid_request", message: `This line is longer than ${MAX_LINE_BYTES} bytes.`, param: null, line: item.line })
          return
        }
        if (item.text.trim() === "") return
        const result = validateLine(item.text, endpoint)
        if (!isValidLine(result)) {
          for (const p of result) report({ ...p, line: item.line })
          return
        }
        if (customIds.has(result.customId)) {
          report({ code: "duplicate_custom_id", message: `The custom_id '${echo(result.customId)}' is used more than once in this file.`, param: "custom_id", line: item.line })
          return
        }
        customIds.add(result.customId)
        if (model === undefined) model = { name: result.model, line: item.line }
        else if (model.name !== result.model) {
          report({ code: "model_mismatch", message: `All requests of a batch must use the same model: this line uses '${echo(result.model)}', line ${model.line} uses '${echo(model.name)}'.`, param: "body.model", line: item.line })
          return
        }
        count++
        if (count === config.maxRequestsPerBatch + 1) {
          report({ code: "too_many_tasks", message: `The batch has more than ${config.maxRequestsPerBatch} requests, the most one batch may hold.`, param: null, line: item.line })
        }
        if (count > config.maxRequestsPerBatch) return
        if ((count - 1) % SLICE === 0) slices.push({ firstLine: item.line, lastLine: item.line })
        else slices[slices.length - 1] = { firstLine: slices[slices.length - 1]!.firstLine, lastLine: item.line }
        pending.push({ line: item.line, customId: result.customId, resultId: batchRequestId(), body: result.body })
      }

      // The lines are checked VALIDATION_STEP at a time, in one go (an effect per line cost more than the checks),
      // and their rows stored a page at a time (a statement per step cost a third more time); after each step the
      // event loop gets a turn, so that API calls never wait for more than a step (steps of a page held polls up to
      // ~60 ms).
      yield* content.value.stream.pipe(
        jsonlLines(MAX_LINE_BYTES),
        Stream.rechunk(VALIDATION_STEP),
        Stream.runForEachChunk((items) => {
          for (const item of items) inspect(item)
          return pending.length >= PAGE ? Effect.zipRight(flushRows, afterPendingIo) : afterPendingIo
        })
      )
      yield* flushRows
      if (count === 0 && errors.length === 0) {
        report({ code: "empty_file", message: "The input file is empty. Please ensure that the batch contains at least one request.", param: null, line: null })
      }
      if (model !== undefined && errors.length === 0) {
        const known = yield* inference.models
        if (Option.isSome(known) && !known.value.has(model.name)) {
          report({ code: "model_not_found", message: `The provided model '${echo(model.name)}' is not supported by the upstream.`, param: "body.model", line: model.line })
        }
      }
      if (errors.length > 0) {
        if (omitted > 0) {
          errors.push({ code: "too_many_errors", message: `${omitted} more problems were found and are not listed.`, param: null, line: null })
        }
        return yield* failValidation(batch.id, errors)
      }
      yield* store.startRunning(batch.id, { model: model!.name, total: count }, slices)
    }).pipe(Effect.withSpan("BatchRunner.validate", { attributes: { id: record.batch.id } }))

  // ---- in_progress ---------------------------------------------------------------------------------------------

  /** A lease for this node, from now for `leaseTtl`. */
  const lease = Effect.map(nowMillis, (now): Lease => ({ owner: config.nodeId, now, until: now + leaseTtlMs }))

  /** Slices this node holds, by batch: what the heartbeat checks its renewed leases against. */
  const holdings = new Map<string, Set<number>>()
  const hold = (id: string, slice: number) => {
    const held = holdings.get(id) ?? new Set<number>()
    holdings.set(id, held.add(slice))
  }
  const unhold = (id: string, slice: number) => holdings.get(id)?.delete(slice)

  /** A claimed slice: done once every row handed out from it has its outcome stored. */
  interface SliceProgress {
    readonly slice: Slice
    handedOut: boolean
    outstanding: number
    completed: boolean
  }

  /** Marks a slice done (once), forgetting it before the store does so the heartbeat never takes it for lost. */
  const completeIfDone = (id: string, progress: SliceProgress) =>
    Effect.suspend(() => {
      if (progress.completed || !progress.handedOut || progress.outstanding > 0) return Effect.void
      progress.completed = true
      unhold(id, progress.slice.slice)
      return store.completeSlice(id, progress.slice.slice)
    })

  /**
   * The pending rows of the slices this node claims of a batch, one at a time, shared by the workers (each row is
   * handed out once): read a page at a time; when a slice is used up, the next free slice is claimed. `takeNow`
   * hands out a row of the page in hand (undefined when there is none); `next` also reads the next page or slice,
   * one worker at a time, and gives `None` once no slice is left to claim. `claimed` tells whether any slice was.
   */
  const pendingRowSource = (id: string) =>
    Effect.map(Effect.makeSemaphore(1), (mutex) => {
      let current: SliceProgress | undefined
      let page: ReadonlyArray<RequestRow> = []
      let index = 0
      let afterLine = 0
      let morePages = false
      let exhausted = false
      let claimed = false
      const nextSlice = Effect.gen(function*() {
        if (current !== undefined) {
          current.handedOut = true
          yield* completeIfDone(id, current)
        }
        const slice = yield* Effect.flatMap(lease, (l) => store.claimSlice(id, l))
        if (Option.isNone(slice)) {
          exhausted = true
          current = undefined
          return
        }
        claimed = true
        hold(id, slice.value.slice)
        current = { slice: slice.value, handedOut: false, outstanding: 0, completed: false }
        page = []
        index = 0
        afterLine = slice.value.firstLine - 1
        morePages = true
      })
      const fetchPage = Effect.suspend(() =>
        Effect.map(store.pendingRequests(id, afterLine, current!.slice.lastLine, PAGE), (rows) => {
          page = rows
          index = 0
          afterLine = rows.at(-1)?.line ?? afterLine
          morePages = rows.length === PAGE
        })
      )
      const takeNow = (): readonly [RequestRow, SliceProgress] | undefined => {
        if (index >= page.length) return undefined
        current!.outstanding++
        return [page[index++]!, current!]
      }
      const take = Effect.suspend((): Effect.Effect<Option.Option<readonly [RequestRow, SliceProgress]>> => {
        const taken = takeNow()
        if (taken !== undefined) return Effect.succeed(Option.some(taken))
        if (exhausted) return Effect.succeed(Option.none())
        return Effect.zipRight(current !== undefined && morePages ? fetchPage : nextSlice, take)
      })
      // Only reading the next page or slice is serialized.
      const next = mutex.withPermits(1)(take)
      return { takeNow, next, claimed: () => claimed }
    })

  const responseOutcome = (row: RequestRow, res: UpstreamResponse): RequestOutcome => ({
    _tag: "Response",
    line: row.line,
    customId: row.customId,
    resultId: row.resultId,
    statusCode: res.status,
    body: res.text,
    requestId: res.requestId,
    usage: res.status >= 200 && res.status < 300 ? usageOf(res.json) : zeroUsage
  })

  const errorOutcome = (row: RequestRow, e: UpstreamFailure): RequestOutcome => ({
    _tag: "Error",
    line: row.line,
    customId: row.customId,
    resultId: row.resultId,
    code: e.code,
    message: e.message
  })

  /** Outcomes waiting for the next write, with the workers waiting for it. */
  interface OutcomeGroup {
    readonly outcomes: Array<RequestOutcome>
    readonly slices: Array<SliceProgress>
    /** The workers waiting for the write: resumed with its result (which fails them too when it failed). */
    readonly waiting: Array<(result: Effect.Effect<void>) => void>
  }
  const emptyGroup = (): OutcomeGroup => ({ outcomes: [], slices: [], waiting: [] })

  /**
   * Sends the pending requests of every slice this node can claim through `maxConcurrentRequestsPerBatch`
   * workers: a sliding window, each worker takes the next row as soon as its previous one is done. Outcomes are
   * stored by one writer fiber in groups (what arrived while the previous group was being written and the event
   * loop turns after: one write per group, not per request), and a worker moves on only once its outcome is
   * stored. So a crash
   * can lose at most one unstored outcome per worker, and an interruption (cancel, expiry) aborts the calls in
   * flight while the writer still stores every outcome already received; the slices left unfinished are then
   * released for any node to resume. Returns whether a slice was claimed at all.
   */
  const runRequests = (record: BatchRecord) =>
    Effect.scoped(Effect.gen(function*() {
      const { batch } = record
      let group = emptyGroup()
      const arrived = yield* Effect.makeLatch(false)
      /**
       * Adds an outcome to the next group and waits until the group is written. A plain callback, not a `Deferred`:
       * it runs for every request, and an interrupted worker needs no clean-up (a late resume is ignored).
       */
      const storeOutcome = (outcome: RequestOutcome, progress: SliceProgress) =>
        Effect.async<void>((resume) => {
          group.outcomes.push(outcome)
          group.slices.push(progress)
          group.waiting.push(resume)
          arrived.unsafeOpen()
        })
      const writeGroup = Effect.suspend(() => {
        const writing = group
        if (writing.outcomes.length === 0) return Effect.void
        group = emptyGroup()
        return store.recordOutcomes(batch.id, writing.outcomes).pipe(
          Effect.zipRight(Effect.suspend(() => {
            for (const progress of writing.slices) progress.outstanding--
            return Effect.forEach(new Set(writing.slices), (progress) => completeIfDone(batch.id, progress), {
              discard: true
            })
          })),
          // A failed write fails the workers waiting on it too, so the batch's run fails (and is retried) instead
          // of waiting forever for outcomes nobody will store.
          Effect.exit,
          Effect.flatMap((exit) =>
            Effect.suspend(() => {
              for (const resume of writing.waiting) resume(exit)
              return exit
            })
          ),
          Effect.uninterruptible
        )
      })
      // Finalizers run last-added first: queued outcomes are stored before the unfinished slices are released.
      yield* Effect.addFinalizer(() =>
        Effect.zipRight(
          Effect.sync(() => holdings.delete(batch.id)),
          store.releaseLeases({ owner: config.nodeId, batchId: batch.id })
        )
      )
      /**
       * Lets the event loop run turns while they bring more outcomes, until every worker's is in: the responses
       * already received join the group. A slow upstream's outcomes are written after one turn; a fast one's
       * in groups of most of the window (each group write costs about as much as its statement, not its rows).
       */
      const gather: Effect.Effect<void> = Effect.suspend(() => {
        const before = group.outcomes.length
        return Effect.flatMap(afterPendingIo, () => {
          const now = group.outcomes.length
          return now > before && now < config.maxConcurrentRequestsPerBatch ? gather : Effect.void
        })
      })
      // Wait for one outcome, gather, write. Interruptible only while waiting: a group once taken is always written.
      yield* Effect.uninterruptibleMask((restore) =>
        Effect.zipRight(restore(Effect.zipRight(Effect.zipRight(arrived.await, arrived.close), gather)), writeGroup)
      ).pipe(Effect.forever, Effect.forkScoped)
      yield* Effect.addFinalizer(() => writeGroup)
      const endpoint = batch.endpoint as BatchEndpoint
      const options = { deadline: batch.expires_at! * 1000 }
      const rows = yield* pendingRowSource(batch.id)
      // A worker takes a row, sends it, waits until its outcome is stored, and starts over (a recursive effect in
      // tail position: the fiber's stack does not grow). Thousands of requests run a second, so the loop is kept to
      // a few steps: a row of the page in hand is taken synchronously, an outcome is queued when it arrives.
      const work = ([row, progress]: readonly [RequestRow, SliceProgress]) =>
        Effect.matchEffect(inference.send(endpoint, row.body, options), {
          onSuccess: (res) => Effect.zipRight(storeOutcome(responseOutcome(row, res), progress), worker),
          onFailure: (e) => Effect.zipRight(storeOutcome(errorOutcome(row, e), progress), worker)
        })
      const worker: Effect.Effect<void> = Effect.suspend(() => {
        const taken = rows.takeNow()
        if (taken !== undefined) return work(taken)
        return Effect.flatMap(rows.next, (next) => (Option.isNone(next) ? Effect.void : work(next.value)))
      })
      yield* Effect.all(Array.from({ length: config.maxConcurrentRequestsPerBatch }, () => worker), {
        concurrency: "unbounded",
        discard: true
      })
      return rows.claimed()
    })).pipe(Effect.withSpan("BatchRunner.run", { attributes: { id: record.batch.id } }))

  // ---- finishing -----------------------------------------------------------------------------------------------

  const resultStream = (id: string, kind: "succeeded" | "failed"): Stream.Stream<Uint8Array> =>
    Stream.paginateEffect(0, (after: number) =>
      Effect.map(store.resultLines(id, kind, after, PAGE), (page) => [
        page.bytes,
        page.count < PAGE ? Option.none() : Option.some(page.lastLine)
      ]))

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

  /**
   * Finishes a batch on this node: takes its batch-wide lease (false when another node holds it), waits until no
   * node works on its slices any more (they stop at expiry, or on a cancel within a heartbeat; a dead node's lease
   * runs out), then writes its files and moves it to `to`.
   */
  const finishUnderLease = (
    id: string,
    from: ReadonlyArray<BatchStatus>,
    to: "completed" | "cancelled" | "expired",
    pendingCode?: { readonly code: string; readonly message: string }
  ) =>
    Effect.gen(function*() {
      if (!(yield* Effect.flatMap(lease, (l) => store.claimBatch(id, l)))) return false
      yield* Effect.flatMap(nowMillis, (now) => store.liveSlices(id, now)).pipe(
        Effect.repeat({ until: (live) => live === 0, schedule: Schedule.spaced(Duration.millis(100)) })
      )
      yield* finish(id, from, to, pendingCode)
      return true
    })

  /** Batches this node is validating or running requests of: the ones a cancel from another node must stop. */
  const working = new Set<string>()

  /**
   * A validation cut short by a full disk deletes the request rows it stored at once, still under its lease,
   * instead of at its retry: while the batch waits, the rest of the server gets that space back. Only while the
   * batch is still `validating` (best effort: on a full disk the delete may fail too; the retry deletes them).
   */
  const giveBackValidationSpace = (id: string, cause: Cause.Cause<unknown>) =>
    isCapacityFault(cause)
      ? load(id).pipe(
        Effect.flatMap(({ batch }) => batch.status === "validating" ? store.deleteRequests(id) : Effect.void),
        Effect.catchAllCause(() => Effect.void)
      )
      : Effect.void

  /**
   * This node's share of a batch that validates or runs, under a permit: validate it (holding its lease), or
   * run the slices it can claim. False when there was nothing for this node to do.
   */
  const work = (record: BatchRecord) =>
    permits.withPermits(1)(Effect.gen(function*() {
      const id = record.batch.id
      const current = yield* load(id) // the wait for the permit may have been long
      if (current.batch.status === "validating") {
        if (!(yield* Effect.flatMap(lease, (l) => store.claimBatch(id, l)))) return false
        yield* validate(current).pipe(Effect.onError((cause) => giveBackValidationSpace(id, cause)))
        return true
      }
      if (current.batch.status === "in_progress") return yield* runRequests(current)
      return true
    }).pipe(Effect.ensuring(Effect.sync(() => working.delete(record.batch.id))), (effect) =>
      Effect.zipRight(Effect.sync(() => working.add(record.batch.id)), effect)))

  /**
   * Takes a batch as far as this node can: its share of validating and running (until `expires_at`), then
   * finishing it when this node gets the lease. Ends when the batch is final or other nodes hold what is left.
   */
  const drive = (id: string): Effect.Effect<void> =>
    Effect.gen(function*() {
      for (;;) {
        const record = yield* load(id)
        const { batch } = record
        switch (batch.status) {
          case "validating":
          case "in_progress": {
            const remaining = batch.expires_at! * 1000 - (yield* nowMillis)
            if (remaining <= 0) {
              const expired = { code: "batch_expired", message: EXPIRED_MESSAGE }
              if (!(yield* finishUnderLease(id, ["validating", "in_progress"], "expired", expired))) return
              break
            }
            // The expiry also ends a wait for a permit; the next round then finishes the batch as expired.
            const progressed = yield* work(record).pipe(
              Effect.raceFirst(Effect.as(Effect.sleep(Duration.millis(remaining)), true))
            )
            if (!progressed) return
            break
          }
          case "finalizing":
            if (!(yield* finishUnderLease(id, ["finalizing"], "completed"))) return
            break
          case "cancelling": {
            const cancelled = { code: "batch_cancelled", message: CANCELLED_MESSAGE }
            if (!(yield* finishUnderLease(id, ["cancelling"], "cancelled", cancelled))) return
            break
          }
          default:
            return
        }
      }
    }).pipe(Effect.ensuring(store.releaseLeases({ owner: config.nodeId, batchId: id })))

  const baseDelayMs = Duration.toMillis(faultRetry.baseDelay)
  const maxStorageDelayMs = Duration.toMillis(faultRetry.maxStorageDelay)
  const storageState = (fault: StorageFault) => (fault === "capacity" ? "full" : "unavailable")

  /**
   * Drives a batch, retrying after a fault (a retry resumes from the stored rows; a validation starts over).
   * A storage fault (`storage/Faults.ts`: disk or database full, database unreachable) is the server's, not the
   * batch's: the batch waits, retried with a doubling wait capped at `maxStorageDelay`, for as long as the fault
   * lasts (a retry after `expires_at` takes the expiry path), with one warning each time it starts waiting.
   * Any other fault is retried `maxRetries` times (1, 2, 4, 8 s); if it persists, the batch fails with
   * `internal_error`.
   */
  const supervised = (id: string) =>
    Effect.gen(function*() {
      let faults = 0
      let storageRetries = 0
      let waitingFor: StorageFault | undefined
      for (;;) {
        const exit = yield* Effect.exit(drive(id))
        if (Exit.isSuccess(exit)) {
          if (waitingFor !== undefined) yield* Effect.logInfo(`Batch ${id} got through after storage was ${storageState(waitingFor)}`)
          return
        }
        const cause = exit.cause
        const storage = storageFault(cause)
        if (storage !== undefined) {
          if (storage !== waitingFor) {
            storageRetries = 0
            yield* Effect.logWarning(`Storage ${storageState(storage)}; batch ${id} waits`, cause)
          } else {
            yield* Effect.logDebug(`Storage still ${storageState(storage)}; batch ${id} keeps waiting`, cause)
          }
          waitingFor = storage
          yield* Effect.sleep(Duration.millis(Math.min(baseDelayMs * 2 ** Math.min(storageRetries++, 30), maxStorageDelayMs)))
          continue
        }
        waitingFor = undefined
        const giveUp = faults >= faultRetry.maxRetries
        yield* Effect.logError(`Batch ${id} hit a fault; ${giveUp ? "it fails" : "retrying"}`, cause)
        if (giveUp) {
          yield* store.transition(id, activeStatuses, "failed", "failed_at", {
            errors: [{ code: "internal_error", message: `The batch could not be processed: ${Cause.pretty(cause).split("\n")[0]}`, param: null, line: null }]
          })
          return
        }
        yield* Effect.sleep(Duration.millis(baseDelayMs * 2 ** faults++))
      }
    }).pipe(Effect.annotateLogs("batch_id", id))

  const submit = (id: string) => Effect.asVoid(FiberMap.run(running, id, supervised(id), { onlyIfMissing: true }))

  /** Interrupts this node's work on a batch (finished outcomes are stored first) and drives it again. */
  const restart = (id: string) =>
    Effect.gen(function*() {
      yield* FiberMap.remove(running, id)
      yield* FiberMap.run(running, id, supervised(id))
    })

  /**
   * Every `heartbeatInterval`: renews this node's leases; stops its work on batches another node cancelled, and
   * on slices whose lease was lost (taken over after a stall longer than `leaseTtl`); picks up work that is free
   * (new batches created on other nodes, free slices, leases of dead nodes that ran out).
   */
  const heartbeat = Effect.gen(function*() {
    const renewed = yield* Effect.flatMap(lease, store.renewLeases)
    const held = new Set(renewed.map((r) => `${r.batchId}:${r.slice}`))
    const lost = [...holdings].filter(([id, slices]) => [...slices].some((slice) => !held.has(`${id}:${slice}`)))
    const statuses = yield* store.statuses([...working])
    const cancelled = [...statuses].filter(([, status]) => status === "cancelling")
    yield* Effect.forEach(new Set([...lost.map(([id]) => id), ...cancelled.map(([id]) => id)]), restart, { discard: true })
    const free = yield* Effect.flatMap(nowMillis, (now) => store.claimable(now, 100))
    yield* Effect.forEach(free, submit, { discard: true })
  }).pipe(Effect.withSpan("BatchRunner.heartbeat"))

  // A restarted node frees at once what it held before it stopped, instead of waiting for the leases to run out.
  yield* store.releaseAfterRestart(config.nodeId)
  yield* heartbeat.pipe(
    Effect.catchAllCause((cause) => Effect.logError("Heartbeat failed", cause)),
    Effect.repeat(Schedule.spaced(config.heartbeatInterval)),
    Effect.forkScoped
  )

  return BatchRunner.of({ submit, cancel: restart })
})

export const BatchRunnerLive: Layer.Layer<BatchRunner, never, BatchStore | FileStore | Inference | AppConfig> = Layer
  .scoped(BatchRunner, make)
