/**
 * The official SDK retries a change whose answer was lost (a connection cut after the server acted), with no
 * idempotency key, saying `x-stainless-retry-count: 1`. A create given an `idempotency_key` is safe so: its retry gets
 * the batch its first attempt made, as the README tells. A delete's retry says the file is deleted, not 404.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import OpenAI from "openai"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { baseUrl, testAppWithUpstream } from "./support/TestApp.js"

/** The SDK with its retries, over a fetch that loses the answer to the first change whose path ends with `lost`. */
const losingFirstAnswer = (base: string, lost: string) => {
  const seen: Array<string | null> = []
  let dropped = false
  const openai = new OpenAI({
    baseURL: `${base}/v1`,
    apiKey: "sk-test",
    maxRetries: 2,
    fetch: async (url, init) => {
      const response = await fetch(url, init)
      const path = new URL(String(url)).pathname
      if ((init?.method === "POST" || init?.method === "DELETE") && path.endsWith(lost)) {
        seen.push(new Headers(init.headers).get("x-stainless-retry-count"))
        if (!dropped) {
          dropped = true
          await response.body?.cancel()
          throw new TypeError("fetch failed") // as a connection cut after the server answered
        }
      }
      return response
    }
  })
  return { openai, seen }
}

layer(testAppWithUpstream(), { excludeTestServices: true })("an SDK's retry after a lost answer", (it) => {
  it.effect("of a create with an idempotency_key gets the batch the first attempt made; without one, a second batch", () =>
    Effect.gen(function*() {
      const { openai, seen } = losingFirstAnswer(yield* baseUrl, "/batches")
      const file = yield* upload(openai, [chatLine("a", "one"), chatLine("b", "two")])
      const count = Effect.map(Effect.promise(() => openai.batches.list({ limit: 100 })), (page) => page.data.length)
      const before = yield* count
      // A field this server takes beside OpenAI's (the SDK's types do not name it: Python's `extra_body`).
      const batch = yield* createBatch(openai, file.id, { idempotency_key: `job-${file.id}` } as Partial<OpenAI.BatchCreateParams>)
      expect(seen).toEqual(["0", "1"]) // the answer lost, then the SDK's retry
      expect((yield* count) - before).toBe(1)
      expect((yield* waitFor(openai, batch.id, terminal)).request_counts).toEqual({ total: 2, completed: 2, failed: 0 })

      // Without a key the retry cannot be told from a create made again: two batches, as on OpenAI.
      const unkeyed = losingFirstAnswer(yield* baseUrl, "/batches")
      yield* createBatch(unkeyed.openai, file.id)
      expect(unkeyed.seen).toEqual(["0", "1"])
      expect((yield* count) - before).toBe(3)
    }))

  it.effect("of a file's delete says it is deleted (not a 404, as if the delete had failed); a delete made anew is a 404", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      const file = yield* upload(sdk(base), [chatLine("a", "one")])
      const { openai, seen } = losingFirstAnswer(base, file.id)
      expect(yield* Effect.promise(() => openai.files.delete(file.id))).toEqual({ id: file.id, object: "file", deleted: true })
      expect(seen).toEqual(["0", "1"])
      const again = yield* Effect.promise(() => openai.files.delete(file.id).then(() => 200, (e: { status: number }) => e.status))
      expect(again).toBe(404)
    }))
})
