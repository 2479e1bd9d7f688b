/**
 * The CLI's text for batches at rest: a validation problem's line, `status`'s details, `list`'s table and the
 * summary a watch ends with. Pure; times are Unix seconds, as on the wire.
 */
import type { Batch, BatchError } from "openai/resources/batches"
import { columnsOf, cutToColumns, padToColumns } from "./columns.js"
import { visible } from "./output.js"
import { count, countsOf, duration, failedCountsUnrun, failedWords, tokens } from "./progress.js"

/** `line 3: invalid_json_line: This line is not parseable as valid JSON.` (`file:` for a problem of no line). */
export const problemLine = (e: BatchError): string =>
  `${e.line == null ? "file" : `line ${e.line}`}: ${e.code ?? "error"}: ${e.message ?? ""}`

/** `5m ago`. */
export const ago = (seconds: number, now: number): string => `${duration(now - seconds)} ago`

/** When the batch finished (any way), if it did. */
const endedAt = (b: Batch): number | undefined =>
  (b.completed_at ?? b.failed_at ?? b.cancelled_at ?? b.expired_at) || undefined

/** How long it ran from its creation to its end (or to `now` while it runs). */
export const runTime = (b: Batch, now: number): number => (endedAt(b) ?? now) - b.created_at

/** Each phase that began, and how long it took (to the next one, or to `now`). */
const phases = (b: Batch, now: number): string => {
  const marks = [
    ["validating", b.created_at],
    ["in_progress", b.in_progress_at],
    ["finalizing", b.finalizing_at],
    ["cancelling", b.cancelling_at]
  ].filter((m): m is [string, number] => typeof m[1] === "number" && m[1] > 0).sort((x, y) => x[1] - y[1])
  const end = endedAt(b) ?? now
  return marks.map(([name, at], i) => `${name} ${duration((marks[i + 1]?.[1] ?? end) - at)}`).join(", ")
}

/** `seconds` since the epoch as a UTC date; as given when no date has it (a server's nonsense must not throw). */
const date = (seconds: number) => {
  const at = new Date(seconds * 1000)
  return Number.isNaN(at.getTime()) ? String(seconds) : at.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC")
}

/** A batch's metadata as `k=v, k2=v2` (empty when it has none). */
const metadataPairs = (b: Batch): string => Object.entries(b.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")

/** `status`'s text: one fact a line, then the validation problems, if any. */
export const describeBatch = (b: Batch, now: number): ReadonlyArray<string> => {
  const c = countsOf(b)
  const usage = b.usage
  const rows: Array<[string, string | undefined]> = [
    ["endpoint", b.endpoint],
    ["model", b.model ?? undefined],
    ["input file", b.input_file_id],
    ["requests", c.total === 0 ? undefined : `${count(c.total)}: ${count(c.completed)} completed, ${count(c.failed)} ${failedWords(b)}`],
    [
      "tokens",
      usage && usage.total_tokens > 0
        ? `${tokens(usage.total_tokens)} (input ${tokens(usage.input_tokens)}, output ${tokens(usage.output_tokens)})`
        : undefined
    ],
    ["created", `${date(b.created_at)} (${ago(b.created_at, now)})`],
    ["phases", `${phases(b, now)}${endedAt(b) === undefined ? " so far" : ""}`],
    ["expires", b.expires_at && endedAt(b) === undefined ? date(b.expires_at) : undefined],
    ["output file", b.output_file_id ?? undefined],
    ["error file", b.error_file_id ?? undefined],
    ["metadata", metadataPairs(b) || undefined]
  ]
  const problems = b.errors?.data ?? []
  return [
    `${b.id}: ${b.status}`,
    ...rows.filter((r): r is [string, string] => r[1] !== undefined).map(([k, v]) => `  ${k.padEnd(12)}${v}`),
    ...(problems.length > 0 ? ["  problems:", ...problems.map((e) => `    ${problemLine(e)}`)] : [])
  ]
}

/** A table cell's text on one line: control characters written as JSON escapes (a `\n` in metadata split its row). */
const oneLine = (text: string) => text.replace(/[\u0000-\u001f\u007f]/g, (c) => JSON.stringify(c).slice(1, -1))

/**
 * A batch's metadata as `list` shows it: `k=v, k2=v2`, the whole pairs that fit in `METADATA_SHOWN` columns,
 * then how many more there are (`sweep=lr-3, seed=7, +2 more`: a pair cut mid-key read as another key); a first
 * pair longer than that, cut.
 */
const METADATA_SHOWN = 40
const metadataText = (b: Batch): string => {
  const pairs = Object.entries(b.metadata ?? {}).map(([k, v]) => oneLine(`${k}=${v}`))
  const shown: Array<string> = []
  let length = 0
  for (const pair of pairs) {
    length += (shown.length > 0 ? 2 : 0) + columnsOf(visible(pair))
    if (length > METADATA_SHOWN) break
    shown.push(pair)
  }
  if (shown.length === 0 && pairs.length > 0) shown.push(cutToColumns(visible(pairs[0]!), METADATA_SHOWN))
  const more = pairs.length - shown.length
  return [...shown, ...(more > 0 ? [`+${more} more`] : [])].join(", ")
}

/**
 * `list`'s table: a header and a row per batch, columns aligned; the model (`-` before validation names it), and the
 * metadata when a batch listed has some (what tells one sweep's batches from another's).
 */
export const listLines = (batches: ReadonlyArray<Batch>, now: number): ReadonlyArray<string> => {
  const withMetadata = batches.some((b) => metadataText(b) !== "")
  const rows = [
    ["ID", "STATUS", "DONE/TOTAL", "FAILED", "TOKENS", "CREATED", "MODEL", "ENDPOINT", ...(withMetadata ? ["METADATA"] : [])],
    ...batches.map((b) => {
      const c = countsOf(b)
      return [
        b.id,
        b.status,
        `${count(c.done)}/${count(c.total)}`,
        failedCountsUnrun(b) ? `${count(c.failed)} or not run` : count(c.failed),
        tokens(b.usage?.total_tokens ?? 0),
        ago(b.created_at, now),
        oneLine(b.model ?? "-"),
        b.endpoint,
        ...(withMetadata ? [metadataText(b)] : [])
      ]
    })
  ]
  // In columns, as the terminal draws them (controls as `say` shows them, `⟨U+202E⟩`).
  const shown = rows.map((r) => r.map(visible))
  const widths = shown[0]!.map((_, i) => Math.max(...shown.map((r) => columnsOf(r[i]!))))
  return shown.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : padToColumns(cell, widths[i]!))).join("  ").trimEnd())
}

/**
 * The line a watch ends with: `batch_… completed in 12s: 980 succeeded, 20 failed, 31.4k tokens`. The stamps are
 * whole seconds, so a batch whose stamps are equal ran "under 1s" (not "0s", beside a watch's `[1s]` line).
 */
export const summaryLine = (b: Batch, now: number): string => {
  const c = countsOf(b)
  const ran = runTime(b, now)
  return `${b.id} ${b.status} in ${ran < 1 ? "under 1s" : duration(ran)}: ${count(c.completed)} succeeded, ${count(c.failed)} ${failedWords(b)}` +
    (c.total > c.done ? `, ${count(c.total - c.done)} not run` : "") + `, ${tokens(b.usage?.total_tokens ?? 0)} tokens`
}

/** Whether every request of the batch succeeded: the only outcome a watch exits 0 for. */
export const allSucceeded = (b: Batch): boolean => {
  const c = countsOf(b)
  return b.status === "completed" && c.failed === 0 && c.completed === c.total
}
