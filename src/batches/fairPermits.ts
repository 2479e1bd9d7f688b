/**
 * The node's batch permits (`maxConcurrentBatches`), shared fairly by project, in time: a freed permit goes to the
 * project with a batch ready to work that has held permits the least time, among those in the round (ties: the first
 * after the one served last, in the order projects first asked; so equal turns go round-robin), and one project's
 * many or large batches cannot keep another's waiting. Counted in time, not in turns: a turn lasts from a slice's end
 * (a fast batch's, under a second) to its 10 s (a batch of slow requests, or retrying every line), and one project's
 * long turns took ten times another's share. A project joining the round starts level with the least served there,
 * so that one idle for a while does not take every permit until it catches up; and no project runs more than
 * `MAX_LAG_MS` behind or ahead of the least served competing one (time banked or used beyond that is forgiven). A
 * holder learns that a project it owes time to waits (`claimYield`) and gives its permit back at a convenient point (a
 * running batch: at the end of a slice, or of its turn: `holderTurn`), then queues again.
 *
 * A batch whose upstream is down waits in its queue without being served (`Readiness`), keeping its place: were it
 * served, it would give the permit straight back, and that wasted turn would count as its project's. Then a batch
 * whose every call fails, taking the shared upstream down again and again, took the permit first after each outage
 * and held another project's batch for the whole of its run. The same for an upstream that holds every call though
 * it is up (a `Retry-After` pause, its server's queue full of others' calls): its batch waits, and a holder whose
 * upstream does so gives its permit to any batch that can use it, its own project's too (`holderTurn`'s `held`).
 * Without that, one rate-limited or busy upstream held every other upstream's batches of the project (every batch,
 * without keys). A batch of the same project that took the permit so keeps it until its end or a turn of another
 * project's: the first one, its hold over, waits for it.
 */
import { Deferred, Duration, Effect, FiberId, Schedule } from "effect"
import type { HandBack } from "../inference/answers.js"
import type { TurnEnd } from "./pendingRows.js"

/** Whether a waiting batch can use a permit now (a running batch: its upstream is neither down nor holding calls). */
export interface Readiness {
  readonly ready: () => boolean
  /** Completes once it may be ready (at once when it is). */
  readonly awaitReady: Effect.Effect<void>
  /** Completes once it is no longer ready. */
  readonly awaitNotReady: Effect.Effect<void>
}

export interface FairPermits {
  /**
   * Runs `effect` under a permit taken in `project`'s turn, once `readiness` says ready (interruptible while it
   * waits).
   */
  readonly withPermit: <A, E, R>(project: string, effect: Effect.Effect<A, E, R>, readiness?: Readiness) => Effect.Effect<A, E, R>
  /** As `withPermit`, where `use` may give the permit back before it ends (`giveBack`; given back once only). */
  readonly withPermitUntil: <A, E, R>(
    project: string,
    use: (giveBack: Effect.Effect<void>) => Effect.Effect<A, E, R>,
    readiness?: Readiness
  ) => Effect.Effect<A, E, R>
  /**
   * Claims to give a permit back for a ready batch of another project that held permits no longer than this one
   * (or of any project, `ownProjectToo`: the holder cannot use its permit now): true when such batches outnumber the
   * holders that already claimed (with several permits, one waiter does not make every holder stop). Give the claim
   * back with `endYield` when the permit is given back.
   */
  readonly claimYield: (project: string, ownProjectToo?: boolean) => boolean
  readonly endYield: () => void
}

interface Waiter {
  readonly served: Deferred.Deferred<void>
  readonly readiness: Readiness | undefined
}

const isReady = (waiter: Waiter) => waiter.readiness?.ready() ?? true

/**
 * How far a project's time may run behind or ahead of the least served competing project's: what it may be owed,
 * or owe. Beyond it, time is forgiven: without a bound, a project back after an hour alone waited an hour for
 * another that had run ten minutes, and one back from an hour-long outage of its upstream held every permit for an
 * hour.
 */
export const MAX_LAG_MS = 30_000

/**
 * `now` (milliseconds, monotonic) counts the time permits are held; without it none is counted, and the permits go
 * round-robin by project in turns.
 */
export const makeFairPermits = (permits: number, now: () => number = () => 0): FairPermits => {
  let free = permits
  /** Every project that asked, in the order it first did: the round. Few (one per key's project). */
  const ring: Array<string> = []
  const queues = new Map<string, Array<Waiter>>()
  let lastServed = -1 // index in `ring`
  let waiting = 0
  /** Holders that claimed to give their permit back (`claimYield`). */
  let yielding = 0
  /** Milliseconds each project held permits it gave back, counted since it joined the round (`join`). */
  const used = new Map<string, number>()
  /** When each permit a project holds now was taken (`now`). */
  const holding = new Map<string, Array<number>>()
  const holds = (project: string) => holding.get(project)?.length ?? 0
  /** The time `project` held permits, those it holds now counted up to now. */
  const spent = (project: string) => {
    let ms = used.get(project) ?? 0
    const at = now()
    for (const since of holding.get(project) ?? []) ms += at - since
    return ms
  }

  /**
   * `project` asks for a permit: when it neither holds nor waits, it starts level with the least served of those
   * that compete (or where it was, if that is more, up to `MAX_LAG_MS`).
   */
  const join = (project: string) => {
    if (holds(project) > 0 || (queues.get(project)?.length ?? 0) > 0) return
    let least = Infinity
    for (const other of ring) {
      if (other === project || !competes(other)) continue
      least = Math.min(least, spent(other))
    }
    used.set(project, Math.max(used.get(project) ?? 0, least === Infinity ? 0 : least))
    level()
  }

  /** Whether `project` competes for permits now: it holds one, or a batch of its waits ready to work. */
  const competes = (project: string) => holds(project) > 0 || (queues.get(project)?.some(isReady) ?? false)

  /**
   * Keeps every project's time within `MAX_LAG_MS` of the least served competing project's: time banked while it
   * did not compete (idle, or its batches waiting for an upstream that was down), or used beyond its share while
   * the others wanted less, counts that much only.
   */
  const level = () => {
    let least = Infinity
    for (const project of ring) if (competes(project)) least = Math.min(least, spent(project))
    if (least === Infinity) return
    for (const project of ring) {
      const ms = spent(project)
      const bounded = Math.min(Math.max(ms, least - MAX_LAG_MS), least + MAX_LAG_MS)
      if (bounded !== ms) used.set(project, (used.get(project) ?? 0) + bounded - ms)
    }
  }

  /**
   * Ready batches waiting for a permit, but those of project `except` (every one when undefined), and those of
   * projects that held permits longer than `upTo` ms.
   */
  const readyWaiters = (except: string | undefined, upTo = Infinity) => {
    let count = 0
    for (const [other, queue] of queues) {
      if (other === except || (upTo !== Infinity && spent(other) > upTo)) continue
      for (const waiter of queue) if (isReady(waiter)) count++
    }
    return count
  }

  const serve = (project: string) => {
    let index = ring.indexOf(project)
    if (index === -1) index = ring.push(project) - 1
    lastServed = index
    free--
    const since = holding.get(project) ?? []
    since.push(now())
    holding.set(project, since)
  }

  /**
   * Gives a free permit to the ready waiter of the project that held permits the least time, the first after the
   * project served last among equals (called with `free > 0`).
   */
  const handOver = () => {
    level()
    let chosen: { project: string; queue: Array<Waiter>; at: number } | undefined
    for (let step = 1; step <= ring.length; step++) {
      const project = ring[(lastServed + step) % ring.length]!
      const queue = queues.get(project)
      const at = queue?.findIndex(isReady) ?? -1
      if (at === -1) continue
      if (chosen === undefined || spent(project) < spent(chosen.project)) chosen = { project, queue: queue!, at }
    }
    if (chosen === undefined) return
    const [waiter] = chosen.queue.splice(chosen.at, 1)
    waiting--
    serve(chosen.project)
    Deferred.unsafeDone(waiter!.served, Effect.void)
  }

  /** Gives back a permit `project` holds (its longest held), counting the time it held it. */
  const release = (project: string) =>
    Effect.sync(() => {
      const since = holding.get(project)?.shift()
      if (since !== undefined) used.set(project, (used.get(project) ?? 0) + Math.max(0, now() - since))
      free++
      if (waiting > 0) handOver()
    })

  /** A waiter's watch: each time it becomes ready, a free permit may be its. */
  const watch = (readiness: Readiness) =>
    Effect.forever(Effect.zipRight(
      readiness.awaitReady,
      Effect.zipRight(Effect.sync(() => free > 0 && handOver()), readiness.awaitNotReady)
    ))

  const acquire = (project: string, readiness: Readiness | undefined) =>
    Effect.suspend(() => {
      join(project)
      if (free > 0 && waiting === 0 && (readiness?.ready() ?? true)) {
        serve(project)
        return Effect.void
      }
      return Effect.flatMap(Deferred.make<void>(), (served) => {
        const waiter: Waiter = { served, readiness }
        if (!ring.includes(project)) ring.push(project)
        const queue = queues.get(project) ?? []
        queues.set(project, queue)
        queue.push(waiter)
        waiting++
        if (free > 0) handOver()
        const wait = readiness === undefined ? Deferred.await(served) : Effect.raceFirst(Deferred.await(served), watch(readiness))
        // Interrupted while waiting: leave the queue, or give back the permit handed over meanwhile.
        return Effect.onInterrupt(wait, () =>
          Effect.suspend(() => {
            const index = queue.indexOf(waiter)
            if (index === -1) return release(project)
            queue.splice(index, 1)
            waiting--
            return Effect.void
          }))
      })
    })

  // Never interruptible between taking the permit and giving it back.
  const withPermitUntil: FairPermits["withPermitUntil"] = (project, use, readiness) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        let held = true
        const giveBack = Effect.uninterruptible(Effect.suspend(() => {
          if (!held) return Effect.void
          held = false
          return release(project)
        }))
        return Effect.zipRight(restore(acquire(project, readiness)), Effect.ensuring(restore(use(giveBack)), giveBack))
      })
    )

  return {
    withPermit: (project, effect, readiness) => withPermitUntil(project, () => effect, readiness),
    withPermitUntil,
    claimYield: (project, ownProjectToo = false) => {
      // A holder that cannot use its permit gives it to anyone ready; else to a project it owes time to.
      level()
      if ((ownProjectToo ? readyWaiters(undefined) : readyWaiters(project, spent(project))) <= yielding) return false
      yielding++
      return true
    },
    endYield: () => {
      yielding--
    }
  }
}

/** `held`, once it has held for `forMs` without a break (`now` in milliseconds). */
export const heldAWhile = (held: () => boolean, now: () => number, forMs: number) => {
  let since: number | undefined
  return () => {
    if (!held()) {
      since = undefined
      return false
    }
    since ??= now()
    return now() - since >= forMs
  }
}

/** How often a running holder's turn is looked at when none of its requests takes a row. */
const TURN_CHECK = Duration.millis(250)

/**
 * A running holder's turn (`pendingRows.ts`): it ends at the end of a slice, or at once when `turnOver()` (a slice
 * too slow), but only when its claim to give the permit back is granted, so that with several permits one waiter
 * stops one holder. Once it ended and its time is over, `handBack` wants back the requests still waiting for their
 * upstream (a retry's backoff, a permit at the upstream: a 429 storm's), which would otherwise hold the permit
 * through their retries; at a slice's end before that, the slice's last requests are awaited. While `held()` (its
 * upstream holds every call) the turn is over too, for a ready batch of any project. `watch` asks while the run
 * takes no row (every request waiting, or the slice's last ones); `done` gives the claim back once the permit is
 * (once, when the run has nothing left to send: no claim is made after).
 */
export const holderTurn = (
  permits: FairPermits,
  project: string,
  turnOver: () => boolean,
  held: () => boolean = () => false
): TurnEnd & { readonly handBack: HandBack; readonly watch: Effect.Effect<void>; readonly done: () => void } => {
  let yielding = false
  let handingBack = false
  let finished = false
  const handedBack = Deferred.unsafeMake<void>(FiberId.none)
  const ends = (now: boolean, ownProjectToo = false) =>
    !finished && (yielding || (yielding = now && permits.claimYield(project, ownProjectToo)))
  const now = () => {
    const stuck = held()
    const over = stuck || turnOver()
    if (ends(over, stuck) && over && !handingBack) {
      handingBack = true
      Deferred.unsafeDone(handedBack, Effect.void)
    }
    return yielding
  }
  return {
    afterSlice: () => ends(true),
    now,
    handBack: { wanted: () => handingBack, await: Deferred.await(handedBack) },
    watch: Effect.asVoid(Effect.repeat(Effect.sync(now), { schedule: Schedule.spaced(TURN_CHECK), until: () => handingBack || finished })),
    done: () => {
      if (finished) return
      finished = true
      if (yielding) permits.endYield()
    }
  }
}
