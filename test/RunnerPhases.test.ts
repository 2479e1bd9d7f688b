/**
 * The runner's parts on their own: the outcome writer (groups, waiting, a failed write, what a closing scope still
 * writes) over a scripted store; the pending-row source over the real stores (SQLite and PostgreSQL); and the
 * heartbeat's record of this node's work.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, FiberRef, Layer, Logger, LogLevel, Option, Scope, TestClock } from "effect"
import { BatchStore, BatchStoreLive, type BatchStoreShape, type RequestOutcome } from "../src/batches/BatchStore.js"
import { beat, LocalWork, startHeartbeat } from "../src/batches/heartbeat.js"
import { GROUP_CHARS, makeOutcomeWriter } from "../src/batches/outcomeWriter.js"
import { makePendingRows } from "../src/batches/pendingRows.js"
import { RequestSlots } from "../src/batches/requestSlots.js"
import { failureMessage, makeRunning } from "../src/batches/running.js"
import { WorkLeases, WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { BatchId, BatchRequestId } from "../src/domain/Ids.js"
import { AnswerMemory, currentAnswerHold } from "../src/inference/answerMemory.js"
import { UpstreamFailure } from "../src/inference/answers.js"
import { type AttemptsUsed, HandedBack, InferenceScripted } from "../src/inference/Inference.js"
import { SqlLive } from "../src/storage/Sql.js"
import { responseOutcome, validatingBatch } from "./support/Batches.js"
import { manualHandBack } from "./support/HandBack.js"
import { backends, configFor, TestDatabase, TestDataDir } from "./support/TestApp.js"

const outcome = (line: number): RequestOutcome => ({
  _tag: "Error",
  line,
  customId: `c${line}`,
  resultId: BatchRequestId.make(`r${line}`),
  code: "upstream_timeout",
  message: "slow"
})

/** A 200 whose answer is `chars` long. */
const answer = (line: number, chars: number): RequestOutcome => responseOutcome(line, { body: "x".repeat(chars) })

/** A store whose `recordOutcomes` records each group's lines and runs `write` (by default: succeeds). */
const scriptedStore = (groups: Array<Array<number>>, write: (n: number) => Effect.Effect<void> = () => Effect.void) =>
  Layer.succeed(BatchStore, {
    recordOutcomes: (_id: BatchId, outcomes: ReadonlyArray<RequestOutcome>) =>
      Effect.suspend(() => {
        groups.push(outcomes.map((o) => o.line))
        return Effect.as(write(groups.length), new Set(outcomes.map((o) => o.line)))
      })
  } as unknown as BatchStoreShape)

describe("outcome writer", () => {
  it.live("outcomes arriving together are one write; each caller resumes once its group is stored", () =>
    Effect.gen(function*() {
      const groups: Array<Array<number>> = []
      const afterWrite: Array<Array<number>> = []
      const gate = yield* Deferred.make<void>()
      yield* Effect.gen(function*() {
        const writer = yield* makeOutcomeWriter(BatchId.make("b"), {
          window: 32,
          afterWrite: (outcomes) => Effect.sync(() => afterWrite.push(outcomes.map((o) => o.line)))
        })
        const callers = yield* Effect.forEach([1, 2, 3, 4, 5], (line) => Effect.fork(writer.queueNow(outcome(line))))
        yield* Effect.sleep("50 millis")
        expect(groups).toEqual([[1, 2, 3, 4, 5]])
        expect(yield* Effect.forEach(callers, (f) => f.poll)).toEqual(callers.map(() => Option.none())) // still waiting
        yield* Deferred.succeed(gate, undefined)
        yield* Effect.forEach(callers, Fiber.join)
        expect(afterWrite).toEqual([[1, 2, 3, 4, 5]])
      }).pipe(Effect.scoped, Effect.provide(scriptedStore(groups, () => Deferred.await(gate))))
    }))

  it.live("a failed write fails every caller of its group", () =>
    Effect.gen(function*() {
      const groups: Array<Array<number>> = []
      const exits = yield* Effect.gen(function*() {
        const writer = yield* makeOutcomeWriter(BatchId.make("b"), { window: 32, afterWrite: () => Effect.void })
        return yield* Effect.forEach([1, 2], (line) => Effect.exit(writer.queueNow(outcome(line))), { concurrency: "unbounded" })
      }).pipe(Effect.scoped, Effect.provide(scriptedStore(groups, () => Effect.dieMessage("disk I/O error"))))
      expect(groups).toEqual([[1, 2]])
      expect(exits.every(Exit.isFailure)).toBe(true)
    }))

  it.live("closing the scope finishes the group being written, then writes what is queued, callers interrupted or not", () =>
    Effect.gen(function*() {
      const groups: Array<Array<number>> = []
      const gate = yield* Deferred.make<void>()
      const scope = yield* Scope.make()
      const writer = yield* makeOutcomeWriter(BatchId.make("b"), { window: 32, afterWrite: () => Effect.void }).pipe(
        Scope.extend(scope),
        Effect.provide(scriptedStore(groups, (n) => (n === 1 ? Deferred.await(gate) : Effect.void)))
      )
      yield* Effect.fork(writer.queueNow(outcome(1)))
      yield* Effect.sleep("20 millis") // group [1] is being written, held at the gate
      const second = yield* Effect.fork(writer.queueNow(outcome(2)))
      yield* Effect.sleep("20 millis")
      yield* Fiber.interrupt(second)
      yield* Effect.fork(Effect.zipRight(Effect.sleep("50 millis"), Deferred.succeed(gate, undefined)))
      yield* Scope.close(scope, Exit.void)
      expect(groups).toEqual([[1], [2]])
    }))

  it.live("answers past GROUP_CHARS are written a statement's worth at a time, one larger than it alone; every caller resumes", () =>
    Effect.gen(function*() {
      const groups: Array<Array<number>> = []
      const third = Math.floor(GROUP_CHARS / 3)
      yield* Effect.gen(function*() {
        const writer = yield* makeOutcomeWriter(BatchId.make("b"), { window: 32, afterWrite: () => Effect.void })
        // Five answers of a third each arrive together: three a statement, then two; then one of twice the bound.
        yield* Effect.forEach([1, 2, 3, 4, 5], (line) => writer.queueNow(answer(line, third)), { concurrency: "unbounded" })
        yield* writer.queueNow(answer(6, 2 * GROUP_CHARS))
      }).pipe(Effect.scoped, Effect.provide(scriptedStore(groups)))
      expect(groups).toEqual([[1, 2, 3], [4, 5], [6]])
    }))

  it.live("a failed write of part of a group fails the rest of it too, unwritten", () =>
    Effect.gen(function*() {
      const groups: Array<Array<number>> = []
      const exits = yield* Effect.gen(function*() {
        const writer = yield* makeOutcomeWriter(BatchId.make("b"), { window: 32, afterWrite: () => Effect.void })
        const big = (line: number) => writer.queueNow(answer(line, Math.ceil(GROUP_CHARS * 0.6)))
        return yield* Effect.forEach([1, 2, 3], (line) => Effect.exit(big(line)), { concurrency: "unbounded" })
      }).pipe(Effect.scoped, Effect.provide(scriptedStore(groups, () => Effect.dieMessage("disk I/O error"))))
      expect(groups).toEqual([[1]])
      expect(exits.map(Exit.isFailure)).toEqual([true, true, true])
    }))
})

describe("LocalWork", () => {
  it.effect("counts a batch as worked on while its effect runs; a held slice missing from a renewal is lost, unless claimed while it ran", () =>
    Effect.gen(function*() {
      const local = new LocalWork()
      const [b1, b2] = [BatchId.make("b1"), BatchId.make("b2")]
      const during = yield* local.working(b1, Effect.sync(() => local.workingOn()))
      expect(during).toEqual([b1])
      expect(local.workingOn()).toEqual([])
      local.holdSlice(b1, 0)
      local.holdSlice(b1, 1)
      local.holdSlice(b2, 0)
      expect(local.lostBatches([{ batchId: b1, slice: 0 }, { batchId: b1, slice: 1 }, { batchId: b2, slice: 0 }])).toEqual([])
      expect(local.lostBatches([{ batchId: b1, slice: 0 }, { batchId: b2, slice: 0 }])).toEqual([b1])
      local.dropSlice(b1, 1) // done: no longer expected among the renewed
      expect(local.lostBatches([{ batchId: b1, slice: 0 }, { batchId: b2, slice: 0 }])).toEqual([])
      local.dropSlices(b2)
      expect(local.lostBatches([{ batchId: b1, slice: 0 }])).toEqual([])
      // A slice claimed while a renewal ran is missing from it without being lost (the renewal began before).
      const before = local.heldSlices()
      local.holdSlice(b1, 2)
      expect(local.lostBatches([{ batchId: b1, slice: 0 }], before)).toEqual([])
      expect(local.lostBatches([{ batchId: b1, slice: 0 }])).toEqual([b1])
    }))
})

const storesFor = (backend: "sqlite" | "postgres", config: Parameters<typeof configFor>[0] = {}) =>
  Layer.merge(BatchStoreLive, WorkLeasesLive).pipe(
    Layer.provide(SqlLive),
    Layer.provideMerge(configFor(config)),
    Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
  )

/** A running batch of 25 requests in slices of lines 1–10, 11–20, 21–25, of which lines 3 and 15 have outcomes. */
const runningBatch = Effect.gen(function*() {
  const store = yield* BatchStore
  const id = yield* validatingBatch(25)
  const slices = [{ firstLine: 1, lastLine: 10 }, { firstLine: 11, lastLine: 20 }, { firstLine: 21, lastLine: 25 }]
  expect(yield* store.startRunning(id, { model: "m", total: 25 }, slices)).toBe(true)
  yield* store.recordOutcomes(id, [outcome(3), outcome(15)])
  return id
})

for (const backend of backends) describe(`pending rows (${backend})`, () => {
  it.live("hands out each pending row once, slice after slice; the stored outcomes complete the slices and the batch", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch
      const rows = yield* makePendingRows(id, new LocalWork())
      const taken: Array<number> = []
      for (;;) {
        const row = rows.takeNow() ?? Option.getOrUndefined(yield* rows.next)
        if (row === undefined) break
        taken.push(row.line)
      }
      expect(taken).toEqual(Array.from({ length: 25 }, (_, i) => i + 1).filter((line) => line !== 3 && line !== 15))
      expect(rows.claimed()).toBe(true)
      const outcomes = taken.map(outcome)
      yield* store.recordOutcomes(id, outcomes.slice(0, 5)) // part of slice 0
      yield* rows.stored(outcomes.slice(0, 5))
      expect((yield* store.get(id, "all")).batch.status).toBe("in_progress")
      yield* store.recordOutcomes(id, outcomes.slice(5))
      yield* rows.stored(outcomes.slice(5))
      expect((yield* store.get(id, "all")).batch.status).toBe("finalizing")
    }).pipe(Effect.scoped, Effect.provide(storesFor(backend))))

  // A node woken after a stall sent the rows of its page in hand until its heartbeat restarted the run: a second
  // window of requests another node had taken over, sent twice.
  it.live("no row is handed out once the node's leases may have lapsed, until a renewal says they hold", () =>
    Effect.gen(function*() {
      const id = yield* runningBatch
      const local = new LocalWork()
      const rows = yield* makePendingRows(id, local)
      expect(Option.getOrThrow(yield* rows.next).line).toBe(1) // a page in hand
      expect(rows.takeNow()?.line).toBe(2)
      local.renewed(Date.now() - 1) // the last renewal's leases ended a moment ago: a stall
      expect(rows.takeNow()).toBeUndefined()
      const waiting = yield* Effect.fork(rows.next)
      yield* Effect.sleep("100 millis")
      expect(waiting.unsafePoll()).toBeNull() // held, not sent
      local.renewed(Date.now() + 10_000) // the heartbeat renewed them: still this node's
      expect(Option.getOrThrow(yield* Fiber.join(waiting)).line).toBe(4)
      expect(rows.takeNow()?.line).toBe(5)
    }).pipe(Effect.scoped, Effect.provide(storesFor(backend))))

  it.live("a slice another node let lapse (it died) is taken up at the heartbeat's word, before the rest of the slice in hand", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const leases = yield* WorkLeases
      const id = yield* runningBatch
      // Another node holds lines 1–10 for 300 ms more, then dies.
      const now = Date.now()
      expect(Option.map(yield* leases.claimSlice(id, { owner: "dead-node", now, until: now + 300 }), (s) => s.firstLine)).toEqual(Option.some(1))
      const local = new LocalWork()
      const rows = yield* makePendingRows(id, local)
      const take = Effect.suspend(() => {
        const row = rows.takeNow()
        return row !== undefined ? Effect.succeed(row.line) : Effect.map(rows.next, (r) => Option.getOrUndefined(r)?.line)
      })
      const taken: Array<number | undefined> = [yield* take, yield* take]
      expect(taken).toEqual([11, 12])
      yield* Effect.sleep("400 millis")
      yield* beat(local, { restart: () => Effect.void, pickUp: () => Effect.void, driving: () => [id], crowded: () => [], databaseAnswers: Effect.void })
      for (let line = yield* take; line !== undefined; line = yield* take) taken.push(line)
      // Lines 1–10 (3 has its outcome) before the rest of 11–20 (15 has its own), then 21–25.
      expect(taken).toEqual([11, 12, 1, 2, 4, 5, 6, 7, 8, 9, 10, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25])
      const outcomes = taken.map((line) => outcome(line!))
      yield* store.recordOutcomes(id, outcomes)
      yield* rows.stored(outcomes)
      expect((yield* store.get(id, "all")).batch.status).toBe("finalizing") // every slice completed, the one set aside too
    }).pipe(Effect.scoped, Effect.provide(storesFor(backend))))

  it.live("closing its scope releases the slices it held for any node to resume", () =>
    Effect.gen(function*() {
      const leases = yield* WorkLeases
      const id = yield* runningBatch
      yield* Effect.scoped(Effect.gen(function*() {
        const rows = yield* makePendingRows(id, new LocalWork())
        expect(Option.map(yield* rows.next, (row) => row.line)).toEqual(Option.some(1))
        expect(yield* leases.liveSlices(id, Date.now())).toBe(1)
      }))
      expect(yield* leases.liveSlices(id, Date.now())).toBe(0)
      expect(yield* leases.claimable(Date.now(), 10)).toContain(id)
    }).pipe(Effect.provide(storesFor(backend))))
})

describe("the heartbeat", () => {
  it.effect("tells the batches waiting out the database that it answers only on a beat after failed ones", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      let failing = false
      let answers = 0
      // Its beats fail while `failing` (as with the database away), and go through otherwise.
      const flaky = Layer.succeed(BatchStore, { ...store, statuses: (ids) => (failing ? Effect.die(new Error("away")) : store.statuses(ids)) })
      yield* startHeartbeat(new LocalWork(), {
        restart: () => Effect.void,
        pickUp: () => Effect.void,
        crowded: () => [],
        driving: () => [],
        databaseAnswers: Effect.sync(() => void answers++)
      }).pipe(Effect.provide(flaky))
      yield* TestClock.adjust("3 seconds") // beats that go through: a batch's own fault keeps its backoff
      expect(answers).toBe(0)
      failing = true
      yield* TestClock.adjust("2 seconds")
      expect(answers).toBe(0)
      failing = false
      yield* TestClock.adjust("1 second")
      expect(answers).toBe(1)
      yield* TestClock.adjust("3 seconds")
      expect(answers).toBe(1)
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(storesFor("sqlite"), Logger.minimumLogLevel(LogLevel.None)))))
})

/** `store`, whose writes of outcomes wait for `gate`. */
const writingAfter = (store: BatchStoreShape, gate: Deferred.Deferred<void>) =>
  Layer.succeed(BatchStore, {
    ...store,
    recordOutcomes: (batchId, outcomes) => Effect.zipRight(Deferred.await(gate), store.recordOutcomes(batchId, outcomes))
  })

/** What the scripted upstream answers. */
const okAnswer = { status: 200, text: "{}", json: {}, requestId: "req_1" }

describe("running", () => {
  it("an error line says how many times a timeout or a lost connection was tried, when more than once", () => {
    const timeout = new UpstreamFailure({ code: "upstream_timeout", message: "The upstream did not answer in full within 10m." })
    const lost = new UpstreamFailure({ code: "upstream_unreachable", message: "Upstream request failed: the connection failed." })
    const unusable = new UpstreamFailure({ code: "invalid_upstream_response", message: "The upstream answered 200 with HTML." })
    expect(failureMessage(timeout, 3)).toBe("The upstream did not answer in full within 10m. Tried 3 times.")
    expect(failureMessage(lost, 2)).toBe("Upstream request failed: the connection failed. Tried 2 times.")
    expect(failureMessage(lost, 1)).toBe("Upstream request failed: the connection failed.") // INFERENCE_MAX_ATTEMPTS=1
    expect(failureMessage(unusable, 2)).toBe("The upstream answered 200 with HTML.") // not retried: a handed-back line's count
  })

  it.live("a worker sends its next request while its outcome is stored, and holds no more than that one unstored", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch
      const gate = yield* Deferred.make<void>()
      const held = writingAfter(store, gate)
      let sent = 0
      const running = yield* makeRunning(new LocalWork(), new RequestSlots(1)).pipe(
        Effect.provide(Layer.merge(held, InferenceScripted(() => Effect.sync(() => (sent++, okAnswer)))))
      )
      const run = yield* Effect.fork(running.run(yield* store.get(id, "all")))
      yield* Effect.sleep("100 millis")
      expect(sent).toBe(2) // the first outcome is held in its write; the second request went out meanwhile, not a third
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(run)
      expect(sent).toBe(23)
      expect((yield* store.get(id, "all")).batch).toMatchObject({ status: "finalizing", request_counts: { total: 25, completed: 23, failed: 2 } })
    }).pipe(Effect.scoped, Effect.provide(storesFor("sqlite", { maxConcurrentRequestsPerBatch: 1 }))))

  it.live("each request's answer memory is held until its outcome is stored, and what an interrupted run held is given back", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* runningBatch
      const gate = yield* Deferred.make<void>()
      const held = writingAfter(store, gate)
      const memory = new AnswerMemory(1000)
      let holdless = 0
      // What the upstream client does with a large answer: reserve it for the request the calling fiber sends.
      const reserving = InferenceScripted(() =>
        Effect.map(FiberRef.get(currentAnswerHold), (hold) => {
          if (hold === undefined) holdless++
          else if (memory.reserve(10, () => {})) hold.keep(memory, 10)
          return okAnswer
        }))
      const running = yield* makeRunning(new LocalWork(), new RequestSlots(1)).pipe(Effect.provide(Layer.merge(held, reserving)))
      const run = yield* Effect.fork(running.run(yield* store.get(id, "all")))
      yield* Effect.sleep("100 millis")
      expect(memory.used).toBe(20) // the answer being stored, and the next one, queued
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(run)
      expect([memory.used, holdless]).toEqual([0, 0])

      // A run interrupted as a call was answered (its answer reserved, not yet handed over) still gives it back.
      const again = yield* validatingBatch(5)
      expect(yield* store.startRunning(again, { model: "m", total: 5 }, [{ firstLine: 1, lastLine: 5 }])).toBe(true)
      const answeredThenStuck = InferenceScripted(() =>
        Effect.flatMap(FiberRef.get(currentAnswerHold), (hold) => (memory.reserve(10, () => {}), hold!.keep(memory, 10), Effect.never)))
      const interrupted = yield* makeRunning(new LocalWork(), new RequestSlots(1)).pipe(Effect.provide(Layer.merge(held, answeredThenStuck)))
      const hung = yield* Effect.fork(interrupted.run(yield* store.get(again, "all")))
      yield* Effect.sleep("100 millis")
      expect(memory.used).toBe(10)
      yield* Fiber.interrupt(hung)
      expect(memory.used).toBe(0)
    }).pipe(Effect.scoped, Effect.provide(storesFor("sqlite", { maxConcurrentRequestsPerBatch: 1 }))))
})

for (const backend of backends) describe(`running (${backend})`, () => {
  it.live("a request handed back in its backoff keeps its attempts with its row: the next run, another node's, counts on from them", () =>
    Effect.gen(function*() {
      const store = yield* BatchStore
      const id = yield* validatingBatch(3)
      expect(yield* store.startRunning(id, { model: "m", total: 3 }, [{ firstLine: 1, lastLine: 3 }])).toBe(true)
      const { handBack, want } = manualHandBack()
      const retryAt = Date.now() + 60_000.25 // a backoff's jitter makes fractional milliseconds
      // This node's run: line 1 is refused once and handed back in its backoff; lines 2 and 3 are never sent.
      const refusedThenHandedBack = InferenceScripted(({ options }) =>
        Effect.suspend(() => {
          Object.assign(options.attempts!, { used: 1, retryAt })
          want()
          return Effect.fail(new HandedBack())
        }))
      const thisNode = yield* makeRunning(new LocalWork(), new RequestSlots(1)).pipe(Effect.provide(refusedThenHandedBack))
      yield* thisNode.run(yield* store.get(id, "all"), undefined, handBack)

      // Another node's run takes the slice up again: line 1 counts on from its first attempt, after its backoff.
      const seen: Array<AttemptsUsed> = []
      const recording = InferenceScripted(({ options }) => Effect.sync(() => (seen.push({ ...options.attempts! }), okAnswer)))
      const otherNode = yield* makeRunning(new LocalWork(), new RequestSlots(1)).pipe(Effect.provide(recording))
      yield* otherNode.run(yield* store.get(id, "all"))
      expect(seen).toEqual([{ used: 1, retryAt: Math.ceil(retryAt) }, { used: 0 }, { used: 0 }])
      expect((yield* store.get(id, "all")).batch).toMatchObject({ status: "finalizing", request_counts: { total: 3, completed: 3, failed: 0 } })
    }).pipe(Effect.scoped, Effect.provide(storesFor(backend, { maxConcurrentRequestsPerBatch: 1 }))))
})
