/** The reasons a watch's summary gives for an error file's lines, read as the file streams in pieces of any size. */
import { describe, expect, it } from "@effect/vitest"
import { makeErrorReasons, reasonsLine } from "../src/cli/errorReasons.js"

const errorLine = (code: string) => JSON.stringify({ id: "r", custom_id: "c", response: null, error: { code, message: "m" } })
const answerLine = (status: number, body: object = {}) =>
  JSON.stringify({ id: "r", custom_id: "c", response: { status_code: status, request_id: "q", body }, error: null })

/** The file `text` fed in pieces of `size` bytes. */
const reasonsOf = (text: string, size: number) => {
  const reasons = makeErrorReasons()
  const bytes = Buffer.from(text)
  for (let at = 0; at < bytes.length; at += size) reasons.feed(bytes.subarray(at, at + size))
  return reasons.counts()
}

describe("error reasons", () => {
  it("counts each line's error code, else its answer's status, most frequent first, however the file is cut", () => {
    const text = [
      errorLine("batch_cancelled"),
      answerLine(500, { error: { code: "upstream_fault" } }), // an answer: its status says it
      errorLine("batch_cancelled"),
      answerLine(404),
      "",
      errorLine("upstream_timeout")
    ].join("\n") // the last line without its newline
    const expected = [["batch_cancelled", 2], ["status 500", 1], ["status 404", 1], ["upstream_timeout", 1]]
    for (const size of [1, 7, 64, 1 << 20]) expect(reasonsOf(text, size)).toEqual(expected)
  })

  it("reads a line of megabytes by its first bytes only (its answer's status, not an error code in its body), and says so of a line it cannot read", () => {
    const body = { error: { code: "inner_code", message: "m" }, text: "x".repeat(3 << 20) }
    const huge = JSON.stringify({ id: "r", custom_id: "c", response: { status_code: 502, body }, error: null })
    expect(reasonsOf(`${huge}\nnot json\n`, 65_536)).toEqual([["status 502", 1], ["unreadable line", 1]])
  })

  it("names five reasons and counts the others together", () => {
    expect(reasonsLine([])).toBeUndefined()
    expect(reasonsLine([["a", 1200], ["b", 5], ["c", 4], ["d", 3], ["e", 2], ["f", 1], ["g", 1]]))
      .toBe("errors by reason: 1,200 × a, 5 × b, 4 × c, 3 × d, 2 × e, 2 other")
  })
})
