/**
 * The official SDK retries a create whose answer was lost (a connection cut after the server made the batch) with no
 * idempotency key, saying `x-stainless-retry-count: 1`: the retry gets the batch its first attempt made, not a
 * second batch that runs every request again. A create the client makes anew (no retry) is a batch of its own.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import OpenAI from "openai"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
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
  it.effect("of a create gets the batch the first attempt made; a create made anew is another batch", () =>
    Effect.gen(function*() {
      const { openai, seen } = losingFirstAnswer(yield* baseUrl, "/batches")
      const file = yield* upload(openai, [chatLine("a", "one"), chatLine("b", "two")])
      const before = (yield* Effect.promise(() => openai.batches.list({ limit: 100 }))).data.length
      const batch = yield* createBatch(openai, file.id)
      expect(seen).toEqual(["0", "1"]) // the answer lost, then the SDK's retry
      const listed = (yield* Effect.promise(() => openai.batches.list({ limit: 100 }))).data
      expect(listed.length - before).toBe(1)
      expect(listed[0]!.id).toBe(batch.id)
      const done = yield* waitFor(openai, batch.id, terminal)
      expect(done.request_counts).toEqual({ total: 2, completed: 2, failed: 0 })

      // The same create, made again by the client (no retry): a batch of its own.
      const again = yield* createBatch(openai, file.id)
      expect(again.id).not.toBe(batch.id)
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

  it.effect("of a rerun gets the rerun the first attempt made", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      const { openai, seen } = losingFirstAnswer(base, "/retry")
      const file = yield* upload(openai, [chatLine("a", "one [fail:400]"), chatLine("b", "two")])
      const done = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal)
      const before = (yield* Effect.promise(() => openai.batches.list({ limit: 100 }))).data.length
      const rerun = yield* Effect.promise(() => openai.post<OpenAI.Batch>(`/batches/${done.id}/retry`, { body: {} }))
      expect(seen).toEqual(["0", "1"])
      expect((yield* Effect.promise(() => openai.batches.list({ limit: 100 }))).data.length - before).toBe(1)
      const rerunDone = yield* waitFor(openai, rerun.id, terminal)
      expect(rerunDone.request_counts?.total).toBe(1)
      expect((yield* readLines(openai, rerunDone.error_file_id)).map((l) => l.custom_id)).toEqual(["a"])
    }))
})
