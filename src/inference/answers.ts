/**
 * What an upstream answer becomes: the response or failure types `Inference` gives, and the pure functions that
 * read an answer (its body as one line of JSON, its `Retry-After`); and a request handed back unsent.
 */
import { Data, Effect, Option } from "effect"
import { escapeLineSeparators, isJsonObject, MAX_JSON_DEPTH, nestedDeeperThan } from "../domain/Json.js"
import { cutBefore } from "../domain/Text.js"

export interface UpstreamResponse {
  readonly status: number
  /**
   * The upstream body as one line of JSON text, always an object: as sent, with a pretty-printed body's whitespace
   * taken out (strings and numbers kept byte for byte). A non-2xx body that is not a JSON object is wrapped in an
   * OpenAI error envelope.
   */
  readonly text: string
  /** The same body, parsed. */
  readonly json: unknown
  readonly requestId: string
}

/**
 * No usable response could be had:
 * - `upstream_unreachable`: a network failure, after every attempt;
 * - `upstream_timeout`: no complete answer within `INFERENCE_TIMEOUT` (headers and body), after every attempt;
 * - `upstream_response_too_large`: an answer larger than `INFERENCE_MAX_RESPONSE_BYTES` (not retried);
 * - `invalid_upstream_response`: a 2xx answer whose body is not a JSON object (not retried);
 * - `model_not_found`: no upstream serves the request's model (a send without `handBack`: a batch's line waits instead);
 * - `replay_miss`: replaying recordings (`INFERENCE_MODE=replay`), none was made of this request.
 */
export class UpstreamFailure extends Data.TaggedError("UpstreamFailure")<{
  readonly code:
    | "upstream_unreachable"
    | "upstream_timeout"
    | "upstream_response_too_large"
    | "invalid_upstream_response"
    | "model_not_found"
    | "replay_miss"
  readonly message: string
  /** The message without the answer's text it quotes, for logs (its line in the error file has it all). */
  readonly logged?: string
}> {}

/** The `send`s whose answers hold to `UpstreamResponse`'s contract already (the service's own, over upstreams). */
const checkedSends = new WeakSet<object>()

/**
 * `send`, vouched for: its answers are checked already, so `makeServices` does not check an `inference` part built on
 * it again (`checkedAnswers.ts`), at a cost the live path need not pay. Tied to the function: a copy of the service
 * with a `send` of its own is checked.
 */
export const vouchedFor = <F extends object>(send: F): F => {
  checkedSends.add(send)
  return send
}

/** Whether `send`'s answers are vouched for (`vouchedFor`). */
export const isVouchedFor = (send: object): boolean => checkedSends.has(send)

/**
 * The caller's wish to take a request back unsent while it waits for its upstream (a batch whose turn ended: see
 * `batches/fairPermits.ts`). A request at the upstream is not taken back: its answer is awaited.
 */
export interface HandBack {
  /** Whether the request is wanted back now. */
  readonly wanted: () => boolean
  /** Completes once it is. */
  readonly await: Effect.Effect<void>
}

/** A request handed back unsent (`HandBack`): no outcome, its line left for a later send. */
export class HandedBack extends Data.TaggedError("HandedBack")<{}> {}

/**
 * `wait`, or `HandedBack` as soon as `handBack` wants the request back (the wait is then interrupted). For waits
 * that hold nothing (a backoff, room at the server); the wait for a permit is the admission's (`Admission.acquire`),
 * which gives back a permit granted in the same instant.
 */
export const unlessHandedBack = <A, E, R>(
  wait: Effect.Effect<A, E, R>,
  handBack: HandBack | undefined
): Effect.Effect<A, E | HandedBack, R> =>
  handBack === undefined
    ? wait
    : handBack.wanted()
    ? Effect.fail(new HandedBack())
    : Effect.raceFirst(wait, Effect.zipRight(handBack.await, Effect.fail(new HandedBack())))

/**
 * HTTP's dates, in the three forms RFC 9110 says a recipient must read: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
 * GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`, in GMT though it says
 * no zone). `Date.parse` alone takes `"next 2"` for a date, and an asctime date for local time.
 */
const IMF_OR_RFC850_DATE = /^(?:[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4}|[A-Z][a-z]{5,8}, \d{2}-[A-Z][a-z]{2}-\d{2}) \d{2}:\d{2}:\d{2} GMT$/
const ASCTIME_DATE = /^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/

/** An HTTP date in epoch milliseconds, or NaN. */
const httpDate = (text: string): number =>
  IMF_OR_RFC850_DATE.test(text) ? Date.parse(text) : ASCTIME_DATE.test(text) ? Date.parse(`${text} GMT`) : NaN

/**
 * The longest wait read from an answer: a year. Every caller waits far less (`INFERENCE_RETRY_MAX_DELAY`), but says
 * what was asked: a `retry-after-ms` of 1e308 could not be said (a RangeError), which failed its batch.
 */
const LONGEST_ASKED_MS = 365 * 86_400_000

/** The wait `Retry-After` (seconds or an HTTP date) or `retry-after-ms` asks for, in milliseconds, and which said it. */
export const retryAfter = (
  headers: Record<string, string | undefined>,
  now: number
): Option.Option<{ readonly ms: number; readonly header: string }> => {
  const asked = (ms: number, header: string) => Option.some({ ms: Math.min(ms, LONGEST_ASKED_MS), header })
  const ms = Number(headers["retry-after-ms"])
  if (headers["retry-after-ms"] !== undefined && Number.isFinite(ms) && ms >= 0) return asked(ms, "retry-after-ms")
  const value = headers["retry-after"]?.trim()
  if (value === undefined) return Option.none()
  const seconds = Number(value)
  if (value !== "" && Number.isFinite(seconds) && seconds >= 0) return asked(seconds * 1000, "Retry-After")
  const date = httpDate(value)
  return Number.isNaN(date) ? Option.none() : asked(Math.max(0, date - now), "Retry-After")
}

/** `Retry-After` (seconds or an HTTP date) or `retry-after-ms`, in milliseconds. */
export const retryAfterMillis = (headers: Record<string, string | undefined>, now: number): Option.Option<number> =>
  Option.map(retryAfter(headers, now), (asked) => asked.ms)

/**
 * The error an answer's body gives, in any of the servers' shapes: OpenAI's `{"error":{"code","message"}}`, Ollama's
 * and TGI's `{"error":"…"}`, vLLM's `{"message":…}`.
 */
export const upstreamErrorOf = (response: UpstreamResponse): { readonly code?: unknown; readonly message?: unknown } => {
  const body = (response.json as { error?: unknown; message?: unknown } | null) ?? {}
  return typeof body.error === "object" && body.error !== null
    ? body.error as { code?: unknown; message?: unknown }
    : { code: undefined, message: typeof body.error === "string" ? body.error : body.message }
}

/**
 * A 404 whose error speaks of the model: OpenAI's `model_not_found`, vLLM's "The model `m` does not exist.", Ollama's
 * "model \"m\" not found"; not a path the server lacks (vLLM's `{"detail":"Not Found"}`).
 */
export const aboutTheModel = (response: UpstreamResponse) => {
  if (response.status !== 404) return false
  const { code, message } = upstreamErrorOf(response)
  return code === "model_not_found" || (typeof message === "string" && /\bmodel\b/i.test(message))
}

/** A day: a reset further off is no duration of a limit per minute or day (an epoch time, misread). */
const DAY_MS = 86_400_000

/** OpenAI's `x-ratelimit-reset-*` durations (`20ms`, `1.5s`, `6m0s`, `1h2m3s`), or plain seconds, in milliseconds. */
export const resetMillis = (value: string | undefined): number | undefined => {
  if (value === undefined) return undefined
  const text = value.trim()
  const parts = /^\d+(\.\d+)?$/.test(text)
    ? [text, "0", "0", text, "0"]
    : /^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$/.exec(text)
  if (parts === null || text === "") return undefined
  const [, h = "0", m = "0", sec = "0", ms = "0"] = parts
  const total = ((Number(h) * 60 + Number(m)) * 60 + Number(sec)) * 1000 + Number(ms)
  return total <= DAY_MS ? total : undefined
}

/** A reset sooner than this asks for no wait: the retries' backoff is longer (a `0s` had sent them all at once). */
const SHORTEST_RESET_MS = 1000

/**
 * How long an answer asks its caller to wait, and which header said so: `Retry-After` or `retry-after-ms`; else, on
 * a 429, when the rate limit that turned it away resets (OpenAI's `x-ratelimit-reset-requests` and `-tokens`): of
 * the limits run out (`x-ratelimit-remaining-*` 0, or not given) the later; when none is, the tokens' (a request
 * larger than what is left of a limit per minute: the usual 429 of OpenAI, whose remaining tokens are not 0).
 * OpenAI's 429s may carry only those, and a wait of the retries' backoff (15 s in all) failed most lines of a
 * batch against a limit per minute.
 */
export const askedWait = (
  status: number,
  headers: Record<string, string | undefined>,
  now: number
): Option.Option<{ readonly ms: number; readonly header: string }> =>
  Option.orElse(retryAfter(headers, now), () => {
    if (status !== 429) return Option.none()
    const runOut = ["requests", "tokens"].filter((limit) => !(Number(headers[`x-ratelimit-remaining-${limit}`] ?? 0) > 0))
    let latest: { ms: number; header: string } | undefined
    for (const limit of runOut.length > 0 ? runOut : ["tokens"]) {
      const header = `x-ratelimit-reset-${limit}`
      const ms = resetMillis(headers[header])
      if (ms !== undefined && ms >= SHORTEST_RESET_MS && ms >= (latest?.ms ?? 0)) latest = { ms, header }
    }
    return Option.fromNullable(latest)
  })

const isJsonWhitespace = (c: number) => c === 32 || c === 10 || c === 13 || c === 9

/** What keeps a body from being one line of a JSONL file, for JSON's readers and for Python's `splitlines()`. */
const BREAKS = /[\r\n\u0085\u2028\u2029]/

/**
 * `text` (valid JSON) without the whitespace between its tokens: strings, numbers and escapes are kept as written,
 * byte for byte (re-serializing would turn `123456789012345678901234567890` into `1.2345678901234568e+29`). One pass;
 * strings are skipped with `indexOf`, so a long string costs next to nothing. Text that is not JSON is not made
 * valid, but nothing in it is lost except whitespace outside what look like strings.
 */
export const compactJson = (text: string): string => {
  const n = text.length
  const parts: Array<string> = []
  let start = 0 // where the text kept since the last whitespace begins
  let i = 0
  while (i < n) {
    const c = text.charCodeAt(i)
    if (c === 34) {
      // A string: its end is the next quote not escaped, i.e. after an even run of backslashes.
      let from = i + 1
      for (;;) {
        const quote = text.indexOf("\"", from)
        if (quote < 0) {
          i = n
          break
        }
        let backslash = quote - 1
        while (text.charCodeAt(backslash) === 92) backslash--
        if ((quote - 1 - backslash) % 2 === 0) {
          i = quote + 1
          break
        }
        from = quote + 1
      }
    } else if (isJsonWhitespace(c)) {
      if (i > start) parts.push(text.slice(start, i))
      do i++
      while (i < n && isJsonWhitespace(text.charCodeAt(i)))
      start = i
    } else {
      i++
    }
  }
  if (start === 0) return text
  if (start < n) parts.push(text.slice(start))
  return parts.join("")
}

/** The first `max` characters of `text` for a message: whitespace runs as one space, no surrogate pair cut. */
const excerpt = (text: string, max = 200): string => {
  const flat = text.slice(0, max * 4).replace(/[\s\u0000-\u001f\u007f]+/g, " ").trim()
  if (flat.length <= max && text.length <= max * 4) return flat
  return `${cutBefore(flat, max).toWellFormed()}…` // well formed: the slice above may have split a pair
}

/** `text` parsed, when it is a JSON object (not an array); else undefined. */
const parseObject = (text: string): object | undefined => {
  try {
    const json = JSON.parse(text)
    return isJsonObject(json) ? json : undefined
  } catch {
    return undefined // not JSON
  }
}

/**
 * The most characters of a non-2xx answer's body kept as it came: one past it is said in an error envelope, its first
 * `QUOTED_CHARS` quoted (10 answers of a 30 MB error object made a 314 MB error file).
 */
export const MAX_ERROR_BODY_CHARS = 64 * 1024
/**
 * How much of an error body an envelope quotes (one that is no JSON object, or is too large), in whole characters
 * (the cut never splits a pair, a lone half is U+FFFD): JSON's strict readers (jq) refuse a lone surrogate's escape.
 */
const quoted = (text: string) => cutBefore(text, 4096).toWellFormed()

/**
 * The upstream's body as one line of JSON text holding an object (it is embedded as is in a JSONL line, so a
 * pretty-printed body is compacted, and NEL, U+2028 and U+2029 escaped, only when it has one of them: the usual
 * body is used as it came).
 * A 2xx answer that is not a JSON object is an `invalid_upstream_response`; any other status's is wrapped in an
 * OpenAI error envelope, so that error lines always hold an object too.
 */
export const asJsonBody = (
  status: number,
  text: string,
  headers: Record<string, string | undefined>
): { text: string; json: unknown } | UpstreamFailure => {
  // Asked for with `accept-encoding: identity`, a proxy may compress all the same; and JSON is parsed whole (16 MB
  // of `[[[…]]]` held the event loop 6.6 s, as an input line did). Neither is read: a 2xx is then unusable, another
  // status keeps its status (a retry, a `Retry-After`, an outage go by it) with what was wrong as its message.
  const encoding = headers["content-encoding"]
  const ok = status >= 200 && status < 300
  const unreadable = encoding !== undefined && encoding.trim().toLowerCase() !== "identity"
    ? `a body encoded as ${excerpt(encoding, 100)} (content-encoding), which is not decoded here: it was asked for none`
    : !ok && text.length > MAX_ERROR_BODY_CHARS
    ? `a body of ${text.length} characters, more than an error line keeps (${MAX_ERROR_BODY_CHARS}): ${quoted(text)}`
    : nestedDeeperThan(text, MAX_JSON_DEPTH)
    ? `JSON nested more than ${MAX_JSON_DEPTH} levels deep`
    : undefined
  if (unreadable !== undefined) {
    if (ok) {
      return new UpstreamFailure({ code: "invalid_upstream_response", message: `The upstream answered ${status} with ${unreadable}.` })
    }
    return errorEnvelope(status, `Upstream answered ${status} with ${unreadable}.`)
  }
  const parsed = parseObject(text)
  if (parsed !== undefined) return { text: BREAKS.test(text) ? escapeLineSeparators(compactJson(text)) : text, json: parsed }
  if (ok) {
    const contentType = headers["content-type"]
    const type = contentType === undefined ? "" : ` (content-type ${excerpt(contentType, 100)})`
    if (text.length === 0) {
      return new UpstreamFailure({
        code: "invalid_upstream_response",
        message: `The upstream answered ${status}${type} with an empty body, not a JSON object.`
      })
    }
    const said = `The upstream answered ${status}${type} with a body of ${text.length} characters that is not a JSON object`
    return new UpstreamFailure({ code: "invalid_upstream_response", message: `${said}: ${excerpt(text)}`, logged: `${said}.` })
  }
  return errorEnvelope(status, text.length > 0 ? quoted(text) : `Upstream answered ${status} with an empty body.`)
}

/** A non-2xx answer whose body is not a JSON object, as an OpenAI error envelope with `message`. */
const errorEnvelope = (status: number, message: string) => {
  const json = { error: { message, type: status >= 500 ? "server_error" : "upstream_error", param: null, code: null } }
  return { text: escapeLineSeparators(JSON.stringify(json)), json }
}
