/**
 * The outcome writer of a batch's run: `store(outcome)` queues an outcome and waits until it is stored. One writer
 * fiber stores them in groups: what arrived while the previous group was being written, plus what the event loop
 * turns after it bring in (one statement per group, not per request, and the counts move in the same statement).
 * A scoped resource: when the scope closes, the writer is stopped (a group being written is finished) and what is
 * still queued is written, so an interrupted run still stores every outcome it received.
 */
import { Effect, Fiber, type Scope } from "effect"
import type { BatchId } from "../domain/Ids.js"
import { BatchStore, type RequestOutcome } from "./BatchStore.js"
import { afterPendingIo } from "./eventLoop.js"

export interface OutcomeWriter {
  /**
   * Queues `outcome` for the next group and waits until the group is written; fails when the write fails (so the
   * run fails, and is retried, instead of waiting forever). An interrupted caller needs no clean-up: its outcome
   * is still written.
   */
  readonly store: (outcome: RequestOutcome) => Effect.Effect<void>
}

export interface OutcomeWriterOptions {
  /** How many callers may wait at once (the run's window): gathering stops once they are all in. */
  readonly window: number
  /** Runs after each group is stored, before its callers resume (slice bookkeeping); its failure fails them. */
  readonly afterWrite: (outcomes: ReadonlyArray<RequestOutcome>) => Effect.Effect<void>
}

/** Outcomes waiting for the next write, with the callers waiting for it. */
interface OutcomeGroup {
  readonly outcomes: Array<RequestOutcome>
  /** The callers' resumptions, called with the write's result (which fails them too when it failed). */
  readonly waiting: Array<(result: Effect.Effect<void>) => void>
}

const emptyGroup = (): OutcomeGroup => ({ outcomes: [], waiting: [] })

export const makeOutcomeWriter = (
  batchId: BatchId,
  options: OutcomeWriterOptions
): Effect.Effect<OutcomeWriter, never, BatchStore | Scope.Scope> =>
  Effect.gen(function*() {
    const batches = yield* BatchStore
    let group = emptyGroup()
    const arrived = yield* Effect.makeLatch(false)

    /**
     * A plain callback, not a `Deferred`: this runs for every request, and an interrupted caller needs no clean-up
     * (a late resume is ignored).
     */
    const store = (outcome: RequestOutcome) =>
      Effect.async<void>((resume) => {
        group.outcomes.push(outcome)
        group.waiting.push(resume)
        arrived.unsafeOpen()
      })

    const writeGroup = Effect.suspend(() => {
      const writing = group
      if (writing.outcomes.length === 0) return Effect.void
      group = emptyGroup()
      return batches.recordOutcomes(batchId, writing.outcomes).pipe(
        Effect.zipRight(options.afterWrite(writing.outcomes)),
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

    /**
     * Lets the event loop run turns while they bring more outcomes, until every caller's is in: the responses
     * already received join the group. A slow upstream's outcomes are written after one turn; a fast one's in
     * groups of most of the window (each group write costs about as much as its statement, not its rows).
     */
    const gather: Effect.Effect<void> = Effect.suspend(() => {
      const before = group.outcomes.length
      return Effect.flatMap(afterPendingIo, () => {
        const now = group.outcomes.length
        return now > before && now < options.window ? gather : Effect.void
      })
    })

    // Wait for one outcome, gather, write. Interruptible only while waiting: a group once taken is always written.
    const writer = Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(restore(Effect.zipRight(Effect.zipRight(arrived.await, arrived.close), gather)), writeGroup)
    ).pipe(Effect.forever)

    yield* Effect.acquireRelease(
      Effect.forkDaemon(Effect.interruptible(writer)),
      (fiber) => Effect.zipRight(Fiber.interrupt(fiber), writeGroup)
    )
    return { store }
  })
