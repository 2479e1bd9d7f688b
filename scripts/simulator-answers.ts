/** The simulator's answers: successful bodies per endpoint, OpenAI error bodies and the texts of `[bignum]` and `[html]`. */

/**
 * The prompt text of a request (where directives are read): the last message's content, `prompt`, `input`, or a
 * rerank/score request's `query` / `text_1`.
 */
export const promptOf = (body: any): string => {
  if (Array.isArray(body?.messages)) {
    const last = body.messages.at(-1)?.content
    return typeof last === "string" ? last : JSON.stringify(last ?? "")
  }
  const text = body?.prompt ?? body?.input ?? body?.query ?? body?.text_1
  return typeof text === "string" ? text : JSON.stringify(text ?? "")
}

const tokens = (text: string) => Math.max(1, Math.ceil(text.length / 4))

/** `[cached:N]` and `[reasoning:N]` in the prompt: the usage details an answer reports (0 without). */
const details = (prompt: string) => ({
  cached: Number(/\[cached:(\d+)\]/.exec(prompt)?.[1] ?? 0),
  reasoning: Number(/\[reasoning:(\d+)\]/.exec(prompt)?.[1] ?? 0)
})

/** OpenAI's moderation categories (omni-moderation), all false, with low scores. */
const CATEGORIES = [
  "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
  "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic"
]

/** `n` of a request, as OpenAI takes it (1 when absent), at most `max`. */
const countOf = (n: unknown, max: number) => Number.isInteger(n) && (n as number) > 0 ? Math.min(n as number, max) : 1

/**
 * An embeddings request's inputs as OpenAI counts them: a string, an array of strings, a token array (one input) or
 * an array of token arrays.
 */
const embeddingInputs = (input: unknown): ReadonlyArray<unknown> =>
  Array.isArray(input) && input.length > 0 && (typeof input[0] === "string" || Array.isArray(input[0])) ? input : [input]

/** A vector as `encoding_format: "base64"` answers it: its float32 values, little-endian, in base64. */
const base64Vector = (vector: ReadonlyArray<number>) => Buffer.from(new Float32Array(vector).buffer).toString("base64")

/** A 1×1 transparent PNG, as `b64_json`. */
const PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="

/** The successful answer to `body` on `path` (an echo of the prompt, with usage). */
export const answer = (path: string, body: any, prompt: string) => {
  const model = body.model
  const created = Math.floor(Date.now() / 1000)
  const reply = `echo: ${prompt}`
  const usage = { prompt_tokens: tokens(prompt), completion_tokens: tokens(reply) }
  const { cached, reasoning } = details(prompt)
  switch (path) {
    case "/v1/chat/completions":
      return {
        id: `chatcmpl-${created}`,
        object: "chat.completion",
        created,
        model,
        choices: Array.from({ length: countOf(body.n, 8) }, (_, index) => ({
          index,
          message: { role: "assistant", content: reply, refusal: null, annotations: [] },
          logprobs: null,
          finish_reason: "stop"
        })),
        usage: {
          ...usage,
          total_tokens: usage.prompt_tokens + usage.completion_tokens,
          prompt_tokens_details: { cached_tokens: cached },
          completion_tokens_details: { reasoning_tokens: reasoning }
        }
      }
    case "/v1/completions":
      return {
        id: `cmpl-${created}`,
        object: "text_completion",
        created,
        model,
        choices: Array.from({ length: countOf(body.n, 8) }, (_, index) => ({ index, text: reply, logprobs: null, finish_reason: "stop" })),
        usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens }
      }
    case "/v1/embeddings": {
      const vector = (dimensions: number) => Array.from({ length: dimensions }, (_, i) => ((prompt.length + i) % 10) / 10)
      const inputs = embeddingInputs(body.input)
      // `dimensions` as OpenAI's API takes it (here up to 4,096): answers the size of a real model's; 8 without.
      const dimensions = Number.isInteger(body.dimensions) && body.dimensions > 0 ? Math.min(body.dimensions, 4096) : 8
      return {
        object: "list",
        model,
        data: inputs.map((_: unknown, index: number) => ({
          object: "embedding",
          index,
          embedding: body.encoding_format === "base64" ? base64Vector(vector(dimensions)) : vector(dimensions)
        })),
        usage: { prompt_tokens: usage.prompt_tokens, total_tokens: usage.prompt_tokens }
      }
    }
    case "/v1/moderations": {
      const inputs = Array.isArray(body.input) ? body.input : [body.input]
      return {
        id: `modr-${created}`,
        model,
        results: inputs.map(() => ({
          flagged: false,
          categories: Object.fromEntries(CATEGORIES.map((c) => [c, false])),
          category_scores: Object.fromEntries(CATEGORIES.map((c) => [c, 0.0001])),
          category_applied_input_types: Object.fromEntries(CATEGORIES.map((c) => [c, ["text"]]))
        }))
      }
    }
    case "/v1/images/generations": {
      const n = countOf(body.n, 4)
      const output = 272 * n
      return {
        created,
        data: Array.from({ length: n }, () => ({ b64_json: PIXEL_PNG })),
        usage: {
          input_tokens: usage.prompt_tokens,
          input_tokens_details: { text_tokens: usage.prompt_tokens, image_tokens: 0 },
          output_tokens: output,
          total_tokens: usage.prompt_tokens + output
        }
      }
    }
    case "/v1/rerank": { // vLLM's (Jina/Cohere-style) rerank
      const documents: Array<unknown> = Array.isArray(body.documents) ? body.documents : []
      return {
        id: `rerank-${created}`,
        model,
        usage: { total_tokens: usage.prompt_tokens + documents.length },
        results: documents.map((document, index) => ({
          index,
          document: { text: typeof document === "string" ? document : JSON.stringify(document) },
          relevance_score: 1 / (index + 1)
        }))
      }
    }
    case "/v1/score": // vLLM's score
      return {
        id: `score-${created}`,
        object: "list",
        created,
        model,
        data: [{ index: 0, object: "score", score: 0.5 }],
        usage: { prompt_tokens: usage.prompt_tokens, total_tokens: usage.prompt_tokens }
      }
    default:
      return {
        id: `resp_${created}`,
        object: "response",
        created_at: created,
        status: "completed",
        model,
        output: [{ type: "message", role: "assistant", content: [{ type: "output_text", text: reply }] }],
        usage: {
          input_tokens: usage.prompt_tokens,
          input_tokens_details: { cached_tokens: cached },
          output_tokens: usage.completion_tokens,
          output_tokens_details: { reasoning_tokens: reasoning },
          total_tokens: usage.prompt_tokens + usage.completion_tokens
        }
      }
  }
}

/** Lengthens the first text of `json` (message content, text, output text) until its JSON is about `bytes` long. */
export const pad = (json: any, bytes: number) => {
  const missing = Math.max(0, bytes - JSON.stringify(json).length)
  const filler = "lorem ipsum dolor sit amet ".repeat(Math.ceil(missing / 27)).slice(0, missing)
  const choice = json.choices?.[0]
  if (choice?.message !== undefined) choice.message.content += filler
  else if (choice !== undefined) choice.text += filler
  else if (json.output !== undefined) json.output[0].content[0].text += filler
  else json.filler = filler
}

/** An OpenAI error body. */
export const errorBody = (status: number, message: string, code: string | null = null) => ({
  error: { message, type: status >= 500 ? "server_error" : "invalid_request_error", param: null, code }
})

/** What `[bignum]` adds: written by hand, as `JSON.stringify` would lose the big integer and the `1.50`. */
export const BIGNUM_MEMBER = `"big": [123456789012345678901234567890, 1.50, "two  spaces\\t \\"q\\" \\u00e9 \\\\"]`
/** The same member as a compact JSON text keeps it (whitespace inside the string kept). */
export const BIGNUM_COMPACT = `"big":[123456789012345678901234567890,1.50,"two  spaces\\t \\"q\\" \\u00e9 \\\\"]`

/** What `[html]` answers (with a 200), as a captive portal or a misrouted proxy would. */
export const HTML_PAGE = [
  "<!DOCTYPE html>",
  "<html>",
  "<head><title>Sign in</title></head>",
  "<body><h1>Please sign in to continue</h1></body>",
  "</html>",
  ""
].join("\n")
