/**
 * How a running batch is shown while the CLI watches it: the bar redrawn in place on a terminal, the plain lines
 * written to pipes and CI logs, and the figures both show (done/total, failed, rate, ETA, tokens). Pure: the watch
 * loop (`watch.ts`) feeds it the polled Batch objects and the time.
 */
import type { Batch } from "openai/resources/batches"
import { cutToColumns } from "./columns.js"

export type BatchStatus = Batch["status"]

export const terminalStatuses: ReadonlyArray<BatchStatus> = ["completed", "failed", "expired", "cancelled"]
export const isTerminal = (status: BatchStatus): boolean => terminalStatuses.includes(status)

export interface Counts {
  readonly total: number
  readonly completed: number
  readonly failed: number
  /** Finished either way. */
  readonly done: number
}

/** A count as a server gave it, when it is one; else 0 (a string or a negative one was shown as `5-3` or `NaN`). */
const countGiven = (value: unknown): number => (typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : 0)

export const countsOf = (batch: Batch): Counts => {
  const counts = batch.request_counts
  const [total, completed, failed] = [countGiven(counts?.total), countGiven(counts?.completed), countGiven(counts?.failed)]
  return { total, completed, failed, done: completed + failed }
}

const totalTokens = (batch: Batch): number => batch.usage?.total_tokens ?? 0

/** One reading of how many requests were done, at `at` (milliseconds). */
export interface Sample {
  readonly at: number
  readonly done: number
}

/** The rate is measured over this much recent time: it follows a change of pace within seconds. */
export const RATE_WINDOW_MS = 20_000

/** The samples of the last `RATE_WINDOW_MS` (always at least the previous one) followed by `sample`. */
export const addSample = (samples: ReadonlyArray<Sample>, sample: Sample): ReadonlyArray<Sample> => {
  const kept = samples.filter((s, i) => sample.at - s.at <= RATE_WINDOW_MS || i === samples.length - 1)
  // A count that went down (a rerun watched under the same id cannot, but a server restart may report less for a
  // moment) starts the measure over rather than giving a negative rate.
  return kept.length > 0 && sample.done < kept[kept.length - 1]!.done ? [sample] : [...kept, sample]
}

/** Requests done per second over the samples; undefined until they span a second. */
export const rate = (samples: ReadonlyArray<Sample>): number | undefined => {
  if (samples.length < 2) return undefined
  const first = samples[0]!
  const last = samples[samples.length - 1]!
  const seconds = (last.at - first.at) / 1000
  return seconds >= 1 ? (last.done - first.done) / seconds : undefined
}

/** Seconds until `remaining` requests are done at `perSecond`; undefined while there is no pace to go by. */
export const etaSeconds = (remaining: number, perSecond: number | undefined): number | undefined =>
  remaining <= 0 ? 0 : perSecond === undefined || perSecond <= 0 ? undefined : remaining / perSecond

/** `45s`, `3m05s`, `2h04m`. */
export const duration = (seconds: number): string => {
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`
}

/** `noun` as `n` of it reads: `line`, `lines`. */
export const plural = (noun: string, n: number): string => (n === 1 ? noun : `${noun}s`)

/** `12,345`. */
export const count = (n: number): string => Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",")

/** `950`, `12.3k`, `4.56M`. */
export const tokens = (n: number): string =>
  n < 1000 ? String(n) : n < 1_000_000 ? `${trim((n / 1000).toFixed(1))}k` : `${trim((n / 1_000_000).toFixed(2))}M`
const trim = (s: string) => s.replace(/\.0+$/, "")

/** `48.2/s`, `1,250/s`, `0.3/s`. */
export const perSecond = (r: number): string => (r >= 100 ? `${count(r)}/s` : `${r.toFixed(1)}/s`)

/**
 * What `request_counts.failed` counts: for a batch a cancel or its expiry ended, the lines it left unrun as well
 * (`batch_cancelled`, `batch_expired`), as OpenAI's does: "2,000/2,000 done, 1,968 failed" read as a run that failed.
 * A server that leaves them out of every count has them said apart ("6 not run").
 */
export const failedCountsUnrun = (b: Batch): boolean => {
  const c = countsOf(b)
  return (b.status === "cancelled" || b.status === "expired") && c.total > 0 && c.done === c.total
}

export const failedWords = (b: Batch): string => (failedCountsUnrun(b) ? "failed or not run" : "failed")

/** A bar of `width` cells, `fraction` of them full (clamped to 0–1). */
export const bar = (fraction: number, width: number): string => {
  const full = Math.round(Math.min(1, Math.max(0, fraction)) * width)
  return "█".repeat(full) + "░".repeat(width - full)
}

const percent = (c: Counts) => (c.total === 0 ? 0 : Math.floor((c.done / c.total) * 100))

/**
 * The figures after the counts: failed, rate, ETA, tokens. The rate and the ETA only while requests run: a cancel
 * counts the requests it stops as failed at once, which a rate would show as a burst of work.
 */
const figures = (batch: Batch, perSec: number | undefined): Array<string> => {
  const c = countsOf(batch)
  const parts = [`${count(c.failed)} ${failedWords(batch)}`]
  if (batch.status === "in_progress") {
    if (perSec !== undefined) parts.push(perSecond(perSec))
    const eta = etaSeconds(c.total - c.done, perSec)
    parts.push(`ETA ${eta === undefined ? "?" : duration(eta)}`)
  }
  parts.push(`${tokens(totalTokens(batch))} tokens`)
  return parts
}

/** The counts, once the batch knows its total (not while it validates). */
const countsText = (c: Counts) => `${count(c.done)}/${count(c.total)} (${percent(c)}%)`

/** The live line on a terminal, in at most `columns - 1` columns (so the cursor never wraps). */
export const barLine = (batch: Batch, perSec: number | undefined, columns: number): string => {
  const c = countsOf(batch)
  const head = `${batch.status.padEnd(11)} `
  const tail = c.total === 0 ? "" : ` ${countsText(c)}  ${figures(batch, perSec).join("  ")}`
  const room = columns - 1 - head.length - tail.length - 2
  const width = Math.min(40, room)
  const line = width >= 10 && c.total > 0 ? `${head}[${bar(c.done / c.total, width)}]${tail}` : `${head}${tail.trimStart()}`
  return cutToColumns(line, Math.max(0, columns - 1))
}

/** A plain progress line (pipes, CI logs), `elapsed` seconds since the batch was created. */
export const plainLine = (batch: Batch, perSec: number | undefined, elapsed: number): string => {
  const c = countsOf(batch)
  const head = `[${duration(elapsed)}] ${batch.id} ${batch.status}`
  return c.total === 0 ? head : `${head} ${countsText(c)}, ${figures(batch, perSec).join(", ")}`
}

/** When a plain line is written: at each change of status; else at most one every few seconds while counts move. */
export const PLAIN_EVERY_MS = 5_000
/** …and one at least this often even when nothing moves, so a CI job never looks hung. */
export const PLAIN_HEARTBEAT_MS = 60_000

export interface Printed {
  readonly status: BatchStatus
  readonly done: number
  readonly at: number
}

export const plainLineDue = (last: Printed | undefined, batch: Batch, now: number): boolean => {
  if (last === undefined || last.status !== batch.status) return true
  const since = now - last.at
  return (countsOf(batch).done !== last.done && since >= PLAIN_EVERY_MS) || since >= PLAIN_HEARTBEAT_MS
}
