/**
 * `WorkLeases`: which node works on what, in SQL. A node claims a batch-wide lease to validate or finish a batch,
 * and slices of a running batch's requests to run them; a lease lasts until a time it renews (the heartbeat), and
 * a lease whose time has passed is free for any node to take over. Claims never wait on each other: Postgres skips
 * rows another node is claiming (`FOR UPDATE SKIP LOCKED`); SQLite runs one write at a time. Times are epoch milliseconds.
 *
 * The slices themselves are created and marked done by `BatchStore` (`startRunning`, `completeSlice`), as parts of
 * the status moves they belong to.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqlSchema from "@effect/sql/SqlSchema"
import { Clock, Context, Data, Duration, Effect, Layer, Option, Schema } from "effect"
import type { AppConfigShape } from "../Config.js"
import { activeStatuses, type BatchStatus } from "../domain/Batches.js"
import { BatchId } from "../domain/Ids.js"
import type { SliceBounds } from "./BatchStore.js"
import { makeBatchSql, SqlInt } from "./sql.js"

/**
 * The batch is no longer as the node found it under its batch-wide lease: another node took it over (after a
 * stall), or it moved on (a cancel).
 */
export class LeaseLost extends Data.TaggedError("LeaseLost") {}

/** A node's claim: held by `owner` until `until`, taken at `now` (a lease with `until < now` is free). */
export interface Lease {
  readonly owner: string
  readonly now: number
  readonly until: number
}

/** A slice of a running batch's requests, numbered from 0 in line order. */
export interface Slice extends SliceBounds {
  readonly slice: number
}

export interface HeldSlice {
  readonly batchId: BatchId
  readonly slice: number
}

export interface WorkLeasesShape {
  /**
   * Takes the batch-wide lease of an unfinished batch (one of `statuses`: the ones the work that takes it starts
   * from) if it is free, expired or already `owner`'s. A validation's claim of a batch another node had just started
   * running held its lease as long as it ran, and every cancel was refused as if the batch were expiring.
   */
  readonly claimBatch: (id: BatchId, lease: Lease, statuses?: ReadonlyArray<BatchStatus>) => Effect.Effect<boolean>
  /**
   * Runs `write` in one transaction with the check that `owner` still holds batch `id`'s batch-wide lease and that
   * the batch is `status` (its row locked meanwhile on PostgreSQL: no other node takes it in between); none,
   * writing nothing, when not. A node that stalled past its lease (a pause, a partition) and woke up had deleted
   * the request rows of a batch another node was running by then.
   */
  readonly whileHolding: <A, R>(id: BatchId, owner: string, status: BatchStatus, write: Effect.Effect<A, never, R>) => Effect.Effect<Option.Option<A>, never, R>
  /** `whileHolding`, failing with `LeaseLost` when not: a phase's writes stop at the first one refused. */
  readonly holding: <A, R>(id: BatchId, owner: string, status: BatchStatus, write: Effect.Effect<A, never, R>) => Effect.Effect<A, LeaseLost, R>
  /**
   * Takes the first open slice of a running batch whose lease is free or expired; none once the batch left
   * `in_progress` (a cancel's: the slices another node gave back as it stopped were taken up and their requests
   * sent again).
   */
  readonly claimSlice: (id: BatchId, lease: Lease, lapsedOnly?: boolean) => Effect.Effect<Option.Option<Slice>>
  /**
   * The next slice to read: one whose other node's lease ran out first (`tookOver`: its work taken over), else a
   * free one; a free one only where no other node's lease can run out (SQLite), without a second statement.
   */
  readonly claimNextSlice: (id: BatchId, lease: Lease) => Effect.Effect<Option.Option<Slice & { readonly tookOver: boolean }>>
  /**
   * Of `batches`, those with a slice whose holder's lease ran out (a node that died mid-slice): a node that runs
   * the batch takes it up at once (`pendingRows.ts`) rather than after the slice it is on.
   */
  readonly lapsedSlices: (lease: Lease, batches: ReadonlyArray<BatchId>) => Effect.Effect<ReadonlyArray<BatchId>>
  /** How many slices of the batch some node holds a live lease on. */
  readonly liveSlices: (id: BatchId, now: number) => Effect.Effect<number>
  /** Extends every lease `owner` holds; returns the slices still held (a lease taken over is missing). */
  readonly renewLeases: (lease: Lease) => Effect.Effect<ReadonlyArray<HeldSlice>>
  /** Gives up the leases of `owner` (every owner when none), on one batch or all. */
  readonly releaseLeases: (filter: { readonly owner?: string; readonly batchId?: BatchId }) => Effect.Effect<void>
  /**
   * Frees the leases a previous run of node `owner` held. With SQLite every lease is freed: only one process on the
   * file runs batches (`storage/SqliteRunnerLock.ts` sees to it; API-only nodes beside it hold no lease), so whatever
   * node held one before is gone.
   */
  readonly releaseAfterRestart: (owner: string) => Effect.Effect<void>
  /**
   * Unfinished batches with work a node could claim at `now`, oldest first: a free batch-wide lease on one that
   * validates, finishes or is past its expiry, or a free slice of one that runs; those in `except` left out (the
   * node's own, waiting for a permit: they would fill the page, hiding newer batches); `filter.crowded`: the
   * unexpired validating batches of these projects left out too (the node drives as many of theirs as it will:
   * `validatingCap.ts`); `filter.project`: that project's batches only.
   */
  readonly claimable: (
    now: number,
    limit: number,
    except?: ReadonlyArray<BatchId>,
    filter?: { readonly crowded?: ReadonlyArray<string>; readonly project?: string }
  ) => Effect.Effect<ReadonlyArray<BatchId>>
}

export class WorkLeases extends Context.Tag("WorkLeases")<WorkLeases, WorkLeasesShape>() {}

/** A lease for this node (`nodeId`), from now for `leaseTtl`. */
export const nodeLease = (config: Pick<AppConfigShape, "nodeId" | "leaseTtl">): Effect.Effect<Lease> =>
  Effect.map(Clock.currentTimeMillis, (now) => ({ owner: config.nodeId, now, until: now + Duration.toMillis(config.leaseTtl) }))

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const dialect = makeBatchSql(sql)
  const free = (lease: Lease) => sql`(lease_until IS NULL OR lease_until < ${lease.now})`

  const claimBatch = (id: BatchId, lease: Lease, statuses: ReadonlyArray<BatchStatus> = activeStatuses) =>
    sql`
      UPDATE batches SET lease_owner = ${lease.owner}, lease_until = ${lease.until}
      WHERE id = (
        SELECT id FROM batches WHERE id = ${id} AND ${sql.in("status", statuses)}
          AND (lease_owner = ${lease.owner} OR ${free(lease)})
        ${dialect.skipLocked}
      ) RETURNING id`.pipe(
      Effect.map((rows) => rows.length > 0),
      Effect.orDie,
      Effect.withSpan("WorkLeases.claimBatch", { attributes: { id } })
    )

  const whileHolding = <A, R>(id: BatchId, owner: string, status: BatchStatus, write: Effect.Effect<A, never, R>) =>
    Effect.gen(function*() {
      yield* dialect.lockBatchRow(id)
      const held = yield* sql`SELECT id FROM batches WHERE id = ${id} AND lease_owner = ${owner} AND status = ${status}`
      return held.length === 0 ? Option.none<A>() : Option.some(yield* write)
    }).pipe(sql.withTransaction, Effect.orDie)

  const holding = <A, R>(id: BatchId, owner: string, status: BatchStatus, write: Effect.Effect<A, never, R>) =>
    Effect.flatMap(whileHolding(id, owner, status, write), Option.match({ onNone: () => Effect.fail(new LeaseLost()), onSome: Effect.succeed }))

  /**
   * A slice another node held and did not renew (`owner` is cleared only when a slice is released or done); this
   * node's own, lapsed in a stall, is its renewal's to tell (`LocalWork.lostBatches`), not one to read again.
   */
  const lapsed = (lease: Lease) => sql`(owner IS NOT NULL AND owner <> ${lease.owner} AND lease_until < ${lease.now})`

  const claimed = SqlSchema.findOne({
    Request: Schema.Struct({ id: BatchId, owner: Schema.String, now: Schema.Number, until: Schema.Number, lapsedOnly: Schema.Boolean }),
    Result: Schema.Struct({ slice: SqlInt, first_line: SqlInt, last_line: SqlInt }),
    execute: ({ id, lapsedOnly, ...lease }) =>
      sql`
        UPDATE batch_slices SET owner = ${lease.owner}, lease_until = ${lease.until}
        WHERE batch_id = ${id} AND EXISTS (SELECT 1 FROM batches WHERE id = ${id} AND status = 'in_progress') AND slice = (
          SELECT slice FROM batch_slices WHERE batch_id = ${id} AND state = 'open'
            AND ${lapsedOnly ? lapsed(lease) : free(lease)}
          ORDER BY slice LIMIT 1 ${dialect.skipLocked}
        ) RETURNING slice, first_line, last_line`
  })

  const claimSlice = (id: BatchId, lease: Lease, lapsedOnly = false) =>
    claimed({ id, ...lease, lapsedOnly }).pipe(
      Effect.map(Option.map((r): Slice => ({ slice: r.slice, firstLine: r.first_line, lastLine: r.last_line }))),
      Effect.orDie,
      Effect.withSpan("WorkLeases.claimSlice", { attributes: { id } })
    )

  const claimNextSlice = (id: BatchId, lease: Lease) => {
    const free = Effect.map(claimSlice(id, lease), Option.map((slice) => ({ ...slice, tookOver: false })))
    if (!dialect.othersLeasesLapse) return free
    return Effect.flatMap(claimSlice(id, lease, true), (lapsed) =>
      Option.isSome(lapsed) ? Effect.succeed(Option.some({ ...lapsed.value, tookOver: true })) : free)
  }

  const live = SqlSchema.single({
    Request: Schema.Struct({ id: BatchId, now: Schema.Number }),
    Result: Schema.Struct({ live: SqlInt }),
    execute: ({ id, now }) =>
      sql`SELECT COUNT(*) AS live FROM batch_slices WHERE batch_id = ${id} AND owner IS NOT NULL AND lease_until >= ${now}`
  })

  const liveSlices = (id: BatchId, now: number) => live({ id, now }).pipe(Effect.map((r) => r.live), Effect.orDie)

  const renewed = SqlSchema.findAll({
    Request: Schema.Struct({ owner: Schema.String, until: Schema.Number }),
    Result: Schema.Struct({ batch_id: BatchId, slice: SqlInt }),
    execute: ({ owner, until }) =>
      sql`UPDATE batch_slices SET lease_until = ${until} WHERE owner = ${owner} AND state = 'open'
        RETURNING batch_id, slice`
  })

  const renewLeases = (lease: Lease) =>
    Effect.gen(function*() {
      yield* sql`UPDATE batches SET lease_until = ${lease.until} WHERE lease_owner = ${lease.owner}`
      const held = yield* renewed(lease)
      return held.map((r): HeldSlice => ({ batchId: r.batch_id, slice: r.slice }))
    }).pipe(sql.withTransaction, Effect.orDie)

  const releaseLeases = (filter: { readonly owner?: string; readonly batchId?: BatchId }) =>
    Effect.gen(function*() {
      const batches = [sql`lease_owner IS NOT NULL`]
      const slices = [sql`owner IS NOT NULL`]
      if (filter.owner !== undefined) {
        batches.push(sql`lease_owner = ${filter.owner}`)
        slices.push(sql`owner = ${filter.owner}`)
      }
      if (filter.batchId !== undefined) {
        batches.push(sql`id = ${filter.batchId}`)
        slices.push(sql`batch_id = ${filter.batchId}`)
      }
      yield* sql`UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE ${sql.and(batches)}`
      yield* sql`UPDATE batch_slices SET owner = NULL, lease_until = NULL WHERE ${sql.and(slices)}`
    }).pipe(sql.withTransaction, Effect.orDie)

  const releaseAfterRestart = (owner: string) => releaseLeases(dialect.leasesFreedOnRestart(owner))

  const claimable = (
    now: number,
    limit: number,
    except: ReadonlyArray<BatchId> = [],
    { crowded = [], project }: { readonly crowded?: ReadonlyArray<string>; readonly project?: string } = {}
  ) =>
    sql<{ id: BatchId }>`
      SELECT id FROM batches b WHERE ${sql.in("status", activeStatuses)}
      AND ${except.length === 0 ? sql`1 = 1` : sql`NOT ${sql.in("id", except)}`}
      AND ${crowded.length === 0 ? sql`1 = 1` : sql`NOT (status = 'validating' AND expires_at * 1000 > ${now} AND ${sql.in("project", crowded)})`}
      AND ${project === undefined ? sql`1 = 1` : sql`project = ${project}`} AND (
        ((status <> 'in_progress' OR expires_at * 1000 <= ${now}) AND (lease_until IS NULL OR lease_until < ${now}))
        OR (status = 'in_progress' AND EXISTS (
          SELECT 1 FROM batch_slices s WHERE s.batch_id = b.id AND s.state = 'open'
            AND (s.lease_until IS NULL OR s.lease_until < ${now})))
      ) ORDER BY seq LIMIT ${limit}`.pipe(
      Effect.map((rows) => rows.map((r) => r.id)),
      Effect.orDie
    )

  const lapsedSlices = (lease: Lease, batches: ReadonlyArray<BatchId>) =>
    batches.length === 0 ? Effect.succeed([]) : sql<{ batch_id: BatchId }>`
      SELECT DISTINCT batch_id FROM batch_slices
      WHERE ${sql.in("batch_id", batches)} AND state = 'open' AND ${lapsed(lease)}`.pipe(
      Effect.map((rows) => rows.map((r) => r.batch_id)),
      Effect.orDie
    )

  return WorkLeases.of({
    claimBatch,
    whileHolding,
    holding,
    claimSlice,
    claimNextSlice,
    lapsedSlices,
    liveSlices,
    renewLeases,
    releaseLeases,
    releaseAfterRestart,
    claimable
  })
})

export const WorkLeasesLive: Layer.Layer<WorkLeases, never, SqlClient.SqlClient> = Layer.effect(WorkLeases, make)
