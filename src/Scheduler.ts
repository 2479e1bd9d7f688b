/**
 * The scheduler the server's fibers run on: a woken fiber's next steps run from `setImmediate` (after the sockets of
 * the event loop's turn are read; a fiber woken by another fiber's step waits for the next turn) instead of from a
 * microtask (Effect's default, where each fiber goes on from microtasks for up to 2,048 turns before it leaves room
 * for Node to poll). With batches running, hundreds of fibers wake each other all the time, so on microtasks the
 * queue rarely emptied and a request's bytes waited behind that work; here every turn reads the sockets first.
 * Measured (README's Performance): the zero-latency benchmark's running phase 8–19 % shorter in alternating runs;
 * reads while batches run were no better.
 */
import { Layer, Scheduler } from "effect"

/** Each fiber's pending steps run together from one `setImmediate` (Effect's own batched runner). */
export const ioFirstScheduler: Scheduler.Scheduler = Scheduler.makeBatched((runBatch) => setImmediate(runBatch))

/** Runs every fiber of what it is provided to (layers built after it, their fibers and handlers) on `ioFirstScheduler`. */
export const SchedulerLive: Layer.Layer<never> = Layer.setScheduler(ioFirstScheduler)
