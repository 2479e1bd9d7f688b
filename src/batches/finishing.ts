/**
 * Finishing a batch, on the one node that holds its batch-wide lease: once no node works on its slices any more,
 * the requests left pending get their `batch_expired` or `batch_cancelled` error, the output and error files are
 * written from the stored outcomes in line order (each only when it has lines), and the batch makes its final move
 * with the files' ids. Each write checks that the batch is still as this node found it, under its lease
 * (`WorkLeases.whileHolding`): a node that stalled past its lease wrote its files over those of the node that
 * finished the batch meanwhile, and brought back an output file deleted since.
 */
import { Duration, Effect, Option, Schedule, Stream } from "effect"
import { AppConfig } from "../Config.js"
import { type BatchId, derivedFileId } from "../domain/Ids.js"
import { FileStore } from "../files/FileStore.js"
import { echo } from "../domain/Text.js"
import * as BatchLines from "../observability/batchLines.js"
import { Inference } from "../inference/Inference.js"
import { Metrics } from "../observability/Metrics.js"
import type { BatchStatus } from "../domain/Batches.js"
import { type BatchRecord, BatchStore } from "./BatchStore.js"
import { transitions } from "./transitions.js"
import { nodeLease, WorkLeases } from "./WorkLeases.js"

/** Result rows read at a time while writing the files. */
const PAGE = 1000

/** The final moves, and the error the requests still pending get with each. */
export const pendingError = {
  complete: undefined,
  expire: {
    code: "batch_expired",
    message: "This request could not be executed before the completion window expired."
  },
  cancelDone: {
    code: "batch_cancelled",
    // Not "not executed": it may have been sent, even retried, before the cancel interrupted it.
    message: "This request was not completed before the batch was cancelled."
  }
} as const

export type FinalMove = keyof typeof pendingError

export interface Finishing {
  /**
   * Finishes the batch with `move` if this node gets its batch-wide lease (false when another node holds it):
   * waits until no node works on its slices (they stop at expiry, or on a cancel within a heartbeat; a dead node's
   * lease runs out), then writes its files and moves it.
   */
  readonly finish: (id: BatchId, move: FinalMove) => Effect.Effect<boolean>
}

export const makeFinishing = Effect.gen(function*() {
  const store = yield* BatchStore
  const leases = yield* WorkLeases
  const files = yield* FileStore
  const config = yield* AppConfig
  const inference = yield* Inference
  const metrics = yield* Metrics

  const load = (id: BatchId) => Effect.orDie(store.get(id, "all"))

  const resultStream = (id: BatchId, kind: "succeeded" | "failed"): Stream.Stream<Uint8Array> =>
    Stream.paginateEffect(0, (after: number) =>
      Effect.map(store.resultLines(id, kind, after, PAGE), (page) => [
        page.bytes,
        page.count === 0 ? Option.none() : Option.some(page.lastLine) // a page may stop early: bounded by bytes
      ]))

  /** `write`, while the batch is `status` under this node's lease; else `LeaseLost`, writing nothing. */
  const held = <A>(id: BatchId, status: BatchStatus, write: Effect.Effect<A>) => leases.holding(id, config.nodeId, status, write)

  const writeResultFile = (record: BatchRecord, status: BatchStatus, kind: "succeeded" | "failed") => {
    const id = record.batch.id
    return Effect.map(
      files.create({
        id: derivedFileId(`${id}:${kind}`),
        filename: `${id}_${kind === "succeeded" ? "output" : "error"}.jsonl`,
        purpose: "batch_output",
        project: record.project, // the batch's: its results belong to whoever may see the batch
        expiresAfterSeconds: record.outputExpiresAfterSeconds ?? undefined
      }, resultStream(id, kind), held(id, status, Effect.void)),
      (file) => file.id
    )
  }

  /**
   * Why the requests of a batch on `model` expired, when its upstream is the reason (down, or none serves the model
   * any more): said in their lines, as a sentence after OpenAI's. A batch that waited for it showed nothing else.
   */
  const upstreamTrouble = (model: string | null, project: string) =>
    Effect.gen(function*() {
      if (inference.isDown?.(model, project) !== true) return ""
      const name = inference.upstreamName?.(model, project)
      if (name === undefined) return ` No upstream served the model '${echo(String(model), 64)}'.`
      const reports = inference.upstreamsOf === undefined ? [] : yield* inference.upstreamsOf(project)
      const outage = reports.find((report) => report.name === name)?.outage
      const since = outage === undefined ? "" : ` (${outage.kind} since ${new Date(outage.since).toISOString()})`
      return ` Its upstream '${name}' was down${since}.`
    })

  /**
   * Writes the output and error files (each only when it has lines) and makes `move`; each write only while the
   * batch is as found, under this node's lease (else nothing more: the next round finds what became of it).
   */
  const writeFilesAndMove = (id: BatchId, move: FinalMove) =>
    Effect.gen(function*() {
      let record = yield* load(id)
      const { status } = record.batch
      // Moved on since the move was chosen (a cancel before this node took the lease for the expiry): its own
      // finishing writes its lines, not this one (they were `batch_expired` in a batch `cancelled`).
      if (!(transitions[move].from as ReadonlyArray<BatchStatus>).includes(status)) {
        return yield* Effect.logDebug(`Batch ${id}: not finished as ${move} here, it is ${status} now`)
      }
      const pending = pendingError[move]
      if (record.batch.in_progress_at === null) {
        // Never got past validation: there are no requests to report.
        yield* held(id, status, store.deleteRequests(id))
      } else if (pending !== undefined) {
        const { endpoint, model } = record.batch
        const why = move === "expire" ? yield* upstreamTrouble(model, record.project) : ""
        const ended = yield* held(id, status, store.failPending(id, pending.code, `${pending.message}${why}`))
        metrics.requests(endpoint, model, inference.upstreamName?.(model, record.project) ?? "unknown")
          .ended(move === "expire" ? "expired" : "cancelled", ended)
        record = yield* load(id)
      }
      const counts = record.batch.request_counts
      const outputFileId = counts.completed > 0 ? yield* writeResultFile(record, status, "succeeded") : null
      const errorFileId = counts.failed > 0 ? yield* writeResultFile(record, status, "failed") : null
      // Its own compare-and-set, under the lease: not in a transaction of `held`'s, which would count the move in the
      // metrics (`moved`) before it was committed.
      const moved = yield* store.transition(id, move, { outputFileId, errorFileId }, config.nodeId)
      if (Option.isSome(moved)) yield* BatchLines.finished(moved.value, record.project)
    }).pipe(
      Effect.catchTag("LeaseLost", () => Effect.logDebug(`Batch ${id}: not finished here, no longer as this node found it under its lease`)),
      Effect.withSpan("BatchRunner.finish", { attributes: { "batch.id": id, move } })
    )

  const finish = (id: BatchId, move: FinalMove) =>
    Effect.gen(function*() {
      if (!(yield* Effect.flatMap(nodeLease(config), (lease) => leases.claimBatch(id, lease, transitions[move].from)))) return false
      yield* Effect.flatMap(nodeLease(config), (lease) => leases.liveSlices(id, lease.now)).pipe(
        Effect.repeat({ until: (live) => live === 0, schedule: Schedule.spaced(Duration.millis(100)) })
      )
      yield* writeFilesAndMove(id, move)
      return true
    })

  return { finish } satisfies Finishing
})
