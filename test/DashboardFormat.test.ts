/**
 * The dashboard's figures (`ui/format.js`, a plain ES module of the page, loaded here as Node loads any): a unit is
 * chosen after rounding, so a count just under a boundary never reads `1000k` or `1024 KB`.
 */
import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { DOWN_REASONS } from "../src/cli/upstreamNotes.js"
import { StandardEndpoint } from "../src/domain/Batches.js"

/** The page's formatters (typed by their JSDoc for `tsc -p ui`; this project's `tsc` reads no JavaScript). */
const format: {
  readonly tokens: (n: number) => string
  readonly bytes: (n: number) => string
  readonly transferred: (received: number, total: number | null) => string
  readonly visible: (text: string) => string
  readonly utcOffset: (minutesBehind: number) => string
  readonly dateTime: (at: number) => string
  readonly DOWN_REASONS: Record<string, string>
  readonly batchSubline: (b: { endpoint: string; model?: string | null; metadata?: Record<string, string> | null }) => string
} = await import(new URL("../ui/format.js", import.meta.url).href)

describe("the dashboard's figures", () => {
  it("tells a batch from its neighbours in a list: endpoint, model once known, metadata cut short, bidi controls shown", () => {
    expect(format.batchSubline({ endpoint: "/v1/embeddings", model: null, metadata: null })).toBe("/v1/embeddings")
    expect(format.batchSubline({ endpoint: "/v1/chat/completions", model: "llama3", metadata: { sweep: "lr-3e-4", seed: "7" } }))
      .toBe("/v1/chat/completions · llama3 · sweep=lr-3e-4, seed=7")
    expect(format.batchSubline({ endpoint: "/v1/chat/completions", model: "m", metadata: { note: `${"x".repeat(70)}\u202E` } }))
      .toBe(`/v1/chat/completions · m · note=${"x".repeat(54)}…`)
    expect(format.batchSubline({ endpoint: "/v1/chat/completions", model: "m", metadata: { note: `${"x".repeat(53)}${"😀".repeat(8)}` } }))
      .toBe(`/v1/chat/completions · m · note=${"x".repeat(53)}…`) // the emoji the cut would split left out whole
    expect(format.batchSubline({ endpoint: "/v1/chat/completions", metadata: { name: "txt.\u202Eexe" } })).toBe("/v1/chat/completions · name=txt.⟨U+202E⟩exe")
  })

  it("says a time's offset from UTC, as a time without its zone was read as the CLI's UTC", () => {
    expect([0, -60, 300, -330, -345, 150].map(format.utcOffset)).toEqual(["UTC", "UTC+1", "UTC−5", "UTC+5:30", "UTC+5:45", "UTC−2:30"])
    expect(format.dateTime(1_750_000_000)).toMatch(/^2025-06-1[45] \d{2}:\d{2}:\d{2} UTC([+−]\d+(:\d{2})?)?$/)
  })

  it("writes token counts with the unit their rounded value fits", () => {
    const cases: Array<[number, string]> = [
      [0, "0"],
      [999, "999"],
      [1000, "1k"],
      [12_345, "12.3k"],
      [999_949, "999.9k"],
      [999_950, "1M"],
      [999_999, "1M"],
      [1_000_000, "1M"],
      [4_560_000, "4.56M"]
    ]
    expect(cases.map(([n]) => [n, format.tokens(n)])).toEqual(cases)
  })

  it("writes sizes in powers of 1024 with the unit their rounded value fits", () => {
    const cases: Array<[number, string]> = [
      [0, "0 B"],
      [1023, "1023 B"],
      [1024, "1 KB"],
      [12_700, "12.4 KB"],
      [1_048_524, "1023.9 KB"],
      [1_048_575, "1 MB"],
      [1_048_576, "1 MB"],
      [1024 ** 3 - 1, "1 GB"],
      [1024 ** 5, "1024 TB"]
    ]
    expect(cases.map(([n]) => [n, format.bytes(n)])).toEqual(cases)
  })

  it("writes a download's progress with its share when the size is known", () => {
    expect(format.transferred(512, 2048)).toBe("512 B of 2 KB (25%)")
    expect(format.transferred(3 * 1024 * 1024, null)).toBe("3 MB")
    expect(format.transferred(10, 5)).toBe("10 B")
  })
})

describe("the dashboard's text", () => {
  it("draws the controls that reorder text, and keeps right-to-left text as it is", () => {
    expect(format.visible("Q1\u202Elnosj.exe\u202C-report.jsonl")).toBe("Q1⟨U+202E⟩lnosj.exe⟨U+202C⟩-report.jsonl")
    expect(format.visible("\u2066a\u2067b\u2068c\u2069 \u202Ad\u202Be\u202Df")).toBe(
      "⟨U+2066⟩a⟨U+2067⟩b⟨U+2068⟩c⟨U+2069⟩ ⟨U+202A⟩d⟨U+202B⟩e⟨U+202D⟩f"
    )
    for (const kept of ["דוח.jsonl", "تقرير\u200F.jsonl", "a\u200Eb", "報告.jsonl", "plain"]) expect(format.visible(kept)).toBe(kept)
  })
})

describe("the dashboard's endpoint list", () => {
  it("is the server's list of standard endpoints", () => {
    const source = readFileSync(new URL("../ui/startForm.js", import.meta.url), "utf8")
    const list = /const ENDPOINTS = \[([^\]]*)\]/.exec(source)?.[1]
    expect(list?.match(/"[^"]*"/g)?.map((quoted) => JSON.parse(quoted))).toEqual([...StandardEndpoint.literals])
  })
})

describe("the dashboard's words for a down upstream", () => {
  it("are the command line's", () => {
    expect(format.DOWN_REASONS).toEqual(DOWN_REASONS)
  })
})
