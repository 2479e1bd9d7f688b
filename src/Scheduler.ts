/**
 * The scheduler the server's fibers run on: a fiber's next steps run from `setImmediate`, in the turn after the one
 * that woke it, instead of from the microtask queue (Effect's default, which runs up to 2,048 chained microtask
 * turns before it lets Node poll its sockets). With batches running, hundreds of fibers wake each other all the time;
 * on microtasks a request's socket waited behind all of that, here every turn of the event loop reads the sockets
 * first. Measured (README's Performance): the zero-latency benchmark's running phase 8–19 % shorter in alternating
 * runs; reads while batches run moved less than the runs' noise.
 */
import { Layer, Scheduler } from "effect"

/** Each fiber's pending steps run together from one `setImmediate` (Effect's own batched runner). */
export const ioFirstScheduler: Scheduler.Scheduler = Scheduler.makeBatched((runBatch) => setImmediate(runBatch))

/** Runs every fiber of what it is provided to (layers built after it, their fibers and handlers) on `ioFirstScheduler`. */
export const SchedulerLive: Layer.Layer<never> = Layer.setScheduler(ioFirstScheduler)
