import { Effect } from "effect"

/**
 * Resumes after the event loop has handled the I/O already waiting (a `setImmediate`), whatever the scheduler:
 * `Effect.yieldNow` does the same only for background work on the server's (`Scheduler.ts`); on Effect's default,
 * or at the requests' priority, it lets other fibers run and nothing else. For background work on the server's
 * scheduler the fiber then goes on one turn later (its resumption is itself run from a `setImmediate`).
 */
export const afterPendingIo = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})
