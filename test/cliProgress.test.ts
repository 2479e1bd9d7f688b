/** The CLI's text: the live bar, plain progress lines and when they are due, rate and ETA, status, list, summary. */
import { describe, expect, it } from "@effect/vitest"
import type { Batch } from "openai/resources/batches"
import { allSucceeded, describeBatch, listLines, problemLine, summaryLine } from "../src/cli/describe.js"
import { savedLines } from "../src/cli/download.js"
import { drawsInPlace, modeOf } from "../src/cli/output.js"
import {
  addSample,
  bar,
  barLine,
  count,
  duration,
  etaSeconds,
  PLAIN_EVERY_MS,
  PLAIN_HEARTBEAT_MS,
  plainLine,
  plainLineDue,
  rate,
  RATE_WINDOW_MS,
  tokens
} from "../src/cli/progress.js"

const T0 = 1_750_000_000

/** A Batch with `over` on top (an `undefined` there leaves the field out, as a server may). */
const batch = (over: { [K in keyof Batch]?: Batch[K] | undefined } = {}): Batch => ({
  id: "batch_abc",
  object: "batch",
  endpoint: "/v1/chat/completions",
  input_file_id: "file-in",
  completion_window: "24h",
  status: "in_progress",
  created_at: T0,
  in_progress_at: T0 + 2,
  expires_at: T0 + 86400,
  request_counts: { total: 1000, completed: 600, failed: 12 },
  usage: { input_tokens: 20_000, input_tokens_details: { cached_tokens: 0 }, output_tokens: 11_400, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 31_400 },
  metadata: null,
  ...over
} as Batch)

describe("progress figures", () => {
  it("formats durations, counts, tokens and bars", () => {
    expect([duration(0), duration(45.4), duration(185), duration(7440)]).toEqual(["0s", "45s", "3m05s", "2h04m"])
    expect([count(7), count(1000), count(1234567)]).toEqual(["7", "1,000", "1,234,567"])
    expect([tokens(950), tokens(1000), tokens(31_400), tokens(4_560_000)]).toEqual(["950", "1k", "31.4k", "4.56M"])
    expect(bar(0.5, 10)).toBe("█████░░░░░")
    expect(bar(1.7, 4)).toBe("████")
    expect(bar(-1, 4)).toBe("░░░░")
  })

  it("measures the rate over the recent window, and the ETA from it", () => {
    let samples = addSample([], { at: 0, done: 0 })
    expect(rate(samples)).toBeUndefined()
    samples = addSample(samples, { at: 500, done: 40 })
    expect(rate(samples)).toBeUndefined() // under a second: no rate yet
    samples = addSample(samples, { at: 2000, done: 100 })
    expect(rate(samples)).toBe(50)
    // Old samples leave the window: the rate follows a change of pace.
    samples = addSample(samples, { at: RATE_WINDOW_MS + 1000, done: 150 })
    samples = addSample(samples, { at: RATE_WINDOW_MS + 3000, done: 350 })
    expect(samples[0]!.at).toBe(RATE_WINDOW_MS + 1000)
    expect(rate(samples)).toBe(100)
    // A count that went down starts over instead of a negative rate.
    expect(addSample(samples, { at: RATE_WINDOW_MS + 4000, done: 10 })).toEqual([{ at: RATE_WINDOW_MS + 4000, done: 10 }])
    expect(etaSeconds(500, 50)).toBe(10)
    expect(etaSeconds(500, undefined)).toBeUndefined()
    expect(etaSeconds(500, 0)).toBeUndefined()
    expect(etaSeconds(0, undefined)).toBe(0)
  })
})

describe("progress lines", () => {
  it("are drawn in place only on a terminal that draws escape sequences: not a pipe, nor TERM=dumb", () => {
    const term = process.env.TERM
    const tty = process.stdout.isTTY
    try {
      process.env.TERM = "xterm-256color"
      expect([drawsInPlace({ isTTY: true } as NodeJS.WriteStream), drawsInPlace({ isTTY: false } as NodeJS.WriteStream)]).toEqual([true, false])
      process.stdout.isTTY = true
      expect([modeOf(false), modeOf(true)]).toEqual(["tty", "json"]) // what the commands go by
      process.env.TERM = "dumb"
      expect(drawsInPlace({ isTTY: true } as NodeJS.WriteStream)).toBe(false)
      expect(modeOf(false)).toBe("plain")
    } finally {
      if (term === undefined) delete process.env.TERM
      else process.env.TERM = term
      process.stdout.isTTY = tty
    }
  })

  it("draws the live bar within the terminal's width", () => {
    const line = barLine(batch(), 48.2, 120)
    expect(line).toBe(`in_progress [${"█".repeat(24)}${"░".repeat(16)}] 612/1,000 (61%)  12 failed  48.2/s  ETA 8s  31.4k tokens`)
    for (const columns of [80, 60, 30, 12]) expect(barLine(batch(), 48.2, columns).length).toBeLessThan(columns)
    expect(barLine(batch({ status: "validating", request_counts: { total: 0, completed: 0, failed: 0 } }), undefined, 80)).toBe("validating  ")
    expect(barLine(batch(), undefined, 120)).toContain("ETA ?")
    expect(barLine(batch({ status: "completed", request_counts: { total: 1000, completed: 988, failed: 12 } }), 50, 120))
      .not.toContain("ETA")
  })

  it("writes plain lines at each status change, while counts move at most every few seconds, and a heartbeat", () => {
    expect(plainLine(batch(), 48.2, 12.3)).toBe("[12s] batch_abc in_progress 612/1,000 (61%), 12 failed, 48.2/s, ETA 8s, 31.4k tokens")
    // A cancel counts what it stops as failed at once: no rate then.
    const cancelled = batch({ status: "cancelled", request_counts: { total: 1000, completed: 612, failed: 388 } })
    expect(plainLine(cancelled, 900, 13)).toBe("[13s] batch_abc cancelled 1,000/1,000 (100%), 388 failed or not run, 31.4k tokens")
    expect(plainLine(batch({ status: "validating", request_counts: { total: 0, completed: 0, failed: 0 } }), undefined, 0))
      .toBe("[0s] batch_abc validating")
    const b = batch()
    const printed = { status: b.status, done: 612, at: 0 }
    expect(plainLineDue(undefined, b, 0)).toBe(true)
    expect(plainLineDue(printed, batch({ status: "finalizing" }), 10)).toBe(true)
    expect(plainLineDue(printed, batch({ request_counts: { total: 1000, completed: 700, failed: 12 } }), PLAIN_EVERY_MS - 1)).toBe(false)
    expect(plainLineDue(printed, batch({ request_counts: { total: 1000, completed: 700, failed: 12 } }), PLAIN_EVERY_MS)).toBe(true)
    expect(plainLineDue(printed, b, PLAIN_HEARTBEAT_MS - 1)).toBe(false)
    expect(plainLineDue(printed, b, PLAIN_HEARTBEAT_MS)).toBe(true)
  })
})

describe("batches at rest", () => {
  it("says a problem as `line N: code: message`", () => {
    expect(problemLine({ code: "invalid_json_line", message: "This line is not parseable as valid JSON.", line: 3, param: null }))
      .toBe("line 3: invalid_json_line: This line is not parseable as valid JSON.")
    expect(problemLine({ code: "empty_file", message: "The input file is empty.", line: null, param: null }))
      .toBe("file: empty_file: The input file is empty.")
  })

  it("describes a batch for `status`: counts, tokens, phases, files, problems", () => {
    const done = batch({
      status: "completed",
      request_counts: { total: 1000, completed: 988, failed: 12 },
      finalizing_at: T0 + 62,
      completed_at: T0 + 65,
      output_file_id: "file-out",
      error_file_id: "file-err",
      metadata: { team: "a" }
    })
    expect(describeBatch(done, T0 + 125)).toEqual([
      "batch_abc: completed",
      "  endpoint    /v1/chat/completions",
      "  input file  file-in",
      "  requests    1,000: 988 completed, 12 failed",
      "  tokens      31.4k (input 20k, output 11.4k)",
      "  created     2025-06-15 15:06:40 UTC (2m05s ago)",
      "  phases      validating 2s, in_progress 1m00s, finalizing 3s",
      "  output file file-out",
      "  error file  file-err",
      "  metadata    team=a"
    ])
    const failed = describeBatch(batch({
      status: "failed",
      in_progress_at: undefined,
      failed_at: T0 + 1,
      request_counts: { total: 0, completed: 0, failed: 0 },
      errors: { object: "list", data: [{ code: "invalid_url", message: "The URL provided for this request does not match the batch endpoint.", line: 2, param: "url" }] }
    }), T0 + 5)
    expect(failed.slice(-2)).toEqual(["  problems:", "    line 2: invalid_url: The URL provided for this request does not match the batch endpoint."])
    // A server's nonsense is shown as no count and as the number it gave, never thrown on (a RangeError before).
    const odd = describeBatch(batch({ created_at: 1e300, request_counts: { total: 1e308, completed: "5", failed: -3 } as never }), T0)
    expect(odd.some((line) => line.startsWith("  requests"))).toBe(false) // no count given: none shown
    expect(odd.join("\n")).not.toMatch(/NaN|undefined|5-3/)
    expect(odd.find((line) => line.startsWith("  created"))).toMatch(/^ {2}created {5}1e\+300 /)
  })

  it("lists batches in aligned columns, with their model, and their metadata when one has some", () => {
    const done = { id: "batch_2", status: "completed", request_counts: { total: 3, completed: 3, failed: 0 }, usage: undefined } as const
    const lines = listLines([batch({ model: "llama3.2:3b" }), batch({ ...done, model: undefined })], T0 + 60)
    expect(lines).toEqual([
      "ID         STATUS       DONE/TOTAL  FAILED  TOKENS  CREATED    MODEL        ENDPOINT",
      "batch_abc  in_progress  612/1,000   12      31.4k   1m00s ago  llama3.2:3b  /v1/chat/completions",
      "batch_2    completed    3/3         0       0       1m00s ago  -            /v1/chat/completions"
    ])
    const tagged = listLines([
      batch({ model: "m", metadata: { sweep: "lr-3e-4", seed: "7" } }),
      batch({ ...done, model: "m", metadata: { note: "x".repeat(60) } }),
      batch({ ...done, id: "batch_3", model: "m", metadata: { note: "two\nlines\tand a tab" } }),
      batch({ ...done, id: "batch_4", model: "m", metadata: { sweep: "lr-3e-4", seed: "7", owner: "ana", lr: "0.0003", note: "x" } }),
      batch({ ...done, id: "batch_5", model: "m", metadata: { note: "y".repeat(60), sweep: "lr-3" } })
    ], T0 + 60)
    expect(tagged).toEqual([
      "ID         STATUS       DONE/TOTAL  FAILED  TOKENS  CREATED    MODEL  ENDPOINT              METADATA",
      "batch_abc  in_progress  612/1,000   12      31.4k   1m00s ago  m      /v1/chat/completions  sweep=lr-3e-4, seed=7",
      `batch_2    completed    3/3         0       0       1m00s ago  m      /v1/chat/completions  note=${"x".repeat(34)}…`,
      "batch_3    completed    3/3         0       0       1m00s ago  m      /v1/chat/completions  note=two\\nlines\\tand a tab",
      // Whole pairs, and how many more: a pair cut mid-key read as another.
      "batch_4    completed    3/3         0       0       1m00s ago  m      /v1/chat/completions  sweep=lr-3e-4, seed=7, owner=ana, +2 more",
      `batch_5    completed    3/3         0       0       1m00s ago  m      /v1/chat/completions  note=${"y".repeat(34)}…, +1 more`
    ])
    // Aligned as a terminal draws them: a CJK model name's characters take two columns each; an emoji is not cut in half.
    const wide = listLines([
      batch({ model: "通义千问", metadata: { emoji: "😀".repeat(40) } }),
      batch({ ...done, model: "qwen" })
    ], T0 + 60)
    expect(wide).toEqual([
      "ID         STATUS       DONE/TOTAL  FAILED  TOKENS  CREATED    MODEL     ENDPOINT              METADATA",
      `batch_abc  in_progress  612/1,000   12      31.4k   1m00s ago  通义千问  /v1/chat/completions  emoji=${"😀".repeat(16)}…`,
      "batch_2    completed    3/3         0       0       1m00s ago  qwen      /v1/chat/completions"
    ])
    // Controls cut as shown (`⟨U+202E⟩`, 8 columns each): the cell stays within its 40 columns.
    const bidi = listLines([batch({ model: "m", metadata: { k: "\u202E".repeat(30) } })], T0 + 60)
    expect(bidi[1]).toMatch(/ k=(⟨U\+202E⟩){4}⟨U\+20…$/)
  })

  it("sums a finished batch up, and counts it a success only when every request succeeded", () => {
    const done = batch({ status: "completed", completed_at: T0 + 12, request_counts: { total: 1000, completed: 988, failed: 12 } })
    expect(summaryLine(done, T0 + 20)).toBe("batch_abc completed in 12s: 988 succeeded, 12 failed, 31.4k tokens")
    expect(allSucceeded(done)).toBe(false)
    expect(allSucceeded(batch({ status: "completed", request_counts: { total: 5, completed: 5, failed: 0 } }))).toBe(true)
    const cancelled = batch({ status: "cancelled", cancelled_at: T0 + 4, request_counts: { total: 10, completed: 4, failed: 0 } })
    expect(summaryLine(cancelled, T0 + 9)).toBe("batch_abc cancelled in 4s: 4 succeeded, 0 failed, 6 not run, 31.4k tokens")
    const quick = { ...done, completed_at: done.created_at }
    expect(summaryLine(quick, T0 + 20)).toBe("batch_abc completed in under 1s: 988 succeeded, 12 failed, 31.4k tokens")
    expect(allSucceeded(cancelled)).toBe(false)
    // A cancel's unrun lines are in `failed`, as OpenAI counts them: said so, not read as a run that failed.
    const cut = batch({ status: "cancelled", cancelled_at: T0 + 4, request_counts: { total: 2000, completed: 32, failed: 1968 } })
    expect(summaryLine(cut, T0 + 9)).toBe("batch_abc cancelled in 4s: 32 succeeded, 1,968 failed or not run, 31.4k tokens")
    expect(describeBatch(cut, T0 + 9)).toContainEqual(expect.stringMatching(/^  requests +2,000: 32 completed, 1,968 failed or not run$/))
    expect(listLines([cut], T0 + 60)[1]).toMatch(/^batch_abc {2}cancelled {2}2,000\/2,000 {2}1,968 or not run {2}/)
  })
})

describe("saved results", () => {
  it("says where each file went and how many lines it has, one line singular, and which the server no longer has", () => {
    expect(savedLines({ output: { path: "out/b_output.jsonl", lines: 1 }, error: { path: "out/b_error.jsonl", lines: 2 }, gone: [] })).toEqual([
      "output: out/b_output.jsonl (1 line)",
      "errors: out/b_error.jsonl (2 lines)"
    ])
    expect(savedLines({ output: undefined, error: { path: "out/b_error.jsonl", lines: 20_000 }, gone: [{ kind: "output", fileId: "file-x" }] })).toEqual([
      "errors: out/b_error.jsonl (20,000 lines)",
      "output: file-x is no longer on the server (expired or deleted)"
    ])
  })
})
