/**
 * A node-wide bound on the bytes of upstream answers held in memory (`INFERENCE_MAX_BUFFERED_BYTES`). Each answer is
 * bounded (`INFERENCE_MAX_RESPONSE_BYTES`), but a node holds one or two per request in flight, from its first byte
 * until it is stored: 32 answers of ~60 MiB at once took 2 GB, and a few batches at a time would pass the heap.
 *
 * An answer up to `FREE_BYTES` reads freely (the calls in flight bound those). A larger one reserves its size before
 * its body is read — the size it announces (`content-length`), or the largest an answer may be when it announces none
 * and passes `FREE_BYTES` (what came is kept once it ends) — and its call waits, its connection paused, while the
 * budget lacks room: served first come, first served, so a large reservation is not passed over for good. A
 * reservation is taken whole, never grown, so two answers can never each hold part of the budget and wait for the
 * rest.
 *
 * Who releases it: the `AnswerHold` of the sending fiber (`currentAnswerHold`, set by each batch worker for its
 * sends, one after the other), from which the answer's reservation moves to its outcome (`takeOver`) until the outcome
 * is stored; a new attempt of the same request first gives back the last attempt's. A call made
 * outside a hold gives its reservation back as soon as its answer is read.
 */
import { FiberRef } from "effect"

/**
 * The budget when none is configured: 512 MiB, or a quarter of the heap V8 may use when that is less. An answer is
 * held as bytes and again as text: with 512 MiB, 32 answers of 4 MiB took a 160 MB heap (a small container's,
 * `--max-old-space-size=160`) past its limit, at every restart; 64 MiB ran them at a 342 MB peak.
 */
export const defaultAnswerBudget = (heapLimitBytes: number): number =>
  Math.min(512 * 1024 * 1024, Math.floor(heapLimitBytes / 4))

/** Answers up to this size are read without a reservation. */
export const FREE_BYTES = 1024 * 1024

export class AnswerMemory {
  /** Bytes reserved now. */
  used = 0
  /** The most bytes reserved at once since the start. */
  peak = 0
  private readonly waiters: Array<{ readonly bytes: number; readonly granted: () => void }> = []

  /** `budget`: the most bytes reserved at once; no reservation may be larger (a larger answer reserves all of it). */
  constructor(readonly budget: number) {}

  /**
   * Reserves `bytes` (at most `budget`): true when it was free now; else false, and `granted` is called once it is
   * reserved (cancel the wait with `cancel`).
   */
  reserve(bytes: number, granted: () => void): boolean {
    if (this.waiters.length === 0 && this.fits(bytes)) {
      this.take(bytes)
      return true
    }
    this.waiters.push({ bytes, granted })
    return false
  }

  /** Leaves the queue (a call settled while it waited); false when it was granted meanwhile: release it then. */
  cancel(granted: () => void): boolean {
    const at = this.waiters.findIndex((waiter) => waiter.granted === granted)
    if (at === -1) return false
    this.waiters.splice(at, 1)
    if (at === 0) this.grantWaiters() // the next may fit where this one did not
    return true
  }

  release(bytes: number): void {
    this.used -= bytes
    this.grantWaiters()
  }

  private fits(bytes: number): boolean {
    return this.used + bytes <= this.budget
  }

  private take(bytes: number): void {
    this.used += bytes
    if (this.used > this.peak) this.peak = this.used
  }

  /** In order: the first that does not fit waits, and the others behind it. */
  private grantWaiters(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.bytes)) {
      const waiter = this.waiters.shift()!
      this.take(waiter.bytes)
      waiter.granted()
    }
  }
}

/** The reservation of one request's latest answer, given back once the answer is stored (`release`). */
export class AnswerHold {
  private memory: AnswerMemory | undefined
  private bytes = 0

  /** Holds `bytes` reserved in `memory`, giving back what it held before (an earlier attempt's answer). */
  keep(memory: AnswerMemory, bytes: number): void {
    this.release()
    this.memory = memory
    this.bytes = bytes
  }

  /** Moves what it holds into a new hold (an answer's, until it is stored), leaving this one empty. */
  takeOver(): AnswerHold {
    const moved = new AnswerHold()
    moved.memory = this.memory
    moved.bytes = this.bytes
    this.memory = undefined
    this.bytes = 0
    return moved
  }

  /** Whether it holds a reservation. */
  holding(): boolean {
    return this.bytes > 0
  }

  release(): void {
    if (this.bytes === 0) return
    this.memory!.release(this.bytes)
    this.bytes = 0
  }
}

/** The hold of the request the current fiber sends, if any (`undefined`: a reservation is given back once read). */
export const currentAnswerHold: FiberRef.FiberRef<AnswerHold | undefined> = FiberRef.unsafeMake<AnswerHold | undefined>(undefined)
