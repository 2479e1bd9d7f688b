/**
 * An upstream that takes calls and answers none is said (`upstream.stalled`) long before the calls' time limit, and
 * the stall's end too (`upstream.stall_ended`: answered, or no call out); calls that answer say nothing, nor do
 * calls that time out and are tried again (with a short timeout, each made two lines).
 */
import { expect, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { chatLine, createBatch, terminal, upload, waitFor } from "./support/Batches.js"
import { eventually } from "./support/TestApp.js"
import { client, LogLines, testAppWithUpstreams } from "./support/Upstreams.js"

layer(
  testAppWithUpstreams(
    { sim: { models: ["m"] } },
    ({ sim }) => [{ name: "wedged", base_url: sim!.url, models: ["m"], timeout: "2 seconds" }],
    { maxConcurrentRequestsPerBatch: 2, inferenceRetryBaseDelay: Duration.millis(10) }
  ),
  { excludeTestServices: true }
)("an upstream that answers no call", (it) => {
  it.effect("is said once its calls are out for half their time limit without an end, and again once one ends or none is out", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const lines = yield* LogLines
      const stalls = () =>
        lines.filter((l) => typeof l.event === "string" && l.event.startsWith("upstream.stall")).map((l) => [l.event, l.level, l.message])
      const batchOf = (prompts: ReadonlyArray<string>) =>
        Effect.flatMap(upload(openai, prompts.map((p, i) => chatLine(`l-${i}`, p, "m"))), (file) => createBatch(openai, file.id))

      // Calls that end (each in 300 ms, the window busy for 1.2 s): nothing said.
      expect((yield* waitFor(openai, (yield* batchOf(Array.from({ length: 8 }, (_, i) => `q ${i} [sleep:300]`))).id, terminal)).status).toBe("completed")
      expect(stalls()).toEqual([])

      // Calls answered after 1.3 s: said stalled at 1 s, and its end when they are answered.
      expect((yield* waitFor(openai, (yield* batchOf(["s 1 [sleep:1300]", "s 2 [sleep:1300]"])).id, terminal)).status).toBe("completed")
      yield* eventually(() => expect(stalls()).toEqual([
        ["upstream.stalled", "WARN", expect.stringMatching(/^Upstream wedged: 2 calls out and none answered for 1 s; each waits up to 2s /)],
        // In whole seconds: 1.3 s, or a little more on a loaded machine.
        ["upstream.stall_ended", "INFO", expect.stringMatching(/^Upstream wedged: a call was answered, after [12] s without an answer$/)]
      ]), 2000)
      lines.length = 0

      // Calls never answered: stalled from when they went out (not from the last end); their timeouts (2 s) and
      // retries say nothing more; over once the cancel leaves none out.
      const hung = yield* batchOf(["h 1 [hang]", "h 2 [hang]"])
      const started = Date.now()
      yield* eventually(() => expect(stalls().length).toBe(1), 3000)
      expect(Date.now() - started).toBeGreaterThanOrEqual(900)
      yield* Effect.sleep("3500 millis") // past their timeout, and their retries' stall
      expect(stalls().length).toBe(1)
      yield* Effect.promise(() => openai.batches.cancel(hung.id))
      yield* eventually(() => expect(stalls()).toEqual([
        ["upstream.stalled", "WARN", expect.stringMatching(/^Upstream wedged: 2 calls out and none answered for 1 s;/)],
        ["upstream.stall_ended", "INFO", "Upstream wedged: no call is out any more"]
      ]), 3000)
    }), 30_000)
})
