/**
 * `Webhooks`: the delivery of batch events, on every node that runs batches. The events themselves are written by
 * `BatchStore` in the transaction of each final move (the outbox, `deliveries.ts`); here a worker claims the rows
 * that are due (so that of several nodes exactly one makes each attempt), posts each, signed (`signing.ts`), to its
 * project's webhook (`WebhookTargets.ts`) with a time limit, and stores what came of it:
 *
 * - a 2xx answer: `delivered`;
 * - any other answer, a timeout, a connection error: another attempt after `WEBHOOK_RETRY_BASE_DELAY`, doubling
 *   with each turn (at most `WEBHOOK_RETRY_MAX_DELAY`, up to 20 % less), the last at `WEBHOOK_RETRY_FOR` after the
 *   event; after that one, `failed`. A turn without a webhook configured sends nothing but backs off the same way.
 *
 * Every attempt of an event carries the same `webhook-id` and body, and a fresh `webhook-timestamp` and signature.
 * Delivery is at least once: a node that dies after a receiver got an event but before storing it leaves the row
 * to be sent again (receivers tell repeats by `webhook-id`). Each outcome is a log line (`webhook.delivered`,
 * `webhook.retry`, `webhook.failed`; `webhook.claim_lost` when another node took the row over before the result
 * was stored) and a count (`batch_webhook_deliveries_total`). Delivered and failed rows are deleted a month after
 * their event (the file sweep's schedule).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, type ConfigError, Context, Duration, Effect, FiberSet, Layer, Option, Random, Redacted } from "effect"
import { AppConfig, runsBatches } from "../Config.js"
import { sweepEvery } from "../files/FileStore.js"
import { dispatcher } from "../inference/UpstreamHttpClient.js"
import { makeFailureRun } from "../observability/failureRuns.js"
import { Metrics } from "../observability/Metrics.js"
import { type ClaimedDelivery, type DeliveryClaim, makeDeliveries, type Settlement } from "./deliveries.js"
import { makePoster } from "./posting.js"
import { loggedUrl, signingKeys, webhookHeaders } from "./signing.js"
import { WebhookTargets } from "./WebhookTargets.js"

export interface WebhooksShape {
  /** `GET /v1/webhook_deliveries`: the deliveries `visibility` sees, newest first. */
  readonly list: ReturnType<typeof makeDeliveries>["list"]
}

export class Webhooks extends Context.Tag("Webhooks")<Webhooks, WebhooksShape>() {}

/** How the worker sends: read once when it starts. */
export interface DeliveryPolicyShape {
  /** The longest one attempt may wait for the answer's status, from connecting on. */
  readonly timeout: Duration.Duration
  /** Attempts in flight at once on a node. */
  readonly concurrency: number
}

export class DeliveryPolicy extends Context.Reference<DeliveryPolicy>()("Webhooks/DeliveryPolicy", {
  defaultValue: (): DeliveryPolicyShape => ({ timeout: Duration.seconds(15), concurrency: 16 })
}) {}

/** How long delivered and failed rows stay listed: a month of history to look into, and a table that stays bounded. */
const KEEP_SETTLED = Duration.days(30)

/**
 * The wait after a delivery's turn `turns` (0 for its first) failed: `baseMs` doubled for each turn before, at most
 * `maxMs`, times `jitter` (0.8–1). The jitter comes after the cap: before, events failing together (a receiver down
 * for an hour) all waited exactly the longest delay, and came back at once.
 */
export const retryWait = (turns: number, baseMs: number, maxMs: number, jitter: number): number =>
  Math.min(baseMs * 2 ** Math.min(turns, 40), maxMs) * jitter

/**
 * The attempts a project may have in flight on a node while other projects' events are due: a quarter of the
 * node's, so that a project whose receiver hangs leaves the rest to the others.
 */
export const projectShare = (concurrency: number): number => Math.max(1, Math.ceil(concurrency / 4))

/** `due`, in order, split into what fits each project's `share` beside its attempts `inFlight`, and the rest. */
export const withinShares = <D extends { readonly project: string }>(
  due: ReadonlyArray<D>,
  inFlight: ReadonlyMap<string, number>,
  share: number
): { readonly kept: ReadonlyArray<D>; readonly beyond: ReadonlyArray<D> } => {
  const counts = new Map(inFlight)
  const kept: Array<D> = []
  const beyond: Array<D> = []
  for (const delivery of due) {
    const count = counts.get(delivery.project) ?? 0
    if (count >= share) beyond.push(delivery)
    else {
      kept.push(delivery)
      counts.set(delivery.project, count + 1)
    }
  }
  return { kept, beyond }
}

/** A delivery's log line: `event` to select it by, the batch and event ids, the attempts made. */
const line = (delivery: ClaimedDelivery, event: string, fields: Record<string, unknown>) =>
  Effect.annotateLogs({ event, batch_id: delivery.batchId, event_id: delivery.id, type: delivery.type, ...fields })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const config = yield* AppConfig
  const targets = yield* WebhookTargets
  const metrics = yield* Metrics
  const policy = yield* DeliveryPolicy
  const deliveries = makeDeliveries(sql)
  const post = makePoster(yield* dispatcher)
  const baseDelayMs = Duration.toMillis(config.webhookRetryBaseDelay)
  const maxDelayMs = Duration.toMillis(config.webhookRetryMaxDelay)
  const retryForMs = Duration.toMillis(config.webhookRetryFor)
  // A claim outlasts the attempt it is for (the attempt's time limit) by a lease's time, for the writes around it.
  const claimMs = Duration.toMillis(policy.timeout) + Duration.toMillis(config.leaseTtl)

  /**
   * What follows a failed turn at `now`: another one after the base delay doubled for each turn before (at most the
   * longest delay; up to 20 % less; never past the deadline), or, once `WEBHOOK_RETRY_FOR` has run out since the event,
   * `failed`. Turns that sent nothing count too: without a webhook the wait still grows.
   */
  const afterFailure = (delivery: ClaimedDelivery, turn: Pick<Settlement, "sentTo" | "statusCode" | "error">, now: number) =>
    Effect.gen(function*() {
      const deadline = delivery.createdAt * 1000 + retryForMs
      const wait = retryWait(delivery.turns, baseDelayMs, maxDelayMs, yield* Random.nextRange(0.8, 1))
      return {
        ...turn,
        status: now >= deadline ? "failed" : "pending",
        nextAttemptMs: now >= deadline ? null : Math.min(now + Math.round(wait), deadline),
        deliveredAt: null
      } satisfies Settlement
    })

  /**
   * Stores a turn's `settlement` (`what` the turn did, for the log) and tells of it: a log line and a count. A claim
   * that ran out before (another node may have the row now) stores and counts nothing: a line says so.
   */
  const conclude = (delivery: ClaimedDelivery, claim: DeliveryClaim, settlement: Settlement, what: string, fields: Record<string, unknown>) =>
    Effect.gen(function*() {
      const tell = (event: string) => line(delivery, event, { status_code: settlement.statusCode, error: settlement.error, ...fields })
      if (!(yield* deliveries.settle(delivery.id, claim, settlement))) {
        return yield* Effect.logWarning(`Webhook ${delivery.type} ${what}; not stored: the claim ran out, another node may have the delivery`)
          .pipe(tell("webhook.claim_lost"))
      }
      if (settlement.status === "delivered") {
        metrics.webhookDelivery("delivered")
        return yield* Effect.logInfo(`Webhook ${delivery.type} ${what}`).pipe(tell("webhook.delivered"))
      }
      if (settlement.status === "failed") {
        metrics.webhookDelivery("failed")
        return yield* Effect.logError(`Webhook ${delivery.type} ${what}; given up: WEBHOOK_RETRY_FOR ran out`).pipe(tell("webhook.failed"))
      }
      if (settlement.sentTo !== null) metrics.webhookDelivery("retry")
      const waitMs = Math.max(0, (settlement.nextAttemptMs ?? claim.now) - (yield* Clock.currentTimeMillis))
      yield* Effect.logWarning(`Webhook ${delivery.type} ${what}; next try in ${Duration.format(Duration.millis(waitMs))}`)
        .pipe(tell("webhook.retry"), Effect.annotateLogs("next_attempt_in_ms", waitMs))
    })

  /** One turn at a claimed delivery: an attempt (none without a webhook, or past its time), its result stored while the claim holds. */
  const attempt = (delivery: ClaimedDelivery, claim: DeliveryClaim) =>
    Effect.gen(function*() {
      if (claim.now > delivery.createdAt * 1000 + retryForMs + claimMs) {
        // Past its last turn by more than a claim: that turn's result was never stored (its node died, its write failed).
        const settlement: Settlement = {
          status: "failed", sentTo: null, statusCode: delivery.lastStatusCode, error: delivery.lastError, nextAttemptMs: null, deliveredAt: null
        }
        return yield* conclude(delivery, claim, settlement, "not sent again", { attempts: delivery.attempts })
      }
      const target = yield* targets.targetOf(delivery.project)
      const keys = Option.flatMap(target, (t) => Option.fromNullable(signingKeys(Redacted.value(t.secret))))
      if (Option.isNone(target) || Option.isNone(keys)) {
        // Not given up at once: the keys file may be being edited, or another node may have the webhook.
        const error = `no webhook is configured for project ${delivery.project}`
        const settlement = yield* afterFailure(delivery, { sentTo: null, statusCode: null, error }, yield* Clock.currentTimeMillis)
        return yield* conclude(delivery, claim, settlement, `not sent (${error}, on node ${config.nodeId})`, { attempts: delivery.attempts })
      }
      const { kind, url } = target.value
      const shown = loggedUrl(url)
      yield* Effect.annotateCurrentSpan("url.full", shown)
      const timestamp = Math.floor((yield* Clock.currentTimeMillis) / 1000)
      const result = yield* post(url, webhookHeaders(keys.value, delivery.id, timestamp, delivery.body), delivery.body, policy.timeout)
      const attempts = delivery.attempts + 1
      const now = yield* Clock.currentTimeMillis
      const fields = { attempts, url: shown }
      if (result.status !== null && result.status >= 200 && result.status < 300) {
        const settlement: Settlement = {
          status: "delivered", sentTo: { url, kind }, statusCode: result.status, error: null, nextAttemptMs: null, deliveredAt: Math.floor(now / 1000)
        }
        return yield* conclude(delivery, claim, settlement, `delivered to ${shown} (attempt ${attempts}, HTTP ${result.status})`, fields)
      }
      const error = result.status === null ? result.error : `HTTP ${result.status}${result.answer === "" ? "" : `: ${result.answer}`}`
      const settlement = yield* afterFailure(delivery, { sentTo: { url, kind }, statusCode: result.status, error }, now)
      yield* conclude(delivery, claim, settlement, `to ${shown} failed (attempt ${attempts}: ${error})`, fields)
    }).pipe(Effect.withSpan("Webhooks.attempt", { attributes: { "webhook.event_id": delivery.id, "batch.id": delivery.batchId } }))

  // Attempts running on this node, in all and by project (the claim loop below is their only starter, the attempts
  // their only finishers).
  let inFlight = 0
  const inFlightOf = new Map<string, number>()
  const share = projectShare(policy.concurrency)
  const start = (running: FiberSet.FiberSet, delivery: ClaimedDelivery, claim: DeliveryClaim) => {
    inFlight++
    inFlightOf.set(delivery.project, (inFlightOf.get(delivery.project) ?? 0) + 1)
    return FiberSet.run(running, attempt(delivery, claim).pipe(
      Effect.catchAllCause((cause) => Effect.logError("Webhook attempt failed", cause)),
      Effect.ensuring(Effect.sync(() => {
        inFlight--
        const left = inFlightOf.get(delivery.project)! - 1
        if (left === 0) inFlightOf.delete(delivery.project)
        else inFlightOf.set(delivery.project, left)
      }))
    ))
  }
  // A root span of its own (it runs every heartbeat on every node): `Tracing.ts` leaves it untraced.
  const claimDue = (claim: DeliveryClaim, limit: number, excluding?: ReadonlyArray<string>) =>
    Effect.withSpan(deliveries.claimDue(claim, limit, excluding), "Webhooks.claimDue")

  /**
   * Claims what is due, up to the attempts this node has room for, and starts each in `running`; true when nothing
   * more is to be started now (the loop then waits a heartbeat). A project's attempts stay within its share while
   * others' events are due: projects at their share are left out of the claim, and a claim's rows beyond a project's
   * share are let go again (when the claim filled the room, another project's may wait past its end: the next round,
   * at once, leaves those projects out). Once every other project's due event is in hand, the room beyond a share
   * kept free for the next one goes to the rows beyond shares. A project whose receiver never answered held every
   * attempt for its time limit, round after round, and another project's event waited 73 s behind 94 of them.
   */
  const claimRound = (running: FiberSet.FiberSet) =>
    Effect.gen(function*() {
      const room = policy.concurrency - inFlight
      if (room <= 0) return true
      const now = yield* Clock.currentTimeMillis
      const claim: DeliveryClaim = { owner: config.nodeId, now, until: now + claimMs }
      const atShare = [...inFlightOf].filter(([, n]) => n >= share).map(([project]) => project)
      const due = yield* claimDue(claim, room, atShare)
      const { kept, beyond } = withinShares(due, inFlightOf, share)
      for (const delivery of kept) yield* start(running, delivery, claim)
      if (due.length === room) {
        yield* deliveries.release(beyond.map((d) => d.id), claim)
        return false
      }
      const spare = Math.max(0, room - kept.length - share)
      const extra = beyond.slice(0, spare)
      for (const delivery of extra) yield* start(running, delivery, claim)
      yield* deliveries.release(beyond.slice(extra.length).map((d) => d.id), claim)
      const left = spare - extra.length
      const more = atShare.length === 0 || left === 0 ? [] : yield* claimDue(claim, left)
      for (const delivery of more) yield* start(running, delivery, claim)
      return true
    })

  // Not on an API-only node: on SQLite, the node that runs batches frees every claim when it starts (see
  // `releaseAfterRestart`), so an API-only node beside it must hold none.
  if (!runsBatches(config)) return Webhooks.of({ list: deliveries.list })
  // A restarted node frees its own claims at once; then it looks for due events every heartbeat (at once again
  // while it finds as many as it has room for).
  yield* deliveries.releaseAfterRestart(config.nodeId)
  yield* sweepEvery(
    Effect.flatMap(Clock.currentTimeMillis, (now) => deliveries.removeSettled(Math.floor((now - Duration.toMillis(KEEP_SETTLED)) / 1000))),
    "Webhook deliveries sweep failed"
  )
  const running = yield* FiberSet.make()
  const failures = makeFailureRun("Looking for webhook deliveries")
  yield* claimRound(running).pipe(
    Effect.tap(() => failures.succeeded),
    Effect.catchAllCause((cause) => Effect.as(failures.failed(cause), true)),
    Effect.flatMap((idle) => (idle ? Effect.sleep(config.heartbeatInterval) : Effect.void)),
    Effect.forever,
    Effect.forkScoped
  )

  return Webhooks.of({ list: deliveries.list })
})

/** The delivery worker of this node, and the deliveries list (a proxy variable undici cannot use fails it). */
export const WebhooksLive: Layer.Layer<Webhooks, ConfigError.ConfigError, SqlClient.SqlClient | AppConfig> = Layer.scoped(Webhooks, make)
