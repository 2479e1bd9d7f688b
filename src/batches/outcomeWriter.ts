/**
 * The outcome writer of a batch's run: `queueNow(outcome)` queues an outcome and gives the wait until it is stored. One writer
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
   * Queues `outcome` for the next group at once (not when the returned effect runs), and gives the wait until its
   * group is written, which fails when the write fails (so the run fails, and is retried, instead of waiting
   * forever). An interrupted waiter needs no clean-up: its outcome is still written.
   */
  readonly queueNow: (outcome: RequestOutcome) => Effect.Effect<void>
}

export interface OutcomeWriterOptions {
  /** How many outcomes may be queued at once (the run's window): gathering stops once they are all in. */
  readonly window: number
  /** Runs after each group is stored, before its waiters resume (slice bookkeeping); its failure fails them. */
  readonly afterWrite: (outcomes: ReadonlyArray<RequestOutcome>) => Effect.Effect<void>
}

/**
 * The write's result for one queued outcome, once known, and the resumption of whoever waits for it. A plain
 * callback, not a `Deferred`: this is made for every request, and an interrupted waiter needs no clean-up (a late
 * resume is ignored).
 */
interface Receipt {
  written: Effect.Effect<void> | undefined
  resume: ((written: Effect.Effect<void>) => void) | undefined
}

/** Outcomes waiting for the next write, with their receipts. */
interface OutcomeGroup {
  readonly outcomes: Array<RequestOutcome>
  readonly receipts: Array<Receipt>
}

const emptyGroup = (): OutcomeGroup => ({ outcomes: [], receipts: [] })

export const makeOutcomeWriter = (
  batchId: BatchId,
  options: OutcomeWriterOptions
): Effect.Effect<OutcomeWriter, never, BatchStore | Scope.Scope> =>
  Effect.gen(function*() {
    const batches = yield* BatchStore
    let group = emptyGroup()
    const arrived = yield* Effect.makeLatch(false)

    const queueNow = (outcome: RequestOutcome): Effect.Effect<void> => {
      const receipt: Receipt = { written: undefined, resume: undefined }
      group.outcomes.push(outcome)
      group.receipts.push(receipt)
      arrived.unsafeOpen()
      return Effect.async<void>((resume) => {
        if (receipt.written !== undefined) resume(receipt.written)
        else receipt.resume = resume
      })
    }

    const writeGroup = Effect.suspend(() => {
      const writing = group
      if (writing.outcomes.length === 0) return Effect.void
      group = emptyGroup()
      return batches.recordOutcomes(batchId, writing.outcomes).pipe(
        Effect.zipRight(options.afterWrite(writing.outcomes)),
        Effect.exit,
        Effect.flatMap((exit) =>
          Effect.suspend(() => {
            for (const receipt of writing.receipts) {
              receipt.written = exit
              receipt.resume?.(exit)
            }
            return exit
          })
        ),
        Effect.uninterruptible
      )
    })

    /**
     * Lets the event loop run turns while they bring more outcomes, until the window's are all in: the responses
     * already received join the group. A slow upstream's outcomes are written after a turn or two; a fast one's in
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
    return { queueNow }
  })
