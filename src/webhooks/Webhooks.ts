/**
 * `Webhooks`: the delivery of batch events, on every node. The events themselves are written by `BatchStore` in
 * the transaction of each final move (the outbox, `deliveries.ts`); here a worker claims the rows that are due
 * (so that of several nodes exactly one makes each attempt), posts each, signed (`signing.ts`), to its project's
 * webhook (`WebhookTargets.ts`) with a time limit, and stores what came of it:
 *
 * - a 2xx answer: `delivered`;
 * - any other answer, a timeout, a connection error: another attempt after `WEBHOOK_RETRY_BASE_DELAY`, doubling
 *   with each attempt (±20 % jitter), the last at `WEBHOOK_RETRY_FOR` after the event; after that one, `failed`.
 *
 * Every attempt of an event carries the same `webhook-id` and body, and a fresh `webhook-timestamp` and signature.
 * Delivery is at least once: a node that dies after a receiver got an event but before storing it leaves the row
 * to be sent again (receivers tell repeats by `webhook-id`). Each outcome is a log line (`webhook.delivered`,
 * `webhook.retry`, `webhook.failed`) and a count (`batch_webhook_deliveries_total`).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import type * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, Context, Duration, Effect, FiberSet, Layer, Option, Random, Redacted, Stream } from "effect"
import { AppConfig } from "../Config.js"
import { dispatcher } from "../inference/UpstreamHttpClient.js"
import { clientText } from "../observability/batchLines.js"
import { Metrics } from "../observability/Metrics.js"
import { type ClaimedDelivery, type DeliveryClaim, makeDeliveries, type Settlement } from "./deliveries.js"
import { shownUrl, signingKey, webhookHeaders } from "./signing.js"
import { WebhookTargets } from "./WebhookTargets.js"

export interface WebhooksShape {
  /** `GET /v1/webhook_deliveries`: the deliveries `visibility` sees, newest first. */
  readonly list: ReturnType<typeof makeDeliveries>["list"]
}

export class Webhooks extends Context.Tag("Webhooks")<Webhooks, WebhooksShape>() {}

/** How the worker sends: read once when it starts. */
export interface DeliveryPolicyShape {
  /** The longest one attempt may take, from connecting to the answer's status and first bytes. */
  readonly timeout: Duration.Duration
  /** Attempts in flight at once on a node. */
  readonly concurrency: number
}

export class DeliveryPolicy extends Context.Reference<DeliveryPolicy>()("Webhooks/DeliveryPolicy", {
  defaultValue: (): DeliveryPolicyShape => ({ timeout: Duration.seconds(15), concurrency: 16 })
}) {}

/** Characters of a receiver's answer kept in `last_error` (it says why it refused, e.g. a bad signature). */
const ANSWER_CHARS = 200

/** What one attempt got: an answer's status (with the start of its body), or no answer. */
type AttemptResult = { readonly status: number; readonly answer: string } | { readonly status: null; readonly error: string }

/** The start of an answer's body as text, for `last_error`: the read stops after a few hundred bytes. */
const answerStart = (stream: Stream.Stream<Uint8Array, unknown>) => {
  const decoder = new TextDecoder()
  return Stream.runFoldWhile(stream, "", (text) => text.length < ANSWER_CHARS, (text, chunk) =>
    text + decoder.decode(chunk.subarray(0, ANSWER_CHARS * 4), { stream: true })).pipe(
      Effect.map((text) => clientText(text.trim(), ANSWER_CHARS)),
      Effect.orElseSucceed(() => "")
    )
}

/** Why a request got no answer, in a few words (the error's code when it has one: `ECONNREFUSED`, …). */
const noAnswer = (error: unknown): string => {
  let cause: unknown = error
  for (let depth = 0; depth < 4 && typeof cause === "object" && cause !== null; depth++) {
    const code = (cause as { code?: unknown }).code
    if (typeof code === "string") return `connection failed: ${code}`
    cause = (cause as { cause?: unknown }).cause
  }
  return `connection failed: ${clientText(String((error as { message?: unknown })?.message ?? error), ANSWER_CHARS)}`
}

/** Posts `body` to `url` with `headers`, within `timeout`: the answer's status and start, or why there was none. */
const post = (client: HttpClient.HttpClient, url: string, headers: Record<string, string>, body: string, timeout: Duration.Duration) =>
  client.execute(HttpClientRequest.post(url).pipe(
    HttpClientRequest.setHeaders(headers),
    HttpClientRequest.setHeader("user-agent", "effect-openai-batch-webhooks/1"),
    HttpClientRequest.bodyText(body, "application/json")
  )).pipe(
    Effect.flatMap((response) => Effect.map(answerStart(response.stream), (answer): AttemptResult => ({ status: response.status, answer }))),
    Effect.timeoutTo({
      duration: timeout,
      onSuccess: (result): AttemptResult => result,
      onTimeout: (): AttemptResult => ({ status: null, error: `no answer within ${Duration.format(timeout)}` })
    }),
    Effect.catchAll((error) => Effect.succeed<AttemptResult>({ status: null, error: noAnswer(error) }))
  )

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
  const client = NodeHttpClient.makeUndici(yield* dispatcher)
  const baseDelayMs = Duration.toMillis(config.webhookRetryBaseDelay)
  const retryForMs = Duration.toMillis(config.webhookRetryFor)
  // A claim outlasts the attempt it is for (the attempt's time limit) by a lease's time, for the writes around it.
  const claimMs = Duration.toMillis(policy.timeout) + Duration.toMillis(config.leaseTtl)

  /**
   * What follows a failed turn (`sentTo` null: nothing was sent) at `now`: another attempt, doubling from the base
   * delay (±20 %, never past the deadline), or, once `WEBHOOK_RETRY_FOR` has run out since the event, `failed`.
   */
  const afterFailure = (delivery: ClaimedDelivery, turn: Pick<Settlement, "sentTo" | "statusCode"> & { readonly error: string }, now: number) =>
    Effect.gen(function*() {
      const deadline = delivery.createdAt * 1000 + retryForMs
      const failures = Math.max(1, delivery.attempts + (turn.sentTo === null ? 0 : 1))
      const jitter = yield* Random.nextRange(0.8, 1.2)
      const next = Math.min(now + Math.round(baseDelayMs * 2 ** Math.min(failures - 1, 40) * jitter), deadline)
      return {
        ...turn,
        status: now >= deadline ? "failed" : "pending",
        nextAttemptMs: now >= deadline ? null : next,
        deliveredAt: null
      } satisfies Settlement
    })

  /** One turn at a claimed delivery: an attempt (none without a webhook), its result stored while the claim holds. */
  const attempt = (delivery: ClaimedDelivery, claim: DeliveryClaim) =>
    Effect.gen(function*() {
      const target = yield* targets.targetOf(delivery.project)
      const key = Option.flatMap(target, (t) => Option.fromNullable(signingKey(Redacted.value(t.secret))))
      if (Option.isNone(target) || Option.isNone(key)) {
        // Not given up at once: the keys file may be being edited, or another node may have the webhook.
        const error = `no webhook is configured for project ${delivery.project} on node ${config.nodeId}`
        const settlement = yield* afterFailure(delivery, { sentTo: null, statusCode: null, error }, yield* Clock.currentTimeMillis)
        yield* deliveries.settle(delivery.id, claim, settlement)
        if (settlement.status === "failed") metrics.webhookDelivery("failed")
        return yield* Effect.logWarning(`Webhook ${delivery.type} not sent: ${error}`).pipe(
          line(delivery, settlement.status === "failed" ? "webhook.failed" : "webhook.retry", { attempts: delivery.attempts, error })
        )
      }
      const url = target.value.url
      const shown = shownUrl(url)
      const timestamp = Math.floor((yield* Clock.currentTimeMillis) / 1000)
      const result = yield* post(client, url, webhookHeaders(key.value, delivery.id, timestamp, delivery.body), delivery.body, policy.timeout)
      const attempts = delivery.attempts + 1
      const now = yield* Clock.currentTimeMillis
      if (result.status !== null && result.status >= 200 && result.status < 300) {
        const deliveredAt = Math.floor(now / 1000)
        yield* deliveries.settle(delivery.id, claim, {
          status: "delivered", sentTo: url, statusCode: result.status, error: null, nextAttemptMs: null, deliveredAt
        })
        metrics.webhookDelivery("delivered")
        return yield* Effect.logInfo(`Webhook ${delivery.type} delivered to ${shown} (attempt ${attempts}, HTTP ${result.status})`).pipe(
          line(delivery, "webhook.delivered", { attempts, status_code: result.status, url: shown })
        )
      }
      const error = result.status === null ? result.error : `HTTP ${result.status}${result.answer === "" ? "" : `: ${result.answer}`}`
      const settlement = yield* afterFailure(delivery, { sentTo: url, statusCode: result.status, error }, now)
      yield* deliveries.settle(delivery.id, claim, settlement)
      if (settlement.nextAttemptMs !== null) {
        metrics.webhookDelivery("retry")
        const waitMs = Math.max(0, settlement.nextAttemptMs - now)
        return yield* Effect.logWarning(
          `Webhook ${delivery.type} to ${shown} failed (attempt ${attempts}: ${error}); next attempt in ${Duration.format(Duration.millis(waitMs))}`
        ).pipe(line(delivery, "webhook.retry", { attempts, status_code: result.status, error, url: shown, next_attempt_in_ms: waitMs }))
      }
      metrics.webhookDelivery("failed")
      yield* Effect.logError(`Webhook ${delivery.type} to ${shown} gave up after ${attempts} attempts (last: ${error})`).pipe(
        line(delivery, "webhook.failed", { attempts, status_code: result.status, error, url: shown })
      )
    }).pipe(Effect.withSpan("Webhooks.attempt", { attributes: { "webhook.event_id": delivery.id, "batch.id": delivery.batchId } }))

  // Attempts running on this node (the claim loop below is their only starter, the attempts their only finishers).
  let inFlight = 0
  /**
   * Claims what is due, up to the attempts this node has room for, and starts each in `running`; true when it had
   * room for more than it found (nothing else due now).
   */
  const claimRound = (running: FiberSet.FiberSet) =>
    Effect.gen(function*() {
      const room = policy.concurrency - inFlight
      if (room <= 0) return true
      const now = yield* Clock.currentTimeMillis
      const claim: DeliveryClaim = { owner: config.nodeId, now, until: now + claimMs }
      const due = yield* deliveries.claimDue(claim, room)
      for (const delivery of due) {
        inFlight++
        yield* FiberSet.run(running, attempt(delivery, claim).pipe(
          Effect.catchAllCause((cause) => Effect.logError("Webhook attempt failed", cause)),
          Effect.ensuring(Effect.sync(() => inFlight--))
        ))
      }
      return due.length < room
    })

  // A restarted node frees its own claims at once; then it looks for due events every heartbeat (at once again
  // while it finds as many as it has room for).
  yield* deliveries.releaseAfterRestart(config.nodeId)
  const running = yield* FiberSet.make()
  yield* claimRound(running).pipe(
    Effect.catchAllCause((cause) => Effect.as(Effect.logError("Looking for webhook deliveries failed", cause), true)),
    Effect.flatMap((idle) => (idle ? Effect.sleep(config.heartbeatInterval) : Effect.void)),
    Effect.forever,
    Effect.forkScoped
  )

  return Webhooks.of({ list: deliveries.list })
})

/** The delivery worker of this node, and the deliveries list. */
export const WebhooksLive: Layer.Layer<Webhooks, never, SqlClient.SqlClient | AppConfig> = Layer.scoped(Webhooks, make)
