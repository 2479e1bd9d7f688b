/**
 * Waiting for a route: a batch whose model no upstream serves any more (the upstreams file changed since it was
 * validated, a `"*"` server restarted with another model) waits for one that does. Whenever an upstream's list
 * changes the waiters look again; while any waits, one poller asks every `"*"` upstream's list each probe interval
 * (no call goes to them to notice a restart), whatever the number of waiters.
 */
import { Deferred, Duration, Effect, Exit, FiberId, type Scope } from "effect"
import { echo } from "../domain/Text.js"
import type { Upstream } from "../upstreams/Upstream.js"
import { admits, servesAnyModel, type UpstreamSpec } from "../upstreams/UpstreamSpec.js"

/**
 * The warning for a batch whose model no upstream open to `project` serves any more. The `"*"` way back (a list that
 * has it again, asked while the batch waits) is named only where such an upstream is open to the batch's project.
 */
export const unroutedWarning = (model: string | null, specs: ReadonlyArray<UpstreamSpec>, project?: string) => {
  const anyModel = specs.some((spec) => servesAnyModel(spec) && admits(spec, project))
  const ways = anyModel
    ? `name it in UPSTREAMS_FILE and restart, or have a "*" upstream serve it: their lists are asked each probe interval`
    : "name it in UPSTREAMS_FILE and restart"
  return `No upstream serves the model '${echo(String(model), 64)}' any more: its batch waits until one does ` +
    `(${ways}), is cancelled or expires`
}

export interface RouteWait {
  /** To be called when an upstream's list changed: the waiters look again. */
  readonly listChanged: () => void
  /** The upstream `route` gives for `model` and `project`, once it gives one. */
  readonly routed: (model: string | null, project?: string) => Effect.Effect<Upstream>
  /** Completes once `route` gives none for `model` and `project` (at once when it gives none now). */
  readonly unrouted: (model: string | null, project?: string) => Effect.Effect<void>
}

export const makeRouteWait = (options: {
  readonly upstreams: () => ReadonlyArray<Upstream>
  readonly route: (model: string | null, project?: string) => Upstream | undefined
  readonly probeInterval: Duration.Duration
  readonly scope: Scope.Scope
}): RouteWait => {
  const probeMs = Duration.toMillis(options.probeInterval)
  let changed = Deferred.unsafeMake<void>(FiberId.none)
  const listChanged = () => {
    const settled = changed
    changed = Deferred.unsafeMake<void>(FiberId.none)
    Deferred.unsafeDone(settled, Exit.void)
  }
  // Each `"*"` list asked at once (one that takes long holds up none of the others), at most every probe interval.
  const askLists = Effect.suspend(() =>
    Effect.forEach(options.upstreams(), (u) => (servesAnyModel(u.spec) ? u.refreshListed(probeMs) : Effect.void), {
      concurrency: "unbounded",
      discard: true
    })
  )
  let waiting = 0
  let polling = false
  // Rounds while any waits; it ends by itself (interrupted as its waiters woke, it cut the asks of a round short: the
  // first list to answer wakes them all, and a later upstream was never asked).
  const poll: Effect.Effect<void> = Effect.suspend(() => {
    if (waiting === 0) return Effect.sync(() => void (polling = false))
    return Effect.zipRight(Effect.zipRight(Effect.sleep(options.probeInterval), askLists), poll)
  })
  /** Until the change after `seen` (taken as the route was looked at: none is missed), with the poller running. */
  const polledUntil = (seen: Deferred.Deferred<void>) => Effect.acquireUseRelease(
    Effect.suspend(() => {
      waiting++
      if (polling) return Effect.void
      polling = true
      return Effect.asVoid(Effect.forkIn(poll, options.scope))
    }),
    () => Deferred.await(seen),
    () => Effect.sync(() => void waiting--)
  )
  const routed = (model: string | null, project?: string): Effect.Effect<Upstream> =>
    Effect.suspend(() => {
      const upstream = options.route(model, project)
      return upstream !== undefined ? Effect.succeed(upstream) : Effect.zipRight(polledUntil(changed), routed(model, project))
    })
  // Without polling: a route is lost when a list changes, which its upstream's own calls and probes find out.
  const unrouted = (model: string | null, project?: string): Effect.Effect<void> =>
    Effect.suspend(() =>
      options.route(model, project) === undefined ? Effect.void : Effect.zipRight(Deferred.await(changed), unrouted(model, project))
    )
  return { listChanged, routed, unrouted }
}
