// @ts-check
/**
 * The server's public API, as the page calls it: the key from localStorage in `Authorization`, a prompt for one
 * when a call answers 401 or the key cannot be sent (one prompt for every call waiting on it), a time limit on
 * every call, OpenAI error envelopes turned into `ApiError`s with the envelope's message (and the server's
 * `retry-after`). Reading files' content is `content.js`'s.
 */

/**
 * @typedef {{ total: number, completed: number, failed: number }} RequestCounts
 * @typedef {{ input_tokens: number, output_tokens: number, total_tokens: number,
 *   input_tokens_details?: { cached_tokens: number }, output_tokens_details?: { reasoning_tokens: number } }} Usage
 * @typedef {{ code: string, message: string, param: string | null, line: number | null }} BatchError
 * @typedef {{ id: string, status: string, endpoint: string, model?: string | null, completion_window: string,
 *   input_file_id: string, output_file_id: string | null, error_file_id: string | null,
 *   created_at: number, in_progress_at: number | null, expires_at: number | null, finalizing_at: number | null,
 *   completed_at: number | null, failed_at: number | null, expired_at: number | null, cancelling_at: number | null,
 *   cancelled_at: number | null, request_counts: RequestCounts, usage?: Usage | null,
 *   errors: { data: BatchError[] } | null, metadata: Record<string, string> | null }} Batch
 * @typedef {{ id: string, bytes: number, created_at: number, filename: string, purpose: string }} FileObject
 */
/**
 * A page of a list, in OpenAI's cursor form.
 * @template T @typedef {{ data: T[], has_more: boolean, last_id: string | null }} Page
 */
/**
 * `fetch`'s options, and `timeout`: how long the call may take, in ms, before it is given up (for a download:
 * how long it may go without a byte); null for none (an upload, whose answer comes after its last byte).
 * @typedef {RequestInit & { timeout?: number | null }} CallOptions
 */

const KEY_ITEM = "openai-batch.api-key"
/**
 * Where the API is: the folder above this module's (`<root>/ui/api.js`), so the page works at the root and under a
 * prefix an app mounts the API at (`/openai/ui/` calls `/openai/v1/…`).
 */
const API_ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "")
/** A call's time limit: a stuck connection fails the call (and the page shows it) instead of holding the page. */
export const CALL_TIMEOUT_MS = 30_000
/** The longest `retry-after` honoured (a larger one is a mistake or hostile: the page tries again then). */
const MAX_RETRY_AFTER_MS = 5 * 60_000
/** What an `Authorization` header can carry of a key: printable ASCII, no spaces (what the dialog accepts). */
export const KEY_PATTERN = /^[\x21-\x7e]+$/

export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {number} status 0 when the server could not be reached or did not answer in time
   * @param {number | null} [retryAfterMs] how long the server asked to wait before trying again
   */
  constructor(message, status, retryAfterMs = null) {
    super(message)
    this.status = status
    this.retryAfterMs = retryAfterMs
  }
}

/** @returns {string | null} */
export const storedKey = () => localStorage.getItem(KEY_ITEM)

/** @type {Set<() => void>} */
const keyListeners = new Set()
/** Calls `listener` whenever the key is set or forgotten, or the prompt for one declined. @param {() => void} listener */
export const onKeyChange = (listener) => keyListeners.add(listener)

/** A key typed and not yet accepted by the server: kept in memory only, so that a refused one is never stored. */
let trying = /** @type {string | null} */ (null)
/** The key calls send: the one being tried, else the one kept. */
const currentKey = () => trying ?? storedKey()

/** @param {string | null} key */
const setKey = (key) => {
  trying = null
  if (key === null) localStorage.removeItem(KEY_ITEM)
  else localStorage.setItem(KEY_ITEM, key)
  keyListeners.forEach((listener) => listener())
}

export const forgetKey = () => setKey(null)

/** A key the server answered without a 401: kept from now on. @param {string | null} key */
const accepted = (key) => {
  if (key !== null && key === trying) setKey(key)
}

/** A key the server refused, or no header can carry: neither tried nor kept any more. @param {string | null} key */
const refused = (key) => {
  if (key !== null && key === trying) trying = null
  else if (key !== null && key === storedKey()) setKey(null)
}

/**
 * Asks the person for a key (the page's dialog); resolves with it, or null when they decline.
 * @type {(reason: string) => Promise<string | null>}
 */
let askForKey = async () => null
/** @param {(reason: string) => Promise<string | null>} ask */
export const setKeyPrompt = (ask) => {
  askForKey = ask
}

/** The prompt on screen, which every call refused meanwhile waits for. @type {Promise<string | null> | null} */
let prompting = null
/** Whether the person declined to give a key: calls then fail at once instead of asking again at every poll. */
let declined = false
export const keyDeclined = () => declined

/**
 * A key to try after `refusedKey` did not do (null: none was sent): one typed meanwhile for another call, else the
 * person's answer to the prompt, which says `reason`.
 * @param {string | null} refusedKey
 * @param {string} reason
 */
const nextKey = async (refusedKey, reason) => {
  const current = currentKey()
  if (current !== null && current !== refusedKey) return current
  if (declined) return null
  prompting ??= askForKey(reason).finally(() => {
    prompting = null
  })
  const key = await prompting
  if (key !== null) trying = key
  else if (!declined) {
    declined = true
    keyListeners.forEach((listener) => listener())
  }
  return key
}

/** Asks for a key now (the header's "Enter key" button, after a decline). */
export const askKeyAgain = async () => {
  declined = false
  const key = await nextKey(currentKey(), "Enter an API key for this server.")
  return key !== null
}

/**
 * The wait a 429 or 503 asks for (`retry-after-ms`, else `retry-after` in seconds or as a date), within bounds.
 * @param {Headers} headers
 */
const retryAfterOf = (headers) => {
  const ms = Number(headers.get("retry-after-ms") ?? NaN)
  const after = headers.get("retry-after")
  const wait = Number.isFinite(ms) ? ms
    : after === null ? NaN
    : /^\d+$/.test(after.trim()) ? Number(after) * 1000
    : Date.parse(after) - Date.now()
  return Number.isFinite(wait) ? Math.min(Math.max(0, wait), MAX_RETRY_AFTER_MS) : null
}

/** @param {Response} res */
const errorOf = async (res) => {
  let message = `The server answered ${res.status} ${res.statusText}.`
  try {
    const body = await res.json()
    if (typeof body?.error?.message === "string" && body.error.message !== "") message = body.error.message
  } catch {
    // not the error envelope: the status says what happened
  }
  return new ApiError(message, res.status, retryAfterOf(res.headers))
}

/**
 * What a failed `fetch` (or the reading of its body) means to the person: the time limit passed, the server could
 * not be reached (`fetch`'s `TypeError`), or its answer could not be read. An abort by the caller (the view was
 * left) stays as it is: nobody is shown it.
 * @param {unknown} error
 * @param {number | null} timeout
 */
const failure = (error, timeout) => {
  if (error instanceof ApiError || (error instanceof DOMException && error.name === "AbortError")) return error
  if (error instanceof DOMException && error.name === "TimeoutError") {
    return new ApiError(`The server did not answer within ${Math.round((timeout ?? 0) / 1000)} s.`, 0)
  }
  if (error instanceof TypeError) return new ApiError("The server could not be reached.", 0)
  return new ApiError("The server's answer could not be read.", 0)
}

/**
 * A signal that aborts when `outer` does, or with a `TimeoutError` after `ms` without a call to `extend`
 * (`done` stops the timer). A timer of the page's own, so that a test's fake clock moves it too.
 * @param {AbortSignal | null | undefined} outer
 * @param {number | null} ms
 */
const deadline = (outer, ms) => {
  const controller = new AbortController()
  const stop = () => controller.abort(outer?.reason)
  outer?.addEventListener("abort", stop, { once: true })
  if (outer?.aborted) stop()
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer
  const extend = () => {
    clearTimeout(timer)
    if (ms !== null) timer = setTimeout(() => controller.abort(new DOMException("timed out", "TimeoutError")), ms)
  }
  extend()
  const done = () => {
    clearTimeout(timer)
    outer?.removeEventListener("abort", stop)
  }
  return { signal: controller.signal, extend, done }
}

/** `headers` with the key, or undefined when the key cannot be sent (not a byte string). @param {string | null} key */
const withKey = (/** @type {HeadersInit | undefined} */ headers, key) => {
  const all = new Headers(headers)
  try {
    if (key !== null) all.set("authorization", `Bearer ${key}`)
  } catch {
    return undefined
  }
  return all
}

/**
 * `fetch` of the API's `path` (`/v1/…`, under `API_ROOT`) with the key and a time limit; a 401, or a key no header can carry, asks for a key and tries again
 * with it. Fails with the envelope's message on any other error status. The time limit runs on until the caller
 * has read the response and calls `limit.done()` (`limit.extend()` restarts it, as a download does at each chunk).
 * @param {string} path
 * @param {CallOptions} [options]
 */
const call = async (path, options = {}) => {
  const { timeout = CALL_TIMEOUT_MS, ...init } = options
  for (;;) {
    init.signal?.throwIfAborted()
    const key = currentKey()
    const headers = withKey(init.headers, key)
    if (headers === undefined) {
      refused(key)
      const reason = "This key cannot be sent: an API key is printable ASCII, without spaces."
      if ((await nextKey(key, reason)) === null) throw new ApiError("The kept API key cannot be sent. Enter another to go on.", 401)
      continue
    }
    const limit = deadline(init.signal, timeout)
    try {
      const res = await fetch(API_ROOT + path, { ...init, headers, signal: limit.signal })
      if (res.status !== 401) accepted(key)
      if (res.ok) return { res, limit }
      const error = await errorOf(res)
      limit.done()
      if (res.status !== 401) throw error
      refused(key)
      const reason = key === null ? "This server needs an API key." : "The server refused this key."
      if ((await nextKey(key, reason)) === null) {
        throw new ApiError(key === null ? "This server needs an API key: enter one to go on." : `${error.message} Enter an API key to go on.`, 401)
      }
    } catch (error) {
      limit.done()
      throw failure(error, timeout)
    }
  }
}

/**
 * The response of `path`, read whole (as `read` reads it, calling `extend` to restart the time limit) within the
 * time limit.
 * @template T
 * @param {string} path
 * @param {CallOptions} options
 * @param {(res: Response, extend: () => void) => Promise<T>} read
 * @returns {Promise<T>}
 */
export const readWithin = async (path, options, read) => {
  const { res, limit } = await call(path, options)
  try {
    return await read(res, limit.extend)
  } catch (error) {
    throw failure(error, options.timeout ?? CALL_TIMEOUT_MS)
  } finally {
    limit.done()
  }
}

/**
 * A call whose JSON answer is read whole.
 * @param {string} path
 * @param {CallOptions} [options]
 * @returns {Promise<any>}
 */
export const json = (path, options = {}) => readWithin(path, options, (res) => res.json())

/**
 * @param {string} path
 * @param {unknown} body
 */
export const postJson = (path, body) =>
  json(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })

/**
 * A multipart upload: no time limit (the answer comes only after the last byte, however long the file).
 * @param {string} path
 * @param {FormData} form
 */
export const postForm = (path, form) => json(path, { method: "POST", body: form, timeout: null })

/** A query string of the parameters that are set. @param {Record<string, string | number | undefined>} params */
export const query = (params) => {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v))
  const text = q.toString()
  return text === "" ? "" : `?${text}`
}

/** @param {string} id */
export const fileUrl = (id) => `/v1/files/${encodeURIComponent(id)}`
/** @param {string} id */
export const batchUrl = (id) => `/v1/batches/${encodeURIComponent(id)}`
