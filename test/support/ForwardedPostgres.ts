/** Fresh PostgreSQL schemas for a test's scope, directly or through a TCP forwarder the test can cut and freeze. */
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { testDatabaseUrl } from "./Postgres.js"
import { startForwarder } from "./TcpForwarder.js"
import { TestDatabase } from "./TestApp.js"

/** A fresh PostgreSQL schema's URL, for the test's scope. */
export const freshSchemaUrl = Effect.map(Layer.build(TestDatabase.layer("postgres")), (context) =>
  Option.getOrThrow(Context.get(context, TestDatabase).url))

/** A fresh schema's URL through a TCP forwarder in front of PostgreSQL (for the test's scope), and the forwarder. */
export const forwardedSchema = Effect.gen(function*() {
  const url = yield* freshSchemaUrl
  const target = new URL(testDatabaseUrl)
  const forwarder = yield* Effect.acquireRelease(
    Effect.promise(() => startForwarder({ host: target.hostname, port: Number(target.port || 5432) })),
    (f) => Effect.promise(() => f.close())
  )
  const forwarded = new URL(Redacted.value(url))
  forwarded.host = `127.0.0.1:${forwarder.port}`
  return { direct: url, forwarded: Redacted.make(forwarded.toString()), forwarder }
})
