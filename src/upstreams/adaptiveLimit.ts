/**
 * An upstream's adaptive concurrency limit (AIMD, as TCP's congestion window): each overload signal (a 429, a
 * 503, a timeout) halves it, at most once per window of calls — the calls sent before a decrease report the same
 * overload, so they are ignored (the `generation` of a call tells) —, and each success grows it by 1/limit, i.e.
 * by one per window of successes, back up to the ceiling. Pure state: the admission (`Admission.ts`) applies it.
 */
export class AdaptiveLimit {
  private value: number
  /** Bumped by every decrease: a call started under an older generation cannot decrease the limit again. */
  generation = 0

  constructor(readonly floor: number, readonly ceiling: number) {
    this.value = ceiling
  }

  /** Calls that may be in flight now. */
  get current(): number {
    return Math.floor(this.value + 1e-9) // n additions of 1/n may fall short of 1 by a rounding error
  }

  get atFloor(): boolean {
    return this.current <= this.floor
  }

  /**
   * A call ended well while `inflight` calls were out: grows the limit when it was in use (at least half of it:
   * successes of an idle upstream say nothing about how much more it takes). Whether the limit changed.
   */
  succeeded(inflight: number): boolean {
    if (this.value >= this.ceiling || inflight * 2 < this.current) return false
    const before = this.current
    this.value = Math.min(this.ceiling, this.value + 1 / before)
    return this.current !== before
  }

  /** An overload signal from a call started under `generation`: halves the limit, once per generation. */
  overloaded(generation: number): boolean {
    if (generation !== this.generation) return false
    this.generation++
    const before = this.current
    this.value = Math.max(this.floor, this.value / 2)
    return this.current !== before
  }
}
