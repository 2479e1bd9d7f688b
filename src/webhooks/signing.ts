/**
 * Webhook events as OpenAI sends them, signed per Standard Webhooks (https://www.standardwebhooks.com): the event
 * body, the `webhook-*` headers of one attempt, and the checks of a webhook's URL and secret (`WEBHOOK_URL`,
 * `WEBHOOK_SECRET`, a keys file's `webhook:` lines). Pure: no service, no clock.
 */
import { createHmac } from "node:crypto"

/** The events a batch's final status sends, by that status. */
export const eventTypes = {
  completed: "batch.completed",
  failed: "batch.failed",
  cancelled: "batch.cancelled",
  expired: "batch.expired"
} as const
export type EventType = (typeof eventTypes)[keyof typeof eventTypes]

/** The event's JSON body: only the batch's id, as OpenAI's (receivers fetch the batch). */
export const eventBody = (event: {
  readonly id: string
  readonly type: EventType
  readonly createdAt: number
  readonly batchId: string
}): string =>
  JSON.stringify({ id: event.id, object: "event", type: event.type, created_at: event.createdAt, data: { id: event.batchId } })

const SECRET = /^whsec_([A-Za-z0-9+/]+={0,2})$/

/**
 * The HMAC key of a `whsec_<base64>` secret (its base64 part decoded), or undefined when `text` is not one: the
 * base64 must be canonical (what decodes is what was written) and decode to at least one byte.
 */
const signingKey = (text: string): Buffer | undefined => {
  const base64 = SECRET.exec(text)?.[1]
  if (base64 === undefined || base64.length % 4 !== 0) return undefined
  const key = Buffer.from(base64, "base64")
  return key.length > 0 && key.toString("base64") === base64 ? key : undefined
}

/** Most secrets a webhook signs with at once: a rotation needs two. */
export const MAX_SECRETS = 4

/**
 * The HMAC keys of a webhook's secrets, `whsec_…` separated by spaces (several while a secret is rotated: each
 * attempt is signed with every one, as Standard Webhooks allows, and a receiver that knows either accepts it), or
 * undefined when `text` is not such a list.
 */
export const signingKeys = (text: string): ReadonlyArray<Buffer> | undefined => {
  const secrets = text.trim().split(/\s+/)
  if (secrets.length > MAX_SECRETS) return undefined
  const keys = secrets.map(signingKey)
  return keys.every((key) => key !== undefined) ? keys as ReadonlyArray<Buffer> : undefined
}

/** Why `text` is not a webhook's secrets, for a message that never repeats them; undefined when it is. */
export const secretProblem = (text: string): string | undefined =>
  signingKeys(text) === undefined
    ? `a webhook secret must be whsec_ followed by base64 (as OpenAI's: whsec_…=); up to ${MAX_SECRETS}, separated by spaces, while one is rotated`
    : undefined

/** Why `url` cannot receive webhooks, for a message that never repeats it (a query may hold a token); undefined when it can. */
export const urlProblem = (url: string): string | undefined => {
  if (!URL.canParse(url)) return "a webhook URL must be an absolute http:// or https:// URL"
  const parsed = new URL(url)
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return "a webhook URL must start with http:// or https://"
  if (parsed.username !== "" || parsed.password !== "") return "a webhook URL must not hold user:password@"
  if (parsed.hash !== "") return "a webhook URL must not have a #fragment"
  return undefined
}

/** `url` as the deliveries list shows it: without its query, which may hold a token (`?…` in its place). */
export const shownUrl = (url: string): string => {
  const query = url.indexOf("?")
  return query < 0 ? url : `${url.slice(0, query)}?…`
}

/**
 * `url` as logs and spans show it: its origin alone (`https://hooks.slack.com/…`), as its path may hold a token too
 * (Slack's and Discord's webhook URLs do), and logs travel further than the deliveries list.
 */
export const loggedUrl = (url: string): string => {
  const parsed = URL.canParse(url) ? new URL(url) : undefined
  if (parsed === undefined) return "(not a URL)"
  return parsed.pathname === "/" && parsed.search === "" ? parsed.origin : `${parsed.origin}/…`
}

/**
 * The `webhook-signature` of one attempt: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` for each key,
 * separated by spaces.
 */
export const signature = (keys: ReadonlyArray<Buffer>, id: string, timestamp: number, body: string): string =>
  keys.map((key) => `v1,${createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64")}`).join(" ")

/** The signing headers of one attempt at `timestamp` (unix seconds): the same `webhook-id` on every attempt. */
export const webhookHeaders = (keys: ReadonlyArray<Buffer>, id: string, timestamp: number, body: string): Record<string, string> => ({
  "webhook-id": id,
  "webhook-timestamp": String(timestamp),
  "webhook-signature": signature(keys, id, timestamp, body)
})
