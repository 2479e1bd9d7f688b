/** The simulator's answers: successful bodies per endpoint, OpenAI error bodies and the texts of `[bignum]` and `[html]`. */

/** The prompt text of a request: the last message's content, `prompt` or `input` (where directives are read). */
export const promptOf = (body: any): string => {
  if (Array.isArray(body?.messages)) {
    const last = body.messages.at(-1)?.content
    return typeof last === "string" ? last : JSON.stringify(last ?? "")
  }
  const text = body?.prompt ?? body?.input
  return typeof text === "string" ? text : JSON.stringify(text ?? "")
}

const tokens = (text: string) => Math.max(1, Math.ceil(text.length / 4))

/** The successful answer to `body` on `path` (an echo of the prompt, with usage). */
export const answer = (path: string, body: any, prompt: string) => {
  const model = body.model
  const created = Math.floor(Date.now() / 1000)
  const reply = `echo: ${prompt}`
  const usage = { prompt_tokens: tokens(prompt), completion_tokens: tokens(reply) }
  switch (path) {
    case "/v1/chat/completions":
      return {
        id: `chatcmpl-${created}`,
        object: "chat.completion",
        created,
        model,
        choices: [{ index: 0, message: { role: "assistant", content: reply }, finish_reason: "stop" }],
        usage: {
          ...usage,
          total_tokens: usage.prompt_tokens + usage.completion_tokens,
          prompt_tokens_details: { cached_tokens: 0 },
          completion_tokens_details: { reasoning_tokens: 0 }
        }
      }
    case "/v1/completions":
      return {
        id: `cmpl-${created}`,
        object: "text_completion",
        created,
        model,
        choices: [{ index: 0, text: reply, finish_reason: "stop" }],
        usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens }
      }
    case "/v1/embeddings": {
      const inputs = Array.isArray(body.input) ? body.input : [body.input]
      return {
        object: "list",
        model,
        data: inputs.map((_: unknown, index: number) => ({
          object: "embedding",
          index,
          embedding: Array.from({ length: 8 }, (_, i) => ((prompt.length + i) % 10) / 10)
        })),
        usage: { prompt_tokens: usage.prompt_tokens, total_tokens: usage.prompt_tokens }
      }
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
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: usage.completion_tokens,
          output_tokens_details: { reasoning_tokens: 0 },
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
