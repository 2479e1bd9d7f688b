/** Token usage read from upstream answers: every endpoint's naming, and odd values made storable. */
import { describe, expect, it } from "@effect/vitest"
import { usageOf, zeroUsage } from "../src/batches/validation.js"

describe("usageOf", () => {
  it("reads chat/completions and responses naming alike", () => {
    expect(usageOf({ usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, prompt_tokens_details: { cached_tokens: 1 } } }))
      .toEqual({ input: 3, cached: 1, output: 2, reasoning: 0, total: 5 })
    expect(usageOf({ usage: { input_tokens: 4, output_tokens: 6, output_tokens_details: { reasoning_tokens: 2 } } }))
      .toEqual({ input: 4, cached: 0, output: 6, reasoning: 2, total: 10 })
    expect(usageOf({ id: "no usage" })).toEqual(zeroUsage)
  })

  it("turns fractional, negative, huge or non-numeric counts into whole non-negative numbers", () => {
    expect(usageOf({ usage: { prompt_tokens: 1.7, completion_tokens: -3, total_tokens: 1e300, prompt_tokens_details: { cached_tokens: "2" } } }))
      .toEqual({ input: 1, cached: 0, output: 0, reasoning: 0, total: Number.MAX_SAFE_INTEGER })
  })
})
