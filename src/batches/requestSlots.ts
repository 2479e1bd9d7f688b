/**
 * The node's request slots: `maxConcurrentBatches × maxConcurrentRequestsPerBatch`, the most requests this node's
 * batches have sent or waiting at their upstreams at once, whichever batches they are. A batch's window places
 * (`windowSlots.ts`) are each backed by one. A batch gives its permit back as soon as it has nothing left to send but
 * calls out (`running.ts`: drained), so that one call that never answers does not hold the next batch for `INFERENCE_TIMEOUT`;
 * its calls still out keep their slots, and the next batch's window fills as they end, so the bound holds.
 * Taken when a window place is first filled, not per request (thousands of requests run a second).
 */
import { Effect } from "effect"

export class RequestSlots {
  private free: number
  /** Places waiting for a slot, first come first served. */
  private readonly waiting: Array<() => void> = []

  constructor(size: number) {
    this.free = size
  }

  /**
   * Completes once a slot is taken (interruptible while it waits). `taken` is called as it is, synchronously: a slot
   * handed over as the taker is interrupted is then its to give back, not lost.
   */
  take(taken: () => void): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.free > 0 && this.waiting.length === 0) {
        this.free--
        taken()
        return Effect.void
      }
      return Effect.async<void>((resume) => {
        const handed = () => {
          taken()
          resume(Effect.void)
        }
        this.waiting.push(handed)
        return Effect.sync(() => {
          const i = this.waiting.indexOf(handed)
          if (i >= 0) this.waiting.splice(i, 1)
        })
      })
    })
  }

  /** Gives a slot back: to the first place waiting, or free. */
  give(): void {
    const next = this.waiting.shift()
    if (next === undefined) this.free++
    else next()
  }
}
