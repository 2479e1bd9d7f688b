/**
 * When a run is drained (`running.ts`), so that its batch permit goes to the next batch: once no row is left to send
 * and no request waits between attempts. A request waiting to try again keeps the permit (and its turn's hand-back):
 * given back before, its retry waited for a slot behind the next batch's whole run.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { LocalWork } from "../src/batches/heartbeat.js"
import { RequestSlots } from "../src/batches/requestSlots.js"
import { makeRunning } from "../src/batches/running.js"
import { WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { InferenceScripted } from "../src/inference/Inference.js"
import { SqlLive } from "../src/storage/Sql.js"
import { validatingBatch } from "./support/Batches.js"
import { configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

const stores = Layer.merge(BatchStoreLive, WorkLeasesLive).pipe(
  Layer.provide(SqlLive),
  Layer.provideMerge(configFor({ maxConcurrentRequestsPerBatch: 3 })),
  Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite")))
)

const okAnswer = { status: 200, text: "{}", json: {}, requestId: "req_1" }

describe("a run's drain", () => {
  for (const overloaded of [false, true]) {
    it.live(`waits for a request waiting to try again (${overloaded ? "after a refusal: it keeps its place" : "it gives its place up"}), not only for the last row taken`, () =>
      Effect.gen(function*() {
        const store = yield* BatchStore
        const id = yield* validatingBatch(3)
        expect(yield* store.startRunning(id, { model: "m", total: 3 }, [{ firstLine: 1, lastLine: 3 }])).toBe(true)
        const events: Array<string> = []
        let calls = 0
        // The first call waits 200 ms between attempts, as a retry does; the other two are answered at once.
        const oneRetry = InferenceScripted(({ options }) =>
          ++calls > 1
            ? Effect.succeed(okAnswer)
            : Effect.as(options.backingOff!(Effect.zipRight(Effect.sleep("200 millis"), Effect.sync(() => events.push("retried"))), overloaded), okAnswer))
        const running = yield* makeRunning(new LocalWork(), new RequestSlots(3)).pipe(Effect.provide(oneRetry))
        yield* running.run(yield* store.get(id, "all"), undefined, undefined, Effect.sync(() => events.push("drained")))
        expect(events).toEqual(["retried", "drained"])
        expect((yield* store.get(id, "all")).batch.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      }).pipe(Effect.scoped, Effect.provide(stores)))
  }
})
