/**
 * Who may send to an upstream now, for every batch on this node: a call goes out only while the upstream is up
 * (one at a time while on trial after an outage), not paused by a `Retry-After`, under its adaptive limit (`adaptiveLimit.ts`) and, with load-aware dispatch, while
 * the server's waiting queue has room (`LoadGauge`). Calls that must wait are served in turn by project
 * (round-robin, as the batch permits of `batches/fairPermits.ts`) and, within a project, earliest deadline
 * (the batch's `expires_at`) first; on trial after an outage, its one call at a time goes to each batch in turn.
 *
 * The usual case — nobody waiting, room under the limit — takes the permit synchronously: thousands of calls a
 * second pass here.
 */
import { type Clock, Deferred, Duration, Effect, Exit, FiberId } from "effect"
import { type HandBack, HandedBack } from "../inference/answers.js"
import type { AdaptiveLimit } from "./adaptiveLimit.js"

/**
 * Who asks: the batch's project, and its deadline (epoch ms); its model, for the metrics. One per request, its
 * retries included: the upstream tells its failures apart by it, and by its batch (`batchBlame.ts`).
 */
export interface Ticket {
  readonly project: string
  /** The batch's id: a batch whose requests fail on their own makes no outage (none for a call of no batch). */
  readonly batch?: string | undefined
  readonly deadline: number
  readonly model?: string | null | undefined
  /** Ends the request's wait for a permit when its caller wants it back (`Upstream.attempt`). */
  readonly handBack?: HandBack | undefined
}

/** What the load-aware dispatch says (`loadWatch.ts`); `openGauge` when the upstream has none. */
export interface LoadGauge {
  /** Whether the server's queue is full: hold new calls. */
  readonly full: () => boolean
  /** A call is let go (its permit granted): counted at once, before the next is let go. */
  readonly sent: () => SentCall
}

/** A call the gauge counts, told when its request is written (the last time counts) and when it ends (once). */
export interface SentCall {
  readonly written: () => void
  readonly finished: () => void
}

const uncounted: SentCall = { written: () => {}, finished: () => {} }
export const openGauge: LoadGauge = { full: () => false, sent: () => uncounted }

/** A call's right to go to the upstream: the limit's generation when granted, and its place in the load gauge. */
export interface Permit {
  readonly generation: number
  readonly call: SentCall
}

interface Waiter {
  readonly deadline: number
  readonly batch: string | undefined
  readonly granted: Deferred.Deferred<Permit>
}

export class Admission {
  /** Calls in flight (holding a permit). */
  inflight = 0
  /** Permits granted since the start. */
  granted = 0
  private down = false
  /** After an outage, until a call succeeds: one call at a time (`outage.ts`). */
  private trial = false
  private pausedUntil = 0
  /** Projects in the order they first waited: the round. */
  private readonly ring: Array<string> = []
  private readonly ringIndex = new Map<string, number>()
  /** Each project's waiters, earliest deadline first. */
  private readonly queues = new Map<string, Array<Waiter>>()
  private lastServed = -1
  private waiting = 0
  /** On trial, when each batch was last given the call (a count of the outage's trial calls), to serve each in turn. */
  private trialTurns = new Map<string | undefined, number>()
  private trialCalls = 0
  /** Those waiting for a call in flight to end (`callEnded`). */
  private endWaiters: Array<Deferred.Deferred<void>> = []

  constructor(
    readonly limit: AdaptiveLimit,
    private readonly clock: Clock.Clock,
    readonly gauge: LoadGauge = openGauge
  ) {}

  private open(): boolean {
    return !this.down && this.inflight < (this.trial ? 1 : this.limit.current) && !this.gauge.full() &&
      this.clock.unsafeCurrentTimeMillis() >= this.pausedUntil
  }

  private grant(): Permit {
    this.inflight++
    this.granted++
    return { generation: this.limit.generation, call: this.gauge.sent() }
  }

  /** `project`'s place in the round (taking the next one the first time). */
  private indexOf(project: string): number {
    let index = this.ringIndex.get(project)
    if (index === undefined) {
      index = this.ring.push(project) - 1
      this.ringIndex.set(project, index)
      this.queues.set(project, [])
    }
    return index
  }

  /** Grants a permit to the first waiter of the next project in the round that has one (on trial, `serveTrial`). */
  private serveNext(): void {
    if (this.trial) return this.serveTrial()
    for (let step = 1; step <= this.ring.length; step++) {
      const index = (this.lastServed + step) % this.ring.length
      const waiter = this.queues.get(this.ring[index]!)!.shift()
      if (waiter === undefined) continue
      this.waiting--
      this.lastServed = index
      Deferred.unsafeDone(waiter.granted, Effect.succeed(this.grant()))
      return
    }
  }

  /**
   * On trial, the one call goes to the batch that had it least recently (never first), its first waiter; in the
   * round's order among equals. By deadline alone, a batch whose requests hang held it, one timeout after another,
   * and every other batch waited behind it for minutes.
   */
  private serveTrial(): void {
    let best: { readonly project: number; readonly at: number; readonly turn: number } | undefined
    for (let step = 1; step <= this.ring.length && best?.turn !== -1; step++) {
      const project = (this.lastServed + step) % this.ring.length
      const queue = this.queues.get(this.ring[project]!)!
      for (let at = 0; at < queue.length; at++) {
        const turn = this.trialTurns.get(queue[at]!.batch) ?? -1
        if (best === undefined || turn < best.turn) best = { project, at, turn }
        if (turn === -1) break
      }
    }
    if (best === undefined) return
    const waiter = this.queues.get(this.ring[best.project]!)!.splice(best.at, 1)[0]!
    this.waiting--
    this.lastServed = best.project
    this.trialTurns.set(waiter.batch, ++this.trialCalls)
    Deferred.unsafeDone(waiter.granted, Effect.succeed(this.grant()))
  }

  /** Hands permits to waiters, in turn, while the upstream is open. */
  pump(): void {
    while (this.waiting > 0 && this.open()) this.serveNext()
  }

  /**
   * Whether every call is held now though the upstream is up: a `Retry-After` pause, or its server's queue full of
   * others' calls (none of this node's in flight). A queue this node's own calls fill is its batches' pace, no hold.
   */
  held(): boolean {
    return this.clock.unsafeCurrentTimeMillis() < this.pausedUntil || (this.inflight === 0 && this.gauge.full())
  }

  /** Calls waiting for a permit. */
  queued(): number {
    return this.waiting
  }

  /** A permit now if one is free and nobody waits (give it back with `release`). */
  tryAcquire(ticket: Ticket): Permit | undefined {
    if (this.waiting > 0 || !this.open()) return undefined
    this.lastServed = this.indexOf(ticket.project)
    if (this.trial) this.trialTurns.set(ticket.batch, ++this.trialCalls)
    return this.grant()
  }

  /**
   * Waits for a permit in `ticket`'s turn (give it back with `release`), or `HandedBack` as soon as the ticket's
   * `handBack` wants the request back. Only the wait is interruptible: call it uninterruptibly (as `Upstream.attempt`
   * does), so that a permit granted is the caller's the moment the wait ends. A wait that ends otherwise
   * (interrupted, handed back) leaves the queue, and gives back the permit granted in the same instant: the clean-up
   * reads the queue, not the wait's result, which an interruption may have dropped (a permit lost that way was lost
   * for good, and, on trial after an outage, kept the upstream down for good).
   */
  acquire(ticket: Ticket): Effect.Effect<Permit, HandedBack> {
    // Queued and given its clean-up in one uninterruptible step, whoever calls it.
    return Effect.uninterruptible(Effect.suspend(() => {
      const now = this.tryAcquire(ticket)
      if (now !== undefined) return Effect.succeed(now)
      const handBack = ticket.handBack
      if (handBack?.wanted() === true) return Effect.fail(new HandedBack())
      const granted = Deferred.unsafeMake<Permit>(FiberId.none)
      const waiter: Waiter = { deadline: ticket.deadline, batch: ticket.batch, granted }
      this.indexOf(ticket.project)
      const queue = this.queues.get(ticket.project)!
      let at = queue.length // usually the last: a batch's calls share one deadline
      while (at > 0 && queue[at - 1]!.deadline > ticket.deadline) at--
      queue.splice(at, 0, waiter)
      this.waiting++
      this.pump()
      const leave = Effect.suspend(() => {
        const index = queue.indexOf(waiter)
        // Granted meanwhile: the permit is in `granted` (done, so read at once), given back unused.
        if (index === -1) return Effect.flatMap(Deferred.await(granted), (permit) => Effect.sync(() => this.release(permit)))
        queue.splice(index, 1)
        this.waiting--
        return Effect.void
      })
      const wait = handBack === undefined
        ? Deferred.await(granted)
        : Effect.raceFirst(Deferred.await(granted), Effect.zipRight(handBack.await, Effect.fail(new HandedBack())))
      return Effect.onExit(Effect.interruptible(wait), (exit) => (Exit.isSuccess(exit) ? Effect.void : leave))
    }))
  }

  /** Gives a permit back; `freedRoom` false for a call the server refused (it leaves no room there for another). */
  release(permit: Permit, freedRoom = true): void {
    this.inflight--
    permit.call.finished()
    if (this.waiting > 0) this.pump()
    if (this.endWaiters.length === 0 || (!freedRoom && this.inflight > 0)) return
    // One waiter per call ended: room for one at the server. All once none is out: nothing else would wake them.
    const woken = this.inflight === 0 ? this.endWaiters.splice(0) : this.endWaiters.splice(0, 1)
    for (const waiter of woken) Deferred.unsafeDone(waiter, Effect.void)
  }

  /**
   * Until a call in flight ends that made room at the server (one waiter per such call, oldest first; every waiter
   * once none is out; at once when none is): a call the server refused for want of room, sent again at once, finds
   * the same calls there and is refused again.
   */
  callEnded(): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.inflight === 0) return Effect.void
      const ended = Deferred.unsafeMake<void>(FiberId.none)
      this.endWaiters.push(ended)
      return Effect.onInterrupt(Deferred.await(ended), () =>
        Effect.sync(() => {
          this.endWaiters = this.endWaiters.filter((waiter) => waiter !== ended)
        }))
    })
  }

  /** No call goes out before `until` (epoch ms, on the Effect clock; a later pause already set stays). */
  pauseUntil(until: number): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (until <= this.pausedUntil) return Effect.void
      this.pausedUntil = until
      // The waiters are let go when the pause ends (a daemon: the call that paused may be interrupted meanwhile;
      // interruptible, though forked where a verdict runs uninterruptibly). A timer may fire a little before the
      // clock reads its time: then it sleeps again for what is left, as nothing else may come to let them go.
      const wake: Effect.Effect<void> = Effect.suspend(() => {
        const left = until - this.clock.unsafeCurrentTimeMillis()
        return left > 0 ? Effect.zipRight(Effect.sleep(Duration.millis(left)), wake) : Effect.sync(() => this.pump())
      })
      return Effect.asVoid(Effect.forkDaemon(Effect.interruptible(wake)))
    })
  }

  setDown(down: boolean): void {
    this.down = down
    if (!down) this.pump()
  }

  setTrial(trial: boolean): void {
    this.trial = trial
    if (trial) return
    // The turns last the outage (a failed trial ends down, and the next one goes on from them): forgotten at each,
    // every blind trial's one call went to the same batch, the earliest deadline's.
    if (!this.down) this.trialTurns = new Map()
    this.pump()
  }
}
