/**
 * Result lines are read a page at a time, bounded by count and by the bytes of the upstream bodies and custom ids: a batch of
 * large answers is written a few answers at a time, not as one string of them all (SQLite and PostgreSQL).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { BatchStore, BatchStoreLive, type RequestOutcome } from "../src/batches/BatchStore.js"
import { RESULT_PAGE_BYTES } from "../src/batches/outcomes.js"
import { MAX_CUSTOM_ID_LENGTH } from "../src/batches/lineValidation.js"
import { SqlLive } from "../src/storage/Sql.js"
import { responseOutcome, validatingBatch } from "./support/Batches.js"
import { backends, configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

const storeFor = (backend: "sqlite" | "postgres") =>
  BatchStoreLive.pipe(
    Layer.provide(SqlLive),
    Layer.provideMerge(configFor()),
    Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
  )

/** A 2xx answer on `line` whose body is about `bytes` long. */
const answer = (line: number, bytes: number): RequestOutcome =>
  responseOutcome(line, { body: JSON.stringify({ line, pad: "x".repeat(bytes) }) })

for (const backend of backends) describe(`result pages (${backend})`, () => {
  it.live("a page stops once its bodies pass the byte budget; paging on gives every line once, in order", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* validatingBatch(7)
      expect(yield* store.startRunning(id, { model: "m", total: 7 }, [{ firstLine: 1, lastLine: 7 }])).toBe(true)
      const big = Math.ceil(RESULT_PAGE_BYTES * 0.4) // two fit in a page, the third starts past the budget
      yield* store.recordOutcomes(id, [1, 2, 3, 4, 5].map((line) => answer(line, big)))
      yield* store.recordOutcomes(id, [answer(6, 10), answer(7, 10)])

      const pages: Array<{ lines: Array<number>; bytes: number }> = []
      for (let after = 0; ;) {
        const page = yield* store.resultLines(id, "succeeded", after, 1000)
        if (page.count === 0) break
        const lines = new TextDecoder().decode(page.bytes).trimEnd().split("\n").map((l) => JSON.parse(l).response.body.line)
        pages.push({ lines, bytes: page.bytes.length })
        after = page.lastLine
      }
      expect(pages.map((p) => p.lines)).toEqual([[1, 2, 3], [4, 5, 6, 7]])
      for (const page of pages) expect(page.bytes).toBeLessThan(RESULT_PAGE_BYTES + big + 1000)
      // The count bound still holds with small bodies.
      expect((yield* store.resultLines(id, "succeeded", 5, 1)).count).toBe(1)
    }).pipe(Effect.provide(storeFor(backend))))

  it.live("the ids count too: long custom_ids of small answers make a page of a few lines, not of a thousand", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const lines = 300
      const id = yield* validatingBatch(lines)
      expect(yield* store.startRunning(id, { model: "m", total: lines }, [{ firstLine: 1, lastLine: lines }])).toBe(true)
      const longId = (line: number) => `${line}-${"i".repeat(MAX_CUSTOM_ID_LENGTH - 10)}`
      yield* store.recordOutcomes(id, Array.from({ length: lines }, (_, i) => responseOutcome(i + 1, { customId: longId(i + 1) })))
      const page = yield* store.resultLines(id, "succeeded", 0, 1000)
      expect(page.count).toBeLessThan(lines)
      // The budget, the line that passes it, and each line's own fields (~100 bytes).
      expect(page.bytes.length).toBeLessThan(RESULT_PAGE_BYTES + MAX_CUSTOM_ID_LENGTH + page.count * 200)
    }).pipe(Effect.provide(storeFor(backend))))
})
