/**
 * Completing an upload (`Uploads.complete`): the claim, the assembly (`uploadAssembly.ts`) run in a fiber of the
 * service's scope that the request only waits for, and what a complete that could not claim the upload gets.
 *
 * A claim is the upload's move to `completing` by this node (`completing_owner`) until `completing_until` (epoch
 * ms), which the node renews every `HEARTBEAT_INTERVAL` by `LEASE_TTL` while the assembly runs (`renewClaims`). A
 * claim left by a node that died lapses, and the next complete, on any node, takes the upload over; only the
 * claim's holder marks the upload completed or gives it back, pending. A node never takes over its own run; one
 * whose claim another node took (it stalled past its lease) stops its assembly at the next renewal, and an assembly
 * that fails before (that node discarded the parts) ends as taken over all the same.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { Fragment } from "@effect/sql/Statement"
import { Cause, Clock, Deferred, Duration, Effect, Exit, type Scope } from "effect"
import { AppConfig } from "../Config.js"
import type { UploadId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import type { Upload } from "../domain/Uploads.js"
import { nowSeconds } from "../storage/Sql.js"
import { inBackground } from "../Scheduler.js"
import { FileStore } from "./FileStore.js"
import { CompletionTakenOver, makeAssembly, type PartsMismatch, partIdsDigest } from "./uploadAssembly.js"
import { claimLapsed, claimLapsedSql, shownStatus, toUpload, UploadClosed, type UploadNotFound, type UploadRow } from "./uploadRows.js"

/** How often a complete waiting for another node's assembly of the same parts looks at the upload again. */
const COMPLETION_POLL = Duration.millis(500)

/** What completing needs of the uploads' rows (`Uploads.ts`). */
export interface UploadRowAccess {
  /** The columns of an `UploadRow`, for a `RETURNING`. */
  readonly columns: Fragment
  /** The rows a caller with `visibility` may see. */
  readonly visible: (visibility: Visibility) => Fragment
  readonly read: (id: UploadId, visibility: Visibility) => Effect.Effect<UploadRow, UploadNotFound>
  /** Deletes the parts of an upload, rows then bytes. */
  readonly discardParts: (id: UploadId) => Effect.Effect<void>
}

export const makeCompletion = ({ columns, discardParts, read, visible }: UploadRowAccess) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const files = yield* FileStore
    const { nodeId, leaseTtl } = yield* AppConfig
    const assembly = yield* makeAssembly
    const scope: Scope.Scope = yield* Effect.scope

    /**
     * Completions running on this node, by upload, each in a fiber of the service's scope (a client hanging up stops
     * none): its outcome, and what tells its assembly that the claim is lost (`renewClaims`).
     */
    const running = new Map<UploadId, {
      readonly outcome: Deferred.Deferred<Upload, PartsMismatch | CompletionTakenOver>
      readonly lost: Deferred.Deferred<void>
    }>()
    /** A claim taken at `nowMs` holds until then, and as long again from each renewal (`renewClaims`). */
    const claimUntil = (nowMs: number) => nowMs + Duration.toMillis(leaseTtl)

    /** The parts of a completed upload, removed; a failure leaves them for the sweep. */
    const discardCompletedParts = (id: UploadId) =>
      discardParts(id).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning(`Parts of completed upload ${id} left for the sweep`, cause))
      )

    /** Starts the assembly of an upload this node just claimed; its outcome goes to every complete that waits for it. */
    const startAssembly = (row: UploadRow, partIds: ReadonlyArray<string>, md5: string | undefined, now: number) =>
      Effect.gen(function*() {
        const outcome = yield* Deferred.make<Upload, PartsMismatch | CompletionTakenOver>()
        const lost = yield* Deferred.make<void>()
        const entry = { outcome, lost }
        running.set(row.id, entry)
        // Its last step (the file and the upload's move, together) is not cut short, and a renewal sees the claim
        // lost only once that step has committed: a signal then may end the race as taken over though this node
        // completed the upload, and the completes waiting read the completed upload from its row (`awaitOutcome`).
        const takenOver = Effect.zipRight(Deferred.await(lost), Effect.fail(new CompletionTakenOver({ id: row.id })))
        yield* Effect.raceFirst(assembly(row, partIds, md5), takenOver).pipe(
          Effect.interruptible, // forked from the claim's uninterruptible region: the node stopping still stops it
          Effect.exit,
          // A failure, or the node stopping, gives the upload back, pending, to complete again (unless its claim
          // lapsed and another node took it over: then it is that node's). A failure once the claim is gone (that
          // node may have discarded the parts read here, before a renewal stopped this assembly) is taken over: the
          // completes waiting read the outcome from the row (`awaitOutcome`).
          Effect.flatMap((exit) =>
            Exit.isSuccess(exit) ? exit : sql`UPDATE uploads SET status = 'pending', completing_owner = NULL,
              completing_until = NULL WHERE id = ${row.id} AND status = 'completing' AND completing_owner = ${nodeId}
              RETURNING id`.pipe(
              Effect.orDie,
              Effect.catchAllCause((cause) => Effect.failCause(Cause.sequential(exit.cause, cause))),
              Effect.flatMap((held) =>
                held.length === 0 && !Cause.isInterruptedOnly(exit.cause)
                  ? Effect.zipRight(
                    Effect.logDebug(`Upload ${row.id}'s assembly failed after its claim was taken over`, exit.cause),
                    Effect.fail(new CompletionTakenOver({ id: row.id }))
                  )
                  : exit)
            )),
          // The upload is completed whatever happens now: parts left by a failure here go with the sweep.
          Effect.tap(() => discardCompletedParts(row.id)),
          Effect.map((file) => toUpload({ ...row, status: "completed", file_id: file.id }, now, file)),
          // Out of `running` before its outcome is known: a complete that sees it still there waits for it.
          Effect.onExit((exit) =>
            Effect.zipRight(Effect.sync(() => running.get(row.id) === entry && running.delete(row.id)), Deferred.done(outcome, exit))),
          inBackground,
          Effect.forkIn(scope)
        )
        return outcome
      })

    /**
     * A complete that could not claim the upload: the same part ids as the complete that claimed it wait for its
     * outcome, or get the completed upload (a client's retry); anything else is refused. A claim that lapsed (its
     * node died) is taken over, as if the upload were pending.
     */
    const awaitCompletion = (id: UploadId, visibility: Visibility, partIds: ReadonlyArray<string>, md5: string | undefined) =>
      Effect.gen(function*() {
        const row = yield* read(id, visibility)
        const now = yield* nowSeconds
        const status = shownStatus(row, now)
        const same = row.part_ids_digest === partIdsDigest(partIds)
        // This node's own run: waited for, never taken over (its claim lapses only if this node stalls).
        const local = running.get(id)
        if (local !== undefined) {
          return yield* (same ? awaitOutcome(local.outcome, id, visibility, partIds, md5) : new UploadClosed({ id, status: "completing" }))
        }
        if (status === "pending") return yield* complete(id, visibility, partIds, md5) // given back a moment ago
        if (status === "completed" && same) {
          // Its parts may still be there: a renewal that came as the assembly committed ended it as taken over
          // (without removing them), or the node that completed it stopped before it could.
          yield* discardCompletedParts(id)
          const file = yield* files.get(row.file_id!, visibility).pipe(Effect.orElseSucceed(() => null))
          return toUpload(row, now, file)
        }
        // Left by a node that died (and not expired since: `shownStatus`): taken over below, whatever parts it named.
        const lapsed = status === "completing" && claimLapsed(row, yield* Clock.currentTimeMillis)
        if (status !== "completing" || !(same || lapsed)) return yield* new UploadClosed({ id, status })
        // Being completed by another node (or by this one, a moment before it registers), or left by one that died:
        // the row tells the outcome, or the claim is taken over.
        return yield* Effect.zipRight(Effect.sleep(COMPLETION_POLL), complete(id, visibility, partIds, md5))
      })

    /** The outcome of this node's assembly; if another node took the claim over meanwhile, that node's. */
    const awaitOutcome = (
      outcome: Deferred.Deferred<Upload, PartsMismatch | CompletionTakenOver>,
      id: UploadId,
      visibility: Visibility,
      partIds: ReadonlyArray<string>,
      md5: string | undefined
    ): Effect.Effect<Upload, UploadNotFound | UploadClosed | PartsMismatch> =>
      Deferred.await(outcome).pipe(
        Effect.catchTag("CompletionTakenOver", () => awaitCompletion(id, visibility, partIds, md5))
      )

    const complete = (
      id: UploadId,
      visibility: Visibility,
      partIds: ReadonlyArray<string>,
      md5: string | undefined
    ): Effect.Effect<Upload, UploadNotFound | UploadClosed | PartsMismatch> =>
      Effect.gen(function*() {
        const nowMs = yield* Clock.currentTimeMillis
        const now = Math.floor(nowMs / 1000)
        // Claimed and started together: a client gone at that moment leaves no claim without its assembly. Not while
        // this node runs a complete of it (whose claim may have lapsed if the node stalled): that one is waited for.
        const started = running.has(id) ? undefined : yield* Effect.uninterruptible(Effect.gen(function*() {
          const claimed = yield* sql<UploadRow>`
            UPDATE uploads SET status = 'completing', completing_owner = ${nodeId}, completing_until = ${claimUntil(nowMs)},
              part_ids_digest = ${partIdsDigest(partIds)}
            WHERE id = ${id} AND expires_at > ${now} AND ${visible(visibility)} AND (status = 'pending' OR ${claimLapsedSql(sql, nowMs)})
            RETURNING ${columns}`.pipe(Effect.orDie)
          return claimed.length === 0 ? undefined : yield* startAssembly(claimed[0]!, partIds, md5, now)
        }))
        return yield* (started === undefined
          ? awaitCompletion(id, visibility, partIds, md5)
          : awaitOutcome(started, id, visibility, partIds, md5))
      }).pipe(Effect.withSpan("Uploads.complete", { attributes: { id } }))

    /**
     * Completions this node was running when it stopped are given back; another node's are its own (on SQLite too:
     * an API-only node beside the one that runs batches completes uploads), and lapse if it died.
     */
    const releaseOwnClaims = sql`UPDATE uploads SET status = 'pending', completing_owner = NULL, completing_until = NULL
      WHERE status = 'completing' AND completing_owner = ${nodeId}`.pipe(Effect.orDie)

    /**
     * Extends the claims of the completions this node is running, and stops the assemblies of those it no longer
     * holds (taken over, or done a moment ago: then the assembly has already returned, and the signal is not heard).
     */
    const renewClaims = Effect.suspend(() => {
      const entries = [...running]
      if (entries.length === 0) return Effect.void
      return Effect.flatMap(Clock.currentTimeMillis, (nowMs) =>
        Effect.flatMap(
          sql<{ id: string }>`UPDATE uploads SET completing_until = ${claimUntil(nowMs)}
            WHERE ${sql.in("id", entries.map(([id]) => id))} AND status = 'completing' AND completing_owner = ${nodeId}
            RETURNING id`,
          (renewed) => {
            const held = new Set(renewed.map((row) => row.id))
            return Effect.forEach(entries, ([id, { lost }]) => held.has(id) ? Effect.void : Deferred.succeed(lost, undefined), {
              discard: true
            })
          }
        ))
    }).pipe(Effect.asVoid)

    return { complete, releaseOwnClaims, renewClaims }
  })
