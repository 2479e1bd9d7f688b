/**
 * A batch's work under supervision: retried after a fault, waiting out storage faults for as long as they last
 * (`storage/Faults.ts`), failing the batch with `internal_error` when another fault persists. The runner
 * (`BatchRunner.ts`) gives it how to drive a batch once; this file owns what happens when that fails.
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, FiberId, Option, type Tracer } from "effect"
import type { BatchId } from "../domain/Ids.js"
import * as BatchLines from "../observability/batchLines.js"
import { logFailure } from "../observability/failureRuns.js"
import { batchWork } from "../observability/Tracing.js"
import { type StorageFault, storageFault, storageState } from "../storage/Faults.js"
import { BatchStore } from "./BatchStore.js"
import type { LocalWork } from "./heartbeat.js"

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

/** A batch waiting out a storage fault says so again at most this often. */
const STILL_WAITING_SAID_EVERY_MS = 60_000

/**
 * Makes `supervised` for the runner: `drive(id, sayOnce)` takes a batch as far as this node can (ending when done),
 * `local` counts a retry's wait as this node's work on the batch. `databaseAnswers` is called at each heartbeat that
 * goes through.
 */
export const makeSupervision = (
  local: LocalWork,
  drive: (id: BatchId, sayOnce: Effect.Effect<void>) => Effect.Effect<void, unknown>
) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const faultRetry = yield* FaultRetry
    /**
     * Settled when a heartbeat goes through (then replaced): a batch waiting out an unavailable database tries again
     * at once, not at the end of a doubling wait of up to `maxStorageDelay` (batches sat idle 24 s after it was back).
     */
    let databaseBack = Deferred.unsafeMake<void>(FiberId.none)
    const databaseAnswers = Effect.suspend(() => {
      const answered = databaseBack
      databaseBack = Deferred.unsafeMake<void>(FiberId.none)
      return Deferred.succeed(answered, undefined)
    })

    const baseDelayMs = Duration.toMillis(faultRetry.baseDelay)
    const maxStorageDelayMs = Duration.toMillis(faultRetry.maxStorageDelay)

    /**
     * Drives a batch, retrying after a fault (a retry resumes from the stored rows; a validation starts over).
     * A storage fault (`storage/Faults.ts`: disk or database full, database unreachable) is the server's, not the
     * batch's: the batch waits, retried with a doubling wait capped at `maxStorageDelay` (an unavailable database's
     * wait ends as soon as a heartbeat goes through: `databaseBack`), for as long as the fault lasts (a retry after
     * `expires_at` takes the expiry path), with a warning each time it starts waiting and at most once a minute while
     * it goes on.
     * Any other fault is retried `maxRetries` times (1, 2, 4, 8 s); if it persists, the batch fails with
     * `internal_error`. `announce` is said once, as the first line of the batch's work on this node: once it is known
     * to be driven here (not for one the cap leaves in the database: `validatingCap.ts`).
     */
    const supervised = (id: BatchId, starter: Option.Option<Tracer.AnySpan>, announce: Effect.Effect<void> = Effect.void) =>
      Effect.gen(function*() {
        let toSay = announce
        const sayOnce = Effect.suspend(() => {
          const said = toSay
          toSay = Effect.void
          return said
        })
        // A wait before a retry counts as this node's work on the batch: a cancel from another node ends it. Whether
        // `cut` ended it before its time.
        const backOff = (ms: number, cut: Effect.Effect<void> = Effect.never) =>
          local.working(id, Effect.raceFirst(Effect.as(Effect.sleep(Duration.millis(ms)), false), Effect.as(cut, true)))
        let faults = 0
        let storageRetries = 0
        let waitingFor: StorageFault | undefined
        let warnedAt = 0
        for (;;) {
          const exit = yield* Effect.exit(drive(id, sayOnce))
          if (Exit.isSuccess(exit)) {
            if (waitingFor !== undefined) yield* Effect.logInfo(`Batch ${id} got through after storage was ${storageState(waitingFor)}`)
            return
          }
          const cause = exit.cause
          const storage = storageFault(cause)
          if (storage !== undefined) {
            const now = yield* Clock.currentTimeMillis
            if (storage !== waitingFor) {
              storageRetries = 0
              warnedAt = now
              yield* logFailure(`Batch ${id} waits`, cause)
            } else if (now - warnedAt >= STILL_WAITING_SAID_EVERY_MS) {
              // Said again now and then: a wait that comes back after progress (a finalization's file) was silent.
              warnedAt = now
              yield* Effect.logWarning(`Storage still ${storageState(storage)}; batch ${id} keeps waiting`)
            } else {
              yield* Effect.logDebug(`Storage still ${storageState(storage)}; batch ${id} keeps waiting`, cause)
            }
            waitingFor = storage
            const delay = Math.min(baseDelayMs * 2 ** Math.min(storageRetries++, 30), maxStorageDelayMs)
            const woken = yield* backOff(delay, storage === "unavailable" ? Deferred.await(databaseBack) : Effect.never)
            if (woken) yield* Effect.logInfo(`The database answers again; batch ${id} resumes`)
            continue
          }
          waitingFor = undefined
          const giveUp = faults >= faultRetry.maxRetries
          yield* Effect.logError(`Batch ${id} hit a fault; ${giveUp ? "it fails" : "retrying"}`, cause)
          if (giveUp) {
            const failed = yield* store.transition(id, "fault", {
              // The fault's text stays in the log: it is the server's, and may say what a client should not see.
              errors: [{ code: "internal_error", message: `The batch could not be processed: an internal error (the server's log names it, with the batch's id)`, param: null, line: null }]
            })
            if (Option.isSome(failed)) yield* BatchLines.finished(failed.value)
            return
          }
          yield* backOff(baseDelayMs * 2 ** faults++)
        }
      }).pipe(BatchLines.batchAnnotations(id), batchWork(id, starter))

    return { supervised, databaseAnswers }
  })
