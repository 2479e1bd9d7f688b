/**
 * The node's batch permits (`maxConcurrentBatches`), shared round-robin by project: a freed permit goes to the
 * first project after the one served last (in the order projects first asked) that has a batch waiting, so one
 * project's many or large batches cannot keep another's waiting. A holder learns that another project waits
 * (`othersWaiting`) and gives its permit back at a convenient point (a running batch: at the end of a slice), then
 * queues again in its project's turn.
 */
import { Deferred, Effect } from "effect"

export interface FairPermits {
  /** Runs `effect` under a permit taken in `project`'s turn (interruptible while it waits). */
  readonly withPermit: <A, E, R>(project: string, effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Whether a batch of a project other than `project` waits for a permit. */
  readonly othersWaiting: (project: string) => boolean
}

export const makeFairPermits = (permits: number): FairPermits => {
  let free = permits
  /** Every project that asked, in the order it first did: the round. Few (one per key's project). */
  const ring: Array<string> = []
  const queues = new Map<string, Array<Deferred.Deferred<void>>>()
  let lastServed = -1 // index in `ring`
  let waiting = 0

  const serve = (project: string) => {
    let index = ring.indexOf(project)
    if (index === -1) index = ring.push(project) - 1
    lastServed = index
    free--
  }

  /** Gives a free permit to the first waiter after the project served last (called with `free > 0`). */
  const handOver = () => {
    for (let step = 1; step <= ring.length; step++) {
      const project = ring[(lastServed + step) % ring.length]!
      const waiter = queues.get(project)?.shift()
      if (waiter === undefined) continue
      waiting--
      serve(project)
      Deferred.unsafeDone(waiter, Effect.void)
      return
    }
  }

  const release = Effect.sync(() => {
    free++
    if (waiting > 0) handOver()
  })

  const acquire = (project: string) =>
    Effect.suspend(() => {
      if (free > 0 && waiting === 0) {
        serve(project)
        return Effect.void
      }
      return Effect.flatMap(Deferred.make<void>(), (waiter) => {
        if (!ring.includes(project)) ring.push(project)
        const queue = queues.get(project) ?? []
        queues.set(project, queue)
        queue.push(waiter)
        waiting++
        if (free > 0) handOver()
        // Interrupted while waiting: leave the queue, or give back the permit handed over meanwhile.
        return Effect.onInterrupt(Deferred.await(waiter), () =>
          Effect.suspend(() => {
            const index = queue.indexOf(waiter)
            if (index === -1) return release
            queue.splice(index, 1)
            waiting--
            return Effect.void
          }))
      })
    })

  return {
    // Never interruptible between taking the permit and giving it back.
    withPermit: (project, effect) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.zipRight(restore(acquire(project)), Effect.ensuring(restore(effect), release))
      ),
    othersWaiting: (project) => [...queues].some(([other, queue]) => other !== project && queue.length > 0)
  }
}
