/**
 * The token usage of an upstream's answer (`usageOf`), read once its outcome is stored: summed into the batch's
 * `usage`, the metrics' token counts and the finished line.
 */
import { isJsonObject } from "../domain/Json.js"

/** Token usage of one successful response, whatever the endpoint's naming. */
export interface TokenUsage {
  readonly input: number
  readonly cached: number
  readonly output: number
  readonly reasoning: number
  readonly total: number
}

export const zeroUsage: TokenUsage = { input: 0, cached: 0, output: 0, reasoning: 0, total: 0 }

/**
 * The most tokens one answer may count: more is no model's (a context of 2^31 tokens), and bounds a batch's sums,
 * which the database keeps as 64-bit integers (1,025 answers at 2^53 - 1 each overflowed PostgreSQL's BIGINT, and the
 * batch stopped, its outcomes refused).
 */
const MAX_TOKENS_PER_ANSWER = 2 ** 31 - 1

/** Whether `v` is a token count: a number from 0 to `MAX_TOKENS_PER_ANSWER`. */
const isCount = (v: unknown): v is number => typeof v === "number" && v >= 0 && v <= MAX_TOKENS_PER_ANSWER

/** A token count as a whole number, 0 when it is none (an upstream's odd value must not fail storing the outcome). */
const num = (v: unknown): number => (isCount(v) ? Math.floor(v) : 0)

/**
 * Chat/completions/embeddings say `prompt_tokens`/`completion_tokens`; responses say `input_tokens`/`output_tokens`;
 * vLLM's rerank, only `total_tokens`: all of it read, so input (counted nowhere else, a chargeback from the
 * metrics' input and output missed it).
 */
export const usageOf = (body: unknown): TokenUsage => {
  if (!isJsonObject(body) || !isJsonObject(body.usage)) return zeroUsage
  const u = body.usage
  const output = num(u.output_tokens ?? u.completion_tokens)
  const totalOnly = u.input_tokens === undefined && u.prompt_tokens === undefined && u.total_tokens !== undefined
  const input = totalOnly ? Math.max(0, num(u.total_tokens) - output) : num(u.input_tokens ?? u.prompt_tokens)
  const inputDetails = isJsonObject(u.input_tokens_details) ? u.input_tokens_details : isJsonObject(u.prompt_tokens_details) ? u.prompt_tokens_details : {}
  const outputDetails = isJsonObject(u.output_tokens_details) ? u.output_tokens_details : isJsonObject(u.completion_tokens_details) ? u.completion_tokens_details : {}
  return {
    input,
    cached: num(inputDetails.cached_tokens),
    output,
    reasoning: num(outputDetails.reasoning_tokens),
    total: isCount(u.total_tokens) ? Math.floor(u.total_tokens) : input + output
  }
}
