/**
 * The claims several nodes coordinate through, on WorkLeases and BatchStore against real SQLite and real PostgreSQL: slices and
 * batch leases go to one owner at a time, an expired lease moves on, and racing writers store an outcome once.
 */
import { describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Effect, Fiber, Layer, Logger, Option, TestClock } from "effect"
import { BatchStore, BatchStoreLive, type RequestOutcome, type ResultLines } from "../src/batches/BatchStore.js"
import { beat, LocalWork } from "../src/batches/heartbeat.js"
import { makePendingRows } from "../src/batches/pendingRows.js"
import { type Lease, WorkLeases, WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { AppConfig } from "../src/Config.js"
import { SqlLive } from "../src/storage/Sql.js"
import { BatchId, BatchRequestId, FileId } from "../src/domain/Ids.js"
import { newChatBatch, requestRows, responseOutcome, storedLines } from "./support/Batches.js"
import { backends, configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

/** The stores, and the SQL client they use. */
const storeFor = (backend: "sqlite" | "postgres") =>
  Layer.merge(BatchStoreLive, WorkLeasesLive).pipe(
    Layer.provideMerge(SqlLive),
    Layer.provide(configFor()),
    Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
  )

const lease = (owner: string, now = 1_000, ttl = 10_000): Lease => ({ owner, now, until: now + ttl })

const ok = (line: number, text = `ok ${line}`): RequestOutcome =>
  responseOutcome(line, { body: JSON.stringify({ text }), usage: { input: 1, cached: 0, output: 2, reasoning: 0, total: 3 } })

/** A running batch of `lines` requests in slices of `perSlice` lines. */
const runningBatch = (lines: number, perSlice: number) =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const id = BatchId.make(`batch_${Math.random().toString(16).slice(2)}`)
    yield* store.create(newChatBatch(id, FileId.make("file-x")))
    yield* store.insertRequests(id, requestRows(lines))
    const slices = Array.from({ length: Math.ceil(lines / perSlice) }, (_, s) => ({
      firstLine: s * perSlice + 1,
      lastLine: Math.min(lines, (s + 1) * perSlice)
    }))
    expect(yield* store.startRunning(id, { model: "m", total: lines }, slices)).toBe(true)
    return id
  })

for (const backend of backends) describe(`leases (${backend})`, () => {
  it.effect("a heartbeat's renewal finds this node's batch leases by index, not by reading every batch ever made", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const renewal = sql`UPDATE batches SET lease_until = 1 WHERE lease_owner = ${"node-1"}`
      const plan = backend === "sqlite"
        ? sql<{ detail: string }>`EXPLAIN QUERY PLAN ${renewal}`.pipe(Effect.map((rows) => rows.map((r) => r.detail)))
        // A tiny table is read whole whatever its indexes: the planner is told not to, as it would not for a large one.
        : sql.withTransaction(Effect.zipRight(
          sql`SET LOCAL enable_seqscan = off`,
          sql<{ "QUERY PLAN": string }>`EXPLAIN ${renewal}`.pipe(Effect.map((rows) => rows.map((r) => r["QUERY PLAN"])))
        ))
      expect((yield* plan).join("\n")).toContain("batches_lease_owner")
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("concurrent claims get distinct slices; none is left twice", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const id = yield* runningBatch(100, 10)
      const claims = yield* Effect.all(
        Array.from({ length: 12 }, (_, i) => leases.claimSlice(id, lease(`node-${i}`))),
        { concurrency: "unbounded" }
      )
      const got = claims.filter(Option.isSome).map((c) => c.value.slice)
      expect(got.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
      expect(claims.filter(Option.isNone)).toHaveLength(2)
      expect(Option.getOrThrow(claims.find(Option.isSome)!)).toMatchObject({ firstLine: expect.any(Number), lastLine: expect.any(Number) })
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("a node that stalled past its validation's lease writes nothing once another node took the batch", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const store = yield* BatchStore
      const id = BatchId.make(`batch_${Math.random().toString(16).slice(2)}`)
      yield* store.create(newChatBatch(id, FileId.make("file-x")))
      expect(yield* leases.claimBatch(id, lease("a", 1_000, 5_000))).toBe(true)
      expect(yield* leases.whileHolding(id, "a", "validating", store.insertRequests(id, requestRows(3)))).toEqual(Option.some(undefined))
      // A's lease lapses; B validates the batch again and starts it.
      expect(yield* leases.claimBatch(id, lease("b", 7_000))).toBe(true)
      const rowsNow = Effect.map(store.pendingRequests(id, 0, 10, { rows: 10, bytes: 1e6 }), (page) => page.rows.length)
      // A wakes up: its start over (a delete), its rows and its start of the run are refused.
      expect(yield* leases.whileHolding(id, "a", "validating", store.deleteRequests(id))).toEqual(Option.none())
      expect(yield* rowsNow).toBe(3)
      expect(yield* store.startRunning(id, { model: "m", total: 3 }, [{ firstLine: 1, lastLine: 3 }], "a")).toBe(false)
      expect(yield* store.startRunning(id, { model: "m", total: 3 }, [{ firstLine: 1, lastLine: 3 }], "b")).toBe(true)
      // Running now: no validator's write, B's included, touches it.
      expect(yield* leases.whileHolding(id, "b", "validating", store.deleteRequests(id))).toEqual(Option.none())
      expect(yield* rowsNow).toBe(3)
      expect((yield* store.get(id, "all")).batch.status).toBe("in_progress")
      // A move made under a lease the node no longer holds is refused as well.
      expect(yield* store.transition(id, "cancel", {}, "a")).toEqual(Option.none())
      expect(Option.isSome(yield* store.transition(id, "cancel"))).toBe(true)
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("a running batch a node is expiring (its batch-wide lease held) is not cancelled: cancelled as its expiry wrote its lines, it was 'cancelled' with every line batch_expired", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const leases = yield* WorkLeases
      const [id, other, orphan] = [yield* runningBatch(3, 3), yield* runningBatch(3, 3), yield* runningBatch(3, 3)]
      const { expires_at } = (yield* store.get(id, "all")).batch
      const past = expires_at * 1000 + 1000
      // Past its expiry, before any node took it to expire it: cancelled as ever (its own finishing writes its lines).
      yield* TestClock.setTime(past)
      expect(Option.getOrThrow(yield* store.transition(other, "cancel")).status).toBe("cancelling")
      // A node took it to expire it: the expiry ends it, whatever the clocks say.
      expect(yield* leases.claimBatch(id, lease("expirer", past))).toBe(true)
      expect(yield* store.transition(id, "cancel")).toEqual(Option.none())
      expect(Option.getOrThrow(yield* store.transition(id, "expire")).status).toBe("expired")
      // A node that took it and died (its lease run out) before writing anything: cancelled as ever.
      expect(yield* leases.claimBatch(orphan, lease("died", past, 5_000))).toBe(true)
      yield* TestClock.setTime(past + 10_000)
      expect(Option.getOrThrow(yield* store.transition(orphan, "cancel")).status).toBe("cancelling")
      // One that wrote the expired lines and stopped (its lease given back) before the final move: the expiry's.
      const stopped = yield* runningBatch(3, 3)
      yield* store.failPending(stopped, "batch_expired", "expired")
      expect(yield* store.transition(stopped, "cancel")).toEqual(Option.none())
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("no slice is claimed once the batch left in_progress (a cancel): the slices given back stay unsent", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const store = yield* BatchStore
      const id = yield* runningBatch(20, 10)
      expect(Option.isSome(yield* leases.claimSlice(id, lease("a")))).toBe(true)
      expect(Option.isSome(yield* store.transition(id, "cancel"))).toBe(true)
      yield* leases.releaseLeases({ owner: "a" }) // node A stops on the cancel, giving its slice back
      expect(yield* leases.claimSlice(id, lease("b"))).toEqual(Option.none())
      expect(yield* leases.claimNextSlice(id, lease("b", 100_000))).toEqual(Option.none())
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("an expired slice lease is taken over; the old owner's renewal no longer holds it", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const id = yield* runningBatch(20, 10)
      const a = Option.getOrThrow(yield* leases.claimSlice(id, lease("a", 1_000, 5_000)))
      expect(Option.getOrThrow(yield* leases.claimSlice(id, lease("b", 2_000))).slice).not.toBe(a.slice)
      expect(yield* leases.claimSlice(id, lease("c", 3_000))).toEqual(Option.none()) // both live
      expect(yield* leases.claimable(3_000, 10)).not.toContain(id)
      // a stalls past its lease: c takes its slice over, and a's next renewal shows it lost.
      const taken = Option.getOrThrow(yield* leases.claimSlice(id, lease("c", 7_000)))
      expect(taken.slice).toBe(a.slice)
      expect(yield* leases.renewLeases(lease("a", 8_000))).toEqual([])
      expect(yield* leases.renewLeases(lease("c", 8_000))).toEqual([{ batchId: id, slice: a.slice }])
      expect(yield* leases.liveSlices(id, 8_000)).toBe(2)
      yield* leases.releaseLeases({ owner: "b" })
      expect(yield* leases.liveSlices(id, 8_000)).toBe(1)
      expect(yield* leases.claimable(8_000, 10)).toContain(id)
      // Left out when the node asking drives it already: the page then shows newer batches.
      expect(yield* leases.claimable(8_000, 10, [id])).not.toContain(id)
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("a lapsed slice is another node's slice whose lease ran out: found for the batches asked, and claimed alone", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const id = yield* runningBatch(30, 10)
      const other = yield* runningBatch(10, 10)
      expect(Option.getOrThrow(yield* leases.claimSlice(id, lease("a", 1_000, 5_000))).slice).toBe(0)
      expect(Option.getOrThrow(yield* leases.claimSlice(id, lease("b", 1_000))).slice).toBe(1)
      expect(yield* leases.lapsedSlices(lease("b", 3_000), [id, other])).toEqual([]) // a's lease still runs
      expect(yield* leases.lapsedSlices(lease("b", 7_000), [id, other])).toEqual([id])
      expect(yield* leases.lapsedSlices(lease("a", 7_000), [id])).toEqual([]) // its own: the renewal tells it
      expect(yield* leases.lapsedSlices(lease("b", 7_000), [])).toEqual([])
      // Only the lapsed slice, not the free one (2) no node has started.
      expect(Option.getOrThrow(yield* leases.claimSlice(id, lease("b", 7_000), true)).slice).toBe(0)
      expect(yield* leases.claimSlice(id, lease("c", 7_000), true)).toEqual(Option.none())
      expect(yield* leases.lapsedSlices(lease("c", 7_000), [id])).toEqual([])
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("a node reading a batch takes a dead node's lapsed slice first, and says so (PostgreSQL: several nodes run batches)", () => {
    const said: Array<string> = []
    return Effect.gen(function*() {
      const leases = yield* WorkLeases
      const id = yield* runningBatch(30, 10)
      // A live node holds the first slice, the second is free, and one that died holds the third (its lease long
      // over: the test clock reads 0).
      expect(Option.getOrThrow(yield* leases.claimSlice(id, lease("other", 0, 60_000))).slice).toBe(0)
      expect(Option.getOrThrow(yield* leases.claimSlice(id, lease("gone", 0, 60_000))).slice).toBe(1)
      expect(Option.getOrThrow(yield* leases.claimSlice(id, { owner: "dead", now: -20_000, until: -19_000 })).slice).toBe(2)
      yield* leases.releaseLeases({ owner: "gone" })
      const rows = yield* makePendingRows(id, new LocalWork())
      if (backend === "postgres") {
        expect(Option.getOrThrow(yield* rows.next).line).toBe(21)
        expect(said.filter((line) => line.includes("took up"))).toEqual([`Batch ${id}: took up lines 21–30, whose node's lease ran out`])
      } else {
        // One process runs SQLite's batches, and its restart frees every lease: no other node's lapses, none is
        // looked for (one statement a claim), and a slice held so is taken as a free one after the others.
        expect(Option.getOrThrow(yield* rows.next).line).toBe(11)
        expect(said.filter((line) => line.includes("took up"))).toEqual([])
      }
    }).pipe(
      Effect.scoped,
      Effect.provide(storeFor(backend)),
      Effect.provide(AppConfig.layerWith({ nodeId: "live" })),
      Effect.provide(Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => void said.push(String(message)))))
    )
  })

  it.effect("the batch lease has one holder until it expires or is released", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const id = yield* runningBatch(5, 5)
      expect(yield* leases.claimBatch(id, lease("a", 1_000, 1_000))).toBe(true)
      expect(yield* leases.claimBatch(id, lease("b", 1_500))).toBe(false)
      expect(yield* leases.claimBatch(id, lease("a", 1_500, 1_000))).toBe(true) // its own: renewed to 2,500
      expect(yield* leases.claimBatch(id, lease("b", 3_000))).toBe(true) // a's ran out at 2,500
      yield* leases.releaseLeases({ owner: "b", batchId: id })
      // Only from the statuses asked for: a validation's claim of a batch another node had just started running
      // held its lease as long as it ran (every cancel refused, as if it expired).
      expect(yield* leases.claimBatch(id, lease("c", 3_000), ["validating"])).toBe(false)
      expect(yield* leases.claimBatch(id, lease("c", 3_000), ["validating", "in_progress"])).toBe(true)
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("the last slices completed at once move the batch to finalizing exactly once", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch(40, 10)
      const moved = yield* Effect.all([0, 1, 2, 3].map((slice) => store.completeSlice(id, slice)), { concurrency: "unbounded" })
      expect(moved.filter(Boolean)).toHaveLength(1)
      expect((yield* store.get(id, "all")).batch.status).toBe("finalizing")
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("two nodes storing the same request's outcome: the first is kept and counted once", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch(3, 3)
      const [first, second] = yield* Effect.all([
        store.recordOutcomes(id, [ok(1, "from a"), ok(2, "from a")]),
        store.recordOutcomes(id, [ok(2, "from b"), ok(3, "from b")])
      ], { concurrency: "unbounded" })
      // Each says which it stored: every line once between them.
      expect([...first, ...second].sort()).toEqual([1, 2, 3])
      const { batch } = yield* store.get(id, "all")
      expect(batch.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      expect(batch.usage.total_tokens).toBe(9)
      const lines = yield* storedLines(store, id, "succeeded")
      expect(lines.map((l) => l.custom_id)).toEqual(["c1", "c2", "c3"])
      expect(yield* store.recordOutcomes(id, [ok(1, "late")])).toEqual(new Set())
      expect((yield* storedLines(store, id, "succeeded", 1))[0].response.body).toEqual({ text: "from a" })
    }).pipe(Effect.provide(storeFor(backend))))

  it.live("a late outcome write meeting a finishing that fails the pending requests under its lease: no deadlock, each line once", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const store = yield* BatchStore
      const id = yield* runningBatch(3, 3)
      expect(Option.isSome(yield* store.transition(id, "cancel"))).toBe(true)
      expect(yield* leases.claimBatch(id, lease("finisher"))).toBe(true)
      // A stalled node's answer for line 2 arrives while the finisher holds the batch (PostgreSQL: its row locked)
      // and before the finisher stores the pending requests' errors. Its insert once took line 2, then waited for the
      // batch row to count it, while the finisher waited for line 2: PostgreSQL aborted one as a deadlock.
      const late = yield* Effect.fork(Effect.zipRight(Effect.sleep("100 millis"), store.recordOutcomes(id, [ok(2, "late")])))
      const failed = yield* leases.whileHolding(id, "finisher", "cancelling", Effect.zipRight(
        Effect.sleep("400 millis"),
        store.failPending(id, "batch_cancelled", "not completed")
      ))
      const stored = yield* Fiber.join(late)
      // Either order is right (SQLite runs one write at a time); each line is stored and counted once.
      expect(Option.getOrThrow(failed) + stored.size).toBe(3)
      const { batch } = yield* store.get(id, "all")
      expect(batch.request_counts).toEqual({ total: 3, completed: stored.size, failed: 3 - stored.size })
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("a page of pending requests stops once its bodies hold its bytes (the first whatever its size), and says more follow", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = BatchId.make(`batch_${Math.random().toString(16).slice(2)}`)
      yield* store.create(newChatBatch(id, FileId.make("file-x")))
      // Bodies of 1,000 bytes (é is two in UTF-8: bytes are counted, not characters), and one of 5,000 at line 4.
      const body = (bytes: number) => JSON.stringify({ p: "é".repeat((bytes - 8) / 2) })
      yield* store.insertRequests(id, requestRows(10).map((r) => ({ ...r, body: body(r.line === 4 ? 5_000 : 1_000) })))
      expect([Buffer.byteLength(body(1_000)), body(1_000).length]).toEqual([1_000, 504])
      expect(yield* store.startRunning(id, { model: "m", total: 10 }, [{ firstLine: 1, lastLine: 10 }])).toBe(true)
      const page = (after: number, limit: { rows: number; bytes: number }) =>
        Effect.map(store.pendingRequests(id, after, 10, limit), ({ more, rows }) => ({ lines: rows.map((r) => r.line), more }))
      expect(yield* page(0, { rows: 100, bytes: 2_500 })).toEqual({ lines: [1, 2, 3], more: true })
      expect(yield* page(3, { rows: 100, bytes: 2_500 })).toEqual({ lines: [4], more: true }) // larger than a page
      expect(yield* page(4, { rows: 100, bytes: 2_500 })).toEqual({ lines: [5, 6, 7], more: true })
      expect(yield* page(7, { rows: 100, bytes: 2_500 })).toEqual({ lines: [8, 9, 10], more: true })
      expect(yield* page(10, { rows: 100, bytes: 2_500 })).toEqual({ lines: [], more: false })
      expect(yield* page(4, { rows: 2, bytes: 1e6 })).toEqual({ lines: [5, 6], more: true })
      expect(yield* page(4, { rows: 100, bytes: 1e6 })).toEqual({ lines: [5, 6, 7, 8, 9, 10], more: false })
      // Lines with an outcome are left out, and count for nothing.
      yield* store.recordOutcomes(id, [ok(5), ok(6)])
      expect(yield* page(4, { rows: 100, bytes: 2_500 })).toEqual({ lines: [7, 8, 9], more: true })
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("a group larger than one INSERT statement is stored whole", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch(150, 150)
      const outcomes = Array.from({ length: 150 }, (_, i) => ok(150 - i))
      expect((yield* store.recordOutcomes(id, outcomes)).size).toBe(150)
      expect((yield* store.get(id, "all")).batch.request_counts).toEqual({ total: 150, completed: 150, failed: 0 })
      const lines = yield* storedLines(store, id, "succeeded")
      expect(lines.map((l) => l.custom_id)).toEqual(Array.from({ length: 150 }, (_, i) => `c${i + 1}`))
      expect(yield* store.pendingRequests(id, 0, 150, { rows: 1000, bytes: 1e6 })).toEqual({ rows: [], more: false })
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("counts and usage: a 2xx answer completes, a non-2xx answer or an error fails and adds no usage", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch(5, 5)
      // The usage a refusal reports (none, from a real upstream) must not count either.
      const refused: RequestOutcome = { ...(ok(2) as Extract<RequestOutcome, { _tag: "Response" }>), statusCode: 400 }
      const lost: RequestOutcome = { _tag: "Error", line: 3, customId: "c3", resultId: BatchRequestId.make("r3"), code: "upstream_timeout", message: "slow" }
      expect(yield* store.recordOutcomes(id, [ok(1), refused, lost])).toEqual(new Set([1, 2, 3]))
      expect(yield* store.failPending(id, "batch_expired", "too late")).toBe(2)
      const { batch } = yield* store.get(id, "all")
      expect(batch.request_counts).toEqual({ total: 5, completed: 1, failed: 4 })
      expect(batch.usage).toMatchObject({ input_tokens: 1, output_tokens: 2, total_tokens: 3 })
      const failed = yield* storedLines(store, id, "failed")
      expect(failed.map((l) => [l.custom_id, l.response?.status_code ?? null, l.error?.code ?? null])).toEqual([
        ["c2", 400, null],
        ["c3", null, "upstream_timeout"],
        ["c4", null, "batch_expired"],
        ["c5", null, "batch_expired"]
      ])
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("output and error lines: exact OpenAI format, any custom_id escaped, pages in line order", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch(4, 4)
      const odd = "quote \" backslash \\ tab \t newline \n ünïcødé 😀"
      const answer: RequestOutcome = { ...(ok(1) as Extract<RequestOutcome, { _tag: "Response" }>), customId: odd, body: `{"a":[1,{"b":null}]}` }
      const error: RequestOutcome = { _tag: "Error", line: 2, customId: "c2", resultId: BatchRequestId.make("r2"), code: "upstream_timeout", message: `said "no"\n` }
      yield* store.recordOutcomes(id, [answer, error, ok(3), ok(4)])
      const text = (page: ResultLines) => new TextDecoder().decode(page.bytes)
      const page = yield* store.resultLines(id, "succeeded", 0, 2)
      expect(text(page)).toBe(
        `{"id":"r1","custom_id":${JSON.stringify(odd)},"response":{"status_code":200,"request_id":"req_1","body":{"a":[1,{"b":null}]}},"error":null}\n` +
          `{"id":"r3","custom_id":"c3","response":{"status_code":200,"request_id":"req_3","body":{"text":"ok 3"}},"error":null}\n`
      )
      expect([page.count, page.lastLine]).toEqual([2, 3])
      expect(text(yield* store.resultLines(id, "succeeded", page.lastLine, 2))).toContain(`"custom_id":"c4"`)
      const empty = yield* store.resultLines(id, "succeeded", 4, 2)
      expect([empty.bytes.length, empty.count, empty.lastLine]).toEqual([0, 0, 0])
      expect(text(yield* store.resultLines(id, "failed", 0, 10))).toBe(
        `{"id":"r2","custom_id":"c2","response":null,"error":{"code":"upstream_timeout","message":${JSON.stringify(`said "no"\n`)}}}\n`
      )
    }).pipe(Effect.provide(storeFor(backend))))

  it.effect("one group naming a line twice stores and counts it once (its first outcome)", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch(3, 3)
      expect(yield* store.recordOutcomes(id, [ok(2, "first"), ok(1), ok(2, "second"), ok(3)])).toEqual(new Set([1, 2, 3]))
      const { batch } = yield* store.get(id, "all")
      expect(batch.request_counts).toEqual({ total: 3, completed: 3, failed: 0 })
      expect(batch.usage.total_tokens).toBe(9)
      const lines = yield* storedLines(store, id, "succeeded")
      expect(lines.map((l) => [l.custom_id, l.response.body.text])).toEqual([["c1", "ok 1"], ["c2", "first"], ["c3", "ok 3"]])
    }).pipe(Effect.provide(storeFor(backend))))
})

/** The stores on a fresh SQLite database; the heartbeat reads the node's id and lease time from the configuration. */
const pickUpStores = Layer.merge(BatchStoreLive, WorkLeasesLive).pipe(
  Layer.provide(SqlLive),
  Layer.provideMerge(configFor()),
  Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite")))
)

describe("the heartbeat's pick-up", () => {
  it.effect("finds a new batch behind more than a page (100) of batches the node drives already, waiting for a permit", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const driven: Array<BatchId> = []
      for (let i = 0; i < 101; i++) {
        const id = BatchId.make(`batch_driven_${String(i).padStart(3, "0")}`)
        yield* store.create(newChatBatch(id, FileId.make("file-x")))
        driven.push(id)
      }
      const newer = BatchId.make("batch_newer")
      yield* store.create(newChatBatch(newer, FileId.make("file-x")))
      const pickedUp: Array<BatchId> = []
      yield* beat(new LocalWork(), {
        restart: () => Effect.void,
        pickUp: (id) => Effect.sync(() => void pickedUp.push(id)),
        driving: () => driven,
        crowded: () => [],
        databaseAnswers: Effect.void
      })
      expect(pickedUp).toEqual([newer])
    }).pipe(Effect.provide(pickUpStores)))

  it.effect("leaves out the validating batches of a crowded project, but for those past their expiry", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const make = (id: string, project: string, expiresAfterSeconds = 86400) =>
        store.create({ ...newChatBatch(BatchId.make(id), FileId.make("file-x")), project, expiresAfterSeconds })
      yield* make("batch_flood_1", "flood")
      yield* make("batch_flood_2", "flood")
      yield* make("batch_flood_expired", "flood", 0)
      yield* make("batch_other", "other")
      const pickedUp: Array<BatchId> = []
      yield* beat(new LocalWork(), {
        restart: () => Effect.void,
        pickUp: (id) => Effect.sync(() => void pickedUp.push(id)),
        driving: () => [],
        crowded: () => ["flood"],
        databaseAnswers: Effect.void
      })
      expect(pickedUp).toEqual(["batch_flood_expired", "batch_other"])
    }).pipe(Effect.provide(pickUpStores)))
})
