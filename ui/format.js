// @ts-check
/**
 * Numbers, sizes and times as the page shows them. The same figures as the command line's (`src/cli/progress.ts`,
 * `describe.ts`): done = completed + failed, a batch's run time from its creation to its end. A unit is chosen
 * after rounding, so 999,999 is `1M` (not `1000k`) and 1,048,575 bytes `1 MB` (not `1024 KB`).
 */

/** @typedef {import("./api.js").Batch} Batch */

/** Embeddings, overrides and isolates: invisible, they reorder the text around them (`\u202E` shows `txt.exe` as `exe.txt`). */
const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g

/**
 * Text as the page shows it: the bidirectional controls drawn as `⟨U+202E⟩`, so that nobody's file name, metadata or
 * message can pass for another (right-to-left text itself, and its marks, are shown as they are).
 * @param {string} text
 */
export const visible = (text) =>
  text.replace(BIDI_CONTROLS, (c) => `⟨U+${c.charCodeAt(0).toString(16).toUpperCase()}⟩`)

/** A batch's metadata shown in a row: `k=v, k2=v2`, cut at this many characters (the batch's page shows it all). */
const METADATA_SHOWN = 60

/**
 * What tells a batch from its neighbours in a list: its endpoint, model (once validation named it) and metadata,
 * `/v1/chat/completions · llama3 · sweep=lr-3e-4`.
 * @param {{ endpoint: string, model?: string | null, metadata?: Record<string, string> | null }} b
 */
export const batchSubline = (b) => {
  const pairs = Object.entries(b.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")
  // Cut before a character the cut would split (an emoji's surrogate pair, drawn as `�` when cut in half).
  const metadata = pairs.length > METADATA_SHOWN ? `${pairs.slice(0, METADATA_SHOWN - 1).replace(/[\uD800-\uDBFF]$/, "")}…` : pairs
  return visible([b.endpoint, b.model ?? "", metadata].filter((part) => part !== "").join(" · "))
}

/**
 * Whether batch `b` is one the list's filter asks for: of `status` (`""`: any; `failures`: a batch whose requests
 * failed, not counting those a cancel or an expiry left unrun), and each word of `text` found, in any case. A word
 * `key=value` is a metadata pair, whole (`sweep=lr-3` is not `sweep=lr-30`), or `model=`, `status=`, `endpoint=`;
 * another is looked for in the batch's id, model, endpoint, status, file ids, metadata pairs and validation errors
 * (a model no upstream served is named there only). Words are split at spaces and commas, so that a row's metadata
 * line copied (`sweep=lr-3, seed=7`) finds its batch.
 * @param {import("./api.js").Batch} b @param {string} text @param {string} status
 */
export const batchMatches = (b, text, status) => {
  if (status === "failures" ? !(b.request_counts.failed > 0 && !failedMayBeUnrun(b)) : status !== "" && b.status !== status) return false
  const words = text.toLowerCase().replace(/\s*=\s*/g, "=").split(/[\s,]+/).filter((w) => w !== "")
  if (words.length === 0) return true
  const pairs = Object.entries(b.metadata ?? {}).map(([k, v]) => `${k}=${v}`.toLowerCase())
  const fields = [`model=${b.model ?? ""}`, `status=${b.status}`, `endpoint=${b.endpoint}`].map((p) => p.toLowerCase())
  const said = [b.id, b.model ?? "", b.endpoint, b.status, b.input_file_id, b.output_file_id ?? "", b.error_file_id ?? "", ...pairs,
    ...(b.errors?.data ?? []).map((e) => e.message)].join("\n").toLowerCase()
  return words.every((w) => (w.includes("=") && !w.startsWith("=") ? pairs.includes(w) || fields.includes(w) : said.includes(w)))
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 })

/** `12,345`. @param {number} n */
export const count = (n) => integer.format(n)

/** @param {string} s */
const trim = (s) => s.replace(/\.0+$/, "")

/** `950`, `12.3k`, `4.56M`. @param {number} n */
export const tokens = (n) => {
  if (n < 1000) return String(n)
  const thousands = (n / 1000).toFixed(1)
  return Number(thousands) < 1000 ? `${trim(thousands)}k` : `${trim((n / 1_000_000).toFixed(2))}M`
}

const BYTE_UNITS = ["B", "KB", "MB", "GB", "TB"]

/** `512 B`, `12.4 KB`, `3.1 MB` (powers of 1024). @param {number} n */
export const bytes = (n) => {
  const shown = (/** @type {number} */ unit) => (n / 1024 ** unit).toFixed(1)
  let unit = 0
  while (unit < BYTE_UNITS.length - 1 && Number(shown(unit)) >= 1024) unit++
  return unit === 0 ? `${n} B` : `${trim(shown(unit))} ${BYTE_UNITS[unit]}`
}

/** `1.5 MB of 12 MB (12%)`, or `1.5 MB` when the size is not known. @param {number} received @param {number | null} total */
export const transferred = (received, total) =>
  total === null || total <= 0 || received > total
    ? bytes(received)
    : `${bytes(received)} of ${bytes(total)} (${Math.floor((100 * received) / total)}%)`

/** `45s`, `3m05s`, `2h04m`, `3d02h`. @param {number} seconds */
export const duration = (seconds) => {
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`
}

/** Now, in Unix seconds (the API's unit). */
export const nowSeconds = () => Date.now() / 1000

/** `5m ago`. @param {number} at Unix seconds */
export const ago = (at) => `${duration(nowSeconds() - at)} ago`

const two = (/** @type {number} */ n) => String(n).padStart(2, "0")

/**
 * A local date and time with its offset from UTC: `2025-03-14 09:26:53 UTC−5`, `… UTC+5:30`, `… UTC` (the CLI and
 * the logs say UTC: a time without its zone read as one of them was hours off).
 * @param {number} at Unix seconds
 */
export const dateTime = (at) => {
  const d = new Date(at * 1000)
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`
  return `${date} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${utcOffset(d.getTimezoneOffset())}`
}

/** `09:26 UTC−5`: the hour and minute, with the offset. @param {number} at Unix seconds */
export const timeOfDay = (at) => {
  const d = new Date(at * 1000)
  return `${two(d.getHours())}:${two(d.getMinutes())} ${utcOffset(d.getTimezoneOffset())}`
}

/** `UTC+1`, `UTC−5`, `UTC+5:45`, `UTC`. @param {number} minutesBehind what `Date#getTimezoneOffset` gives */
export const utcOffset = (minutesBehind) => {
  if (minutesBehind === 0) return "UTC"
  const ahead = Math.abs(minutesBehind)
  const minutes = ahead % 60
  return `UTC${minutesBehind < 0 ? "+" : "−"}${Math.floor(ahead / 60)}${minutes === 0 ? "" : `:${two(minutes)}`}`
}

/** When the batch ended, any way, if it did. @param {Batch} b */
export const endedAt = (b) => b.completed_at ?? b.failed_at ?? b.cancelled_at ?? b.expired_at ?? null

/** From its creation to its end, or to now while it runs. @param {Batch} b */
export const runTime = (b) => (endedAt(b) ?? nowSeconds()) - b.created_at

/**
 * Whether a batch's `failed` count holds requests that never ran: OpenAI counts those a cancel or an expiry left
 * (`batch_cancelled`, `batch_expired`) as failed, and the batch object cannot tell them apart.
 * @param {Batch} b
 */
export const failedMayBeUnrun = (b) => b.status === "cancelled" || b.status === "expired"

/** What the `failed` count is called: `failed`, or `failed or not run (cancelled)`. @param {Batch} b */
export const failedWords = (b) => (failedMayBeUnrun(b) ? `failed or not run (${b.status})` : "failed")

/**
 * What an upstream's `down_reason` means: `DOWN_REASONS` of `src/cli/upstreamNotes.ts`, which the page cannot
 * import (test/DashboardFormat.test.ts checks the two are the same). @type {Record<string, string>}
 */
export const DOWN_REASONS = {
  unreachable: "no connection",
  failing: "its calls fail",
  key: "its key is refused",
  path: "its base URL misses the version path",
  quota: "its quota is spent"
}
