/**
 * File bytes staged in PostgreSQL (`FILE_STORAGE=sql`) by an upload that a database outage cut short: the staging
 * area's clean-up, met by the same outage, is tried again until the database answers. They stayed until the node's
 * next start (42 MB of a cut upload, in a trial).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Layer, type Redacted, Scope } from "effect"
import { AppConfig } from "../src/Config.js"
import { BlobStore } from "../src/storage/BlobStore.js"
import { BlobStoreSql } from "../src/storage/BlobStoreSql.js"
import { layerPg } from "../src/storage/Sql.js"
import { forwardedSchema } from "./support/ForwardedPostgres.js"
import { eventuallyEffect } from "./support/TestApp.js"

/** A service of `layer`, built for the test's scope. */
const built = <I, S>(tag: Context.Tag<I, S>, layer: Layer.Layer<I, unknown>) =>
  Effect.map(Effect.orDie(Layer.build(layer)), (context) => Context.get(context, tag))

const sqlOn = (url: Redacted.Redacted) => layerPg(url, { statementTimeout: Duration.seconds(2) })

describe("an upload to PostgreSQL cut by a database outage", () => {
  it.live("leaves no staged bytes once the database answers again", () =>
    Effect.gen(function*() {
      const { direct, forwarded, forwarder } = yield* forwardedSchema
      const sql = yield* built(SqlClient.SqlClient, sqlOn(direct))
      const blobs = yield* built(BlobStore, BlobStoreSql.pipe(Layer.provide(Layer.merge(sqlOn(forwarded), AppConfig.layerTest()))))
      const staged = sql<{ n: number }>`SELECT (SELECT COUNT(*) FROM blob_staging)::int + (SELECT COUNT(*) FROM blob_chunks)::int AS n`
      // An upload under way: a chunk and more staged, then the database goes away and the upload ends unpublished.
      const scope = yield* Scope.make()
      const writer = yield* Scope.extend(blobs.openStaging, scope)
      yield* writer.write(new Uint8Array(600 * 1024))
      expect((yield* staged)[0]!.n).toBeGreaterThan(1)
      forwarder.cut()
      yield* Scope.close(scope, Exit.void)
      expect((yield* staged)[0]!.n).toBeGreaterThan(1) // the clean-up met the outage
      forwarder.restore()
      yield* eventuallyEffect(Effect.map(Effect.orDie(staged), ([row]) => expect(row!.n).toBe(0)), 10_000)
    }).pipe(Effect.scoped), 30_000)
})
