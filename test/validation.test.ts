/** Input lines and upstream answers: request bodies forwarded as written, token usage in every endpoint's naming. */
import { describe, expect, it } from "@effect/vitest"
import { jsonMemberText } from "../src/batches/jsonText.js"
import { usageOf, zeroUsage } from "../src/batches/usage.js"
import { isValidLine, validateLine } from "../src/batches/lineValidation.js"
import { characterCount, isProblem, validateCreateBatch } from "../src/batches/validation.js"
import type { FileId } from "../src/domain/Ids.js"

describe("validateLine", () => {
  it("keeps the request body exactly as the line has it: big integers, spacing, key order, escapes", () => {
    const body = `{ "model" : "m",  "seed": 12345678901234567890, "messages":[{"role":"user","content":"a \\"q\\" \\u00e9 }]"}],"z":1.0e3 }`
    const line = `{"custom_id":"c1","method":"POST","url":"/v1/chat/completions","body":${body}}`
    const result = validateLine(line, "/v1/chat/completions")
    expect(isValidLine(result) && result.body).toBe(body)
    expect(isValidLine(result) && result.model).toBe("m")
  })

  it("a line for another endpoint is told that, not also the batch endpoint's fields it lacks; its model is kept", () => {
    const line = `{"custom_id":"e1","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}`
    expect(validateLine(line, "/v1/chat/completions")).toEqual({
      problems: [{
        code: "invalid_url",
        param: "url",
        message: "The URL provided for this request does not match the batch endpoint ('/v1/embeddings' here, '/v1/chat/completions' for the batch)."
      }],
      customId: "e1",
      model: "m"
    })
  })

  it("refuses a key repeated in the line or its body (JSON.parse keeps the last, other parsers the first), escaped or not; deeper ones are the upstream's", () => {
    const line = (top: string, body: string) => `{"custom_id":"c1",${top}"method":"POST","url":"/v1/chat/completions","body":{${body}}}`
    const refusal = (param: string) => ({
      problems: [{ code: "invalid_request", param, message: `This line has the key '${param}' more than once: which one an upstream would read is not known.` }],
      customId: undefined
    })
    const chat = `"model":"m","messages":[]`
    expect(validateLine(line(`"custom_id":"c2",`, chat), "/v1/chat/completions")).toEqual(refusal("custom_id"))
    expect(validateLine(line("", `${chat},"model":"other"`), "/v1/chat/completions")).toEqual(refusal("body.model"))
    expect(validateLine(line("", `${chat}, "mod\\u0065l" : "other"`), "/v1/chat/completions")).toEqual(refusal("body.model"))
    expect(validateLine(line(`"body":{"model":"m"},`, chat), "/v1/chat/completions")).toEqual(refusal("body"))
    // A long key is named by its first 64 characters (emoji count one each), in the message and the param.
    const long = "😀".repeat(100_000)
    const named = validateLine(line(`"${long}":1,"${long}":2,`, chat), "/v1/chat/completions")
    expect(isValidLine(named) ? undefined : named.problems[0]!.param).toBe("😀".repeat(64))
    // A key repeated inside a message, or "model" in a tool's schema, is no ambiguity of ours.
    const deeper = `"model":"m","messages":[{"role":"user","role":"user","content":"x"}],"tools":[{"model":1}],"x":{"model":2}`
    expect(isValidLine(validateLine(line("", deeper), "/v1/chat/completions"))).toBe(true)
  })

  it("counts the model's length in characters, as the other limits: 256 emoji pass, 257 characters do not", () => {
    const lineWith = (model: string) =>
      JSON.stringify({ custom_id: "c1", method: "POST", url: "/v1/chat/completions", body: { model, messages: [] } })
    expect(isValidLine(validateLine(lineWith("😀".repeat(256)), "/v1/chat/completions"))).toBe(true)
    expect(validateLine(lineWith("😀".repeat(256) + "x"), "/v1/chat/completions")).toEqual({
      problems: [{ code: "invalid_request", param: "body.model", message: "Invalid 'body.model': longer than 256 characters." }],
      customId: "c1"
    })
  })

  it("refuses a custom_id longer than 65,536 characters (emoji count one each), saying its length", () => {
    const lineWith = (customId: string) =>
      JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [] } })
    expect(isValidLine(validateLine(lineWith("😀".repeat(65_536)), "/v1/chat/completions"))).toBe(true)
    const refused = validateLine(lineWith("i".repeat(65_537)), "/v1/chat/completions")
    expect(isValidLine(refused) ? [] : refused.problems).toEqual([{
      code: "invalid_request",
      param: "custom_id",
      message: "Invalid 'custom_id': string too long. Expected a string with maximum length 65536, but got a string with length 65537 instead."
    }])
  })
})

/** A random JSON value (deterministic: a linear congruential generator seeded by the caller). */
const randomJson = (next: () => number, depth: number): unknown => {
  const pick = next() % (depth > 3 ? 4 : 6)
  const strings = ["", "body", "b\\ody", "quote\"s", "}{][,:", "\\", "é€😀", "\u2028", "\n\t"]
  switch (pick) {
    case 0: return strings[next() % strings.length]
    case 1: return [0, -1.5, 1e21, 12345678901234567890, 3.14159][next() % 5]
    case 2: return [true, false, null][next() % 3]
    case 3: return strings[next() % strings.length]! + String(next() % 100)
    case 4: return Array.from({ length: next() % 4 }, () => randomJson(next, depth + 1))
    default: return Object.fromEntries(Array.from({ length: next() % 5 }, () => [strings[next() % strings.length], randomJson(next, depth + 1)]))
  }
}

describe("jsonMemberText", () => {
  it("finds the member JSON.parse would read, in any valid object text", () => {
    let seed = 42
    const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648)
    const spaces = ["", " ", "\t", " \r\n "]
    for (let i = 0; i < 2000; i++) {
      const members = Array.from({ length: next() % 6 }, () => [["body", "b\\u006fdy", "other", "bod"][next() % 4]!, randomJson(next, 0)] as const)
      const space = () => spaces[next() % spaces.length]!
      const text = `${space()}{${space()}${members.map(([k, v]) => `"${k}"${space()}:${space()}${JSON.stringify(v)}${space()}`).join(`,${space()}`)}}${space()}`
      const parsed = JSON.parse(text)
      const found = jsonMemberText(text, "body")
      if (!("body" in parsed)) expect(found).toBeUndefined()
      else expect(JSON.parse(found!)).toEqual(parsed.body)
    }
  })
})

describe("usageOf", () => {
  it("reads chat/completions and responses naming alike", () => {
    expect(usageOf({ usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, prompt_tokens_details: { cached_tokens: 1 } } }))
      .toEqual({ input: 3, cached: 1, output: 2, reasoning: 0, total: 5 })
    expect(usageOf({ usage: { input_tokens: 4, output_tokens: 6, output_tokens_details: { reasoning_tokens: 2 } } }))
      .toEqual({ input: 4, cached: 0, output: 6, reasoning: 2, total: 10 })
    expect(usageOf({ id: "no usage" })).toEqual(zeroUsage)
    // A rerank's (vLLM's) total alone: what it read, as input.
    expect(usageOf({ usage: { total_tokens: 13 } })).toEqual({ input: 13, cached: 0, output: 0, reasoning: 0, total: 13 })
  })

  it("turns fractional, negative, absurd or non-numeric counts into whole non-negative numbers", () => {
    expect(usageOf({ usage: { prompt_tokens: 1.7, completion_tokens: -3, total_tokens: 1e300, prompt_tokens_details: { cached_tokens: "2" } } }))
      .toEqual({ input: 1, cached: 0, output: 0, reasoning: 0, total: 1 }) // a total that is none: input + output
    // Up to 2^31 - 1 a count is taken; past it, no answer has that many tokens.
    expect(usageOf({ usage: { prompt_tokens: 2 ** 31 - 1, completion_tokens: 2 ** 31 } }))
      .toEqual({ input: 2 ** 31 - 1, cached: 0, output: 0, reasoning: 0, total: 2 ** 31 - 1 })
  })
})

describe("validateCreateBatch", () => {
  const create = (metadata: Record<string, unknown>) =>
    validateCreateBatch({ input_file_id: "file-1" as FileId, endpoint: "/v1/chat/completions", completion_window: "24h", metadata } as never)

  it("counts metadata lengths in characters, as OpenAI does: an emoji is one, not two UTF-16 units", () => {
    expect(characterCount("a😀é")).toBe(3)
    expect(characterCount("\ud800x")).toBe(2) // a lone surrogate counts as one
    expect(isProblem(create({ note: "😀".repeat(512) }))).toBe(false)
    expect(isProblem(create({ ["😀".repeat(64)]: "v" }))).toBe(false)
    const tooLong = create({ note: "😀".repeat(513) })
    expect(isProblem(tooLong) && tooLong.message).toBe(
      "Invalid 'metadata.note': string too long. Expected a string with maximum length 512, but got a string with length 513 instead."
    )
    expect(isProblem(create({ ["😀".repeat(65)]: "v" }))).toBe(true)
  })

  it("names a value's type with its article: an object, an array, a number", () => {
    const typed = create({ note: { a: 1 } })
    expect(isProblem(typed) && typed.message).toBe("Invalid type for 'metadata.note': expected a string, but got an object instead.")
  })
})

