/**
 * The outcome writer of a batch's run: `queueNow(outcome)` queues an outcome and gives the wait until it is stored. One writer
 * fiber stores them in groups: what arrived while the previous group was being written, plus what the event loop
 * turns after it bring in (one statement per group, not per request, and the counts move in the same statement),
 * up to `GROUP_CHARS` of answers a statement.
 * A scoped resource: when the scope closes, the writer is stopped (a group being written is finished) and what is
 * still queued is written, so an interrupted run still stores every outcome it received.
 */
import { Duration, Effect, Fiber, Schedule, type Scope } from "effect"
import type { BatchId } from "../domain/Ids.js"
import { storageFault } from "../storage/Faults.js"
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
  /**
   * How many outcomes are usually queued at once (the run's window; its spare workers, `windowSlots.ts`, may add
   * some): gathering stops once that many are in.
   */
  readonly window: number
  /**
   * Runs after each group is written, with the lines it stored (the others had an outcome already: another node's,
   * after a takeover), before its waiters resume (slice bookkeeping); its failure fails them.
   */
  readonly afterWrite: (outcomes: ReadonlyArray<RequestOutcome>, stored: ReadonlySet<number>) => Effect.Effect<void>
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

/** Outcomes waiting for the next write, with their receipts, and the characters of their answers and messages. */
interface OutcomeGroup {
  readonly outcomes: Array<RequestOutcome>
  readonly receipts: Array<Receipt>
  chars: number
}

const emptyGroup = (): OutcomeGroup => ({ outcomes: [], receipts: [], chars: 0 })

/**
 * The most characters of answers one statement writes (past it, a group is written in several, a turn of the event
 * loop apart), and gathering stops. SQLite writes on the event loop, 15–25 ms per MiB here: groups of embeddings
 * answers of 600 KB held it for up to 0.4 s (docs/performance.md). One answer larger than this is written alone.
 */
export const GROUP_CHARS = 1024 * 1024

/**
 * Waits between a group's writes while the database is unavailable (a restart, a failover, a connection cut): 0.2,
 * 0.4, 0.8, 1.6 and 3.2 s. A write that failed at once failed the run, and its requests in flight, and those
 * answered but not stored, were sent again (a 5 s cut re-sent 64 of 3,000). Storing again is safe: a line keeps
 * the first outcome stored. Only failures that come fast are tried again, within `BLIP_MS` in all: a write is not
 * interrupted, and one that failed slowly (a statement timeout, a connection not made in 5 s, SQLite's busy wait,
 * which holds the event loop) would hold a cancel, a shutdown or the node's other work for minutes. Past these, the
 * run fails and waits as before (`BatchRunner`).
 */
const BLIP_RETRIES = Schedule.intersect(Schedule.exponential(Duration.millis(200)), Schedule.recurs(5))
const BLIP_MS = 7_000
/** How long a failed attempt may have taken to be tried again. */
const QUICK_FAILURE_MS = 1_000

/** `write`, tried again while it fails fast for the database's being unavailable (`BLIP_RETRIES`). */
const outlivingBlips = <A>(write: Effect.Effect<A>): Effect.Effect<A> =>
  Effect.suspend(() => {
    const started = Date.now()
    let attemptStarted = started
    const attempt = Effect.suspend(() => {
      attemptStarted = Date.now()
      return Effect.sandbox(write)
    })
    return attempt.pipe(
      Effect.retry({
        schedule: BLIP_RETRIES,
        while: (cause) => {
          const now = Date.now()
          return storageFault(cause) === "unavailable" && now - attemptStarted < QUICK_FAILURE_MS && now - started < BLIP_MS
        }
      }),
      Effect.unsandbox
    )
  })

const charsOf = (outcome: RequestOutcome) => (outcome._tag === "Response" ? outcome.body.length : outcome.message.length)

/** The outcomes of `group` that one statement writes: all, or the first within `GROUP_CHARS` (one at least). */
const splitAtBound = (group: OutcomeGroup): [OutcomeGroup, OutcomeGroup] => {
  if (group.chars <= GROUP_CHARS) return [group, emptyGroup()]
  let count = 0
  let chars = 0
  while (count < group.outcomes.length && (count === 0 || chars + charsOf(group.outcomes[count]!) <= GROUP_CHARS)) {
    chars += charsOf(group.outcomes[count]!)
    count++
  }
  return [
    { outcomes: group.outcomes.slice(0, count), receipts: group.receipts.slice(0, count), chars },
    { outcomes: group.outcomes.slice(count), receipts: group.receipts.slice(count), chars: group.chars - chars }
  ]
}

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
      group.chars += charsOf(outcome)
      arrived.unsafeOpen()
      return Effect.async<void>((resume) => {
        if (receipt.written !== undefined) resume(receipt.written)
        else receipt.resume = resume
      })
    }

    /**
     * Writes the next group's first statement's worth; what is left is the next group (the writer goes on to it).
     * A failed write fails what is still queued too, as one statement of it all would have: the writer stops, and
     * their run fails (and is retried) at once rather than once a worker next finishes a call.
     */
    const writeGroup = Effect.suspend(() => {
      if (group.outcomes.length === 0) return Effect.void
      const [writing, rest] = splitAtBound(group)
      group = rest
      if (rest.outcomes.length > 0) arrived.unsafeOpen()
      return outlivingBlips(batches.recordOutcomes(batchId, writing.outcomes)).pipe(
        Effect.flatMap((stored) => options.afterWrite(writing.outcomes, stored)),
        Effect.exit,
        Effect.flatMap((exit) =>
          Effect.suspend(() => {
            const settled = exit._tag === "Success" ? writing.receipts : [...writing.receipts, ...group.receipts]
            if (exit._tag === "Failure") group = emptyGroup()
            for (const receipt of settled) {
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
        return now > before && now < options.window && group.chars < GROUP_CHARS ? gather : Effect.void
      })
    })

    // Wait for one outcome, gather, write. Interruptible only while waiting: a group once taken is always written.
    const writer = Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(restore(Effect.zipRight(Effect.zipRight(arrived.await, arrived.close), gather)), writeGroup)
    ).pipe(Effect.forever)

    const writeAllQueued = Effect.whileLoop({ while: () => group.outcomes.length > 0, body: () => writeGroup, step: () => {} })
    yield* Effect.acquireRelease(
      Effect.forkDaemon(Effect.interruptible(writer)),
      (fiber) => Effect.zipRight(Fiber.interrupt(fiber), writeAllQueued)
    )
    return { queueNow }
  })
