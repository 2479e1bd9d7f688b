/**
 * The `fetch` the CLI gives the `openai` client, on undici's `request`: Node's own `fetch` (and undici's) keeps
 * every chunk of a streamed request body until the request ends — measured: a 107 MB upload held 107 MB of
 * buffers — so a large input file would end up whole in memory. `request` lets each chunk go once it is sent.
 */
import { Readable } from "node:stream"
import { type Dispatcher, EnvHttpProxyAgent, getGlobalDispatcher, request } from "undici"
import { proxiesOf } from "../inference/proxies.js"

/**
 * What bounds a call once connected (undici's connect timeout, 10 s, bounds the connecting): no progress for this
 * long. `headersTimeout` ends a request whose body stops going out (the socket stays full) or whose answer has not
 * begun this long after the body was sent; `bodyTimeout`, an answer that stops arriving. They are undici's defaults,
 * made explicit because they are all that bounds an upload, which has no overall timeout (`BatchApi.ts`).
 */
const INACTIVITY_MS = 300_000

/**
 * Through `HTTPS_PROXY`/`HTTP_PROXY` (`NO_PROXY` exempting hosts), as the Python client goes, when one is set: a
 * batch server reached from behind a corporate proxy (an `https:` one through `HTTP_PROXY` when `HTTPS_PROXY` is
 * unset, as undici takes them). A server on this machine is reached straight, as Go's clients do: a proxy cannot
 * reach the user's loopback (the default base URL's).
 */
let proxied: Dispatcher | undefined
export const throughProxy = (url: string): boolean => proxiesOf(process.env) !== undefined && !isLoopback(url)
const dispatcherFor = (url: string): Dispatcher =>
  throughProxy(url) ? (proxied ??= new EnvHttpProxyAgent({ proxyTunnel: false })) : getGlobalDispatcher()

/** Whether `url` names this machine: `localhost` (a subdomain of it too), an address of 127.0.0.0/8, or `::1`. */
const isLoopback = (url: string) => {
  const host = (URL.canParse(url) ? new URL(url).hostname : "").replace(/\.$/, "")
  return host === "localhost" || host.endsWith(".localhost") || /^127(\.\d{1,3}){3}$/.test(host) || host === "[::1]" ||
    /^\[::ffff:(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|7f[0-9a-f]{2}:[0-9a-f]{1,4})\]$/.test(host)
}

/**
 * A proxy's refusal, as undici throws it: named `AbortError` (for `Proxy response (407) !== 200 when HTTP
 * Tunneling`), which the `openai` client takes for a timeout, and retried as one. Given back as a plain error with
 * the same words and code: a connection error, said as the proxy's (`BatchApi.ts`).
 */
const proxyRefusal = (error: unknown): unknown =>
  error instanceof Error && error.message.startsWith("Proxy ")
    ? Object.assign(new Error(error.message, { cause: error }), { code: (error as { code?: unknown }).code })
    : error

const toBody = (body: RequestInit["body"]): string | Uint8Array | Readable | null => {
  if (body == null) return null
  if (typeof body === "string" || body instanceof Uint8Array) return body
  if (body instanceof ReadableStream) return Readable.fromWeb(body as import("node:stream/web").ReadableStream)
  throw new TypeError(`unsupported request body: ${Object.prototype.toString.call(body)}`)
}

/**
 * An answer's body as a web stream, read as its reader asks. Not Node's `Readable.toWeb`: on Node 20 a chunk that
 * arrives after the stream was cancelled (the `openai` client cancels an error's body before it retries a 429 or
 * 5xx) is enqueued on the closed stream, which throws out of an event handler and ends the process.
 */
const webBody = (body: Readable): ReadableStream<Uint8Array> => {
  const chunks = body[Symbol.asyncIterator]()
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await chunks.next()
      if (next.done === true) controller.close()
      else controller.enqueue(next.value as Uint8Array)
    },
    cancel() {
      // Nobody reads it any more: undici's "Request aborted" for the destroy is nobody's error.
      body.on("error", () => {})
      body.destroy()
    }
  }, { highWaterMark: 0 })
}

export const streamingFetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
  const url = input instanceof Request ? input.url : String(input)
  const method = (init?.method ?? "GET").toUpperCase() as Dispatcher.HttpMethod
  const answer = await request(url, {
    method,
    headers: Object.fromEntries(new Headers(init?.headers)),
    body: toBody(init?.body),
    headersTimeout: INACTIVITY_MS,
    bodyTimeout: INACTIVITY_MS,
    dispatcher: dispatcherFor(url),
    ...(init?.signal ? { signal: init.signal } : {})
  }).catch((error: unknown) => {
    throw proxyRefusal(error)
  })
  const headers = new Headers()
  for (const [name, value] of Object.entries(answer.headers)) {
    for (const v of Array.isArray(value) ? value : value === undefined ? [] : [value]) headers.append(name, v)
  }
  const empty = answer.statusCode === 204 || answer.statusCode === 304 || method === "HEAD"
  if (empty) answer.body.resume()
  return new Response(empty ? null : webBody(answer.body), {
    status: answer.statusCode,
    headers
  })
}
