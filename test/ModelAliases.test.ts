/**
 * An upstream's `aliases`: a batch naming a model by the name it has elsewhere (OpenAI's `gpt-4o-mini`, in a file
 * written for OpenAI) runs on the upstream that knows it by another name, its body sent with that name and otherwise
 * as written; `GET /v1/models` lists the alias; the file's check of them.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Either, Exit, Option } from "effect"
import { defaults } from "../src/Config.js"
import { startUpReport } from "../src/upstreams/startUpReport.js"
import { resolveEntries } from "../src/upstreams/UpstreamSpec.js"
import { chatLine, createBatch, readLines, terminal, upload, waitFor } from "./support/Batches.js"
import { client, Simulators, testAppWithUpstreams } from "./support/Upstreams.js"

const minimal = { name: "local", base_url: "http://127.0.0.1:8000/v1", models: ["llama3.1:8b"] }
const problem = (entry: object) =>
  Either.getLeft(resolveEntries([{ ...minimal, ...entry }], defaults, {})).pipe(Option.getOrElse(() => "no problem"))

describe("aliases in the upstreams file", () => {
  it("are models the upstream serves, each sent under the name it maps to", () => {
    const [spec] = Either.getOrThrow(resolveEntries([{ ...minimal, aliases: { "gpt-4o-mini": "llama3.1:8b" } }], defaults, {}))
    expect(spec!.models).toEqual(["llama3.1:8b", "gpt-4o-mini"])
    expect([...spec!.aliases!]).toEqual([["gpt-4o-mini", "llama3.1:8b"]])
    // Named in models too: once.
    const [twice] = Either.getOrThrow(resolveEntries([{ ...minimal, models: ["gpt-4o-mini"], aliases: { "gpt-4o-mini": "x" } }], defaults, {}))
    expect(twice!.models).toEqual(["gpt-4o-mini"])
  })

  it("refuses a name that is \"*\" or empty, and anything but a map, naming the upstream and the field", () => {
    expect(problem({ aliases: { "*": "llama3.1:8b" } })).toBe(
      "upstream 'local': aliases: '*' is no model name (a model name of 1–256 characters, not \"*\")"
    )
    expect(problem({ aliases: { "gpt-4o-mini": "" } })).toBe("upstream 'local': aliases.gpt-4o-mini: a model name of 1–256 characters, not \"*\"")
    expect(problem({ aliases: ["gpt-4o-mini: llama3.1:8b"] })).toContain("a map of the model names batches give")
    expect(problem({ aliasses: {} })).toContain("did you mean 'aliases'?")
    expect(problem({ aliases: JSON.parse(`{"__proto__": "llama3.1:8b"}`) })).toBe(
      "upstream 'local': aliases: '__proto__' cannot be given as a model name"
    )
  })

  it("are looked for in the upstream's list at start by the name sent, not the name given", () => {
    const [spec] = Either.getOrThrow(resolveEntries([{ ...minimal, aliases: { "gpt-4o-mini": "llama3.1:8b" } }], defaults, {}))
    const report = (listed: ReadonlyArray<string>) => startUpReport(spec!, Exit.succeed(200), Option.some(listed))
    expect(report(["llama3.1:8b"])).toMatchObject({ lines: [{ level: "Info" }] })
    expect(report(["qwen"])).toMatchObject({
      lines: [{ level: "Info" }, { level: "Warning", message: expect.stringContaining("does not list 'llama3.1:8b', which its entry names") }]
    })
  })
})

const app = testAppWithUpstreams(
  { local: { models: ["llama3.1:8b"], latencyMs: 5, keepBodies: true } },
  ({ local }) => [{ name: "local", base_url: local!.url, models: ["llama3.1:8b"], aliases: { "gpt-4o-mini": "llama3.1:8b" } }]
)

layer(app, { excludeTestServices: true })("an upstream's aliases", (it) => {
  it.effect("a batch naming the alias runs on the upstream under its own name, the body otherwise as written; /v1/models lists both", () =>
    Effect.gen(function*() {
      const { local } = yield* Simulators
      const openai = yield* client
      const listed = yield* Effect.promise(() => openai.models.list())
      expect(listed.data.map((m) => [m.id, m.owned_by])).toEqual([["llama3.1:8b", "local"], ["gpt-4o-mini", "local"]])

      // A seed past 2^53 and an escape, which a reparse would change.
      const exact = `{"custom_id":"exact","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","seed":12345678901234567890,"messages":[{"role":"user","content":"caf\\u00e9"}]}}`
      const file = yield* upload(openai, [chatLine("a", "first", "gpt-4o-mini"), chatLine("b", "second", "gpt-4o-mini"), exact])
      const done = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 20_000)
      expect([done.status, done.request_counts]).toEqual(["completed", { total: 3, completed: 3, failed: 0 }])
      const output = yield* readLines(openai, done.output_file_id)
      expect(output.map((line) => line.response.status_code)).toEqual([200, 200, 200])
      expect(local!.stats.byModel).toEqual(new Map([["llama3.1:8b", 3]]))
      const sent = local!.stats.bodies.find((b) => b.body.includes("12345678901234567890"))!.body
      expect(sent).toBe(`{"model":"llama3.1:8b","seed":12345678901234567890,"messages":[{"role":"user","content":"caf\\u00e9"}]}`)
    }))
})
