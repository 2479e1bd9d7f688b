/**
 * The scheduler the server's fibers run on. Background work (the batches) runs at priority 0: a woken fiber's next
 * steps run from `setImmediate` (after the sockets of the event loop's turn are read; a fiber woken by another
 * fiber's step waits for the next turn) instead of from a microtask (Effect's default, where each fiber goes on from
 * microtasks for up to 2,048 turns before it leaves room for Node to poll). With batches running, hundreds of fibers
 * wake each other all the time, so on microtasks the queue rarely emptied and a request's bytes waited behind that
 * work; here every turn reads the sockets first. HTTP requests run at `REQUEST_PRIORITY` (`HttpLive` gives its
 * handlers that one, and every fiber its layers fork), from microtasks: each of a request's steps runs as soon as it
 * is woken instead of a turn of batch work later (what wakes it from a background fiber, such as a SQLite permit
 * released by a batch, still waits for one). Work a request starts and leaves running, or that is long and needs
 * no hurry, goes back to priority 0 (`inBackground`): a forked fiber inherits its parent's.
 * Measured (docs/performance.md): the zero-latency benchmark's running phase 8–19 % shorter in alternating runs;
 * with requests first, reads while batches run answered at 1.3–1.6 times the rate back to back, and in half the
 * median time when polled.
 */
import { Effect, FiberRef, Layer, Scheduler } from "effect"

/** Each fiber's pending steps run together from one `setImmediate` (Effect's own batched runner). */
export const ioFirstScheduler: Scheduler.Scheduler = Scheduler.makeBatched((runBatch) => setImmediate(runBatch))

/** The priority of background work (the default one). */
export const BACKGROUND_PRIORITY = 0
/** The priority of HTTP requests' fibers. */
export const REQUEST_PRIORITY = 1

/**
 * `ioFirstScheduler` for background work, Effect's default (microtasks) for requests. A task goes by the higher of
 * the priority it is scheduled at and its fiber's own: Effect's concurrent `forEach` (parallel layer builds and
 * finalizers among its users) starts its fibers at priority 0 whatever theirs, so at a request's priority that start
 * waited for `setImmediate` while the request's own steps ran from microtasks, and an interruption that came in
 * between left the `forEach` waiting for ever (Effect 3.22.4: its first fiber, started after the interruption had
 * dropped the work, finds none and never ends). A layer failing beside `HttpLive` hung its app's start so.
 */
export const serverScheduler: Scheduler.Scheduler = Scheduler.make(
  (task, priority, fiber) => {
    const own = fiber === undefined ? priority : Math.max(priority, fiber.getFiberRef(FiberRef.currentSchedulingPriority))
    return (own >= REQUEST_PRIORITY ? Scheduler.defaultScheduler : ioFirstScheduler).scheduleTask(task, own, fiber)
  },
  Scheduler.defaultShouldYield
)

/** Runs every fiber of what it is provided to (layers built after it, their fibers and handlers) on `serverScheduler`. */
export const SchedulerLive: Layer.Layer<never> = Layer.setScheduler(serverScheduler)

/** `layer`'s fibers, and those forked from them (a server's request handlers), at `REQUEST_PRIORITY`. */
export const requestsFirst = <A, E, R>(layer: Layer.Layer<A, E, R>): Layer.Layer<A, E, R> =>
  Layer.locally(layer, FiberRef.currentSchedulingPriority, REQUEST_PRIORITY)

/**
 * `effect` at `BACKGROUND_PRIORITY`: for work a request forks and does not wait for (a batch, an upload's assembly),
 * and for long work a request waits for that other requests should pass (a rerun's input, an idempotent create's
 * comparison of two files).
 */
export const inBackground: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R> = Effect
  .withSchedulingPriority(BACKGROUND_PRIORITY)
