/**
 * The `webhook_deliveries` table (migration 0009): the outbox of batch events and the record of their attempts.
 *
 * - `makeOutbox`: the event row of a batch's final move, written by `BatchStore`'s one move function inside the
 *   move's own transaction, so that a final status and its event are committed together or not at all;
 * - claims: a node takes due rows for itself until a time (epoch ms), as `WorkLeases` does with work: Postgres
 *   skips rows another node is claiming (`FOR UPDATE SKIP LOCKED`), SQLite runs one write at a time; a claim whose time
 *   passed (its node died mid-attempt) is free again, and a restarted node frees its own at once;
 * - `settle`: a turn's result, written only while the claim is still the node's own;
 * - `list`: what `GET /v1/webhook_deliveries` shows, newest first, one project's or all (the server's webhook URL
 *   to operators only);
 * - `removeSettled`: the sweep of delivered and failed rows past their keeping time.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { Clock, Data, Effect, Option, Schema } from "effect"
import { type Batch, terminalStatuses } from "../domain/Batches.js"
import { eventId } from "../domain/Ids.js"
import type { Visibility } from "../domain/Projects.js"
import { DeliveryStatus, WebhookDelivery } from "../domain/Webhooks.js"
import { makeBatchSql, SqlInt } from "../batches/sql.js"
import { visibleTo } from "../storage/Sql.js"
import { eventBody, eventTypes, shownUrl } from "./signing.js"
import type { WebhookTarget, WebhookTargetsShape } from "./WebhookTargets.js"

export class UnknownDeliveryCursor extends Data.TaggedError("UnknownDeliveryCursor")<{ readonly after: string }> {}

/**
 * The outbox: for a batch that just made its final move at `at` (unix s, the time the move stamped; inside that
 * move's transaction), the event row, when its project has a webhook; nothing otherwise.
 */
export const makeOutbox = (sql: SqlClient.SqlClient, targets: WebhookTargetsShape) =>
(batch: Batch, project: string, at: number): Effect.Effect<void, SqlError> =>
  Effect.gen(function*() {
    const status = batch.status
    if (!terminalStatuses.includes(status)) return
    const target = yield* targets.targetOf(project)
    if (Option.isNone(target)) return
    const type = eventTypes[status as keyof typeof eventTypes]
    const id = eventId()
    yield* sql`INSERT INTO webhook_deliveries ${
      sql.insert({
        id,
        type,
        batch_id: batch.id,
        project,
        url: target.value.url,
        target: target.value.kind,
        body: eventBody({ id, type, createdAt: at, batchId: batch.id }),
        created_at: at,
        next_attempt_ms: yield* Clock.currentTimeMillis
      })
    }`
  })

/** A row a node claimed for an attempt. */
export interface ClaimedDelivery {
  readonly id: string
  readonly type: string
  readonly batchId: string
  readonly project: string
  /** The event as sent on every attempt (the signature covers it). */
  readonly body: string
  /** Attempts made before this one (turns that sent the event). */
  readonly attempts: number
  /** Turns before this one, sent or not (nothing is sent while no webhook is configured): the backoff's exponent. */
  readonly turns: number
  /** Unix seconds: the event's time, from which `WEBHOOK_RETRY_FOR` runs. */
  readonly createdAt: number
  /** The last turn's result, kept when the delivery is given up without a turn of its own. */
  readonly lastStatusCode: number | null
  readonly lastError: string | null
}

/** A node's claim: `owner` until `until` (epoch ms), taken at `now`. */
export interface DeliveryClaim {
  readonly owner: string
  readonly now: number
  readonly until: number
}

/** What a turn at a claimed delivery came to, as stored. */
export interface Settlement {
  readonly status: DeliveryStatus
  /** Where the attempt went; null when nothing was sent (no webhook configured, or given up before sending). */
  readonly sentTo: Pick<WebhookTarget, "url" | "kind"> | null
  readonly statusCode: number | null
  readonly error: string | null
  /** While `pending`: when the next attempt is due (epoch ms). */
  readonly nextAttemptMs: number | null
  /** Once `delivered`: when (unix s). */
  readonly deliveredAt: number | null
}

const ClaimedRow = Schema.Struct({
  id: Schema.String,
  type: Schema.String,
  batch_id: Schema.String,
  project: Schema.String,
  body: Schema.String,
  attempts: SqlInt,
  turns: SqlInt,
  created_at: SqlInt,
  last_status_code: Schema.NullOr(SqlInt),
  last_error: Schema.NullOr(Schema.String)
})

const DeliveryRow = Schema.Struct({
  id: Schema.String,
  type: Schema.String,
  batch_id: Schema.String,
  url: Schema.String,
  target: Schema.Literal("server", "project"),
  status: DeliveryStatus,
  attempts: SqlInt,
  last_status_code: Schema.NullOr(SqlInt),
  last_error: Schema.NullOr(Schema.String),
  created_at: SqlInt,
  next_attempt_ms: Schema.NullOr(SqlInt),
  delivered_at: Schema.NullOr(SqlInt)
})

/**
 * A failure of the server's webhook as a project's key sees it: its status, its timeout or its absence (the server's
 * own words), not the receiver's answer nor the connection's error (the operator's receiver may say what it should
 * not: a stack trace, a host name).
 */
const projectSees = (error: string | null) =>
  error === null || error.startsWith("no answer within ") || error.startsWith("no webhook is configured")
    ? error
    : /^HTTP \d+/.exec(error)?.[0] ?? "connection failed"

/**
 * A row as `GET /v1/webhook_deliveries` shows it; the server's webhook URL (the operator's), and what its receiver
 * answered, to `operator` only.
 */
const deliveryOf = (row: typeof DeliveryRow.Type, operator: boolean) =>
  new WebhookDelivery({
    id: row.id,
    object: "webhook_delivery",
    type: row.type,
    batch_id: row.batch_id,
    url: row.target === "server" && !operator ? null : shownUrl(row.url),
    target: row.target,
    status: row.status,
    attempts: row.attempts,
    last_status_code: row.last_status_code,
    last_error: row.target === "server" && !operator ? projectSees(row.last_error) : row.last_error,
    created_at: row.created_at,
    next_attempt_at: row.status === "pending" && row.next_attempt_ms !== null ? Math.ceil(row.next_attempt_ms / 1000) : null,
    delivered_at: row.delivered_at
  })

/** What a settled turn writes (a turn that sent nothing counts no attempt and keeps the URL). */
const settledColumns = (settlement: Settlement): Record<string, unknown> => ({
  status: settlement.status,
  ...(settlement.sentTo === null ? {} : { url: settlement.sentTo.url, target: settlement.sentTo.kind }),
  last_status_code: settlement.statusCode,
  last_error: settlement.error,
  next_attempt_ms: settlement.nextAttemptMs,
  delivered_at: settlement.deliveredAt
})

export const makeDeliveries = (sql: SqlClient.SqlClient) => {
  const dialect = makeBatchSql(sql)
  const decodeClaimed = Schema.decodeUnknown(Schema.Array(ClaimedRow))
  const decodeDeliveries = Schema.decodeUnknown(Schema.Array(DeliveryRow))

  /**
   * Up to `limit` pending rows due at `claim.now`, of projects other than `excluding`, and claimed by nobody (or by a
   * claim that ran out), now `claim`'s.
   */
  const claimDue = (claim: DeliveryClaim, limit: number, excluding: ReadonlyArray<string> = []) =>
    sql`
      UPDATE webhook_deliveries SET claimed_by = ${claim.owner}, claimed_until = ${claim.until}
      WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE status = 'pending' AND next_attempt_ms <= ${claim.now}
          AND (claimed_until IS NULL OR claimed_until < ${claim.now})
          AND ${excluding.length === 0 ? sql`1 = 1` : sql`NOT ${sql.in("project", excluding)}`}
        ORDER BY next_attempt_ms LIMIT ${limit} ${dialect.skipLocked}
      ) RETURNING id, type, batch_id, project, body, attempts, turns, created_at, last_status_code, last_error`.pipe(
      Effect.flatMap(decodeClaimed),
      Effect.map((rows) =>
        rows.map((r): ClaimedDelivery => ({
          id: r.id,
          type: r.type,
          batchId: r.batch_id,
          project: r.project,
          body: r.body,
          attempts: r.attempts,
          turns: r.turns,
          createdAt: r.created_at,
          lastStatusCode: r.last_status_code,
          lastError: r.last_error
        }))
      ),
      Effect.orDie
    )

  /** Frees rows `claim` took and will not attempt (a project's beyond its share), for any node's next round. */
  const release = (ids: ReadonlyArray<string>, claim: DeliveryClaim) =>
    ids.length === 0 ? Effect.void : sql`
      UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL
      WHERE ${sql.in("id", ids)} AND claimed_by = ${claim.owner} AND claimed_until = ${claim.until}`.pipe(Effect.asVoid, Effect.orDie)

  /** Stores a turn's result and frees the row, if `claim` still holds it (false when another node took it over). */
  const settle = (id: string, claim: DeliveryClaim, settlement: Settlement) =>
    sql`
      UPDATE webhook_deliveries SET attempts = attempts + ${settlement.sentTo === null ? 0 : 1}, turns = turns + 1,
        ${sql.update({ ...settledColumns(settlement), claimed_by: null, claimed_until: null })}
      WHERE id = ${id} AND claimed_by = ${claim.owner} AND claimed_until = ${claim.until} RETURNING id`.pipe(
      Effect.map((rows) => rows.length > 0),
      Effect.orDie
    )

  /**
   * Frees the claims a previous run of node `owner` held (with SQLite, every claim: only one node on the file runs
   * batches and delivers their events; API-only nodes beside it hold none).
   */
  const releaseAfterRestart = (owner: string) => {
    const freed = dialect.leasesFreedOnRestart(owner)
    const whose = freed.owner === undefined ? sql`claimed_by IS NOT NULL` : sql`claimed_by = ${freed.owner}`
    return sql`UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL WHERE ${whose}`.pipe(Effect.orDie)
  }

  /** The deliveries `visibility` sees, newest first, after the event `after` (one it does not see is unknown). */
  const list = (query: { readonly visibility: Visibility; readonly after?: string | undefined; readonly limit: number }) =>
    Effect.gen(function*() {
      let where = visibleTo(sql, query.visibility)
      if (query.after !== undefined) {
        const cursor = yield* Effect.orDie(sql<{ seq: number | string }>`
          SELECT seq FROM webhook_deliveries WHERE id = ${query.after} AND ${where}`)
        if (cursor.length === 0) return yield* new UnknownDeliveryCursor({ after: query.after })
        where = sql`${where} AND seq < ${Number(cursor[0]!.seq)}`
      }
      const rows = yield* Effect.orDie(Effect.flatMap(
        sql`SELECT * FROM webhook_deliveries WHERE ${where} ORDER BY seq DESC LIMIT ${query.limit + 1}`,
        decodeDeliveries
      ))
      const operator = query.visibility === "all"
      return { data: rows.slice(0, query.limit).map((row) => deliveryOf(row, operator)), hasMore: rows.length > query.limit }
    })

  /** Deletes the delivered and failed rows of events older than `before` (unix s); pending ones stay. */
  const removeSettled = (before: number) =>
    sql`DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < ${before}`.pipe(Effect.asVoid, Effect.orDie)

  return { claimDue, release, settle, releaseAfterRestart, list, removeSettled }
}
