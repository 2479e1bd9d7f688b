/**
 * What the upstream answers, end to end (the official `openai` client → the server → the simulator): a
 * pretty-printed answer with a number `JSON.stringify` cannot write, one in ISO-8859-1 said so, a 200 that is not JSON, a gzipped one, one
 * nested too deep, an answer over `INFERENCE_MAX_RESPONSE_BYTES` and one that trickles past `INFERENCE_TIMEOUT`; and an
 * answer that quotes the upstream's key back.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { BIGNUM_COMPACT } from "../scripts/simulator.js"
import { asJsonBody, MAX_ERROR_BODY_CHARS, UpstreamFailure } from "../src/inference/answers.js"
import { chatLine, createBatch, readLines, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { scriptedUpstream } from "./support/ScriptedUpstream.js"
import { baseUrl, testAppWithUpstream, Upstream } from "./support/TestApp.js"

const config = {
  inferenceTimeout: Duration.seconds(1),
  inferenceMaxResponseBytes: 64 * 1024,
  inferenceMaxAttempts: 2,
  inferenceRetryBaseDelay: Duration.millis(10),
  maxConcurrentRequestsPerBatch: 8
}

describe("upstream answers", () => {
  layer(testAppWithUpstream(config), { excludeTestServices: true })("end to end", (it) => {
    it.effect("pretty JSON kept exactly; non-JSON, gzipped, too deep, oversize and trickling answers as error lines", () =>
      Effect.gen(function*() {
        const openai = yield* Effect.map(baseUrl, sdk)
        const sim = yield* Upstream
        const prompts = {
          plain: "plain",
          latin1: "Grüße [latin1]", // in ISO-8859-1, and said so in its content-type
          mislabelled: "Grüße, 東京 [utf8-as-latin1]", // in UTF-8, though labelled ISO-8859-1: read as UTF-8
          pretty: "pretty [pretty] [bignum]",
          html: "html [html]",
          gzip: "gzip [gzip]", // compressed though it was asked for none
          deep: "deep [deep:65]", // one level past the 64 an input line may nest
          big: "big [big:0.5]", // about 512 KiB, over the 64 KiB limit
          slow: "slow [trickle:50]" // a byte every 50 ms: about 20 s for the whole answer
        }
        const file = yield* upload(openai, Object.entries(prompts).map(([id, prompt]) => chatLine(id, prompt)))
        const started = Date.now()
        const batch = yield* createBatch(openai, file.id)
        const done = yield* waitFor(openai, batch.id, terminal)
        // Two attempts of about a second each for the trickling answer, far from the 20 s it would take.
        expect(Date.now() - started).toBeLessThan(8000)
        expect(done.status).toBe("completed")
        expect(done.request_counts).toEqual({ total: 9, completed: 4, failed: 5 })

        // The output file's text holds the pretty answer on one line, its numbers exactly as the upstream wrote them.
        const outputText = yield* Effect.promise(async () => (await openai.files.content(done.output_file_id!)).text())
        const outputLines = outputText.split("\n").filter((line) => line !== "")
        expect(outputLines.length).toBe(4)
        for (const id of ["latin1", "mislabelled"] as const) {
          const line = JSON.parse(outputLines.find((l) => l.includes(`"custom_id":"${id}"`))!)
          expect(line.response.body.choices[0].message.content).toBe(`echo: ${prompts[id]}`)
        }
        const prettyLine = outputLines.find((line) => line.includes(`"custom_id":"pretty"`))!
        expect(prettyLine).toContain(`"body":{${BIGNUM_COMPACT},"id":"chatcmpl-`)
        expect(prettyLine).not.toContain("e+29")
        expect(JSON.parse(prettyLine).response.body.choices[0].message.content).toBe(`echo: ${prompts.pretty}`)

        const errors = yield* readLines(openai, done.error_file_id)
        const byId = Object.fromEntries(errors.map((line) => [line.custom_id, line]))
        expect(Object.keys(byId).sort()).toEqual(["big", "deep", "gzip", "html", "slow"])
        for (const line of errors) expect(line.response).toBeNull()
        expect(byId.html.error.code).toBe("invalid_upstream_response")
        expect(byId.html.error.message).toContain("answered 200 (content-type text/html; charset=utf-8)")
        expect(byId.html.error.message).toContain("<!DOCTYPE html> <html> <head><title>Sign in</title>")
        expect(byId.gzip.error).toMatchObject({
          code: "invalid_upstream_response",
          message: "The upstream answered 200 with a body encoded as gzip (content-encoding), which is not decoded here: it was asked for none."
        })
        expect(byId.deep.error).toMatchObject({ code: "invalid_upstream_response", message: "The upstream answered 200 with JSON nested more than 64 levels deep." })
        expect([...sim.stats.acceptEncodings.keys()]).toEqual(["identity"])
        expect(byId.big.error.code).toBe("upstream_response_too_large")
        expect(byId.slow.error).toMatchObject({ code: "upstream_timeout", message: expect.stringMatching(/ within .*\. Tried 2 times\.$/) })

        // Timeouts are retried; a non-JSON 200 and an oversize answer are not.
        expect(sim.stats.byPrompt.get(prompts.slow)).toBe(2)
        expect(sim.stats.byPrompt.get(prompts.html)).toBe(1)
        expect(sim.stats.byPrompt.get(prompts.gzip)).toBe(1)
        expect(sim.stats.byPrompt.get(prompts.deep)).toBe(1)
        expect(sim.stats.byPrompt.get(prompts.big)).toBe(1)
      }))
  })
})

describe("an upstream answer that cannot be read", () => {
  it("a 2xx compressed or nested too deep is unusable; another status keeps its status, the reason as its message", () => {
    const gzip = { "content-encoding": "gzip" }
    const deep = `{"a":${"[".repeat(65)}${"]".repeat(65)}}`
    expect(asJsonBody(200, "\u001f\u008b", gzip)).toBeInstanceOf(UpstreamFailure)
    expect(asJsonBody(200, deep, {})).toBeInstanceOf(UpstreamFailure)
    // A 503 or a 429 stays one: its retry, its Retry-After and the outage go by its status.
    expect(asJsonBody(503, "\u001f\u008b", gzip)).toMatchObject({
      json: { error: { message: "Upstream answered 503 with a body encoded as gzip (content-encoding), which is not decoded here: it was asked for none.", type: "server_error" } }
    })
    expect(asJsonBody(429, deep, {})).toMatchObject({
      json: { error: { message: "Upstream answered 429 with JSON nested more than 64 levels deep.", type: "upstream_error" } }
    })
    expect(asJsonBody(200, `{"ok":true}`, { "content-encoding": "identity" })).toMatchObject({ json: { ok: true } })
  })

  it(`an error answer over MAX_ERROR_BODY_CHARS, an object too, is said in an envelope quoting its start`, () => {
    const message = "e".repeat(MAX_ERROR_BODY_CHARS)
    const body = JSON.stringify({ error: { message } })
    const said = asJsonBody(400, body, {}) as { text: string; json: any }
    expect(said.text.length).toBeLessThan(4096 + 200)
    expect(said.json.error.message).toBe(
      `Upstream answered 400 with a body of ${body.length} characters, more than an error line keeps (${MAX_ERROR_BODY_CHARS}): ` +
        `${body.slice(0, 4096)}.`
    )
    // One under the bound is kept as it came; a 2xx is not bounded so (its size is INFERENCE_MAX_RESPONSE_BYTES').
    const under = JSON.stringify({ error: { message: message.slice(0, MAX_ERROR_BODY_CHARS - 100) } })
    expect((asJsonBody(400, under, {}) as { text: string }).text).toBe(under)
    expect((asJsonBody(200, body, {}) as { text: string }).text).toBe(body)
  })

  it("a body that is no JSON, wrapped in an envelope, keeps NEL, U+2028 and U+2029 as escapes: its line stays one", () => {
    const wrapped = asJsonBody(502, "Bad\u2028gateway\u0085x\u2029", {}) as { text: string }
    expect(wrapped.text).not.toMatch(/[\u0085\u2028\u2029]/)
    expect(JSON.parse(wrapped.text).error.message).toBe("Bad\u2028gateway\u0085x\u2029")
  })

  it("a body that is no JSON is cut at 4,096 characters, never in an emoji: no half of a pair, which jq refuses", () => {
    const cut = asJsonBody(500, `${"x".repeat(4095)}😀tail`, {}) as { text: string }
    expect(cut.text).not.toMatch(/\\ud83d/)
    expect(JSON.parse(cut.text).error.message).toBe("x".repeat(4095))
    // One the upstream sent broken is said with U+FFFD in its place.
    const broken = asJsonBody(500, "half \ud83d of it", {}) as { text: string }
    expect(JSON.parse(broken.text).error.message).toBe("half \ufffd of it")
  })
})

describe("an upstream answer that quotes a credential", () => {
  it.scoped("an upstream that quotes its key back (a gateway's 'Received API Key = sk-…'): the key and credential headers are REDACTED in an error kept, escaped as JSON too", () =>
    Effect.gen(function*() {
      const KEY = "sk-upstream/S3CRET+0123456789"
      const upstream = yield* scriptedUpstream({
        apiKey: KEY,
        headers: { "X-Api-Key": "hdr-S3CRET-4567", "Proxy-Authorization": "Basic cHJveHk6UzNDUkVU", "X-Portkey-Provider": "anthropic-claude", "X-Trace": "1" },
        answer: (request) => {
          const body = request.body._tag === "Raw" ? String(request.body.body) : ""
          const quoted = `Received API Key = ${KEY}; headers: ${JSON.stringify(request.headers)}`
          return body === "ok"
            ? new Response(JSON.stringify({ id: "c", choices: [{ message: { content: `you sent ${KEY} via anthropic-claude` } }] }))
            // As PHP writes JSON: `/` as `\/`. The key so escaped is found too.
            : new Response(`{"error":{"message":${JSON.stringify(quoted).replaceAll("/", "\\/")}}}`, { status: 401 })
        },
        maxConcurrency: 2,
        probeInterval: Duration.seconds(60)
      })
      const textOf = (body: string) =>
        Effect.map(upstream.attempt("/v1/chat/completions", body, { project: "p", deadline: 0 }, 1), ([attempt]) =>
          attempt._tag === "Response" ? attempt.response.text : attempt.failure.message)
      const refused = yield* textOf("{}")
      expect(refused).not.toMatch(/S3CRET|cHJveHk6UzNDUkVU/)
      const message: string = JSON.parse(refused).error.message
      expect(message).toContain("Received API Key = REDACTED;")
      // Neither a short value nor a header that is no credential's (Portkey's provider: "key" in its name).
      expect(message).toContain(`"x-trace":"1"`)
      expect(message).toContain(`"x-portkey-provider":"anthropic-claude"`)
      // A completion is kept as it came, whatever it says.
      expect(JSON.parse(yield* textOf("ok")).choices[0].message.content).toBe(`you sent ${KEY} via anthropic-claude`)
    }))
})
