/**
 * The scheduler batch work runs on (`BatchRunner.ts`): the API's requests go before it on the one event loop.
 *
 * Effect's default scheduler resumes fibers on the microtask queue, so a poll that arrives while batches run flat out
 * waits behind all the batch work already queued. Fibers on this scheduler are queued instead and run from
 * `setImmediate` — the event loop's check phase, after the poll phase in which Node reads the API's requests and
 * runs their fibers — for at most a slice of time per turn of the loop; what is left waits for the next turn. A
 * request therefore waits for at most one slice (plus the requests ahead of it), whatever the batches do. The slice
 * grows with the time the rest of the turn took (`share`), up to `maxSliceMs`, so that a flood of requests slows
 * the batches but never stops them. Measured with `npm run bench:load` (README, Performance).
 */
import { FiberRef, Scheduler } from "effect"

export interface BackgroundSchedulerOptions {
  /** The run of background work per turn of the event loop while little else waits, in ms. */
  readonly sliceMs: number
  /** The longest run per turn, however long the rest of the turn took, in ms. */
  readonly maxSliceMs: number
  /** The share of the loop's time the background work keeps while other work fills the rest (0 to 1). */
  readonly share: number
}

/** The runner's: 8 ms slices, a third of the loop kept for batches, never more than 40 ms at once. */
export const batchWorkSlices: BackgroundSchedulerOptions = { sliceMs: 8, maxSliceMs: 40, share: 1 / 3 }

/** The slice of a turn whose other work took `restMs`. Pure, for the tests. */
export const sliceLength = (options: BackgroundSchedulerOptions, restMs: number): number =>
  Math.min(options.maxSliceMs, Math.max(options.sliceMs, (restMs * options.share) / (1 - options.share)))

export const makeBackgroundScheduler = (options: BackgroundSchedulerOptions): Scheduler.Scheduler => {
  let queue: Array<Scheduler.Task> = []
  let scheduled = false
  let lastSliceEnd = performance.now()

  const drain = () => {
    const start = performance.now()
    const until = start + sliceLength(options, start - lastSliceEnd)
    // Tasks queued by the tasks run are pushed onto the same array: they run in this slice if there is time left.
    let i = 0
    try {
      for (let now = start; i < queue.length && now < until; now = performance.now()) queue[i++]!()
    } finally {
      // A fiber's run catches its defects; should any other task throw, the queue is still left consistent.
      queue = i === queue.length ? [] : queue.slice(i)
      lastSliceEnd = performance.now()
      if (queue.length > 0) setImmediate(drain)
      else scheduled = false
    }
  }

  return {
    // As the default scheduler: a fiber yields after `currentMaxOpsBeforeYield` operations.
    shouldYield: (fiber) =>
      fiber.currentOpCount > fiber.getFiberRef(FiberRef.currentMaxOpsBeforeYield)
        ? fiber.getFiberRef(FiberRef.currentSchedulingPriority)
        : false,
    scheduleTask: (task, priority, fiber) => {
      // Only a fiber's own continuation (its `run`) waits in the queue. Anything else a background fiber schedules
      // is a small hand-over — a semaphore or latch waking its waiters, an interruption sent to a child — and may
      // concern an API request's fiber (one waiting for the SQLite connection a batch transaction held): it runs
      // at once, on the default scheduler. (`run` is Effect's `FiberRuntime.run`, an internal detail: were it renamed,
      // every task would take the default path, which is still correct, only without the priority.)
      if (fiber === undefined || task !== (fiber as unknown as { readonly run: unknown }).run) {
        return Scheduler.defaultScheduler.scheduleTask(task, priority, fiber)
      }
      queue.push(task)
      if (!scheduled) {
        scheduled = true
        // The loop was idle until now: the rest of this turn starts here, not at the last slice's end.
        lastSliceEnd = performance.now()
        setImmediate(drain)
      }
    }
  }
}
