/**
 * One app per server: Node calls every request listener on each request, so a second app served on the same server
 * (a second `HttpApiBuilder.serve` beside `HttpLive`) answered each request twice, once without the key check (its
 * routes served without a key, the API's with a 500). The second `serve` while the first runs is a defect naming
 * the way that works: routes of one's own on `HttpLive`'s router.
 */
import type * as HttpApp from "@effect/platform/HttpApp"
import type * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpServer from "@effect/platform/HttpServer"
import { Context, Effect, type Scope } from "effect"

const SECOND_APP = "This server already serves an app: a second one (a second HttpApiBuilder.serve or HttpServer.serve " +
  "beside HttpLive) would answer every request too, without its checks. Put your routes on HttpLive's router " +
  "(HttpApiBuilder.Router.use; an HttpApi of your own through router.mountApp): see the README's Embedding section."

/** `context`'s `HttpServer`, refusing a second app while one is served. */
export const oneAppPerServer = <A>(context: Context.Context<A | HttpServer.HttpServer>) => {
  const inner = Context.get(context as Context.Context<HttpServer.HttpServer>, HttpServer.HttpServer)
  let serving = 0
  const serve = (app: HttpApp.Default<unknown>, middleware?: HttpMiddleware.HttpMiddleware): Effect.Effect<void, never, Scope.Scope> =>
    Effect.suspend(() => {
      if (serving > 0) return Effect.dieMessage(SECOND_APP)
      serving++
      return Effect.zipRight(
        Effect.addFinalizer(() => Effect.sync(() => serving--)),
        middleware === undefined ? inner.serve(app) : inner.serve(app, middleware)
      )
    })
  return Context.add(context, HttpServer.HttpServer, HttpServer.make({ serve, address: inner.address }))
}
