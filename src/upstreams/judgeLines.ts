/**
 * What the judge (`judge.ts`) tells the operator about an upstream's answers, each line at most every so often: a
 * wait it asked for (which pauses the whole upstream), a refusal at the concurrency floor asking for none, an
 * answer saying the upstream is set up wrong, and one a line cannot keep.
 */
import { Duration, Effect, Option } from "effect"
import { echo } from "../domain/Text.js"
import { type askedWait, type UpstreamFailure, upstreamErrorOf, type UpstreamResponse } from "../inference/answers.js"
import { ONCE_A_MINUTE_MS, type saidWithin } from "../observability/saidWithin.js"
import type { JudgeOptions } from "./judge.js"

/** A 404 that is the request's: OpenAI's answer to a model it does not have. */
export const modelNotFound = (response: UpstreamResponse) =>
  (response.json as { error?: { code?: unknown } })?.error?.code === "model_not_found"

/**
 * An answer saying the upstream's account may make no more calls: OpenAI's `insufficient_quota` (a 429, its code or
 * type). No call succeeds until credit is added: the upstream's outage, not its requests' trouble (each line failed
 * after its attempts, a batch burnt in minutes). Not a 402 or LiteLLM's `budget_exceeded`: OpenRouter's 402 may be
 * the request's own (`max_tokens` more than the credit left, where a smaller request passes), and a LiteLLM budget
 * may be the request's `user`'s; taken for the account's, one project's large requests took the shared upstream
 * down at each trial, and never ended.
 */
export const quotaSpent = (response: UpstreamResponse) => {
  if (response.status < 400 || response.status >= 500) return false
  const error = (response.json as { error?: { code?: unknown; type?: unknown } } | null)?.error
  return typeof error === "object" && error !== null && (error.code === "insufficient_quota" || error.type === "insufficient_quota")
}

/**
 * An answer's status and what its body says, for the reason an upstream is down (`status 503: Loading model`: a
 * model loading, not a server broken).
 */
export const statusSaying = (response: UpstreamResponse) => {
  const { message } = upstreamErrorOf(response)
  return typeof message === "string" && message.trim() !== ""
    ? `status ${response.status}: ${echo(message.trim(), 120)}`
    : `status ${response.status}`
}

/** The judge's lines; `answeredWell`: the endpoints that have answered a 2xx (the judge's to fill). */
export const makeJudgeLines = (
  { clock, due, gate, log, maxPause, spec, urlFor }:
    & Pick<JudgeOptions, "clock" | "gate" | "log" | "maxPause" | "spec" | "urlFor">
    & { readonly due: ReturnType<typeof saidWithin> },
  answeredWell: ReadonlySet<string>
) => {
  const say = (key: string, every: number, line: () => string, level: (line: string) => Effect.Effect<void> = Effect.logError) =>
    due(key, clock.unsafeCurrentTimeMillis(), every) ? log(level(line())) : Effect.void
  /**
   * A wait asked for (`Retry-After`, or a rate limit's reset: `askedWait`) pauses the whole upstream; said at most
   * once a minute (a spent quota answers every call so).
   */
  const pauseFor = (status: number, asked: ReturnType<typeof askedWait>) =>
    Option.match(asked, {
      onNone: () => Effect.void,
      onSome: (asked) => {
        const ms = Math.min(asked.ms, Duration.toMillis(maxPause))
        const capped = ms < asked.ms ? ` (it asked ${Duration.format(Duration.millis(asked.ms))}: INFERENCE_RETRY_MAX_DELAY)` : ""
        return Effect.zipRight(
          gate.pauseUntil(clock.unsafeCurrentTimeMillis() + ms),
          say("retry-after", ONCE_A_MINUTE_MS, () =>
            `Upstream ${spec.name} answered ${status} with ${asked.header}: no call goes to it for ` +
            `${Duration.format(Duration.millis(ms))}${capped}`, Effect.logWarning)
        )
      }
    })

  /**
   * A refusal at the floor that asks for no wait: its request's attempts are spent at their backoff's pace (a TGI's
   * "Model is overloaded" that lasts). Said at most once a minute, with what the upstream said: nothing had told
   * the operator why lines failed.
   */
  const refusedAtFloor = (status: number, response: UpstreamResponse) =>
    say("refused-at-floor", ONCE_A_MINUTE_MS, () => {
      const { code, message } = upstreamErrorOf(response)
      const said = [code, message].filter((part) => typeof part === "string" && part !== "").join(": ")
      const sent = spec.minConcurrency === 1 ? "a call sent alone" : `one of at most ${spec.minConcurrency} calls`
      return `Upstream ${spec.name} answered ${status} to ${sent} (its concurrency limit at its floor, min_concurrency), ` +
        `asking for no wait${said === "" ? "" : ` (${echo(said, 200)})`}: each such request is retried after its ` +
        "backoff, and fails once its INFERENCE_MAX_ATTEMPTS are spent."
    }, Effect.logWarning)

  /**
   * An answer that says the upstream is set up wrong: a 404 before any success on that endpoint (most likely a base
   * URL without its `/v1`), said once; a 401 or 403 (its key, maybe revoked while batches run) and a redirect (not
   * followed: its base URL is elsewhere), said at most once a minute.
   */
  const misconfigured = (endpoint: string, response: UpstreamResponse, headers: Record<string, string | undefined>) => {
    const status = response.status
    const target = `POST ${urlFor(endpoint)}`
    if (status === 404) {
      if (modelNotFound(response) || answeredWell.has(endpoint)) return Effect.void
      return say(`404 ${endpoint}`, Infinity, () =>
        `Upstream ${spec.name} answered 404 to ${target}: it does not serve that path. Check its base ` +
        `URL (${spec.baseUrl}): it must include the API's version path, as in http://host:8000/v1.`)
    }
    if (status === 401 || status === 403) {
      return say(`auth ${endpoint}`, ONCE_A_MINUTE_MS, () =>
        `Upstream ${spec.name} answered ${status} to ${target}: it refuses the call's credentials. Check its api_key (or api_key_env) and headers.`)
    }
    const location = headers["location"]
    return say(`redirect ${endpoint}`, ONCE_A_MINUTE_MS, () =>
      `Upstream ${spec.name} answered ${status} to ${target}` +
      `${location === undefined ? "" : `, pointing to ${echo(location, 200)}`}: redirects are not followed. Set its base URL to where it points.`)
  }

  /**
   * An answer its line cannot keep (a 2xx that is no JSON object: a captive portal's page, a proxy's gzip; one over
   * `INFERENCE_MAX_RESPONSE_BYTES`): the line fails at once, not retried. Said at most once a minute: a batch's
   * every line may fail so in seconds, and only its lines had said why. Without the answer's text (`logged`).
   */
  const unusable = (failure: UpstreamFailure) =>
    say("unusable", ONCE_A_MINUTE_MS, () =>
      `Upstream ${spec.name} gave an answer a line cannot keep (${failure.code}: ${echo(failure.logged ?? failure.message, 300)}); ` +
      "such lines fail at once, not retried.", Effect.logWarning)

  return { misconfigured, pauseFor, refusedAtFloor, unusable }
}
