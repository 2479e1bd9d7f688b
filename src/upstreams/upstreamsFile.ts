/**
 * Where the upstreams come from: `AppConfig.upstreams` (entries given in code), else the file `UPSTREAMS_FILE` names
 * (YAML or JSON), else the one-upstream shortcut `INFERENCE_BASE_URL`/`INFERENCE_API_KEY`; each entry checked by
 * `UpstreamSpec.ts`.
 */
import { ConfigError, Effect, Either, Option } from "effect"
import { readBounded, unreadable } from "../boundedRead.js"
import { parse as parseYaml } from "yaml"
import type { AppConfigShape } from "../Config.js"
import { meantName } from "../domain/misspeltNames.js"
import { resolveEntries, type UpstreamSpec } from "./UpstreamSpec.js"

/**
 * The text of an upstreams file (YAML, of which JSON is a subset) as its entries, and its top-level keys that are
 * none of the file's (said with the entries' problems: a start that failed named only those, then the entries').
 */
export const parseUpstreamsFile = (text: string): Either.Either<UpstreamsFileContent, string> => {
  let document: unknown
  try {
    // Merge keys (`<<: *defaults`) as YAML 1.1 and most tools take them: an entry's shared settings written once.
    document = parseYaml(text, { merge: true })
  } catch (error) {
    return Either.left(`not YAML or JSON: ${(error as Error).message.split("\n")[0]!.replace(/:\s*$/, "")}`)
  }
  const list = (document as { upstreams?: unknown } | null)?.upstreams
  if (!Array.isArray(list) && Array.isArray((document as { model_list?: unknown } | null)?.model_list)) {
    return Either.left(
      "a LiteLLM config (model_list) is not read here: the file lists `upstreams`, each with name, base_url and models " +
        "(README, Upstreams; a provider's prefixed names, as aliases)"
    )
  }
  if (!Array.isArray(list)) {
    const keys = typeof document === "object" && document !== null ? Object.keys(document) : []
    const meant = keys.find((key) => meantName(key, ["upstreams"]) !== undefined)
    return Either.left(`expected an object with a list under \`upstreams\`${meant === undefined ? "" : ` (not '${meant.slice(0, 64)}')`}`)
  }
  // `x-…` keys hold what anchors point to (as in Docker Compose files).
  const unknown = Object.keys(document as object).filter((key) => key !== "upstreams" && !key.startsWith("x-"))
  return Either.right({
    entries: list,
    problem: unknown.length === 0
      ? undefined
      : `unknown field ${unknown.map((key) => `'${key.slice(0, 64)}'`).join(", ")}: the file holds \`upstreams\` ` +
        "(and x-… keys, for YAML anchors) only"
  })
}

export interface UpstreamsFileContent {
  readonly entries: ReadonlyArray<unknown>
  /** Its top-level keys that are none of the file's, said. */
  readonly problem: string | undefined
}

/** The largest upstreams file read. */
const MAX_FILE_BYTES = 1024 * 1024

/** The shortcut: `INFERENCE_BASE_URL` serving every model. */
const shortcut = (config: AppConfigShape): UpstreamSpec => ({
  name: "default",
  baseUrl: config.inferenceBaseUrl,
  apiKey: config.inferenceApiKey,
  keyFrom: "INFERENCE_API_KEY",
  models: ["*"],
  maxConcurrency: config.inferenceMaxConcurrency,
  minConcurrency: Math.min(config.inferenceMinConcurrency, config.inferenceMaxConcurrency),
  timeout: config.inferenceTimeout,
  headers: {},
  loadAware: Option.none()
})

/**
 * The upstreams of `config`: its `upstreams` entries, else those of `UPSTREAMS_FILE`, else the shortcut. A
 * problem fails with a `ConfigError` naming the variable (the start then stops with that message).
 */
export const upstreamSpecs = (config: AppConfigShape): Effect.Effect<ReadonlyArray<UpstreamSpec>, ConfigError.ConfigError> =>
  Effect.gen(function*() {
    if (Option.isSome(config.upstreams)) {
      return yield* Either.mapLeft(
        resolveEntries(config.upstreams.value, config),
        (problem) => ConfigError.InvalidData(["upstreams"], problem)
      )
    }
    if (Option.isNone(config.upstreamsFile)) return [shortcut(config)]
    const path = config.upstreamsFile.value
    const invalid = (problem: string) => ConfigError.InvalidData(["UPSTREAMS_FILE"], `${path}: ${problem}`)
    // Bounded: a list of upstreams is a few kilobytes, and a wrong path (a model's weights) was read whole.
    const read = yield* Effect.promise(() => readBounded(path, MAX_FILE_BYTES))
    if (read._tag !== "Read") return yield* Effect.fail(invalid(unreadable(read, MAX_FILE_BYTES, "a list of upstreams")))
    const file = yield* Either.mapLeft(parseUpstreamsFile(read.text), invalid)
    const specs = resolveEntries(file.entries, config)
    if (file.problem === undefined) return yield* Either.mapLeft(specs, invalid)
    return yield* Effect.fail(invalid([file.problem, ...(Either.isLeft(specs) ? [specs.left] : [])].join("; ")))
  })
