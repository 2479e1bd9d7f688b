/**
 * Each project's request rate on this node (`MAX_REQUESTS_PER_MINUTE_PER_PROJECT`), for `Security.ts`: a token
 * bucket per project that refills at the limit's pace and holds a tenth of a minute's worth, so a project cannot
 * spend its minute in one burst (600 list pages at once held the event loop 38 s). Beyond it, OpenAI's 429
 * `rate_limit_exceeded` with when to try again; every answer to a limited project carries OpenAI's
 * `x-ratelimit-*-requests` headers. Operators are not limited. Per node: N nodes let a project send N times as much.
 */
import { rateLimited } from "../domain/Errors.js"
import { envelope } from "./EarlyAnswer.js"

/** A project's bucket: the requests it may send at once, as of `at` (epoch ms). */
interface Bucket {
  tokens: number
  at: number
}

/** What one request found: whether it may go, what is left, and when to try again or the bucket is full. */
export interface RateCheck {
  readonly allowed: boolean
  readonly remaining: number
  /** Until one more request may go (0 when this one went). */
  readonly retryAfterMs: number
  /** Until the bucket is full again. */
  readonly resetMs: number
}

/** A duration as OpenAI's `x-ratelimit-reset-*` headers write it (`17ms`, `1.5s`, `6m0s`). */
export const resetText = (ms: number): string => {
  if (ms < 1000) return `${Math.ceil(ms)}ms`
  const seconds = Math.ceil(ms / 100) / 10
  return seconds < 60 ? `${seconds}s` : `${Math.floor(seconds / 60)}m${Math.round(seconds % 60)}s`
}

export class RequestRates {
  private readonly buckets = new Map<string, Bucket>()
  /** Requests a project may send at once: a tenth of the minute's (at least one). */
  readonly burst: number
  private readonly msPerRequest: number

  constructor(readonly perMinute: number) {
    this.burst = Math.max(1, Math.floor(perMinute / 10))
    this.msPerRequest = 60_000 / perMinute
  }

  /** Takes one request of `project`'s at `now` (epoch ms) when it has one. Projects are the keys' (a bounded set). */
  take(project: string, now: number): RateCheck {
    let bucket = this.buckets.get(project)
    if (bucket === undefined) this.buckets.set(project, bucket = { tokens: this.burst, at: now })
    bucket.tokens = Math.min(this.burst, bucket.tokens + Math.max(0, now - bucket.at) / this.msPerRequest)
    bucket.at = now
    const allowed = bucket.tokens >= 1
    if (allowed) bucket.tokens -= 1
    return {
      allowed,
      remaining: Math.floor(bucket.tokens),
      retryAfterMs: allowed ? 0 : Math.ceil((1 - bucket.tokens) * this.msPerRequest),
      resetMs: (this.burst - bucket.tokens) * this.msPerRequest
    }
  }

  /** OpenAI's rate-limit headers for `check`. */
  headers(check: RateCheck): Record<string, string> {
    return {
      "x-ratelimit-limit-requests": String(this.perMinute),
      "x-ratelimit-remaining-requests": String(check.remaining),
      "x-ratelimit-reset-requests": resetText(check.resetMs)
    }
  }

  /** The 429 of a refused `check`, in OpenAI's words, with `Retry-After` (seconds, rounded up) and `retry-after-ms`. */
  refusal(check: RateCheck) {
    const seconds = Math.max(1, Math.ceil(check.retryAfterMs / 1000))
    return envelope(
      rateLimited(
        `Rate limit reached for requests per minute (RPM): Limit ${this.perMinute}, at most ${this.burst} at once. ` +
          `Please try again in ${resetText(check.retryAfterMs)}.`
      ),
      429,
      { ...this.headers(check), "retry-after": String(seconds), "retry-after-ms": String(check.retryAfterMs) }
    )
  }
}
