/**
 * The running phase of a batch on this node: the pending requests of every slice it can claim
 * (`pendingRows.ts`), sent through `maxConcurrentRequestsPerBatch` workers — a sliding window: each worker takes
 * the next row as soon as its previous one is answered; a request waiting between attempts gives its place to a
 * new worker (`windowSlots.ts`) — with outcomes stored in groups (`outcomeWriter.ts`).
 *
 * A worker holds at most one outcome not yet stored, so a crash makes at most two requests per worker run again
 * (one in flight, one answered). An interruption (cancel, expiry, a lost slice, the upstream going down) aborts the calls in flight; then, as the run's scope closes, the
 * outcome writer stores every outcome already received, and the pending-row source releases the slices left
 * unfinished for any node to resume (resources close in the reverse order of their making, and the writer is made
 * from the source).
 */
import { Effect, FiberSet, Option } from "effect"
import { AppConfig } from "../Config.js"
import { AnswerHold, currentAnswerHold } from "../inference/answerMemory.js"
import { type AttemptsUsed, type HandBack, Inference, type UpstreamFailure, type UpstreamResponse } from "../inference/Inference.js"
import { Metrics } from "../observability/Metrics.js"
import { type BatchRecord, BatchStore, type RequestOutcome, type RequestRow } from "./BatchStore.js"
import { childrenEndFirst } from "./childrenEndFirst.js"
import type { LocalWork } from "./heartbeat.js"
import { makeOutcomeWriter } from "./outcomeWriter.js"
import { makePendingRows, type TurnEnd } from "./pendingRows.js"
import { usageOf, zeroUsage } from "./usage.js"
import type { RequestSlots } from "./requestSlots.js"
import { unserved } from "./unservedModel.js"
import { type Place, WindowSlots } from "./windowSlots.js"
import { WorkLeases } from "./WorkLeases.js"

const responseOutcome = (row: RequestRow, res: UpstreamResponse): RequestOutcome => ({
  _tag: "Response",
  line: row.line,
  customId: row.customId,
  resultId: row.resultId,
  statusCode: res.status,
  body: res.text,
  requestId: res.requestId,
  usage: res.status >= 200 && res.status < 300 ? usageOf(res.json) : zeroUsage
})

/** A worker: its place in the window, the length of the request it sends, how that request waits between attempts. */
interface Worker extends Place {
  size: number
  readonly backingOff: <A, E>(wait: Effect.Effect<A, E>, overloaded: boolean) => Effect.Effect<A, E>
}

/** Failures retried before they fail their line: it says how many times (a timeout's line read as one slow call). */
const retriedCodes = new Set(["upstream_timeout", "upstream_unreachable"])

/** The error line's message of a request that failed with `e` after `attempts` attempts. */
export const failureMessage = (e: UpstreamFailure, attempts: number): string =>
  attempts > 1 && retriedCodes.has(e.code) ? `${e.message} Tried ${attempts} times.` : e.message

const errorOutcome = (row: RequestRow, e: UpstreamFailure, attempts: number): RequestOutcome => ({
  _tag: "Error",
  line: row.line,
  customId: row.customId,
  resultId: row.resultId,
  code: e.code,
  message: failureMessage(e, attempts)
})

export interface Running {
  /**
   * Runs this node's share of the batch's requests, or only up to where `turnEnd` ends it (another project waits
   * for its permit), handing back then the requests that still wait for their upstream (`handBack`: a backoff, a
   * permit at the upstream); whether a slice was claimed at all. `drained` runs once no row is left to send and no
   * request waits to try again (calls out are yet to be answered): the run's permit can go to the next batch.
   */
  readonly run: (record: BatchRecord, turnEnd?: TurnEnd, handBack?: HandBack, drained?: Effect.Effect<void>) => Effect.Effect<boolean>
}

/** `slots`: the node's request slots, shared by every run (`requestSlots.ts`). */
export const makeRunning = (local: LocalWork, slots: RequestSlots) =>
  Effect.gen(function*() {
    const inference = yield* Inference
    const config = yield* AppConfig
    const metrics = yield* Metrics
    const context = yield* Effect.context<BatchStore | WorkLeases | AppConfig>()
    const window = config.maxConcurrentRequestsPerBatch

    const run = (record: BatchRecord, turnEnd?: TurnEnd, handBack?: HandBack, drained: Effect.Effect<void> = Effect.void) =>
      Effect.gen(function*() {
        const { batch } = record
        const store = yield* BatchStore
        const rows = yield* makePendingRows(batch.id, local, turnEnd)
        // The attempts of the requests sent and not answered for good, by line. Those left when the run ends (handed
        // back, or the run interrupted: its upstream went down) are kept with their rows before the slices are
        // released (finalizers run in reverse order), so that whichever node sends them next counts on.
        const unanswered = new Map<number, AttemptsUsed>()
        yield* Effect.addFinalizer(() =>
          store.keepAttempts(batch.id, new Map([...unanswered].filter(([, used]) => used.used > 0))).pipe(
            Effect.catchAllCause((cause) => Effect.logWarning("could not keep the attempts of unanswered requests", cause))
          )
        )
        // Outcomes are counted once stored, those this node stored only (a group whose write failed is sent again,
        // and counted then; a line another node answered first, after a takeover, is that node's), each with a plain
        // call: thousands of requests run a second.
        const tally = metrics.requests(batch.endpoint, batch.model, inference.upstreamName?.(batch.model, record.project) ?? "unknown")
        // The answer memory each request's answer holds (`inference/answerMemory.ts`) is given back once the answer
        // is stored; what a run's end leaves held (a call interrupted as it was answered), when the run ends.
        const holds = new Set<AnswerHold>()
        const heldBy = new Map<RequestOutcome, AnswerHold>()
        yield* Effect.addFinalizer(() => Effect.sync(() => holds.forEach((hold) => hold.release())))
        const stored = (written: ReadonlyArray<RequestOutcome>, storedLines: ReadonlySet<number>) =>
          Effect.suspend(() => {
            const uncounted = new Set(storedLines) // each line once, as stored
            for (const outcome of written) {
              if (uncounted.delete(outcome.line)) {
                if (outcome._tag === "Response") tally.answered(outcome.statusCode, outcome.usage)
                else tally.noResponse()
              }
              const hold = heldBy.get(outcome)
              if (hold !== undefined) {
                hold.release()
                heldBy.delete(outcome)
                holds.delete(hold)
              }
            }
            return rows.stored(written)
          })
        const outcomes = yield* makeOutcomeWriter(batch.id, { window, afterWrite: stored })
        const options = {
          deadline: batch.expires_at * 1000,
          model: batch.model,
          project: record.project,
          batch: batch.id,
          modelUnchecked: record.modelUnchecked
        }
        // A worker takes a row, sends it, queues its outcome, waits until its previous outcome is stored (by then,
        // one upstream call later, it nearly always is) and starts over: the store stays off the requests' path,
        // and a crash loses at most two outcomes per worker. A recursive effect in tail position (the fiber's stack
        // does not grow); thousands of requests run a second, so the loop is kept to a few steps: a row of the
        // page in hand is taken synchronously, an outcome queued when it arrives.
        //
        // Each worker's calls reserve their large answers in the worker's own hold (`currentAnswerHold`, set once for
        // the worker: set per request, it copied the fiber's references twice, ~9 % of what a run allocated); an
        // answer's reservation moves out of it to the outcome (`takeOver`), held until the outcome is stored.
        const next = (outcome: RequestOutcome, previous: Effect.Effect<void>, hold: AnswerHold, worker: Worker) => {
          const stored = outcomes.queueNow(outcome)
          return Effect.zipRight(previous, Effect.suspend(() => work(stored, hold, worker)))
        }
        const send = (row: RequestRow, previous: Effect.Effect<void>, hold: AnswerHold, worker: Worker) => {
          const used: AttemptsUsed = { used: row.attempts?.used ?? 0 }
          if (row.attempts?.retryAt !== undefined) used.retryAt = row.attempts.retryAt
          unanswered.set(row.line, used)
          const answered = (outcome: RequestOutcome) => {
            unanswered.delete(row.line)
            if (hold.holding()) {
              const kept = hold.takeOver()
              holds.add(kept)
              heldBy.set(outcome, kept)
            }
            return next(outcome, previous, hold, worker)
          }
          worker.size = row.body.length
          const sendOptions = { ...options, attempts: used, handBack, backingOff: worker.backingOff }
          return Effect.matchEffect(inference.send(batch.endpoint, row.body, sendOptions), {
            onSuccess: (res) => answered(responseOutcome(row, res)),
            onFailure: (e) => {
              hold.release() // an answer refused (not JSON…): not kept
              if (e._tag === "UpstreamFailure") return answered(errorOutcome(row, e, used.used))
              // Handed back (at the turn's end, or its model served by no upstream any more): no outcome, the line
              // stays pending (its slice is left unfinished).
              return previous
            }
          })
        }
        // Drained once no row is left and no request waits between attempts: only calls out are left, whose end the
        // permit need not wait for. A request waiting to try again keeps the permit (and its turn's hand-back): given
        // back before, its retry waited for a slot behind the next batch's whole run.
        let noRowLeft = false
        let waiting = 0
        let drainedYet = false
        const drainedIfSo = Effect.suspend(() => {
          if (!noRowLeft || waiting > 0 || drainedYet) return Effect.void
          drainedYet = true
          return drained
        })
        const work = (previous: Effect.Effect<void>, hold: AnswerHold, worker: Worker): Effect.Effect<void> => {
          if (places.yieldsPlace(worker)) return previous // a request back from its backoff takes its place
          const row = rows.takeNow()
          if (row !== undefined) return send(row, previous, hold, worker)
          return Effect.flatMap(rows.next, (next) => {
            if (Option.isSome(next)) return send(next.value, previous, hold, worker)
            noRowLeft = true
            return Effect.zipRight(drainedIfSo, previous)
          })
        }
        // The window's places (`windowSlots.ts`): a request waiting between attempts gives its place to a new worker.
        // The `window` first workers are the run's own fibers, as before there were spares (forked into the set
        // too, a 503 storm failed a line of `test/UpstreamOutage.test.ts`); those started later are in `spares`.
        const places = new WindowSlots(window, slots)
        // Every worker has ended by then; a place left held (a spare whose fiber never started) gives its slot back.
        yield* Effect.addFinalizer(() => Effect.sync(() => places.close()))
        const spares = yield* FiberSet.make<void, never>()
        /**
         * A worker's whole run; its fiber's, for the `window` first (`first`: it takes its place), or one forked into
         * `spares` (given the place of a request that waits between attempts).
         */
        const workerRun = (first: boolean): Effect.Effect<void> => Effect.suspend(() => {
          const hold = new AnswerHold()
          holds.add(hold)
          const worker: Worker = {
            holding: !first,
            size: 0,
            backingOff: (wait, overloaded) =>
              Effect.suspend(() => {
                const size = worker.size
                waiting++
                const counted = <A, E>(effect: Effect.Effect<A, E>) =>
                  Effect.ensuring(effect, Effect.suspend(() => (waiting--, drainedIfSo)))
                // After a refusal (429, 503: the upstream overloaded, or down) the place is kept: more requests would
                // only add to the overload, and an outage's trials would see the retries first. Once the run is
                // drained too: its slot would go to the next batch, and the retry wait for one behind it.
                if (overloaded || drainedYet) return counted(wait)
                const given = places.leave(worker, size)
                if (given === "kept") return counted(wait)
                const rest = Effect.matchCauseEffect(wait, {
                  onSuccess: (a) => Effect.as(places.rejoin(worker, size), a),
                  onFailure: (cause) =>
                    Effect.zipRight(Effect.sync(() => places.abandon(size)), Effect.failCause(cause))
                })
                return counted(given === "spare" ? Effect.zipRight(FiberSet.run(spares, workerRun(false)), rest) : rest)
              })
          }
          // Its place passed on, its hold given back as it ends: a long run's spares would pile their holds up.
          const working = Effect.suspend(() => work(Effect.void, hold, worker))
          const running = Effect.ensuring(
            first ? Effect.zipRight(places.enter(worker), working) : working,
            Effect.sync(() => {
              places.end(worker)
              hold.release()
              holds.delete(hold)
            })
          )
          return Effect.locally(running, currentAnswerHold, hold)
        })
        // The run ends when its last worker does, or fails with the first that fails (a storage fault). An outage of
        // the upstream ends it at once (its calls wait anyway): the batch gives its permit back to batches whose
        // upstreams answer, and waits for the upstream in the permit queue (`fairPermits.ts`).
        const firstEnded = Effect.all(Array.from({ length: window }, () => workerRun(true)), { concurrency: "unbounded", discard: true })
        // A model found served by none, unchecked at validation, is no outage: its lines fail (`sending.ts`).
        const upstreamLost = unserved(inference, record) ? Effect.never : inference.unreachable(batch.model, record.project)
        // Its workers end before the scope's finalizers give the slices back (`childrenEndFirst.ts`).
        yield* Effect.raceFirst(Effect.zipRight(firstEnded, FiberSet.awaitEmpty(spares)), FiberSet.join(spares)).pipe(
          Effect.raceFirst(upstreamLost),
          childrenEndFirst
        )
        return rows.claimed()
      }).pipe(
        Effect.scoped,
        Effect.provide(context),
        Effect.withSpan("BatchRunner.run", { attributes: { "batch.id": record.batch.id } })
      )

    return { run } satisfies Running
  })
