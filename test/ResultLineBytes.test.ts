/**
 * The output and error file lines SQLite's pages are joined into (`batches/resultLineBytes.ts`): each row one JSON
 * line in OpenAI's shape, the upstream's answer embedded byte for byte, ids with quotes, backslashes, newlines and
 * characters beyond ASCII escaped as JSON.
 */
import { describe, expect, it } from "@effect/vitest"
import { resultLinesOf } from "../src/batches/resultLineBytes.js"

const answer = Buffer.from(`{"id":"chatcmpl-1","choices":[{"message":{"content":"é \\"q\\" 🙂"}}]}`)

describe("result lines joined from SQLite's columns", () => {
  it("one JSON line per row: answers embedded as stored, errors as code and message, ids escaped", () => {
    const odd = `a "quoted"\\ id\nwith é and 🙂`
    const page = resultLinesOf([
      [3, "batch_req_1", odd, 200, "req_1", null, null, answer],
      [7, "batch_req_2", "plain", null, null, "upstream_unreachable", `no "answer"\n`, null],
      [9, "batch_req_3", "bad", 400, null, null, null, Buffer.from(`{"error":{"message":"x"}}`)]
    ])
    expect([page.count, page.lastLine]).toEqual([3, 9])
    const text = Buffer.from(page.bytes).toString("utf8")
    expect(text.endsWith("\n")).toBe(true)
    const lines = text.slice(0, -1).split("\n").map((line) => JSON.parse(line))
    expect(lines).toEqual([
      {
        id: "batch_req_1",
        custom_id: odd,
        response: { status_code: 200, request_id: "req_1", body: JSON.parse(answer.toString("utf8")) },
        error: null
      },
      {
        id: "batch_req_2",
        custom_id: "plain",
        response: null,
        error: { code: "upstream_unreachable", message: `no "answer"\n` }
      },
      { id: "batch_req_3", custom_id: "bad", response: { status_code: 400, request_id: null, body: { error: { message: "x" } } }, error: null }
    ])
    // The answer's own bytes, as the upstream sent them.
    expect(Buffer.from(page.bytes).includes(answer)).toBe(true)
  })

  it("an empty page is no bytes, line 0", () => {
    const page = resultLinesOf([])
    expect([page.bytes.length, page.count, page.lastLine]).toEqual([0, 0, 0])
  })
})
