/**
 * The input file's validation as a pure fold (src/batches/inputValidation.ts), with no database and no Effect:
 * rows, problems with their 1-based lines, the bounds on requests and on reported problems, slices, the model.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Input from "../src/batches/inputValidation.js"
import type { JsonlLine } from "../src/batches/lines.js"
import { BatchRequestId } from "../src/domain/Ids.js"

const request = (customId: string, model = "m") =>
  JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/chat/completions", body: { model, messages: [] } })

const lines = (texts: ReadonlyArray<string>): Array<JsonlLine> =>
  texts.map((text, i) => ({ _tag: "Line", line: i + 1, text }))

const fold = (items: ReadonlyArray<JsonlLine>, maxRequests = 100) => {
  let ids = 0
  const rules = { endpoint: "/v1/chat/completions", maxRequests, maxLineBytes: 64, resultId: () => BatchRequestId.make(`r${++ids}`) } as const
  return items.reduce(Input.step, Input.initial(rules))
}

describe("input validation fold", () => {
  it("gives a row per valid request, with its line, and the model; blank lines are skipped", () => {
    const state = fold(lines([request("a"), "", request("b")]))
    expect(Input.takeRows(state)).toEqual([
      { line: 1, customId: "a", resultId: "r1", body: `{"model":"m","messages":[]}` },
      { line: 3, customId: "b", resultId: "r2", body: `{"model":"m","messages":[]}` }
    ])
    expect(Input.takeRows(state)).toEqual([]) // taken once
    expect(Input.modelToCheck(state)).toBe("m")
    expect(Input.verdict(state)).toEqual({ _tag: "Valid", model: "m", total: 2, slices: [{ firstLine: 1, lastLine: 3 }] })
  })

  it("cuts the requests into slices of SLICE requests, by their lines", () => {
    const texts = Array.from({ length: Input.SLICE * 2 + 1 }, (_, i) => request(`c${i}`))
    const verdict = Input.verdict(fold(lines(texts), 10_000))
    expect(verdict).toMatchObject({
      _tag: "Valid",
      total: Input.SLICE * 2 + 1,
      slices: [
        { firstLine: 1, lastLine: Input.SLICE },
        { firstLine: Input.SLICE + 1, lastLine: Input.SLICE * 2 },
        { firstLine: Input.SLICE * 2 + 1, lastLine: Input.SLICE * 2 + 1 }
      ]
    })
  })

  it("reports every problem with its line, across lines too, and gives no rows once one is found", () => {
    // Nested 66 deep (the line, its body, 64 arrays): refused before it is parsed.
    const deep = request("d").replace(`"messages":[]`, `"x":${"[".repeat(64)}${"]".repeat(64)}`)
    const items: Array<JsonlLine> = [
      ...lines([request("a"), "not json", request("a"), request("b", "other")]),
      { _tag: "TooLong", line: 5 },
      { _tag: "NotUtf8", line: 6 },
      { _tag: "Line", line: 7, text: deep },
      ...lines(['"a"', "[]"]).map((item) => ({ ...item, line: item.line + 7 }))
    ]
    const state = fold(items)
    expect(Input.takeRows(state)).toEqual([])
    expect(Input.modelToCheck(state)).toBe("m") // model_not_found is reported beside the rest
    const verdict = Input.verdict(state)
    expect(verdict._tag === "Invalid" && verdict.errors.map((e) => [e.line, e.code, e.message])).toEqual([
      [2, "invalid_json_line", "This line is not parseable as valid JSON."],
      [3, "duplicate_custom_id", expect.any(String)],
      [4, "model_mismatch", expect.any(String)],
      [5, "invalid_request", "This line is longer than 64 bytes."],
      [6, "invalid_json_line", "This line is not valid UTF-8 text."],
      [7, "invalid_json_line", "This line's JSON is nested more than 64 levels deep."],
      // JSON, but not an object: said so, rather than "not parseable".
      [8, "invalid_json_line", `This line is a string, not a JSON object: each line is one request, {"custom_id", "method", "url", "body"}.`],
      [9, "invalid_json_line", `This line is an array, not a JSON object: each line is one request, {"custom_id", "method", "url", "body"}.`]
    ])
    // 64 deep (62 arrays) is a request like any other.
    const deepest = request("e").replace(`"messages":[]`, `"messages":[],"x":${"[".repeat(62)}${"]".repeat(62)}`)
    expect(Input.verdict(fold(lines([deepest])))._tag).toBe("Valid")
  })

  it("a UTF-16 file is said once, as such: what to do with it, not a problem a line", () => {
    const verdict = Input.verdict(fold([{ _tag: "Utf16", line: 1 }]))
    expect(verdict._tag === "Invalid" && verdict.errors).toEqual([{
      code: "invalid_json_line",
      message: "The file is UTF-16 text (it begins with UTF-16's byte order mark): save it as UTF-8, as JSONL is.",
      param: null,
      line: null
    }])
  })

  it("a long custom_id repeated is echoed cut before a character it would split: an emoji whole or not at all", () => {
    const id = `${"a".repeat(63)}${"😀".repeat(3)}`
    const verdict = Input.verdict(fold(lines([request(id), request(id)]), 100))
    expect(verdict._tag === "Invalid" && verdict.errors[0]!.message).toBe(`The custom_id '${"a".repeat(63)}…' is used more than once in this file.`)
  })

  it("a custom_id repeated after a line that failed otherwise is a duplicate too, and a failing repeat gets both", () => {
    const streaming = request("b").replace(`"messages":[]`, `"messages":[],"stream":true`)
    const noMethod = request("a").replace(`"method":"POST",`, "")
    const verdict = Input.verdict(fold(lines([request("a"), streaming, request("b"), noMethod])))
    expect(verdict._tag === "Invalid" && verdict.errors.map((e) => [e.line, e.code])).toEqual([
      [2, "streaming_unsupported"],
      [3, "duplicate_custom_id"],
      [4, "missing_required_parameter"],
      [4, "duplicate_custom_id"]
    ])
  })

  it("every problem at once: a line failing otherwise is compared for its model too, and model_not_found comes beside the rest", () => {
    const noId = request("x").replace(`"custom_id":"x",`, "")
    const streaming = (customId: string, model: string) =>
      request(customId, model).replace(`"messages":[]`, `"messages":[],"stream":true`)
    // The first line fails on its own, and still sets the file's model: a valid line of another model is a mismatch.
    expect(Input.verdict(fold(lines([noId, request("b", "other")]))))
      .toMatchObject({ _tag: "Invalid", errors: [{ line: 1, code: "missing_required_parameter" }, { line: 2, code: "model_mismatch" }] })
    // A failing line of another model gets both its problems.
    const both = Input.verdict(fold(lines([request("a"), streaming("b", "other")])))
    expect(both._tag === "Invalid" && both.errors.map((e) => [e.line, e.code])).toEqual([[2, "streaming_unsupported"], [2, "model_mismatch"]])
    // A duplicate id of another model: both too.
    const repeat = Input.verdict(fold(lines([request("a"), request("a", "other")])))
    expect(repeat._tag === "Invalid" && repeat.errors.map((e) => e.code)).toEqual(["duplicate_custom_id", "model_mismatch"])
    // Unknown models mixed: the mismatch, and the file's model not found, in one verdict.
    const unknown = Input.verdict(fold(lines([request("a", "nope"), request("b", "nope2")])), new Set(["m"]))
    expect(unknown._tag === "Invalid" && unknown.errors.map((e) => [e.line, e.code])).toEqual([[1, "model_not_found"], [2, "model_mismatch"]])
  })

  it("too_many_tasks on the first request past the limit; rows stop there", () => {
    const state = fold(lines([request("a"), request("b"), request("c"), request("d")]), 2)
    const verdict = Input.verdict(state)
    expect(verdict._tag === "Invalid" && verdict.errors).toEqual([expect.objectContaining({ code: "too_many_tasks", line: 3 })])
  })

  it("an embeddings batch holds at most 50,000 inputs in all, counted as OpenAI counts them", () => {
    const embedding = (customId: string, input: unknown) =>
      JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/embeddings", body: { model: "e", input } })
    const embeddings = (texts: ReadonlyArray<string>) => {
      const rules = { endpoint: "/v1/embeddings", maxRequests: 100, maxLineBytes: 1 << 20, resultId: () => BatchRequestId.make("r") } as const
      return Input.verdict(lines(texts).reduce(Input.step, Input.initial(rules)))
    }
    const texts = (n: number) => Array.from({ length: n }, (_, i) => `t${i}`)
    // Two lines of 25,000 texts: at the limit. One more input, a single text, on a third line: past it.
    expect(embeddings([embedding("a", texts(25_000)), embedding("b", texts(25_000))])).toMatchObject({ _tag: "Valid", total: 2 })
    const over = embeddings([embedding("a", texts(25_000)), embedding("b", texts(25_000)), embedding("c", "one more")])
    expect(over._tag === "Invalid" && over.errors).toEqual([{
      code: "too_many_tasks",
      message: "The batch has more than 50000 embedding inputs in all, the most one batch may hold.",
      param: "body.input",
      line: 3
    }])
    // A list of tokens is one input; a list of token lists is one input each.
    expect(embeddings([embedding("a", Array(49_999).fill([1, 2])), embedding("b", [1, 2, 3])])._tag).toBe("Valid")
    expect(embeddings([embedding("a", Array(50_000).fill([1, 2])), embedding("b", [1, 2, 3])])._tag).toBe("Invalid")
    // A line past both limits at once (the 50,001st of one input each) is one problem, not two.
    const both = Input.verdict(lines([embedding("a", texts(25_000)), embedding("b", texts(25_000)), embedding("c", "x")])
      .reduce(Input.step, Input.initial({ endpoint: "/v1/embeddings", maxRequests: 2, maxLineBytes: 1 << 20, resultId: () => BatchRequestId.make("r") })))
    expect(both._tag === "Invalid" && both.errors.map((e) => [e.line, e.code, e.param])).toEqual([[3, "too_many_tasks", null]])
  })

  it("keeps problems up to MAX_REPORTED_ERROR_BYTES and counts the rest in one too_many_errors entry", () => {
    const total = Input.MAX_REPORTED_ERRORS + 5
    const verdict = Input.verdict(fold(lines(Array.from({ length: total }, () => "{"))))
    if (verdict._tag !== "Invalid") throw new Error("expected problems")
    const listed = verdict.errors.slice(0, -1)
    expect(listed.length).toBeLessThanOrEqual(Input.MAX_REPORTED_ERRORS)
    expect(listed.reduce((bytes, e) => bytes + JSON.stringify(e).length, 0)).toBeLessThanOrEqual(Input.MAX_REPORTED_ERROR_BYTES)
    expect(listed.map((e) => e.line)).toEqual(listed.map((_, i) => i + 1))
    expect(verdict.errors.at(-1)).toMatchObject({
      code: "too_many_errors",
      message: `${total - listed.length} more problems were found and are not listed.`,
      line: null
    })
  })

  it("empty_file without requests; model_not_found when the upstream's list lacks the model", () => {
    expect(Input.verdict(fold(lines(["", " "])))).toMatchObject({ _tag: "Invalid", errors: [{ code: "empty_file", line: null }] })
    const state = fold(lines(["", request("a", "gpt-x")]))
    expect(Input.verdict(state, new Set(["m"]))).toMatchObject({
      _tag: "Invalid",
      errors: [{
        code: "model_not_found",
        param: "body.model",
        line: 2,
        message: "The provided model 'gpt-x' is not supported by the upstream. Models served: 'm' (GET /v1/models lists them)."
      }]
    })
    const many = Input.verdict(state, new Set(Array.from({ length: 12 }, (_, i) => `m${i}`)))
    expect(many._tag === "Invalid" && many.errors[0]!.message).toMatch(/Models served: 'm0', .* 'm9' and 2 more \(GET/)
    expect(Input.verdict(state, new Set(["gpt-x"]))).toMatchObject({ _tag: "Valid", model: "gpt-x" })
  })
})
