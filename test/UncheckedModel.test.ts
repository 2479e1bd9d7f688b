/**
 * A batch validated while its upstream (serving any model) had not answered yet, so that its model could not be
 * checked: once the upstream answers, a model it does not serve fails the batch's lines with `model_not_found`, as
 * validation would have; it does not wait for a route until it expires. A served one runs.
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, type Backend, baseUrl, testApp, Upstream } from "./support/TestApp.js"
import { client as upstreamsClient, Simulators, testAppWithUpstreams } from "./support/Upstreams.js"

const client = Effect.map(baseUrl, sdk)

/** The app over a simulator serving `m` that is down from before the app starts (its list unknown). */
const downSinceStart = (backend: Backend) =>
  Layer.unwrapEffect(Effect.flatMap(Upstream, (sim) =>
    Effect.as(
      Effect.promise(() => sim.stop()),
      testApp({ inferenceBaseUrl: sim.url, upstreamProbeInterval: Duration.millis(200), inferenceRetryBaseDelay: Duration.millis(10) }, backend)
    ))).pipe(Layer.provideMerge(Upstream.layer({ models: ["m"] })))

for (const backend of backends) layer(downSinceStart(backend), { excludeTestServices: true })(`a model unchecked at validation (${backend})`, (it) => {
  it.effect("fails its lines with model_not_found once the upstream answers without it; a served one runs", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const sim = yield* Upstream
      const typo = yield* createBatch(openai, (yield* upload(openai, [chatLine("t-1", "t 1", "typo-model"), chatLine("t-2", "t 2", "typo-model")])).id)
      const served = yield* createBatch(openai, (yield* upload(openai, [chatLine("s-1", "s 1", "m")])).id)
      // Both pass validation (the list is unknown) and wait for the upstream.
      for (const id of [typo.id, served.id]) expect((yield* waitFor(openai, id, (b) => b.status === "in_progress")).request_counts!.total).toBeGreaterThan(0)

      yield* Effect.promise(() => sim.start())
      const failed = yield* waitFor(openai, typo.id, terminal, 10_000)
      expect(failed).toMatchObject({ status: "completed", request_counts: { total: 2, completed: 0, failed: 2 } })
      const errors = yield* readLines(openai, failed.error_file_id)
      expect(errors.map((l) => [l.custom_id, l.error.code])).toEqual([["t-1", "model_not_found"], ["t-2", "model_not_found"]])
      expect(errors[0].error.message).toBe(
        "No upstream serves the model 'typo-model'. It could not be checked when the batch was validated: its upstream had not answered yet."
      )
      expect(yield* waitFor(openai, served.id, terminal, 10_000)).toMatchObject({ status: "completed", request_counts: { total: 1, completed: 1, failed: 0 } })
      expect(sim.stats.requests).toBe(1) // the typo's lines were never sent
    }), 30_000)
})

// Two upstreams serving any model, the second down since the start: the first's list has the model, so it is checked.
layer(
  testAppWithUpstreams(
    { a: { models: ["m"] }, b: { models: ["x"] } },
    ({ a, b }) => {
      void b!.stop() // before the app starts: its list unknown at validation
      return [{ name: "a", base_url: a!.url, models: ["*"] }, { name: "b", base_url: b!.url, models: ["*"] }]
    },
    { upstreamProbeInterval: Duration.millis(200), maxConcurrentRequestsPerBatch: 1, inferenceRetryBaseDelay: Duration.millis(10) }
  ),
  { excludeTestServices: true }
)("a model checked against a list another upstream's missing list left incomplete", (it) => {
  it.effect("waits when no upstream serves it any more, as any checked model does, and runs once one does", () =>
    Effect.gen(function*() {
      const openai = yield* upstreamsClient
      const { a, b } = yield* Simulators
      // Long enough (8 × 400 ms, one at a time) to be running still once the models move, on a loaded machine too.
      const batch = yield* createBatch(openai, (yield* upload(openai, Array.from({ length: 8 }, (_, i) => chatLine(`m-${i}`, `m ${i} [sleep:400]`, "m")))).id)
      yield* waitFor(openai, batch.id, (x) => x.request_counts!.completed >= 1)
      // The first swaps its model away; the second comes up, serving another.
      a!.models.delete("m")
      a!.models.add("other")
      yield* Effect.promise(() => b!.start())
      yield* Effect.sleep("1500 millis")
      const waiting = yield* Effect.promise(() => openai.batches.retrieve(batch.id))
      expect([waiting.status, waiting.request_counts]).toEqual(["in_progress", { total: 8, completed: expect.any(Number), failed: 0 }])
      a!.models.add("m")
      expect(yield* waitFor(openai, batch.id, terminal, 10_000)).toMatchObject({ status: "completed", request_counts: { total: 8, completed: 8, failed: 0 } })
    }), 30_000)
})
