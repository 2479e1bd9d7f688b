/** The upstreams file: YAML and JSON, defaults, keys from the environment, and clear errors for mistakes. */
import { describe, expect, it } from "@effect/vitest"
import { ConfigError, Duration, Effect, Either, Option, Redacted } from "effect"
import { writeFileSync } from "node:fs"
import * as Path from "node:path"
import { defaults } from "../src/Config.js"
import { parseUpstreamsFile, upstreamSpecs } from "../src/upstreams/upstreamsFile.js"
import { resolveEntries, shadowedModels } from "../src/upstreams/UpstreamSpec.js"
import { scratchDir } from "./support/TestApp.js"

const YAML = `
upstreams:
  - name: vllm-llama
    base_url: http://10.0.0.5:8000/v1/
    models: [meta-llama/Llama-3.1-8B-Instruct]
    max_concurrency: 64
    api_key_env: VLLM_KEY
    headers: { x-team: batch }
    timeout: 2 minutes
    metrics_url: http://10.0.0.5:8000/metrics
    max_waiting: 32
  - name: openai
    base_url: https://api.openai.com/v1
    api_key: sk-test
    models: ["*"]
`

const resolve = (entries: ReadonlyArray<unknown>, env: Record<string, string> = {}) =>
  resolveEntries(entries, defaults, env)
const problem = (entries: ReadonlyArray<unknown>, env: Record<string, string> = {}) =>
  Either.getLeft(resolve(entries, env)).pipe(Option.getOrElse(() => "no problem"))
const minimal = { name: "a", base_url: "http://127.0.0.1:8000/v1", models: ["m"] }

describe("UpstreamSpec", () => {
  it("reads the YAML example, with defaults and the key from its variable", () => {
    const { entries, problem: fileProblem } = Either.getOrThrow(parseUpstreamsFile(YAML))
    expect(fileProblem).toBeUndefined()
    const [vllm, openai] = Either.getOrThrow(resolve(entries, { VLLM_KEY: "secret-1" }))
    expect(vllm).toMatchObject({
      name: "vllm-llama",
      baseUrl: "http://10.0.0.5:8000/v1",
      models: ["meta-llama/Llama-3.1-8B-Instruct"],
      maxConcurrency: 64,
      minConcurrency: 1,
      headers: { "x-team": "batch" },
      loadAware: Option.some({ metricsUrl: "http://10.0.0.5:8000/metrics", maxWaiting: 32 })
    })
    expect(Duration.toMillis(vllm!.timeout)).toBe(120_000)
    expect(Option.map(vllm!.apiKey, Redacted.value)).toEqual(Option.some("secret-1"))
    expect(openai).toMatchObject({ models: ["*"], maxConcurrency: defaults.inferenceMaxConcurrency, loadAware: Option.none() })
    expect(Duration.toMillis(openai!.timeout)).toBe(Duration.toMillis(defaults.inferenceTimeout))
    // JSON is read the same way.
    expect(Either.getOrThrow(parseUpstreamsFile(JSON.stringify({ upstreams: [minimal] }))).entries).toEqual([minimal])
    // A LiteLLM config given as it is: said so, not "expected a list under upstreams".
    const litellm = "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n"
    expect(Either.flip(parseUpstreamsFile(litellm))).toEqual(Either.right(
      "a LiteLLM config (model_list) is not read here: the file lists `upstreams`, each with name, base_url and models " +
        "(README, Upstreams; a provider's prefixed names, as aliases)"
    ))
  })

  it("names the models an upstream never gets, as an earlier one names them too", () => {
    const specs = Either.getOrThrow(resolve([
      { ...minimal, name: "a", models: ["m1", "m2"] },
      { ...minimal, name: "b", models: ["m2", "m3"] },
      { ...minimal, name: "any", models: ["*"] },
      { ...minimal, name: "d", models: ["m3", "m2", "m4"] }
    ], {}))
    expect(shadowedModels(specs)).toEqual([
      { upstream: "b", models: ["m2"], by: ["a"] },
      { upstream: "d", models: ["m3", "m2"], by: ["a", "b"] }
    ])
  })

  it("an upstream open to some projects shadows nothing: the other projects' batches go on to the next", () => {
    const specs = Either.getOrThrow(resolve([
      { ...minimal, name: "paid", models: ["m1"], projects: ["research"] },
      { ...minimal, name: "local", models: ["m1"] }
    ], {}))
    expect(specs.map((s) => s.projects)).toEqual([["research"], undefined])
    expect(shadowedModels(specs)).toEqual([])
  })

  it("says what is wrong, naming the entry and the field", () => {
    // Every unknown field at once, each with the field it likely means, then the fields there are.
    expect(problem([{ ...minimal, max_concurency: 3 }, { ...minimal, name: "b", model: ["m"], api_key_environment: "K" }])).toBe(
      "upstream 'a': unknown field 'max_concurency' (did you mean 'max_concurrency'?); " +
        "upstream 'b': unknown field 'model' (did you mean 'models'?); " +
        "upstream 'b': unknown field 'api_key_environment' (did you mean 'api_key_env'?). " +
        "An upstream's fields: name, base_url, api_key, api_key_env, models, aliases, max_concurrency, min_concurrency, timeout, " +
        "headers, metrics_url, max_waiting, projects"
    )
    expect(problem([{ ...minimal, priority: 1 }])).toMatch(/^upstream 'a': unknown field 'priority'\. An upstream's fields: /)
    expect(problem([{ base_url: "http://127.0.0.1:8000/v1", models: ["m"] }])).toMatch(/^upstreams\.0\.name: /) // no name to go by
    expect(problem([{ ...minimal, base_url: "ftp://x" }])).toContain("http:// or https://")
    // What the URL parser would take and mend: a missing slash, an inner space (sent as %20).
    expect(problem([{ ...minimal, base_url: "http:/127.0.0.1:1/v1" }])).toContain("http:// or https:// URL, without spaces")
    expect(problem([{ ...minimal, base_url: "http://127.0.0.1:1/v1 x" }])).toContain("http:// or https:// URL, without spaces")
    expect(problem([{ ...minimal, models: [] }])).toContain("models")
    expect(problem([minimal, minimal])).toBe("two upstreams are named 'a'")
    expect(problem([{ ...minimal, api_key_env: "NOPE" }])).toBe("upstream 'a': api_key_env names NOPE, which is not set")
    expect(problem([{ ...minimal, api_key_env: "EMPTY" }], { EMPTY: "" })).toBe("upstream 'a': api_key_env names EMPTY, which is empty")
    expect(problem([{ ...minimal, api_key: "k", api_key_env: "K" }], { K: "v" })).toContain("not both")
    // Variables as a shell names them: the file is not expanded (the key was sent as "${OPENAI_API_KEY}").
    expect(problem([{ ...minimal, api_key_env: "${OPENAI_API_KEY}" }], { OPENAI_API_KEY: "sk" }))
      .toBe("upstream 'a': api_key_env takes the variable's name: OPENAI_API_KEY, not ${OPENAI_API_KEY}")
    expect(problem([{ ...minimal, api_key: "$OPENAI_API_KEY" }])).toContain("give api_key_env: OPENAI_API_KEY")
    // ...or as a LiteLLM config does (it was sent as the bearer token "os.environ/OPENAI_API_KEY").
    expect(problem([{ ...minimal, api_key: "os.environ/OPENAI_API_KEY" }])).toContain("give api_key_env: OPENAI_API_KEY")
    // Headers the client sets (a wrong Content-Length failed every call), and a second source of credentials.
    for (const name of ["Content-Length", "Host", "transfer-encoding", "Connection"]) {
      expect(problem([{ ...minimal, headers: { [name]: "5" } }])).toBe(
        `upstream 'a': headers: ${name.toLowerCase()} is set by the client itself (the calls' framing and connection)`
      )
    }
    expect(problem([{ ...minimal, api_key: "k", headers: { Authorization: "Bearer other" } }])).toContain("give one")
    expect(problem([{ ...minimal, headers: { Authorization: "Bearer k", "X-Tenant": "t" } }])).toBe("no problem")
    expect(problem([{ ...minimal, min_concurrency: 8, max_concurrency: 4 }])).toContain("min_concurrency is larger")
    expect(problem([{ ...minimal, timeout: "soon" }])).toContain("timeout 'soon'")
    expect(problem([{ ...minimal, max_waiting: 3 }])).toContain("both metrics_url and max_waiting")
    expect(problem([{ ...minimal, projects: [] }])).toContain("upstream 'a': projects")
    expect(problem([{ ...minimal, projects: ["team a"] }])).toBe("upstream 'a': projects.0: a project name (1–64 of A–Z a–z 0–9 _ -, as API_KEYS gives it)")
    // What undici would refuse on every call (the upstream would seem down for good), and secrets in logged URLs.
    expect(problem([{ ...minimal, api_key: "sk-abc\n" }])).toContain("no line breaks")
    expect(problem([{ ...minimal, api_key_env: "K" }], { K: "sk-abc\r\n" })).toContain("K holds a line break")
    expect(problem([{ ...minimal, headers: { "x-team": "a\nb" } }])).toContain("header value")
    // A character beyond Latin-1, such as a "…" placeholder left in place, or an emoji.
    expect(problem([{ ...minimal, headers: { "OpenAI-Organization": "org-…" } }])).toContain("characters such as …")
    expect(problem([{ ...minimal, api_key: "sk-…" }])).toContain("header value of printable Latin-1")
    expect(problem([{ ...minimal, api_key_env: "K" }], { K: "sk-🔑" })).toContain("K holds a line break, a control character, a character beyond Latin-1")
    expect(problem([{ ...minimal, headers: { "x-name": "café\t1" } }])).toBe("no problem") // Latin-1 and an inner tab: sent as they are
    // A key or header of digits, read by YAML as a number: said without the secret.
    for (const entry of [{ ...minimal, api_key: 123456789 }, { ...minimal, headers: { "x-key": 99887766 } }]) {
      const said = problem([entry])
      expect(said).toContain("quote a value of digits")
      expect(said).not.toMatch(/123456789|99887766/)
    }
    // Headers written as a list or a string: said without repeating them (a key among them).
    for (const headers of [["Authorization: Bearer sk-proj-SECRET1"], "Authorization: Bearer sk-proj-SECRET1"]) {
      const said = problem([{ ...minimal, headers }])
      expect(said).toContain("a map of header names to values")
      expect(said).not.toContain("SECRET1")
    }
    // A header name that is none, not repeated: most often a whole header written as its name.
    const wholeHeader = problem([{ ...minimal, headers: { "Authorization: Bearer sk-SECRET6": null } }])
    expect(wholeHeader).toContain("headers.(a name that is no header name)")
    expect(wholeHeader).not.toContain("SECRET6")
    expect(problem([{ ...minimal, headers: { "x-team": 5 } }])).toContain("headers.x-team")
    expect(problem([{ ...minimal, base_url: "http://user:pw@host/v1" }])).toContain("without user:password@")
    expect(problem([{ ...minimal, base_url: "http://host/v1?key=x" }])).toContain("without ?query")
    // An endpoint's path, as a LiteLLM api_base may be written: every line would have failed with a 404.
    expect(problem([{ ...minimal, base_url: "http://host/v1/chat/completions/" }])).toContain("without an endpoint's path (/chat/completions")
    expect(Either.getLeft(parseUpstreamsFile("upstreams: [unclosed"))).toEqual(Option.some(expect.stringContaining("not YAML or JSON")))
    expect(Either.getLeft(parseUpstreamsFile("models: []"))).toEqual(Option.some(expect.stringContaining("under `upstreams`")))
    expect(Either.getLeft(parseUpstreamsFile("upstream:\n  - name: a\n"))).toEqual(Option.some("expected an object with a list under `upstreams` (not 'upstream')"))
    // A misspelt or invented top-level key is not ignored (the upstreams it meant to tune would run untuned).
    expect(Either.map(parseUpstreamsFile("upstreams: []\ndefaults: {timeout: 5 minutes}\n"), (file) => file.problem))
      .toEqual(Either.right("unknown field 'defaults': the file holds `upstreams` (and x-… keys, for YAML anchors) only"))
    // Shared settings written once: an x- key holds an anchor, merge keys take it in.
    const merged = parseUpstreamsFile(
      "x-defaults: &d {timeout: 5 minutes, max_concurrency: 8}\nupstreams:\n  - {<<: *d, name: a, base_url: http://h/v1, models: [m]}\n"
    )
    expect(merged).toEqual(Either.right({ entries: [{ timeout: "5 minutes", max_concurrency: 8, name: "a", base_url: "http://h/v1", models: ["m"] }], problem: undefined }))
    // The parser's message, without the code frame its colon announced.
    expect(Either.getLeft(parseUpstreamsFile("upstreams: [unclosed"))).toEqual(Option.some(expect.not.stringMatching(/:$/)))
    expect(problem([{ ...minimal, timeout: "30s" }])).toBe("no problem") // the short form, as Go and Kubernetes write it
    expect(problem([{ ...minimal, timeout: "thirty seconds" }])).toContain('such as "30 seconds", "30s", "10 minutes" or "2h"')
    expect(problem([{ ...minimal, timeout: 30 }])).toBe(`upstream 'a': timeout: a duration such as "10 minutes" (a number needs its unit)`)
    // One message per mistake, said plainly: no `Expected undefined` beside a wrong value, no schema's own notation.
    expect(problem([{ ...minimal, max_concurrency: "lots" }])).toBe(`upstream 'a': max_concurrency: Expected number, actual "lots"`)
    expect(problem([{ ...minimal, models: "model-a" }])).toBe(`upstream 'a': models: a list of at least one model name (or "*")`)
    expect(problem([{ ...minimal, models: [] }])).toBe("upstream 'a': models: an empty list (at least one is needed)")
    expect(problem([])).toBe("upstreams: an empty list (at least one is needed)")
  })

  it.scoped("UPSTREAMS_FILE is read at start; a problem is a ConfigError naming the variable and the file", () =>
    Effect.gen(function*() {
      const dir = yield* scratchDir // removed at the end (each run left one behind)
      const good = Path.join(dir, "good.yaml")
      writeFileSync(good, YAML.replace("api_key_env: VLLM_KEY", "api_key: k"))
      const specs = yield* upstreamSpecs({ ...defaults, upstreamsFile: Option.some(good) })
      expect(specs.map((s) => s.name)).toEqual(["vllm-llama", "openai"])
      const bad = Path.join(dir, "bad.yaml")
      writeFileSync(bad, "upstreams:\n  - name: x\n")
      const error = yield* Effect.flip(upstreamSpecs({ ...defaults, upstreamsFile: Option.some(bad) }))
      expect(ConfigError.isConfigError(error)).toBe(true)
      expect(String(error)).toContain("UPSTREAMS_FILE")
      expect(String(error)).toContain(bad)
      // Every problem at once: the file's own, and each entry's (the first alone hid the others till the next start).
      const several = Path.join(dir, "several.yaml")
      writeFileSync(several, "extra: 1\nupstreams:\n" +
        "  - {name: a, base_url: http://h/v1, models: [m], timeout: thirty seconds}\n" +
        "  - {name: b, base_url: http://h/v1, models: [n], min_concurrency: 9, max_concurrency: 2}\n")
      const all = String(yield* Effect.flip(upstreamSpecs({ ...defaults, upstreamsFile: Option.some(several) })))
      expect(all).toContain("unknown field 'extra'")
      expect(all).toContain("upstream 'a': timeout")
      expect(all).toContain("upstream 'b': min_concurrency")
      const missing = yield* Effect.flip(upstreamSpecs({ ...defaults, upstreamsFile: Option.some(Path.join(dir, "none.yaml")) }))
      expect(String(missing)).toContain("cannot be read")
      const huge = Path.join(dir, "huge.yaml")
      writeFileSync(huge, `# ${"x".repeat(1024 * 1024)}\nupstreams: []\n`)
      expect(String(yield* Effect.flip(upstreamSpecs({ ...defaults, upstreamsFile: Option.some(huge) })))).toContain("larger than 1 MiB")
      // A device says it has 0 bytes and never ends: read whole, /dev/urandom took 1.2 GB.
      expect(String(yield* Effect.flip(upstreamSpecs({ ...defaults, upstreamsFile: Option.some("/dev/urandom") })))).toContain("is not a regular file")
      // Without a file: the shortcut, one upstream serving every model.
      const [shortcut] = yield* upstreamSpecs(defaults)
      expect(shortcut).toMatchObject({ name: "default", baseUrl: defaults.inferenceBaseUrl, models: ["*"] })
    }))
})
