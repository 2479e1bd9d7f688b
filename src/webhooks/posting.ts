/**
 * One webhook attempt over HTTP: the POST, a time limit on the answer's status, and what came of it in a few words
 * for `last_error`. No trace reaches the receiver or the spans: the client makes no span of its own (its `url.full`
 * and `url.query` would hold the URL's token; `Webhooks.attempt` carries the URL's origin alone) and sends no
 * `traceparent`/`b3` headers (OpenAI sends none).
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as HttpClient from "@effect/platform/HttpClient"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import { Duration, Effect, Stream } from "effect"
import type { Dispatcher } from "undici"
import { clientText } from "../observability/batchLines.js"

/** Characters of a receiver's answer kept in `last_error` (it says why it refused, e.g. a bad signature). */
const ANSWER_CHARS = 200
/** How long a refusal's body is read for `last_error`: the status decides, a stalled body must not hold it. */
const ANSWER_READ = Duration.seconds(1)

/** What one attempt got: an answer's status (with the start of its body when not 2xx), or no answer. */
export type AttemptResult = { readonly status: number; readonly answer: string } | { readonly status: null; readonly error: string }

/** The start of an answer's body as text: the read stops after a few hundred bytes, or after `ANSWER_READ` with "". */
const answerStart = (stream: Stream.Stream<Uint8Array, unknown>) => {
  const decoder = new TextDecoder()
  return Stream.runFoldWhile(stream, "", (text) => text.length < ANSWER_CHARS, (text, chunk) =>
    text + decoder.decode(chunk.subarray(0, ANSWER_CHARS * 4), { stream: true })).pipe(
      Effect.map((text) => clientText(text.trim(), ANSWER_CHARS)),
      Effect.timeoutTo({ duration: ANSWER_READ, onSuccess: (text) => text, onTimeout: () => "" }),
      Effect.orElseSucceed(() => "")
    )
}

/**
 * Why a request got no answer, in a few words: the error's code when it has one (`ECONNREFUSED`, …), else the
 * kinds of error it was. Never a message: the HTTP client's says `POST <the URL with its query>`.
 */
export const noAnswer = (error: unknown): string => {
  const kinds: Array<string> = []
  let cause: unknown = error
  for (let depth = 0; depth < 4 && typeof cause === "object" && cause !== null; depth++) {
    const { code, name, reason } = cause as { code?: unknown; name?: unknown; reason?: unknown }
    if (typeof code === "string") return `connection failed: ${clientText(code, 40)}`
    const kind = typeof reason === "string" ? reason : typeof name === "string" ? name : undefined
    if (kind !== undefined && !kinds.includes(kind)) kinds.push(clientText(kind, 40))
    cause = (cause as { cause?: unknown }).cause
  }
  return `connection failed: ${kinds.length === 0 ? "unknown error" : kinds.join(", ")}`
}

/**
 * A poster over `dispatcher`: posts `body` to `url` with `headers`, waiting at most `timeout` for the answer's
 * status; a 2xx is settled on its status alone (its body is not read), another status with the start of its body.
 * The request is aborted once the result is known, so an unread body holds no connection.
 */
export const makePoster = (dispatcher: Dispatcher) => {
  const client = NodeHttpClient.makeUndici(dispatcher).pipe(
    HttpClient.withTracerPropagation(false),
    HttpClient.withTracerDisabledWhen(() => true),
    HttpClient.withScope
  )
  return (url: string, headers: Record<string, string>, body: string, timeout: Duration.Duration): Effect.Effect<AttemptResult> =>
    client.execute(HttpClientRequest.post(url).pipe(
      HttpClientRequest.setHeaders(headers),
      HttpClientRequest.setHeader("user-agent", "effect-openai-batch-webhooks/1"),
      HttpClientRequest.bodyText(body, "application/json")
    )).pipe(
      Effect.timeoutTo({
        duration: timeout,
        onSuccess: (response) =>
          response.status >= 200 && response.status < 300
            ? Effect.succeed<AttemptResult>({ status: response.status, answer: "" })
            : Effect.map(answerStart(response.stream), (answer): AttemptResult => ({ status: response.status, answer })),
        onTimeout: () => Effect.succeed<AttemptResult>({ status: null, error: `no answer within ${Duration.format(timeout)}` })
      }),
      Effect.flatten,
      Effect.catchAll((error) => Effect.succeed<AttemptResult>({ status: null, error: noAnswer(error) })),
      Effect.scoped
    )
}
