/** The wire shapes of the webhook deliveries list (`GET /v1/webhook_deliveries`, an extension). */
import { Schema } from "effect"
import { Count } from "./List.js"
import { StorableString } from "./Text.js"

export const DeliveryStatus = Schema.Literal("pending", "delivered", "failed")
export type DeliveryStatus = typeof DeliveryStatus.Type

/** One event's delivery: its attempts so far and where it stands. Times in unix seconds. */
export class WebhookDelivery extends Schema.Class<WebhookDelivery>("WebhookDelivery")({
  /** The event's id (`evt_…`), sent as `webhook-id` on every attempt. */
  id: Schema.String,
  object: Schema.Literal("webhook_delivery"),
  type: Schema.String,
  batch_id: Schema.String,
  /**
   * Where the last attempt went (or the first will), without its query string; null for a project's key when it
   * is the server's webhook (`WEBHOOK_URL` is the operator's: its path may hold a token).
   */
  url: Schema.NullOr(Schema.String),
  /** Whose webhook `url` is: `server` (`WEBHOOK_URL`) or `project` (the project's own, in the keys file). */
  target: Schema.Literal("server", "project"),
  status: DeliveryStatus,
  attempts: Schema.Number,
  last_status_code: Schema.NullOr(Schema.Number),
  last_error: Schema.NullOr(Schema.String),
  created_at: Schema.Number,
  /** When the next attempt is due; null once delivered or given up. */
  next_attempt_at: Schema.NullOr(Schema.Number),
  delivered_at: Schema.NullOr(Schema.Number)
}) {}

export class WebhookDeliveryList extends Schema.Class<WebhookDeliveryList>("WebhookDeliveryList")({
  object: Schema.Literal("list"),
  data: Schema.Array(WebhookDelivery),
  first_id: Schema.NullOr(Schema.String),
  last_id: Schema.NullOr(Schema.String),
  has_more: Schema.Boolean
}) {}

export class ListWebhookDeliveriesParams extends Schema.Class<ListWebhookDeliveriesParams>("ListWebhookDeliveriesParams")({
  limit: Schema.optional(Count(1, 100, "At most this many deliveries (1–100, default 20)")),
  after: Schema.optional(StorableString)
}) {}
