/**
 * The places of a batch run's window (`running.ts`): `maxConcurrentRequestsPerBatch` requests sent or waiting at
 * their upstream at once. A request waiting between two attempts after an answer that is no refusal (a 500: its own
 * trouble; after a 429 or 503, or no answer, it keeps its place: `running.ts`) gives its place to a new worker, so
 * that the batch's other requests keep flowing (before, 2 % of lines failing with a 500 took a batch from 909 to 92
 * requests a second: each held a place through 15 s of backoff). Back from its wait, it takes the place of the next
 * worker to finish a request (which then ends), or a free one. The waits that gave their place up are bounded (a
 * count, and their bodies' length); beyond, a request keeps its place as it waits. Each place in use holds one of the
 * node's request slots (`requestSlots.ts`): taken as it is first filled, passed on with it, given back as it empties.
 */
import { Effect } from "effect"
import type { RequestSlots } from "./requestSlots.js"

/**
 * Requests waiting between attempts without a place, per place of the window: a fiber and a body each. At 8, 2 % of
 * 30,000 lines failing filled them, and the window again with waits (its good lines stalled 10 s).
 */
const BACKING_OFF_PER_PLACE = 64
/** The length (characters) of the bodies waiting between attempts without a place, at most: each is held till sent. */
const MAX_BACKING_OFF_SIZE = 64 * 1024 * 1024

/** A worker's hold on a place: none while its request waits between attempts, having given it up. */
export interface Place {
  holding: boolean
}

export class WindowSlots {
  /** Places held (or being filled: waiting for a node slot), by workers sending or waiting at the upstream. */
  private held = 0
  private backingOff = 0
  private backingOffSize = 0
  /** Requests back from their wait, each waiting for a place, first come first served. */
  private readonly returning: Array<() => void> = []

  constructor(private readonly size: number, private readonly slots: RequestSlots) {}

  /** One of the run's first workers (as many as the window's size) takes a place: completes once it holds one. */
  enter(place: Place): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.held++
      return this.filled(place)
    })
  }

  /**
   * A place counted in `held` gets its node slot. Interrupted before, it is not held; after, it is the worker's to
   * pass on as it ends (`end`).
   */
  private filled(place: Place): Effect.Effect<void> {
    const taken = () => {
      place.holding = true
    }
    return Effect.onInterrupt(this.slots.take(taken), () =>
      Effect.sync(() => {
        if (!place.holding) this.held--
      }))
  }

  /**
   * A request of `size` characters starts to wait between attempts: whether it gave its place up (to a request back
   * from its wait, or else to a new worker: `spare`), or keeps it (the bounds are reached).
   */
  leave(place: Place, size: number): "kept" | "handed" | "spare" {
    const full = this.backingOff >= this.size * BACKING_OFF_PER_PLACE || this.backingOffSize + size > MAX_BACKING_OFF_SIZE
    if (full) return "kept"
    this.backingOff++
    this.backingOffSize += size
    place.holding = false
    const next = this.returning.shift()
    if (next === undefined) return "spare"
    next()
    return "handed"
  }

  /** The request's wait is over: completes once `place` holds a place again. */
  rejoin(place: Place, size: number): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.backingOff--
      this.backingOffSize -= size
      if (this.held < this.size) {
        this.held++
        return this.filled(place)
      }
      return Effect.async<void>((resume) => {
        const take = () => {
          place.holding = true
          resume(Effect.void)
        }
        this.returning.push(take)
        return Effect.sync(() => {
          const i = this.returning.indexOf(take)
          if (i >= 0) this.returning.splice(i, 1)
        })
      })
    })
  }

  /** The request's wait ended otherwise (handed back at its turn's end): it needs no place. */
  abandon(size: number): void {
    this.backingOff--
    this.backingOffSize -= size
  }

  /**
   * Between two requests of a worker holding a place: true when a request back from its wait took it (the worker
   * then ends), so that the window never holds more than its size.
   */
  yieldsPlace(place: Place): boolean {
    if (this.returning.length === 0) return false
    place.holding = false
    this.returning.shift()!()
    return true
  }

  /** The run is over, its workers ended: a place still counted held (none, but for a fault) gives its slot back. */
  close(): void {
    for (; this.held > 0; this.held--) this.slots.give()
  }

  /** A worker ends: its place, if it holds one, goes to a request back from its wait, or is free (its slot too). */
  end(place: Place): void {
    if (!place.holding) return
    place.holding = false
    const next = this.returning.shift()
    if (next !== undefined) return next()
    this.held--
    this.slots.give()
  }
}
