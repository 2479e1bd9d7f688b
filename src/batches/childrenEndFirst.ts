/**
 * Effect 3 interrupts the fibers an effect forked (a race's two sides, a concurrent `all`'s workers) only as the
 * fiber that forked them ends, after its own finalizers: an interrupted run's scope gave its slices back while a
 * worker, still going, claimed one, and that slice stayed leased (a cancel waited for it for ever).
 */
import { Cause, Effect, Exit, Fiber } from "effect"

/**
 * `effect` in a fiber of its own that, when the caller is interrupted, is interrupted and awaited with its forks (a
 * fault of its finalizers then is logged: the caller's cause is its interruption).
 */
export const childrenEndFirst = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.fork(restore(effect)), (fiber) =>
      Effect.onInterrupt(restore(Fiber.join(fiber)), () =>
        Effect.flatMap(Fiber.interrupt(fiber), (exit) =>
          Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)
            ? Effect.logError("Work interrupted ended with a fault", exit.cause)
            : Effect.void)))
  )
