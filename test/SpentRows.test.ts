/**
 * A finished batch's request rows and outcomes (most of the database: ~22 MB for 20,000 requests) are deleted once
 * its input, output and error files are all gone, and not before; the batch itself stays, as OpenAI keeps it. On
 * SQLite and PostgreSQL, through the official client.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { describe, expect, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import { readFileSync } from "node:fs"
import { StorageLive } from "../src/Layers.js"
import { chatLine, createBatch, terminal, upload, waitFor } from "./support/Batches.js"
import { backends, testAppWithUpstream } from "./support/TestApp.js"
import { client } from "./support/Upstreams.js"

/** The app and its own SQL client (layers are shared by reference within a build: the same database). */
const app = (backend: "sqlite" | "postgres") =>
  StorageLive.pipe(Layer.provideMerge(testAppWithUpstream({ fileSweepInterval: Duration.millis(100) }, {}, backend)))

const rowsOf = (id: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(
      sql<{ requests: number | string; outcomes: number | string; slices: number | string }>`SELECT
        (SELECT COUNT(*) FROM batch_requests WHERE batch_id = ${id}) AS requests,
        (SELECT COUNT(*) FROM batch_results WHERE batch_id = ${id}) AS outcomes,
        (SELECT COUNT(*) FROM batch_slices WHERE batch_id = ${id}) AS slices`,
      ([row]) => [Number(row!.requests), Number(row!.outcomes), Number(row!.slices)]
    )).pipe(Effect.orDie)

describe("rows of finished batches", () => {
  for (const backend of backends) {
    layer(app(backend), { excludeTestServices: true })(backend, (it) => {
      it.effect("are deleted once the batch's input, output and error files are all gone, and kept until then", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const input = yield* upload(openai, [chatLine("s1", "one"), chatLine("s2", "two [fail:400]"), chatLine("s3", "three")])
          const done = yield* waitFor(openai, (yield* createBatch(openai, input.id)).id, terminal)
          expect(done.request_counts).toEqual({ total: 3, completed: 2, failed: 1 })
          expect(yield* rowsOf(done.id)).toEqual([3, 3, 1])

          // Output and error files deleted, the input kept (a rerun could still read it): the rows stay.
          yield* Effect.promise(() => openai.files.delete(done.output_file_id!))
          yield* Effect.promise(() => openai.files.delete(done.error_file_id!))
          yield* Effect.sleep("400 millis") // a few sweeps
          expect(yield* rowsOf(done.id)).toEqual([3, 3, 1])

          yield* Effect.promise(() => openai.files.delete(input.id))
          yield* eventuallyRows(done.id, [0, 0, 0])
          // The batch stays, as it was.
          const kept = yield* Effect.promise(() => openai.batches.retrieve(done.id))
          expect([kept.status, kept.request_counts]).toEqual(["completed", { total: 3, completed: 2, failed: 1 }])
        }))

      it.effect("keep nothing of a file once it is gone: its results answer 404, its prompts or answers are cleared from the rows", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const batchOf = (tag: string) =>
            Effect.gen(function*() {
              // An answer, a failure with the upstream's answer, and one without (an answer no line can keep: its message).
              const input = yield* upload(openai, [
                chatLine(`${tag}1`, "PROMPT-MARK one"),
                chatLine(`${tag}2`, "PROMPT-MARK two [fail:400]"),
                chatLine(`${tag}3`, "PROMPT-MARK three [html]")
              ])
              return { input, done: yield* waitFor(openai, (yield* createBatch(openai, input.id)).id, terminal) }
            })
          const resultsOf = (id: string, kind: "output" | "error") =>
            Effect.promise(async () => {
              const response = await openai.get(`/batches/${id}/results`, { query: { kind } }).asResponse()
                .catch((e: { status: number; error: { message: string; param: string } }) => e)
              return "error" in response ? { status: response.status, error: response.error } : { status: response.status }
            })
          const gone = (id: string, which: "output" | "error", fileId: string) => ({
            status: 404,
            error: expect.objectContaining({
              message: `The ${which} file of batch ${id} (${fileId}) was deleted or has expired, and its results with it.`,
              param: "kind"
            })
          })

          // The input deleted: the prompts go from the rows at the next sweep; the answers and failures stay.
          const first = yield* batchOf("p")
          yield* Effect.promise(() => openai.files.delete(first.input.id))
          yield* eventuallyContents(first.done.id, { bodies: ["", "", ""], answers: 1, failures: 2 })
          expect(yield* resultsOf(first.done.id, "output")).toEqual({ status: 200 })

          // The error file deleted, then the output (the input kept): each kind's results are gone at once, and what
          // the rows held of them at the next sweep; the prompts stay for a rerun.
          const { done } = yield* batchOf("q")
          yield* Effect.promise(() => openai.files.delete(done.error_file_id!))
          expect(yield* resultsOf(done.id, "error")).toEqual(gone(done.id, "error", done.error_file_id!))
          expect(yield* resultsOf(done.id, "output")).toEqual({ status: 200 })
          const prompts = [chatLine("q1", "PROMPT-MARK one"), chatLine("q2", "PROMPT-MARK two [fail:400]"), chatLine("q3", "PROMPT-MARK three [html]")]
            .map((l) => JSON.stringify(JSON.parse(l).body))
          yield* eventuallyContents(done.id, { bodies: prompts, answers: 1, failures: 0 })
          yield* Effect.promise(() => openai.files.delete(done.output_file_id!))
          expect(yield* resultsOf(done.id, "output")).toEqual(gone(done.id, "output", done.output_file_id!))
          yield* eventuallyContents(done.id, { bodies: prompts, answers: 0, failures: 0 })
          expect(yield* rowsOf(done.id)).toEqual([3, 3, 1]) // the rows stay: their lines, statuses and codes
          const kept = yield* Effect.promise(() => openai.batches.retrieve(done.id))
          expect(kept.request_counts).toEqual({ total: 3, completed: 1, failed: 2 })
        }))

      if (backend === "sqlite") {
        it.effect("once swept, leave nothing readable in the database file (its free pages zeroed)", () =>
          Effect.gen(function*() {
            const openai = yield* client
            const marker = `PRIVATE-${Date.now()}`
            const input = yield* upload(openai, Array.from({ length: 40 }, (_, i) => chatLine(`m${i}`, `${marker} ${i} ${"x".repeat(400)}`)))
            const done = yield* waitFor(openai, (yield* createBatch(openai, input.id)).id, terminal)
            for (const id of [input.id, done.output_file_id!]) yield* Effect.promise(() => openai.files.delete(id))
            yield* eventuallyRows(done.id, [0, 0, 0])
            const sql = yield* SqlClient.SqlClient
            const [{ file }] = yield* Effect.orDie(sql<{ file: string }>`SELECT file FROM pragma_database_list WHERE name = 'main'`)
            yield* Effect.orDie(sql`PRAGMA wal_checkpoint(TRUNCATE)`) // the pages as the file holds them
            expect(readFileSync(file!).includes(marker)).toBe(false)
          }))
      }

      it.effect("of a batch still running are kept, whatever became of its input file", () =>
        Effect.gen(function*() {
          const openai = yield* client
          const input = yield* upload(openai, Array.from({ length: 6 }, (_, i) => chatLine(`r${i}`, `slow ${i} [sleep:300]`)))
          const batch = yield* createBatch(openai, input.id)
          yield* waitFor(openai, batch.id, (b) => b.status === "in_progress")
          yield* Effect.promise(() => openai.files.delete(input.id))
          yield* Effect.sleep("400 millis") // a few sweeps
          expect((yield* rowsOf(batch.id))[0]).toBe(6)
          const done = yield* waitFor(openai, batch.id, terminal)
          expect(done.request_counts).toEqual({ total: 6, completed: 6, failed: 0 })
          expect(yield* rowsOf(batch.id)).toEqual([6, 6, 1]) // its output file is there
        }))
    })
  }
})

/** Waits (up to 5 s) for the batch's row counts to be `expected`. */
const eventuallyRows = (id: string, expected: ReadonlyArray<number>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 50; i++) {
      if (JSON.stringify(yield* rowsOf(id)) === JSON.stringify(expected)) return
      yield* Effect.sleep("100 millis")
    }
    expect(yield* rowsOf(id)).toEqual(expected)
  })

/** What the batch's rows hold of its files: the request bodies, and how many answers and failures' bodies are kept. */
const contentsOf = (id: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.gen(function*() {
      const bodies = yield* sql<{ body: string }>`SELECT body FROM batch_requests WHERE batch_id = ${id} ORDER BY line`
      const [kept] = yield* sql<{ answers: number | string; failures: number | string }>`SELECT
        (SELECT COUNT(*) FROM batch_results WHERE batch_id = ${id} AND status_code = 200 AND response IS NOT NULL) AS answers,
        (SELECT COUNT(*) FROM batch_results WHERE batch_id = ${id} AND (status_code IS NULL OR status_code <> 200)
          AND (response IS NOT NULL OR error_message IS NOT NULL)) AS failures`
      return { bodies: bodies.map((r) => r.body), answers: Number(kept!.answers), failures: Number(kept!.failures) }
    })).pipe(Effect.orDie)

/** Waits (up to 5 s) for the batch's rows to hold `expected` (`contentsOf`). */
const eventuallyContents = (id: string, expected: Effect.Effect.Success<ReturnType<typeof contentsOf>>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 50; i++) {
      if (JSON.stringify(yield* contentsOf(id)) === JSON.stringify(expected)) return
      yield* Effect.sleep("100 millis")
    }
    expect(yield* contentsOf(id)).toEqual(expected)
  })
