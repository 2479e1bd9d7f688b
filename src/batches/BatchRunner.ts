/**
 * The background work on batches: one fiber per batch on this node (a `FiberMap` keyed by batch id) that drives it
 * by its stored status, so that the same code starts, resumes after a restart, and finishes a batch:
 *
 *   validating  → `validating.ts`: validate the input file, store its request rows  → in_progress | failed
 *   in_progress → `running.ts`: run the pending requests of the slices this node claims, a sliding window
 *                 (`pendingRows.ts`, `outcomeWriter.ts`)                             → finalizing (last slice done)
 *   finalizing  → `finishing.ts`: write the output and error files                  → completed
 *   cancelling  → (this node's work on it was interrupted: see `restart`) finishing  → cancelled
 *   past `expires_at` while validating or running: the work is interrupted; finishing → expired
 *
 * Status moves are those of the transition table (`transitions.ts`). The heartbeat (`heartbeat.ts`) renews this
 * node's leases, restarts its work on batches cancelled on another node or whose slices it lost, and submits free
 * work. At most `maxConcurrentBatches` batches validate or run at once on a node, their permits shared round-robin
 * by project (`fairPermits.ts`: a running batch gives its permit back after a slice, or `TurnLength`, when another
 * project waits, and at once when its upstream goes down: it waits for it to come back in the queue, keeping its
 * turn);
 * finishing is not limited, so a cancel is never queued behind other batches. `supervised` retries a batch after a fault.
 * A node with `maxConcurrentBatches` 0 does none of this (`handedOff`): the nodes that run batches pick its work up.
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, FiberId, FiberMap, Layer, Option, Schedule, type Tracer } from "effect"
import { AppConfig, runsBatches } from "../Config.js"
import type { BatchId } from "../domain/Ids.js"
import { FileStore, sweepEvery } from "../files/FileStore.js"
import { Inference } from "../inference/Inference.js"
import * as BatchLines from "../observability/batchLines.js"
import { logFailure } from "../observability/failureRuns.js"
import { batchWork } from "../observability/Tracing.js"
import { type StorageFault, storageFault, storageState } from "../storage/Faults.js"
import { inBackground } from "../Scheduler.js"
import { type BatchRecord, BatchStore } from "./BatchStore.js"
import { heldAWhile, holderTurn, makeFairPermits, type Readiness } from "./fairPermits.js"
import { makeFinishing } from "./finishing.js"
import { LocalWork, startHeartbeat } from "./heartbeat.js"
import { makeRunning } from "./running.js"
import { makeValidating } from "./validating.js"
import { runValidatingCap } from "./validatingCap.js"
import { nodeLease, WorkLeases } from "./WorkLeases.js"

export interface BatchRunnerShape {
  /** Starts or resumes work on a batch (no-op when it is already being worked on here). */
  readonly submit: (id: BatchId) => Effect.Effect<void>
  /**
   * Interrupts this node's work on a batch (aborting its in-flight upstream requests; finished outcomes are
   * stored first) and drives it again from its stored status. How a cancel takes effect: once the batch is marked
   * `cancelling`, driving it again writes its files and marks it `cancelled`.
   */
  readonly restart: (id: BatchId) => Effect.Effect<void>
  /** How many batches this node drives now (a fiber each: working on them, or waiting for a permit). */
  readonly driving: Effect.Effect<number>
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

/**
 * How long a running batch keeps its permit while another project waits, when its slice takes longer (slow or
 * refused requests: a slice of 500 lines all answered 429 held it 100 s): it then takes no new request, hands back
 * those waiting for their upstream, and gives the permit back once the calls at the upstream are answered. Counted
 * from the permit's grant (a validation included). Read once when the runner starts.
 */
export class TurnLength extends Context.Reference<TurnLength>()("BatchRunner/TurnLength", {
  defaultValue: (): Duration.Duration => Duration.seconds(10)
}) {}

/** How often a batch waiting for a permit looks whether its upstream still holds its calls (no event tells). */
const HELD_CHECK = Duration.millis(250)
/**
 * How long a running batch's upstream holds every call before the batch gives its permit away: a 429 storm's pauses
 * of a few tens of milliseconds would otherwise hand a later batch of the project the earlier one's turn.
 */
const HELD_LONG_MS = 1000

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

/** Groups of batches (`BatchStore.sweepSpentRows`) a sweep looks at, at most: a few milliseconds each. */
const SPENT_GROUPS = 10

export const make = Effect.gen(function*() {
  const store = yield* BatchStore
  const leases = yield* WorkLeases
  const config = yield* AppConfig
  const faultRetry = yield* FaultRetry
  const turnMs = Duration.toMillis(yield* TurnLength)
  const inference = yield* Inference
  const fibers = yield* FiberMap.make<BatchId>()
  const permits = makeFairPermits(config.maxConcurrentBatches)
  const local = new LocalWork()
  const validating = yield* makeValidating
  const running = yield* makeRunning(local)
  const finishing = yield* makeFinishing

  const load = (id: BatchId) => store.get(id, "all").pipe(Effect.orDie)

  const driving = () => Array.from(fibers, ([id]) => id)
  const cap = yield* runValidatingCap(
    Math.max(16, 4 * config.maxConcurrentBatches),
    (project, room) => Effect.flatMap(nodeLease(config), (lease) => leases.claimable(lease.now, room, driving(), { project })),
    (id) => Effect.suspend(() => start(id)) // defined below; called only once batches run
  )

  /**
   * Whether the upstream of `model` (for `project`) holds every call now though it is up (a `Retry-After` pause, a
   * full queue).
   */
  const heldFor = (model: string | null, project: string) => () => inference.isHeld?.(model, project) ?? false
  /** Completes once `held()` is `wanted`, looked at every `HELD_CHECK` (held never, without `isHeld` to ask). */
  const heldBecomes = (held: () => boolean, wanted: boolean) =>
    inference.isHeld === undefined
      ? (wanted ? Effect.never : Effect.void)
      : Effect.repeat(Effect.sync(held), { schedule: Schedule.spaced(HELD_CHECK), until: (now) => now === wanted })

  /**
   * A running batch may take a permit while its upstream is up and does not hold its calls (`fairPermits.ts`: it
   * keeps its turn meanwhile). Down and up are told as they happen; a hold is looked at every `HELD_CHECK`, and
   * `ready` says what was seen then: read live, a hold shorter than that could make a waiter skipped as a permit
   * came free and never looked at again (its watch would not have seen it held).
   */
  const upstreamReadiness = (model: string | null, project: string): Readiness => {
    let up = false
    const held = heldFor(model, project)
    return {
      ready: () => up && !(inference.isDown?.(model, project) ?? false),
      awaitReady: Effect.zipRight(
        Effect.zipRight(inference.reachable(model, project), heldBecomes(held, false)),
        Effect.sync(() => void (up = true))
      ),
      awaitNotReady: Effect.zipRight(
        Effect.raceFirst(inference.unreachable(model, project), heldBecomes(held, true)),
        Effect.sync(() => void (up = false))
      )
    }
  }

  /**
   * This node's share of a batch that validates or runs, under a permit taken in its project's turn: validate it
   * (holding its batch-wide lease), then in the same turn run the slices it can claim, up to the end of a slice (or
   * of its turn, when the slice is slow: `TurnLength`) when another project waits for the permit (`drive` then
   * queues again). False when there was nothing for this node to do. A running batch whose upstream is down waits
   * for it in the queue; the wait counts as this node's work on the batch, so that a cancel from another node ends
   * it.
   */
  const validateOrRun = (record: BatchRecord) =>
    local.working(
      record.batch.id,
      permits.withPermit(record.project, Effect.gen(function*() {
        const id = record.batch.id
        const clock = yield* Effect.clock
        const turnOver = clock.unsafeCurrentTimeMillis() + turnMs
        let current = yield* load(id) // the wait for the permit may have been long
        if (current.batch.status === "validating") {
          if (!(yield* Effect.flatMap(nodeLease(config), (lease) => leases.claimBatch(id, lease)))) return false
          yield* validating.validate(current).pipe(Effect.onError((cause) => validating.giveBackSpace(id, cause)))
          // Its turn goes on with running it: a turn spent validating alone would let a long batch of another
          // project run a whole turn before a small one's first request.
          current = yield* load(id)
        }
        if (current.batch.status === "in_progress") {
          const turnIsOver = () => clock.unsafeCurrentTimeMillis() > turnOver
          const held = heldAWhile(heldFor(current.batch.model, record.project), () => clock.unsafeCurrentTimeMillis(), HELD_LONG_MS)
          const turn = holderTurn(permits, record.project, turnIsOver, held)
          const run = running.run(current, turn, turn.handBack)
          return yield* Effect.ensuring(Effect.raceFirst(run, Effect.zipRight(turn.watch, Effect.never)), Effect.sync(turn.done))
        }
        return true
      }), record.batch.status === "in_progress" ? upstreamReadiness(record.batch.model, record.project) : undefined)
    )

  /**
   * Takes a batch as far as this node can: its share of validating and running (until `expires_at`), then
   * finishing it when this node gets the lease. Ends when the batch is final or other nodes hold what is left.
   */
  const drive = (id: BatchId, sayOnce: Effect.Effect<void>): Effect.Effect<void> =>
    Effect.gen(function*() {
      for (;;) {
        const record = yield* load(id)
        const { batch } = record
        if (batch.status !== "validating" && batch.status !== "in_progress") yield* sayOnce
        switch (batch.status) {
          case "validating":
          case "in_progress": {
            const remaining = batch.expires_at * 1000 - (yield* Clock.currentTimeMillis)
            if (remaining <= 0) {
              yield* sayOnce
              if (!(yield* finishing.finish(id, "expire"))) return
              break
            }
            const validatingNow = batch.status === "validating"
            // Its project has as many validating batches here as this node drives: taken up later (`validatingCap.ts`).
            if (validatingNow && cap.full(record.project)) return
            yield* sayOnce
            // The expiry ends the wait for a permit (or for the upstream) too; the next round then finishes the
            // batch as expired.
            const turn = validateOrRun(record).pipe(
              Effect.raceFirst(Effect.as(Effect.sleep(Duration.millis(remaining)), true))
            )
            const progressed = yield* (validatingNow ? cap.counted(record.project, turn) : turn)
            if (!progressed) return
            break
          }
          case "finalizing":
            if (!(yield* finishing.finish(id, "complete"))) return
            break
          case "cancelling":
            if (!(yield* finishing.finish(id, "cancelDone"))) return
            break
          default:
            return
        }
      }
    }).pipe(Effect.ensuring(leases.releaseLeases({ owner: config.nodeId, batchId: id })))

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

  /**
   * Forks a batch's fiber on the runner's own runtime, not the caller's: from a request, the fiber inherited its
   * context (the request and its response among them) and priority, and a batch waiting for its turn held them until
   * it ended (~60 KB each: 16,000 batches created in a minute took the process past 1.8 GB).
   */
  const fork = yield* FiberMap.runtime(fibers)<never>()
  const start = (id: BatchId, announce?: Effect.Effect<void>, options?: { readonly replace: boolean }) =>
    Effect.flatMap(Effect.option(Effect.currentParentSpan), (starter) =>
      Effect.sync(() => {
        fork(id, inBackground(supervised(id, starter, announce)), { onlyIfMissing: options?.replace !== true })
      }))
  const submit = (id: BatchId) => start(id)

  /**
   * The heartbeat's pick-up of free work, logged when this node was not driving the batch yet: by the batch's fiber,
   * so that the line is in the batch's trace (the heartbeat's is never exported).
   */
  const pickUp = (id: BatchId, atStart: boolean) =>
    Effect.flatMap(FiberMap.has(fibers, id), (driving) => driving ? Effect.void : start(id, BatchLines.pickedUp(id, atStart)))

  const restart = (id: BatchId) => Effect.zipRight(FiberMap.remove(fibers, id), start(id, undefined, { replace: true }))

  yield* startHeartbeat(local, { restart, pickUp, driving, crowded: cap.crowded, databaseAnswers })
  // Up to SPENT_GROUPS groups of batches a sweep, from where the last one stopped.
  let spentAfter = 0
  const sweepSpent = Effect.gen(function*() {
    for (let group = 0; group < SPENT_GROUPS; group++) {
      spentAfter = (yield* store.sweepSpentRows(spentAfter)).next
      if (spentAfter === 0) return
    }
  })
  yield* sweepEvery(sweepSpent, "Sweep of finished batches' rows failed")

  return BatchRunner.of({ submit, restart, driving: FiberMap.size(fibers) })
})

/**
 * The runner of a node that runs no batch (`MAX_CONCURRENT_BATCHES=0`, an API-only node): what it creates or
 * cancels is left to the nodes that run batches, which pick it up at their next heartbeat (a cancelled batch they
 * work on, they stop and finish).
 */
const handedOff = BatchRunner.of({ submit: () => Effect.void, restart: () => Effect.void, driving: Effect.succeed(0) })

/** The runner, or `handedOff` on a node configured to run no batch. */
export const BatchRunnerLive: Layer.Layer<
  BatchRunner,
  never,
  BatchStore | WorkLeases | FileStore | Inference | AppConfig
> = Layer.scoped(BatchRunner, Effect.flatMap(AppConfig, (config) => runsBatches(config) ? make : Effect.succeed(handedOff)))
