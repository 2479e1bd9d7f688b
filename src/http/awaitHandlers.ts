/**
 * A server whose shutdown waits for the request handlers it cut short. Once `SHUTDOWN_TIMEOUT` is over, the
 * connections of the requests still running are closed (`NodeServerLive`), which interrupts their handlers; their
 * clean-up (an upload cut short removes its staged bytes) then runs in fibers nothing waits for, and the process
 * could exit before it is done. Here the server's release ends once no handler runs, or after `patience`.
 */
import type * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServer from "@effect/platform/HttpServer"
import { Context, type Duration, Effect, Layer } from "effect"

export const awaitHandlers = (patience: Duration.DurationInput) =>
<ROut, E, RIn>(
  server: Layer.Layer<ROut | HttpServer.HttpServer, E, RIn>
): Layer.Layer<ROut | HttpServer.HttpServer, E, RIn> =>
  Layer.scopedContext(Effect.gen(function*() {
    let running = 0
    const idle = yield* Effect.makeLatch(true)
    // Added before the server is built, so run after its release (no more requests, every connection closed).
    // Finalizers run uninterruptibly: the wait is made interruptible, or its timeout could never cut it short.
    yield* Effect.addFinalizer(() => Effect.ignore(Effect.timeout(Effect.interruptible(idle.await), patience)))
    const context = yield* Layer.build(server)
    const inner = Context.get(context as Context.Context<HttpServer.HttpServer>, HttpServer.HttpServer)
    const counted = <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
      Effect.suspend(() => {
        if (running++ === 0) idle.unsafeClose()
        return Effect.ensuring(app, Effect.sync(() => --running === 0 && idle.unsafeOpen()))
      })
    return Context.add(
      context,
      HttpServer.HttpServer,
      HttpServer.make({
        serve: (app, middleware) => middleware === undefined ? inner.serve(counted(app)) : inner.serve(counted(app), middleware),
        address: inner.address
      })
    )
  }))
