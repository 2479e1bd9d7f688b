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
 * work. At most `maxConcurrentBatches` batches run at once on a node, their permits shared by project in time
 * (`fairPermits.ts`: a running batch gives its permit back after a slice, or `TurnLength`, when a project it owes
 * time to waits, and at once when its upstream goes down: it waits for it to come back in the queue, keeping its turn); as
 * many validate at once, with permits of their own, so that a batch is checked as it comes, not at its turn to run.
 * Finishing is not limited, so a cancel is never queued behind other batches. `supervision.ts` retries a batch after
 * a fault.
 * A node with `maxConcurrentBatches` 0 does none of this (`handedOff`): the nodes that run batches pick its work up.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, Context, Duration, Effect, FiberMap, Layer, Option, Schedule } from "effect"
import { AppConfig, runsBatches } from "../Config.js"
import type { BatchId } from "../domain/Ids.js"
import { FileStore, sweepEvery } from "../files/FileStore.js"
import { Inference } from "../inference/Inference.js"
import * as BatchLines from "../observability/batchLines.js"
import { inBackground } from "../Scheduler.js"
import { type BatchRecord, BatchStore } from "./BatchStore.js"
import { heldAWhile, holderTurn, makeFairPermits, type Readiness } from "./fairPermits.js"
import { childrenEndFirst } from "./childrenEndFirst.js"
import { makeFinishing } from "./finishing.js"
import { LocalWork, startHeartbeat } from "./heartbeat.js"
import { RequestSlots } from "./requestSlots.js"
import { makeRunning } from "./running.js"
import { makeValidating } from "./validating.js"
import { makeSupervision } from "./supervision.js"
import { unserved } from "./unservedModel.js"
import { runValidatingCap } from "./validatingCap.js"
import { untilClockReads } from "./untilClockReads.js"
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

/**
 * Groups of batches (`BatchStore.sweepSpentRows`) a sweep looks at, at most: a few milliseconds each, more while
 * what a gone file held is cleared from the rows (a bounded number of lines a group, in short statements).
 */
const SPENT_GROUPS = 10

export const make = Effect.gen(function*() {
  const store = yield* BatchStore
  const leases = yield* WorkLeases
  const config = yield* AppConfig
  const turnMs = Duration.toMillis(yield* TurnLength)
  const inference = yield* Inference
  const fibers = yield* FiberMap.make<BatchId>()
  const clock = yield* Effect.clock
  /** The permits' time, each project's share (`fairPermits.ts`): monotonic, so that a clock step charges nobody. */
  const now = () => Number(clock.unsafeCurrentTimeNanos() / 1_000_000n)
  const permits = makeFairPermits(config.maxConcurrentBatches, now)
  /** As many batches validate at once as may run, shared by project in time too. */
  const validations = makeFairPermits(config.maxConcurrentBatches, now)
  const local = new LocalWork()
  const validating = yield* makeValidating
  const running = yield* makeRunning(local, new RequestSlots(config.maxConcurrentBatches * config.maxConcurrentRequestsPerBatch))
  const finishing = yield* makeFinishing

  const load = (id: BatchId) => store.get(id, "all").pipe(Effect.orDie)

  const driving = () => Array.from(fibers, ([id]) => id)
  /**
   * Whether other nodes may run batches on this database: PostgreSQL's, by the client's dialect when there is one
   * (an embedding app's own `SqlClient` comes without `DATABASE_URL`).
   */
  const shared = Option.match(yield* Effect.serviceOption(SqlClient.SqlClient), {
    onNone: () => Option.isSome(config.databaseUrl),
    onSome: (sql) => sql.onDialectOrElse({ pg: () => true, orElse: () => false })
  })
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
  /** Completes once `check()` is `wanted`, looked at every `HELD_CHECK` (no event tells). */
  const becomes = (check: () => boolean, wanted: boolean) =>
    Effect.repeat(Effect.sync(check), { schedule: Schedule.spaced(HELD_CHECK), until: (now) => now === wanted })
  /** Completes once `held()` is `wanted` (held never, without `isHeld` to ask). */
  const heldBecomes = (held: () => boolean, wanted: boolean) =>
    inference.isHeld === undefined ? (wanted ? Effect.never : Effect.void) : becomes(held, wanted)

  /**
   * A running batch may take a permit while its upstream is up and does not hold its calls (`fairPermits.ts`: it
   * keeps its turn meanwhile). Down and up are told as they happen; a hold is looked at every `HELD_CHECK`, and
   * `ready` says what was seen then: read live, a hold shorter than that could make a waiter skipped as a permit
   * came free and never looked at again (its watch would not have seen it held). A batch whose unchecked model no
   * upstream serves (`unservedModel.ts`) is ready: its run fails its lines.
   */
  const upstreamReadiness = (record: BatchRecord): Readiness => {
    const { project } = record
    const { model } = record.batch
    let up = false
    const held = heldFor(model, project)
    const lost = () => unserved(inference, record)
    const upNow = () => up && !(inference.isDown?.(model, project) ?? false)
    const awaitUp = Effect.zipRight(
      Effect.zipRight(inference.reachable(model, project), heldBecomes(held, false)),
      Effect.sync(() => void (up = true))
    )
    const awaitDown = Effect.zipRight(
      Effect.raceFirst(inference.unreachable(model, project), heldBecomes(held, true)),
      Effect.sync(() => void (up = false))
    )
    // Looked at every `HELD_CHECK` only for a batch whose model went unchecked: no event tells it is served by none.
    return record.modelUnchecked !== true
      ? { ready: upNow, awaitReady: awaitUp, awaitNotReady: awaitDown }
      : {
        ready: () => lost() || upNow(),
        awaitReady: Effect.suspend(() => lost() ? Effect.void : Effect.raceFirst(awaitUp, becomes(lost, true))),
        awaitNotReady: Effect.suspend(() => lost() ? becomes(lost, false) : awaitDown)
      }
  }

  /**
   * Validates a batch (holding its batch-wide lease) under a validation permit given in its project's share, apart
   * from the permits to run: a batch queued behind running ones is checked at once, so that a mistake in its file
   * fails it now, not once the batches before it have run (a second 50,000-line batch showed `validating`, total 0,
   * for as long as the first ran). False when another node validates it.
   */
  const validate = (record: BatchRecord) =>
    local.working(
      record.batch.id,
      validations.withPermit(record.project, Effect.gen(function*() {
        const id = record.batch.id
        const current = yield* load(id) // the wait for the permit may have been long
        if (current.batch.status !== "validating") return true
        if (!(yield* Effect.flatMap(nodeLease(config), (lease) => leases.claimBatch(id, lease, ["validating"])))) return false
        yield* validating.validate(current).pipe(Effect.onError((cause) => validating.giveBackSpace(id, cause)))
        return true
      }))
    )

  /**
   * This node's share of a running batch, under a permit given in its project's share: the slices it can claim, up
   * to the end of a slice (or of its turn, when the slice is slow: `TurnLength`) when another project waits for the
   * permit (`drive` then queues again). False when there was nothing for this node to do. A batch whose upstream
   * is down waits for it in the queue; the wait counts as this node's work on the batch, so that a cancel from
   * another node ends it. The permit is given back as soon as the run has nothing left to send but calls out
   * (`running.ts`: drained): a call that never answers held the next batch of the project for `INFERENCE_TIMEOUT` ×
   * attempts. The calls still out keep their request slots (`requestSlots.ts`); the next batch's window fills as
   * they end.
   */
  const run = (record: BatchRecord) =>
    local.working(
      record.batch.id,
      permits.withPermitUntil(record.project, (giveBack) => Effect.gen(function*() {
        const turnOver = clock.unsafeCurrentTimeMillis() + turnMs
        const current = yield* load(record.batch.id) // the wait for the permit may have been long
        if (current.batch.status !== "in_progress") return true
        const turnIsOver = () => clock.unsafeCurrentTimeMillis() > turnOver
        const held = heldAWhile(heldFor(current.batch.model, record.project), () => clock.unsafeCurrentTimeMillis(), HELD_LONG_MS)
        const turn = holderTurn(permits, record.project, turnIsOver, held)
        // The permit first, then the claim to give it (`fairPermits.ts`): the other way, another holder could claim
        // for the same waiter in between.
        const slices = running.run(current, turn, turn.handBack, Effect.zipRight(giveBack, Effect.sync(turn.done)))
        // The run's fibers end before the permit is given back (`childrenEndFirst.ts`).
        return yield* Effect.ensuring(childrenEndFirst(Effect.raceFirst(slices, Effect.zipRight(turn.watch, Effect.never))), Effect.sync(turn.done))
      }), upstreamReadiness(record))
    )

  /**
   * A validating batch's first steps, counted by the cap: its validation, then (without a new round of `drive`,
   * which would let the cap take it for a running batch) its first turn to run.
   */
  const validateThenRun = (record: BatchRecord) =>
    Effect.flatMap(validate(record), (validated) =>
      validated
        ? Effect.flatMap(load(record.batch.id), (current) => current.batch.status === "in_progress" ? run(current) : Effect.succeed(true))
        : Effect.succeed(false))

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
            // batch as expired. Interrupted, its fibers end before the batch's leases are given back.
            const turn = (validatingNow ? validateThenRun(record) : run(record)).pipe(
              Effect.raceFirst(Effect.as(untilClockReads(batch.expires_at * 1000), true)),
              childrenEndFirst
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

  const { supervised, databaseAnswers } = yield* makeSupervision(local, drive)

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
  // Added after the fibers' map: run first as the runner stops, while its batches' fibers are still there.
  yield* Effect.addFinalizer(() => BatchLines.leftAtShutdown(driving()))

  /**
   * The heartbeat's pick-up of free work, logged when this node was not driving the batch yet: by the batch's fiber,
   * so that the line is in the batch's trace (the heartbeat's is never exported).
   */
  const pickUp = (id: BatchId, atStart: boolean) =>
    Effect.flatMap(FiberMap.has(fibers, id), (driving) => driving ? Effect.void : start(id, BatchLines.pickedUp(id, atStart, shared)))

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
