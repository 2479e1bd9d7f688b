/**
 * The CLI's calls to an OpenAI-compatible Files + Batches API, through the official `openai` client (so it works
 * against this server and any other), each interruptible (Ctrl-C aborts the request) and failing with a
 * `CliFailure` that says what went wrong in a sentence.
 */
import { setMaxListeners } from "node:events"
import { createReadStream } from "node:fs"
import * as Path from "node:path"
import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError, toStreamingFile } from "openai"
import type { Batch, BatchCreateParams } from "openai/resources/batches"
import type { FileObject } from "openai/resources/files"
import { Context, Duration, Effect, Layer, Option } from "effect"
import { retryAfterMillis } from "../inference/answers.js"
import { connectionHint, proxyRefusalStatus, proxyShown } from "../inference/connectionHints.js"
import { proxiesOf } from "../inference/proxies.js"
import { withoutCredentials } from "../observability/urlText.js"
import { asBatch, asFile, asListPage, upstreamsSeen } from "./answerShapes.js"
import { CliFailure, EXIT_FAILED } from "./failure.js"
import { note } from "./output.js"
import { streamingFetch, throughProxy } from "./streamingFetch.js"
import type { UpstreamSeen } from "./upstreamNotes.js"

/** Where `npm start` serves (the server's default `HOST` and `PORT`). */
export const DEFAULT_BASE_URL = "http://127.0.0.1:8321/v1"

export interface Connection {
  readonly baseUrl: string
  /** None: the server runs without keys (a placeholder is sent, as the client needs one). */
  readonly apiKey: string | undefined
  /** How long a call but the upload may wait for its answer (default: the client's 10 minutes). */
  readonly timeout?: Duration.Duration
}

/**
 * The upload's overall timeout: none in effect (the longest timer Node keeps; a longer one would fire at once). The
 * client's timer runs until the answer's headers arrive, and those come after the last byte of the file went up: a
 * large file on a slow link would be cut at 10 minutes however well it was moving. What bounds it instead are
 * undici's inactivity timers (`streamingFetch.ts`): connecting, a send that makes no progress, and the wait for the
 * answer once the file is sent.
 */
const NO_OVERALL_TIMEOUT_MS = 2 ** 31 - 1

/** Which requests `retry` reruns (`only` of `POST /v1/batches/{id}/retry`). */
export type RerunKind = "error" | "expired" | "cancelled"

export interface BatchApiShape {
  readonly baseUrl: string
  /**
   * Streams the file at `path` up as a `batch` file, never whole in memory; `shownAs` names it in what is said of it
   * (`path` when not given), `onRead` is told the bytes read for it so far (from 0 again when a busy server's
   * refusal has it sent again).
   */
  readonly upload: (path: string, shownAs?: string, onRead?: (bytes: number) => void) => Effect.Effect<FileObject, CliFailure>
  /**
   * With an `idempotency_key` (an extension of this server), a create that failed in a way that may pass (no answer,
   * a 5xx) is asked again (`unlessLost`): the server answers it with the batch made the first time, if any.
   */
  readonly create: (params: BatchCreateParams & { readonly idempotency_key?: string }) => Effect.Effect<Batch, CliFailure>
  readonly retrieve: (id: string) => Effect.Effect<Batch, CliFailure>
  /** `retrieve` tried once: for a watch, which has its own policy of trying again (`patience.ts`). */
  readonly poll: (id: string) => Effect.Effect<Batch, CliFailure>
  /**
   * The newest `limit` batches (after batch `after`, when given) that `keep` keeps, read a page of 100 at a time
   * (the API's most) as far as needed.
   */
  readonly list: (limit: number, options?: {
    readonly after?: string | undefined
    readonly keep?: ((batch: Batch) => boolean) | undefined
  }) => Effect.Effect<ReadonlyArray<Batch>, CliFailure>
  readonly cancel: (id: string) => Effect.Effect<Batch, CliFailure>
  /**
   * The rerun extension: a new batch of the requests that did not succeed; with `idempotencyKey`, the rerun made
   * with that key before, if any.
   */
  readonly retry: (id: string, only: ReadonlyArray<RerunKind>, idempotencyKey?: string) => Effect.Effect<Batch, CliFailure>
  /**
   * A file's bytes, as they arrive, from byte `from` on when the server answers a `Range` (`resumed`), else from
   * the start, and the file's whole size when the server says it; tried once (saving a file has its own policy of
   * trying again).
   */
  readonly content: (
    fileId: string,
    from?: number
  ) => Effect.Effect<{ readonly body: ReadableStream<Uint8Array>; readonly resumed: boolean; readonly size: number | undefined }, CliFailure>
  readonly deleteFile: (fileId: string) => Effect.Effect<void, CliFailure>
  /**
   * This server's `GET /v1/upstreams` (an extension), tried once: `unsupported` from a server without it (a 404),
   * `unavailable` when it fails otherwise.
   */
  readonly upstreams: Effect.Effect<ReadonlyArray<UpstreamSeen> | "unsupported" | "unavailable">
}

export class BatchApi extends Context.Tag("cli/BatchApi")<BatchApi, BatchApiShape>() {}

/** Why a failure may pass if the call is made again: the server unreachable or busy for now. */
const transience = (error: unknown): string | undefined =>
  error instanceof APIConnectionTimeoutError
    ? "no answer in time"
    : error instanceof APIConnectionError
    // A proxy refusing the credentials it was given: waiting does not mend them.
    ? (proxyRefusalStatus((error.cause as Error | undefined)?.message ?? "") === 407 ? undefined : causeOf(error))
    : error instanceof APIError && error.status !== undefined && (error.status === 408 || error.status === 429 || error.status >= 500)
    ? error.message.slice(0, 200)
    : undefined

/**
 * An answer that says the path is not the API's: this server's unknown-route 404, or its 415 for a body posted
 * anywhere but to an upload or a JSON endpoint (`POST /files` without `/v1`).
 */
const wrongRoute = (error: APIError) =>
  (error.status === 404 && error.message.includes("Invalid URL")) || error.status === 415

/**
 * A 404 without an error code: not this server's (its 404s name one, `not_found`), most often an inference server's
 * address given for this one (an `OPENAI_BASE_URL` set for vLLM or LiteLLM): "404 Unknown route GET /v1/batches".
 */
const otherServers = (error: APIError) => error.status === 404 && error.code == null && !wrongRoute(error)

/**
 * A 502, 503 or 504 without an error code: not this server's (its own name one), but a proxy's or a load
 * balancer's in front of it that could not reach it. Through `HTTP_PROXY`, an `http:` base URL's calls are answered by
 * the proxy alone (it forwards them whole): its 502 read as the server's.
 */
const notTheServers = (error: APIError) =>
  error.status !== undefined && error.status >= 502 && error.status <= 504 && error.code == null

/**
 * ` (the proxy http://…, from HTTP_PROXY)` for an `http:` base URL the CLI calls through a proxy, else nothing (an
 * `https:` one's calls go through a tunnel: what answers in it is past the proxy).
 */
const proxyNamed = (baseUrl: string) => {
  const proxies = baseUrl.startsWith("http:") && throughProxy(baseUrl) ? proxiesOf(process.env) : undefined
  const proxy = proxies === undefined ? undefined : proxyShown(baseUrl, proxies)
  return proxy === undefined ? "" : ` (the proxy ${proxy}, from HTTP_PROXY)`
}

/** What a failed call tells the user: the server's own message, or why it could not be reached. */
const explain = (what: string, connection: Connection) => (error: unknown): CliFailure => {
  // A user and password in the URL are nobody's to read in a terminal or a CI log.
  const shown = withoutCredentials(connection.baseUrl)
  const message = error instanceof APIConnectionTimeoutError
    ? `${what}: ${shown} did not answer in time`
    : error instanceof APIConnectionError
    ? connectionLine(what, shown, connection.baseUrl, error)
    : error instanceof APIError
    ? `${what}: ${error.message}${error.code ? ` (${error.code})` : ""}` +
      (error.status === 401 && connection.apiKey === undefined ? "; give a key with --api-key or OPENAI_API_KEY" : "") +
      (wrongRoute(error) && !/\/v1\/?$/.test(connection.baseUrl) ? `; the base URL is the API's, /v1 included (${shown.replace(/\/$/, "").replace(/\/v\d+$/, "")}/v1?)` : "") +
      (otherServers(error) ? `; ${shown} has no Batches API: is it this server's address (--base-url, else OPENAI_BASE_URL)?` : "") +
      (notTheServers(error) ? `; that answer is not the server's (its own errors name a code): a proxy or load balancer in front${proxyNamed(connection.baseUrl)} could not reach it` : "")
    : `${what}: ${error instanceof Error ? error.message : String(error)}`
  const transient = transience(error)
  const answered = error instanceof APIError && error.status !== undefined
  const busyForMs = error instanceof APIError ? busyWait(error.status, error.headers) : undefined
  return new CliFailure({
    exitCode: EXIT_FAILED,
    message,
    answered,
    ...(error instanceof APIError && error.status !== undefined ? { status: error.status } : {}),
    ...(transient === undefined ? {} : { transient }),
    ...(busyForMs === undefined ? {} : { busyForMs })
  })
}

/**
 * The wait a 429 or 503 asks for (`retry-after-ms`, else `retry-after`, read as the server's own upstream calls read
 * it; a 503 that says none, 2 s), at most a minute; `undefined` for another status, or a 429 that names no wait (a
 * limit that does not pass in seconds, as the most active batches a project may have).
 */
const busyWait = (status: number | undefined, headers: Headers | undefined): number | undefined => {
  if (status !== 429 && status !== 503) return undefined
  const asked = retryAfterMillis(
    { "retry-after-ms": headers?.get("retry-after-ms") ?? undefined, "retry-after": headers?.get("retry-after") ?? undefined },
    Date.now()
  )
  return Option.match(asked, {
    onNone: () => (status === 503 ? 2000 : undefined),
    onSome: (ms) => Math.min(ms, 60_000)
  })
}

/** How many times a call the client does not repeat (an upload, a create, a rerun) is made again after a 429 or 503. */
const BUSY_RETRIES = 3
/** How many times a create or rerun with an idempotency key is made again after a failure that may pass (`unlessLost`). */
const KEYED_RETRIES = 2

/**
 * `effect`, made again (up to `BUSY_RETRIES` times, after the wait the server asked for, said on stderr) while the
 * server answers that it is busy: a 429 or a 503 is a refusal before anything was done, so a second upload or
 * create cannot make a second file or batch (a lost answer could: see `unlessLost`).
 */
const unlessBusy = <A>(effect: Effect.Effect<A, CliFailure>, triesLeft = BUSY_RETRIES): Effect.Effect<A, CliFailure> =>
  Effect.catchIf(effect, (e) => e.busyForMs !== undefined && triesLeft > 0, (e) =>
    note(`${e.message}; trying again in ${Math.ceil(e.busyForMs! / 1000)}s…`).pipe(
      Effect.zipRight(Effect.sleep(Duration.millis(e.busyForMs!))),
      Effect.zipRight(unlessBusy(effect, triesLeft - 1))
    ))

/**
 * A create or rerun with an idempotency key (`keyed`), made again (up to `KEYED_RETRIES` times, 1 s then 2 s later,
 * said on stderr) after a failure that may pass (no answer, a refused connection, a 408 or a 5xx; a busy answer is
 * `unlessBusy`'s): the server answers it with what the first made, if it made anything. Without a key such a call
 * is made once (a second could make a second batch), as by the client (`maxRetries: 0`).
 */
const unlessLost = <A>(effect: Effect.Effect<A, CliFailure>, keyed: boolean, tried = 0): Effect.Effect<A, CliFailure> =>
  !keyed ? effect : Effect.catchIf(
    effect,
    (e) => tried < KEYED_RETRIES && e.transient !== undefined && e.busyForMs === undefined,
    (e) =>
      note(`${e.message.split(";")[0]}; asking again in ${2 ** tried}s (the idempotency key makes it safe)…`).pipe(
        Effect.zipRight(Effect.sleep(Duration.seconds(2 ** tried))),
        Effect.zipRight(unlessLost(effect, keyed, tried + 1))
      )
  )

/** Causes that say nothing listens there (or no such host): a server to start, or another address. */
const NOTHING_THERE = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "UND_ERR_CONNECT_TIMEOUT"])

/**
 * Why a call got no answer, with what to do: start a server only when nothing listens there. A server reached over
 * https that speaks http, and a connection lost half-way (an upload cut), were told to start a server.
 */
const connectionLine = (what: string, shown: string, baseUrl: string, error: APIConnectionError): string => {
  const cause = causeOf(error)
  const code = (error.cause as { code?: string } | undefined)?.code ?? ""
  // Through a proxy: said when the proxy is the one that failed (down, refusing), not the server.
  const hint = error.cause instanceof Error && throughProxy(baseUrl)
    ? connectionHint(error.cause, baseUrl, proxiesOf(process.env), Boolean(process.env.NODE_EXTRA_CA_CERTS), "server")
    : ""
  if (hint !== "") return `${what}: cannot reach ${shown} (${cause})${hint}`
  if (NOTHING_THERE.has(code)) {
    return `${what}: cannot reach ${shown} (${cause}); start a server with \`openai-batch serve\`, ` +
      "or point --base-url (or OPENAI_BASE_URL) at one"
  }
  if (/^ERR_SSL_|^EPROTO$/.test(code) && shown.startsWith("https:")) {
    return `${what}: ${shown} does not answer in https (${cause}): is it ${shown.replace(/^https:/, "http:")}?`
  }
  return `${what}: the connection to ${shown} was lost (${cause})`
}

/** `ECONNREFUSED`, `other side closed`: the system's code, else (undici's codes say less) the message. */
const causeOf = (error: APIConnectionError): string => {
  const cause = error.cause as { code?: string; message?: string } | undefined
  return (cause?.code?.startsWith("UND_ERR") ? cause.message : cause?.code) ?? cause?.message ?? error.message
}

/** `source`'s chunks, `onRead` told the bytes read so far as each is (a stream the request stops reading is closed). */
async function* counted(source: AsyncIterable<Uint8Array>, onRead: (bytes: number) => void = () => {}) {
  let read = 0
  for await (const chunk of source) {
    onRead((read += chunk.length))
    yield chunk
  }
}

export const make = (connection: Connection): BatchApiShape => {
  const client = new OpenAI({
    baseURL: connection.baseUrl,
    // Without a key, no Authorization header (the SDK wants a key all the same): a server then says none was given,
    // not that "none" is wrong.
    apiKey: connection.apiKey ?? "none",
    ...(connection.apiKey === undefined ? { defaultHeaders: { Authorization: null } } : {}),
    fetch: streamingFetch,
    ...(connection.timeout ? { timeout: Duration.toMillis(connection.timeout) } : {})
  })
  const call = <A>(what: string, f: (signal: AbortSignal) => Promise<A>) =>
    Effect.tryPromise({ try: f, catch: explain(what, connection) })

  return {
    baseUrl: connection.baseUrl,
    upload: (path, shownAs = path, onRead) =>
      unlessBusy(call(`uploading ${shownAs}`, (signal) =>
        client.files.create(
          // Opened at each attempt: a stream cannot be sent twice, so the client does not retry it.
          { file: toStreamingFile(counted(createReadStream(path), onRead), Path.basename(path)), purpose: "batch" },
          { signal, maxRetries: 0, timeout: NO_OVERALL_TIMEOUT_MS }
        ).then(asFile))),
    create: (params) =>
      unlessBusy(unlessLost(
        call("creating the batch", (signal) => client.batches.create(params, { signal, maxRetries: 0 }).then(asBatch)),
        params.idempotency_key !== undefined
      )),
    retrieve: (id) => call(`reading batch ${id}`, (signal) => client.batches.retrieve(id, { signal }).then(asBatch)),
    poll: (id) => call(`reading batch ${id}`, (signal) => client.batches.retrieve(id, { signal, maxRetries: 0 }).then(asBatch)),
    // Page after page up to `limit`: a page ends sooner than its `limit` when its batches are large (`has_more`).
    list: (limit, { after, keep } = {}) =>
      call("listing batches", async (signal) => {
        // The client adds an abort listener to it per page and keeps them: past 10 pages Node warned of a leak.
        setMaxListeners(0, signal)
        const batches: Array<Batch> = []
        // Filtered, a page holds fewer than it reads: whole pages then. A page that adds no batch not listed before
        // is a server whose pages do not move on (the same `last_id` again and again): a filtered list asked for it
        // 1,200 times a second. A batch listed again (a cursor that takes ties in) is skipped.
        const seen = new Set<string>()
        const first = { limit: keep === undefined ? Math.min(limit, 100) : 100, ...(after === undefined ? {} : { after }) }
        for (let page = await client.batches.list(first, { signal }); ; page = await page.getNextPage()) {
          asListPage((page as unknown as { readonly body: unknown }).body) // the SDK reads any answer as a page
          const before = seen.size
          for (const listed of page.data) {
            const batch = asBatch(listed)
            if (seen.has(batch.id)) continue
            seen.add(batch.id)
            if (keep === undefined || keep(batch)) batches.push(batch)
            if (batches.length >= limit) return batches
          }
          if (!page.hasNextPage()) return batches
          if (seen.size === before) throw new Error(`the server's next page lists no batch not listed before: its pages do not move on`)
        }
      }),
    cancel: (id) => call(`cancelling batch ${id}`, (signal) => client.batches.cancel(id, { signal }).then(asBatch)),
    retry: (id, only, idempotencyKey) =>
      unlessBusy(unlessLost(
        call(`rerunning batch ${id}`, (signal) =>
          client.post<Batch>(`/batches/${encodeURIComponent(id)}/retry`, {
            ...(only.length > 0 || idempotencyKey !== undefined
              ? { body: { ...(only.length > 0 ? { only } : {}), ...(idempotencyKey === undefined ? {} : { idempotency_key: idempotencyKey }) } }
              : {}),
            signal,
            maxRetries: 0
          }).then(asBatch)),
        idempotencyKey !== undefined
      )),
    content: (fileId, from = 0) =>
      call(`downloading file ${fileId}`, async (signal) => {
        const asked = from > 0 ? { headers: { range: `bytes=${from}-` } } : {}
        const response = await client.files.content(fileId, { signal, maxRetries: 0, ...asked })
        if (response.body === null) throw new Error("the answer has no body")
        // The part asked for, or (a server without ranges: a 200) the whole file.
        const range = response.headers.get("content-range") ?? ""
        const resumed = from > 0 && response.status === 206 && range.startsWith(`bytes ${from}-`)
        const size = Number(resumed ? /\/(\d+)$/.exec(range)?.[1] : response.headers.get("content-length") ?? undefined)
        return { body: response.body, resumed, size: Number.isSafeInteger(size) ? size : undefined }
      }),
    deleteFile: (fileId) => call(`deleting file ${fileId}`, (signal) => client.files.delete(fileId, { signal })).pipe(Effect.asVoid),
    upstreams: Effect.tryPromise((signal) => client.get<{ data: ReadonlyArray<UpstreamSeen> }>("/upstreams", { signal, maxRetries: 0 })).pipe(
      Effect.map((list) => (Array.isArray(list?.data) ? upstreamsSeen(list.data) : "unsupported" as const)),
      Effect.catchAll((e) => Effect.succeed(e.error instanceof APIError && e.error.status === 404 ? "unsupported" as const : "unavailable" as const))
    )
  }
}

export const layer = (connection: Connection): Layer.Layer<BatchApi> => Layer.sync(BatchApi, () => make(connection))
