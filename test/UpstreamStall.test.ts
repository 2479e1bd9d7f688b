/**
 * An upstream that takes calls and answers none is said (`upstream.stalled`) long before the calls' time limit, and
 * the stall's end too (`upstream.stall_ended`); calls that answer say nothing.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { chatLine, createBatch, terminal, upload, waitFor } from "./support/Batches.js"
import { eventually } from "./support/TestApp.js"
import { client, LogLines, testAppWithUpstreams } from "./support/Upstreams.js"

layer(
  testAppWithUpstreams(
    { sim: { models: ["m"] } },
    ({ sim }) => [{ name: "wedged", base_url: sim!.url, models: ["m"], timeout: "4 seconds" }],
    { maxConcurrentRequestsPerBatch: 2 }
  ),
  { excludeTestServices: true }
)("an upstream that answers no call", (it) => {
  it.effect("is said once its calls are out for half their time limit without an end, and again once one ends or none is out", () =>
    Effect.gen(function*() {
      const openai = yield* client
      const lines = yield* LogLines
      const stalls = () => lines.filter((l) => typeof l.event === "string" && l.event.startsWith("upstream.stall"))

      // Calls that end (each in 300 ms, the window busy for 1.2 s): nothing said.
      const quick = yield* createBatch(openai, (yield* upload(openai, Array.from({ length: 8 }, (_, i) => chatLine(`q-${i}`, `q ${i} [sleep:300]`, "m")))).id)
      expect((yield* waitFor(openai, quick.id, terminal)).status).toBe("completed")
      expect(stalls()).toEqual([])

      // Calls that end after 3 s: said stalled at 2 s, and its end when they end.
      const slow = yield* createBatch(openai, (yield* upload(openai, [chatLine("s-1", "s 1 [sleep:3000]", "m"), chatLine("s-2", "s 2 [sleep:3000]", "m")])).id)
      expect((yield* waitFor(openai, slow.id, terminal)).status).toBe("completed")
      yield* eventually(() => expect(stalls().map((l) => [l.event, l.message])).toEqual([
        ["upstream.stalled", expect.stringMatching(/^Upstream wedged: 2 calls out and none ended for 2 s; each waits up to 4s/)],
        ["upstream.stall_ended", "Upstream wedged: a call ended, after 3 s without one"]
      ]), 3000)
      lines.length = 0

      const hung = yield* createBatch(openai, (yield* upload(openai, [chatLine("h-1", "h 1 [hang]", "m"), chatLine("h-2", "h 2 [hang]", "m")])).id)
      const started = Date.now()
      yield* eventually(() => expect(stalls().map((l) => l.event)).toEqual(["upstream.stalled"]), 4000)
      expect(Date.now() - started).toBeGreaterThanOrEqual(1900) // half of the 4 s, not at once
      expect(stalls()[0]!).toMatchObject({ level: "WARN", message: expect.stringMatching(/^Upstream wedged: 2 calls out and none ended for 2 s; each waits up to 4s/) })

      yield* Effect.promise(() => openai.batches.cancel(hung.id))
      yield* eventually(() => expect(stalls().map((l) => [l.event, l.message])).toEqual([
        ["upstream.stalled", expect.any(String)],
        ["upstream.stall_ended", "Upstream wedged: no call is out any more"]
      ]), 3000)
    }), 20_000)
})
