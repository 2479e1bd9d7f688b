/**
 * The heartbeat: every `heartbeatInterval` a node renews its leases, stops its work on batches cancelled or ended
 * on another node and on slices whose lease it lost (taken over after a stall longer than `leaseTtl`), notes the
 * slices of batches it runs that a dead node let lapse (taken up at once), and picks up work that is free (new
 * batches created on other nodes, free slices, leases of dead nodes that ran out). `LocalWork` is what
 * it checks: the batches and slices this node works on, as the phases tell it.
 */
import { Deferred, Effect, Exit, FiberId, Schedule } from "effect"
import { AppConfig } from "../Config.js"
import { terminalStatuses } from "../domain/Batches.js"
import type { BatchId } from "../domain/Ids.js"
import { makeFailureRun } from "../observability/failureRuns.js"
import { BatchStore } from "./BatchStore.js"
import { nodeLease, WorkLeases } from "./WorkLeases.js"

/** The work this node does, for the heartbeat to check against the database. */
export class LocalWork {
  /** Batches this node is validating or running requests of (or waiting to): a cancel elsewhere must stop them. */
  private readonly batches = new Set<BatchId>()
  /** Slices this node holds, by batch: a slice whose lease was not renewed was taken over. */
  private readonly slices = new Map<BatchId, Set<number>>()
  /** Batches this node drives with a slice another node let lapse (it died): to be taken up at once. */
  private readonly lapsed = new Set<BatchId>()
  /** Until when this node's leases are known to hold (epoch ms): the last renewal's end; none before the first. */
  private leasesUntil: number | undefined = undefined
  /** Completed by the next renewal that goes through (then replaced). */
  private renewal = Deferred.unsafeMake<void>(FiberId.none)

  /**
   * A renewal went through, and its leases hold until `until`; told after the batches whose slices it lost were
   * stopped, so that their runs send nothing more.
   */
  renewed(until: number): void {
    this.leasesUntil = until
    const done = this.renewal
    this.renewal = Deferred.unsafeMake<void>(FiberId.none)
    Deferred.unsafeDone(done, Exit.void)
  }

  /**
   * Whether this node's leases may have run out at `now`: it stalled past them (frozen, or its renewals failed), and
   * another node may have taken its slices over. No new request is sent until a renewal says (cheap: asked before
   * each row). A node woken after a stall sent the rows of the page in hand until its heartbeat restarted the run:
   * a second window of requests sent twice.
   */
  leasesMayHaveLapsed(now: number): boolean {
    return this.leasesUntil !== undefined && now > this.leasesUntil
  }

  /** Completes at the next renewal that goes through. */
  get nextRenewal(): Effect.Effect<void> {
    return Deferred.await(this.renewal)
  }

  /** `effect`, with the batch counted as this node's work while it runs. */
  working<A, E, R>(id: BatchId, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.zipRight(
      Effect.sync(() => this.batches.add(id)),
      Effect.ensuring(effect, Effect.sync(() => this.batches.delete(id)))
    )
  }

  holdSlice(id: BatchId, slice: number): void {
    const held = this.slices.get(id) ?? new Set<number>()
    this.slices.set(id, held.add(slice))
  }

  /** Forgets a slice once done, before the store frees it, so that it is never taken for lost. */
  dropSlice(id: BatchId, slice: number): void {
    this.slices.get(id)?.delete(slice)
  }

  dropSlices(id: BatchId): void {
    this.slices.delete(id)
  }

  /** The batches the last beat found with a lapsed slice (those before it are taken up, or were by another node). */
  setLapsed(ids: ReadonlyArray<BatchId>): void {
    this.lapsed.clear()
    for (const id of ids) this.lapsed.add(id)
  }

  /** Whether a lapsed slice of the batch waits to be taken up (cheap: asked before each row). */
  hasLapsed(id: BatchId): boolean {
    return this.lapsed.size > 0 && this.lapsed.has(id)
  }

  /** Whether a lapsed slice of the batch waited; it is taken up now (by one of the node's runs of it). */
  takeLapsed(id: BatchId): boolean {
    return this.lapsed.delete(id)
  }

  workingOn(): ReadonlyArray<BatchId> {
    return [...this.batches]
  }

  /** The slices held now, to take before a renewal (see `lostBatches`). */
  heldSlices(): ReadonlySet<string> {
    return new Set([...this.slices].flatMap(([id, slices]) => [...slices].map((slice) => `${id}:${slice}`)))
  }

  /**
   * Batches of which this node holds a slice that is not among `renewed`: one held since before the renewal began
   * (`before`), as a slice claimed while the renewal ran may be missing from it without being lost.
   */
  lostBatches(
    renewed: ReadonlyArray<{ readonly batchId: BatchId; readonly slice: number }>,
    before: ReadonlySet<string> = this.heldSlices()
  ): ReadonlyArray<BatchId> {
    const kept = new Set(renewed.map((r) => `${r.batchId}:${r.slice}`))
    return [...this.slices].filter(([id, slices]) =>
      [...slices].some((slice) => before.has(`${id}:${slice}`) && !kept.has(`${id}:${slice}`))
    ).map(([id]) => id)
  }
}

export interface HeartbeatActions {
  /** Interrupts this node's work on a batch and drives it again (see `BatchRunner.restart`). */
  readonly restart: (id: BatchId) => Effect.Effect<void>
  /**
   * Starts driving a batch with free work on this node, unless it already does (`atStart`: found by the first beat,
   * so unfinished when the node started; the log says which).
   */
  readonly pickUp: (id: BatchId, atStart: boolean) => Effect.Effect<void>
  /** The batches this node drives now (working on them or waiting for a permit): no need to pick them up. */
  readonly driving: () => ReadonlyArray<BatchId>
  /** The projects whose validating batches this node drives as many of as it will: none of theirs is picked up. */
  readonly crowded: () => ReadonlyArray<string>
  /** A beat went through after one or more failed: the database answers again (batches waiting it out try again). */
  readonly databaseAnswers: Effect.Effect<void>
}

/** One beat: renew, stop what was cancelled or lost, pick up free work. */
export const beat = (local: LocalWork, actions: HeartbeatActions, atStart = false) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const leases = yield* WorkLeases
    const config = yield* AppConfig
    const before = local.heldSlices()
    const renewal = yield* nodeLease(config)
    const renewed = yield* leases.renewLeases(renewal)
    const lost = local.lostBatches(renewed, before)
    const statuses = yield* store.statuses(local.workingOn())
    // Cancelled (its work stops now), or ended by another node while this one still waited for it (its upstream
    // down here, its model served by no upstream of this node's): driven again, the batch's fiber ends.
    const ended = [...statuses].filter(([, status]) => status === "cancelling" || terminalStatuses.includes(status)).map(([id]) => id)
    yield* Effect.forEach(new Set([...lost, ...ended]), actions.restart, { discard: true })
    local.renewed(renewal.until)
    const driving = actions.driving()
    const lease = yield* nodeLease(config)
    local.setLapsed(yield* leases.lapsedSlices(lease, driving))
    const free = yield* leases.claimable(lease.now, 100, driving, { crowded: actions.crowded() })
    yield* Effect.forEach(free, (id) => actions.pickUp(id, atStart), { discard: true })
  }).pipe(Effect.withSpan("BatchRunner.heartbeat"))

/**
 * Frees at once what a previous run of this node held (instead of waiting for the leases to run out), then beats
 * every `heartbeatInterval` for as long as the scope lasts, the first beat at once (resuming unfinished batches).
 */
export const startHeartbeat = (local: LocalWork, actions: HeartbeatActions) =>
  Effect.gen(function*() {
    const config = yield* AppConfig
    yield* Effect.flatMap(WorkLeases, (leases) => leases.releaseAfterRestart(config.nodeId))
    let atStart = true // until a beat gets through
    let failedBefore = false // since the last beat that got through
    const failures = makeFailureRun("Heartbeat")
    const wentThrough = Effect.suspend(() => {
      atStart = false
      const after = failedBefore
      failedBefore = false
      return after ? Effect.zipRight(failures.succeeded, actions.databaseAnswers) : failures.succeeded
    })
    yield* Effect.suspend(() => beat(local, actions, atStart)).pipe(
      Effect.zipRight(wentThrough),
      Effect.catchAllCause((cause) => Effect.zipRight(Effect.sync(() => (failedBefore = true)), failures.failed(cause))),
      Effect.repeat(Schedule.spaced(config.heartbeatInterval)),
      Effect.forkScoped
    )
  })
