/** Helpers of the webhook tests: secrets, the official client's verification, the deliveries list, finished batches. */
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import OpenAI from "openai"
import { chatLine, createBatch, terminal, upload, waitFor } from "./Batches.js"
import type { Receiver } from "./WebhookReceiver.js"

export const SECRET = `whsec_${randomBytes(32).toString("base64")}`
export const OWN_SECRET = `whsec_${randomBytes(24).toString("base64")}`

/** Verifies signatures only: never sends a request. */
const verifier = new OpenAI({ apiKey: "unused", baseURL: "http://127.0.0.1:9/v1" })

/** The official client's batch events: `data` holds the batch's id. */
type BatchEvent = Extract<OpenAI.Webhooks.UnwrapWebhookEvent, { readonly type: `batch.${string}` }>
type Request = { readonly body: string; readonly headers: Record<string, string> }

/** The event, as the official client verifies and parses it. */
export const unwrap = (received: Request, secret = SECRET) =>
  Effect.promise(() => verifier.webhooks.unwrap(received.body, received.headers, secret) as Promise<BatchEvent>)
/** Whether the official client refuses `received` with `secret`. */
export const rejects = (received: Request, secret: string) =>
  Effect.promise(() => verifier.webhooks.unwrap(received.body, received.headers, secret).then(() => false, () => true))

/** The batch id a received event is about. */
export const batchOf = (body: string): string => JSON.parse(body).data.id
/** What `receiver` got about `batchId`. */
export const receivedFor = (receiver: Receiver, batchId: string) => receiver.received.filter((r) => batchOf(r.body) === batchId)

export const sleep = (ms: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, ms)))

export interface DeliveryJson {
  readonly id: string
  readonly object: string
  readonly type: string
  readonly batch_id: string
  readonly url: string | null
  readonly target: "server" | "project"
  readonly status: "pending" | "delivered" | "failed"
  readonly attempts: number
  readonly last_status_code: number | null
  readonly last_error: string | null
  readonly created_at: number
  readonly next_attempt_at: number | null
  readonly delivered_at: number | null
}
export interface DeliveryPage {
  readonly object: "list"
  readonly data: ReadonlyArray<DeliveryJson>
  readonly first_id: string | null
  readonly last_id: string | null
  readonly has_more: boolean
}

/** `GET /v1/webhook_deliveries` through the official client's generic `get`. */
export const deliveries = (openai: OpenAI, query: { readonly limit?: number; readonly after?: string } = {}) =>
  Effect.promise(() => openai.get<DeliveryPage>("/webhook_deliveries", { query }))

/** The delivery of `batchId`'s event once `done` holds of it (polled in real time). */
export const deliveryWhen = (openai: OpenAI, batchId: string, done: (d: DeliveryJson) => boolean, timeoutMs = 15_000) =>
  Effect.promise(async () => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const page = await openai.get<DeliveryPage>("/webhook_deliveries", { query: { limit: 100 } })
      const found = page.data.find((d) => d.batch_id === batchId)
      if (found !== undefined && done(found)) return found
      if (Date.now() > deadline) throw new Error(`delivery of ${batchId} stuck: ${JSON.stringify(found)}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  })

/** A finished batch of `prompts` (simulator directives in them) or of one `raw` line, by `openai`; cancelled at once when asked. */
export const finishedBatch = (
  openai: OpenAI,
  prompts: ReadonlyArray<string>,
  options: { readonly cancel?: boolean; readonly raw?: string; readonly timeoutMs?: number } = {}
) =>
  Effect.gen(function*() {
    const lines = options.raw !== undefined ? [options.raw] : prompts.map((p, i) => chatLine(`c${i}`, p))
    const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
    if (options.cancel === true) yield* Effect.promise(() => openai.batches.cancel(batch.id))
    return yield* waitFor(openai, batch.id, terminal, options.timeoutMs ?? 15_000)
  })
