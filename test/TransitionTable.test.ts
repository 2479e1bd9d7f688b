/**
 * The transition table (src/batches/transitions.ts) is exactly what BatchStore lets happen, on real SQLite and real
 * PostgreSQL: every move is tried on a batch in every status; it applies (stamping its column) exactly when the
 * status is among its `from`, and otherwise leaves the batch as it was. So every (from, to) pair in the table is
 * seen to succeed and every pair not in it to be refused. And no code changes a status but the store's one move
 * function.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option, TestClock } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { type Move, transitions } from "../src/batches/transitions.js"
import { WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { type BatchStatus, BatchStatus as BatchStatusSchema, terminalStatuses } from "../src/domain/Batches.js"
import { type BatchId, FileId } from "../src/domain/Ids.js"
import { SqlLive } from "../src/storage/Sql.js"
import { validatingBatch } from "./support/Batches.js"
import { backends, configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

const storeFor = (backend: "sqlite" | "postgres") =>
  Layer.merge(BatchStoreLive, WorkLeasesLive).pipe(
    Layer.provide(SqlLive),
    Layer.provide(configFor()),
    Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
  )

const statuses: ReadonlyArray<BatchStatus> = BatchStatusSchema.literals
const moves = Object.keys(transitions) as ReadonlyArray<Move>
const pair = (from: BatchStatus, to: BatchStatus) => `${from} → ${to}`
/** The (from, to) pairs of the table. */
const tablePairs = new Set(moves.flatMap((move) => transitions[move].from.map((from) => pair(from, transitions[move].to))))

/** Makes `move` on batch `id` the way the code does: whether it applied. */
const apply = (id: BatchId, move: Move) =>
  Effect.flatMap(BatchStore, (store) => {
    switch (move) {
      case "startRunning":
        return store.startRunning(id, { model: "m", total: 2 }, [{ firstLine: 1, lastLine: 2 }])
      case "lastSliceDone":
        return store.completeSlice(id, 0)
      default:
        return Effect.map(store.transition(id, move, { outputFileId: FileId.make("file-out"), errorFileId: FileId.make("file-err") }), Option.isSome)
    }
  })

/** The moves that take a new batch to each status (through the table itself). */
const pathTo: Record<BatchStatus, ReadonlyArray<Move>> = {
  validating: [],
  in_progress: ["startRunning"],
  finalizing: ["startRunning", "lastSliceDone"],
  completed: ["startRunning", "lastSliceDone", "complete"],
  failed: ["validationFailed"],
  expired: ["startRunning", "expire"],
  cancelling: ["startRunning", "cancel"],
  cancelled: ["startRunning", "cancel", "cancelDone"]
}

/** A new batch with two request rows, taken to `status`. */
const batchIn = (status: BatchStatus) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const id = yield* validatingBatch(2)
    for (const move of pathTo[status]) expect(yield* apply(id, move), `${move} on the way to ${status}`).toBe(true)
    const { batch } = yield* store.get(id, "all")
    expect(batch.status).toBe(status)
    return batch
  })

describe("transition table", () => {
  it("no move leaves a final status, and every status can be reached", () => {
    for (const move of moves) {
      for (const from of transitions[move].from) expect(terminalStatuses, `${move} from ${from}`).not.toContain(from)
    }
    const reached = new Set<BatchStatus>(["validating", ...moves.map((move) => transitions[move].to)])
    expect([...reached].sort()).toEqual([...statuses].sort())
  })

  it("no code writes a batch's status but the store's one move function", () => {
    const sources = (dir: string): Array<string> =>
      readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
        entry.isDirectory() ? sources(Path.join(dir, entry.name)) : entry.name.endsWith(".ts") ? [Path.join(dir, entry.name)] : []
      )
    const dynamicSets: Array<string> = []
    const root = fileURLToPath(new URL("..", import.meta.url))
    for (const file of sources(Path.join(root, "src"))) {
      if (file.endsWith("migrations.ts")) continue
      const text = readFileSync(file, "utf8")
      for (const [, set] of text.matchAll(/UPDATE\s+batches\s+(?:\w+\s+)?SET\s+([\s\S]*?)\s+WHERE/g)) {
        expect(set, `${file}: UPDATE batches SET ${set}`).not.toMatch(/\bstatus\b/)
        // Values bound as `column = ${value}` are fine; columns not written out are not.
        if (set!.replace(/=\s*\$\{[^}]*\}/g, "").includes("${")) dynamicSets.push(`${Path.relative(root, file)}: ${set}`)
      }
    }
    // The move function's `sql.update(changes)` and its stamp column, and nothing else that could set any column.
    expect(dynamicSets).toEqual(["src/batches/batchRecords.ts: ${sql.update(changes)}, ${sql(stamp)} = ${notBeforeEarlierStamps(yield* nowSeconds)}"])
  })
})

for (const backend of backends) describe(`transition table (${backend})`, () => {
  it.effect("every move applies from the statuses of its `from` and is refused from every other status", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const seen = new Set<string>()
      for (const status of statuses) {
        for (const move of moves) {
          const { from, stamp, to } = transitions[move]
          const before = yield* batchIn(status)
          const applied = yield* apply(before.id, move)
          const after = (yield* store.get(before.id, "all")).batch
          if (from.includes(status)) {
            expect(applied, `${move}: ${pair(status, to)} must apply`).toBe(true)
            expect(after.status).toBe(to)
            expect(after[stamp], `${move} stamps ${stamp}`).toEqual(expect.any(Number))
            seen.add(pair(status, to))
          } else {
            expect(applied, `${move}: ${pair(status, to)} must be refused`).toBe(false)
            expect(after, `${move} from ${status} leaves the batch as it was`).toEqual(before)
          }
        }
      }
      // Every pair of statuses: a change was seen exactly where the table has it.
      for (const from of statuses) {
        for (const to of statuses) {
          if (from === to) continue
          expect(seen.has(pair(from, to)), pair(from, to)).toBe(tablePairs.has(pair(from, to)))
        }
      }
    }).pipe(Effect.provide(storeFor(backend))), 60_000)

  it.effect("a move's time is never before the batch's earlier ones, though the clock stepped back", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const created = 1_800_000_000
      yield* TestClock.setTime(created * 1000)
      const id = yield* validatingBatch(2)
      const at = (seconds: number, move: Move) => Effect.zipRight(TestClock.setTime(seconds * 1000), apply(id, move))
      expect(yield* at(created - 3600, "startRunning")).toBe(true)
      expect(yield* at(created + 10, "lastSliceDone")).toBe(true)
      expect(yield* at(created - 100, "cancel")).toBe(true)
      expect(yield* at(created + 5, "cancelDone")).toBe(true)
      const { batch } = yield* store.get(id, "all")
      expect([batch.created_at, batch.in_progress_at, batch.finalizing_at, batch.cancelling_at, batch.cancelled_at])
        .toEqual([created, created, created + 10, created + 10, created + 10])
      // The cancel's own time too: its end stamped at it, not before, though the clock went back after it.
      const other = yield* validatingBatch(2)
      yield* TestClock.setTime(created * 1000)
      expect(yield* apply(other, "startRunning")).toBe(true)
      yield* TestClock.setTime((created + 50) * 1000)
      expect(yield* apply(other, "cancel")).toBe(true)
      yield* TestClock.setTime((created + 20) * 1000)
      expect(yield* apply(other, "cancelDone")).toBe(true)
      const cancelled = (yield* store.get(other, "all")).batch
      expect([cancelled.cancelling_at, cancelled.cancelled_at]).toEqual([created + 50, created + 50])
    }).pipe(Effect.provide(storeFor(backend))))
})
