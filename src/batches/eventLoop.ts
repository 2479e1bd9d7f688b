import { Effect } from "effect"

/**
 * Resumes after the event loop has handled the I/O already waiting (a `setImmediate`): unlike `Effect.yieldNow`,
 * which only lets other fibers run, this lets responses sitting in sockets be read first.
 */
export const afterPendingIo = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})
