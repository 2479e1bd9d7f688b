/**
 * An upstream's entry, as `UPSTREAMS_FILE` holds it (YAML or JSON, `upstreams:` a list; see the README's Upstreams
 * section) or as code gives it (`AppConfig.upstreams`), and the upstream it resolves to. Entries are checked here, at
 * start, with messages naming the entry and the field: a typo in a field name is an error, not ignored. Where the
 * entries come from: `upstreamsFile.ts`.
 */
import { Duration, Either, Option, ParseResult, Redacted, Schema } from "effect"
import { parseDuration } from "../durationText.js"
import type { AppConfigShape } from "../Config.js"
import { MAX_MODEL_LENGTH } from "../batches/lineValidation.js"
import { StandardEndpoint } from "../domain/Batches.js"
import { meantName } from "../domain/misspeltNames.js"
import { PROJECT_NAME } from "../domain/Projects.js"
import { echo } from "../domain/Text.js"
import { hasNonHeaderCharacter } from "../http/headerValue.js"

/** An http(s) URL with no credentials in it (they would be logged with it: keys go in api_key or headers). */
const HttpUrl = Schema.String.pipe(
  Schema.filter((text) => isHttpUrl(text) || "an http:// or https:// URL, without spaces"),
  Schema.filter((text) => !hasCredentials(text) || "a URL without user:password@ (give the key in api_key, api_key_env or headers)")
)
const BaseUrl = HttpUrl.pipe(
  Schema.filter((text) => !hasQueryOrFragment(text) || "a base URL without ?query or #fragment"),
  Schema.filter((text) => {
    const endpoint = endpointPathOf(text)
    return endpoint === undefined || `a base URL, without an endpoint's path (${endpoint}: each request adds its own; as in http://host:8000/v1)`
  })
)

// Written out in full: the URL parser also takes `http:/host` and inner spaces, sent then as `%20` (a typo's URL).
const isHttpUrl = (text: string) => /^https?:\/\/\S+$/i.test(text) && URL.canParse(text) && /^https?:$/.test(new URL(text).protocol)
const hasCredentials = (text: string) => URL.canParse(text) && (new URL(text).username !== "" || new URL(text).password !== "")
const hasQueryOrFragment = (text: string) => URL.canParse(text) && (new URL(text).search !== "" || new URL(text).hash !== "")
/**
 * The endpoint path a URL ends with (`/chat/completions`), as a LiteLLM `api_base` may be written: the service adds
 * each request's path to the base, and such a base failed every line with a 404.
 */
const endpointPathOf = (text: string): string | undefined => {
  const path = URL.canParse(text) ? new URL(text).pathname.replace(/\/+$/, "") : ""
  return ENDPOINT_PATHS.find((endpoint) => path.endsWith(endpoint))
}
/** What each request adds to the base: a standard endpoint's path after `/v1`, and the models list's. */
const ENDPOINT_PATHS = [...StandardEndpoint.literals.map((endpoint) => endpoint.slice("/v1".length)), "/models"]

/** A base URL as an upstream's must be (the `INFERENCE_BASE_URL` shortcut's too): http(s), nothing but a path after the host. */
export const isPlainBaseUrl = (text: string): boolean =>
  isHttpUrl(text) && !hasCredentials(text) && !hasQueryOrFragment(text) && endpointPathOf(text) === undefined

/** What a key or header value for an upstream may not hold: what undici refuses (`http/headerValue.ts`), surrounding spaces. */
export const badHeaderValue = (value: string): boolean => hasNonHeaderCharacter(value) || value.trim() !== value
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const isHeaderName = (text: string) => HEADER_NAME.test(text)
const HeaderName = Schema.String.pipe(Schema.pattern(HEADER_NAME, { message: () => "a header name (letters, digits, - and a few signs)" }))
// A key or header value is a secret: its errors never repeat it (Schema's own "Expected string, actual 123456789"
// did, for a key of digits that YAML reads as a number).
const HeaderValue = Schema.String.annotations({ message: () => "a string (in YAML, quote a value of digits: unquoted, it is a number)" }).pipe(
  Schema.filter((value) => !badHeaderValue(value) || "a header value of printable Latin-1 characters: no line breaks, control characters, characters such as … or emoji, or surrounding spaces")
)

/** A model's name in `aliases`: any but `"*"`, at most as long as a batch's model may be. */
const isAliasedModel = (name: string) => name.length > 0 && name.length <= MAX_MODEL_LENGTH && name !== "*"
const ALIASED_MODEL = `a model name of 1–${MAX_MODEL_LENGTH} characters, not "*"`

/** One upstream as written in the file (and as given in code). */
export const UpstreamEntry = Schema.Struct({
  name: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, {
    message: () => "a name of 1–64 of A–Z a–z 0–9 . _ - (starting with a letter or digit)"
  })),
  base_url: BaseUrl,
  api_key: Schema.optionalWith(HeaderValue, { exact: true }),
  api_key_env: Schema.optionalWith(Schema.String, { exact: true }),
  models: Schema.NonEmptyArray(Schema.String.pipe(Schema.minLength(1))).annotations({
    message: () => "a list of at least one model name (or \"*\")"
  }),
  // A model batches name, served by this upstream under its own name (a file written for OpenAI's gpt-4o-mini, run
  // by a local model; llama-stack's provider_model_id).
  aliases: Schema.optionalWith(
    // The names given are checked once decoded: a key Schema refuses is said to be "unexpected", not why.
    Schema.Record({ key: Schema.String, value: Schema.String.pipe(Schema.filter((name) => isAliasedModel(name) || ALIASED_MODEL)) }).annotations({
      message: () => "a map of the model names batches give to the names this upstream knows them by (gpt-4o-mini: llama3.1:8b)"
    }),
    { exact: true }
  ),
  max_concurrency: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { exact: true }),
  min_concurrency: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { exact: true }),
  timeout: Schema.optionalWith(
    Schema.String.annotations({ message: () => "a duration such as \"10 minutes\" (a number needs its unit)" }),
    { exact: true }
  ),
  // Its message too: Schema's own for a list or a string ("Expected { readonly [x: string]: … }, actual [\"Authorization: Bearer sk-…\"]") repeated the key.
  headers: Schema.optionalWith(
    Schema.Record({ key: HeaderName, value: HeaderValue }).annotations({
      message: () => "a map of header names to values (Name: value, each on a line of its own under headers:), not a list or a string"
    }),
    { exact: true }
  ),
  metrics_url: Schema.optionalWith(HttpUrl, { exact: true }),
  max_waiting: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { exact: true }),
  projects: Schema.optionalWith(
    Schema.NonEmptyArray(Schema.String.pipe(Schema.pattern(PROJECT_NAME, {
      message: () => "a project name (1–64 of A–Z a–z 0–9 _ -, as API_KEYS gives it)"
    }))).annotations({ message: () => "a list of at least one project name" }),
    { exact: true }
  )
})
export type UpstreamEntry = typeof UpstreamEntry.Type

const UpstreamsFile = Schema.Struct({
  upstreams: Schema.NonEmptyArray(UpstreamEntry).annotations({ message: () => "a list of at least one upstream" })
})

/** An upstream, resolved: defaults applied, its key read. */
export interface UpstreamSpec {
  readonly name: string
  /** Up to and including the API's version path (`…/v1`), without a trailing slash. */
  readonly baseUrl: string
  readonly apiKey: Option.Option<Redacted.Redacted>
  /** Where its key comes from (`api_key`, `api_key_env X`, `INFERENCE_API_KEY`), for a refusal's message. */
  readonly keyFrom?: string | undefined
  /**
   * Model names it serves (its `aliases`' too), or `"*"`: any model its own `GET /models` lists (any model while it
   * gives no list).
   */
  readonly models: ReadonlyArray<string>
  /** The models batches name that it knows by another name: the name given → the name sent as `body.model`. */
  readonly aliases?: ReadonlyMap<string, string> | undefined
  /** The adaptive limit's ceiling and floor: requests in flight on this node. */
  readonly maxConcurrency: number
  readonly minConcurrency: number
  /** Time limit of one attempt. */
  readonly timeout: Duration.Duration
  /** Sent with every request, after the JSON content type (which they may override) and the bearer token (`Authorization` only without a key). */
  readonly headers: Readonly<Record<string, string>>
  /** Load-aware dispatch: hold new requests while the server's waiting queue would pass `maxWaiting`. */
  readonly loadAware: Option.Option<{ readonly metricsUrl: string; readonly maxWaiting: number }>
  /** The projects whose batches it serves (`projects`); every project's when not given. */
  readonly projects?: ReadonlyArray<string> | undefined
}

/** Whether `spec` serves the batches of `project` (a request of no project: only an upstream open to every one). */
export const admits = (spec: UpstreamSpec, project: string | undefined): boolean =>
  spec.projects === undefined || (project !== undefined && spec.projects.includes(project))

/** Whether the upstream serves any model (`"*"`): what it serves is then what its own `GET /models` lists. */
export const servesAnyModel = (spec: UpstreamSpec): boolean => spec.models.includes("*")

/**
 * The models an upstream names that an earlier one, open to every project, names too: the first match serves a
 * model, so the later one never gets them (a copied entry, or a model moved without taking it out of the first).
 * One line per upstream.
 */
export const shadowedModels = (
  specs: ReadonlyArray<UpstreamSpec>
): ReadonlyArray<{ readonly upstream: string; readonly models: ReadonlyArray<string>; readonly by: ReadonlyArray<string> }> =>
  specs.flatMap((spec, i) => {
    const earlier = specs.slice(0, i).filter((e) => e.projects === undefined)
    const shadowed = spec.models.filter((m) => m !== "*" && earlier.some((e) => e.models.includes(m)))
    if (shadowed.length === 0) return []
    const by = earlier.filter((e) => shadowed.some((m) => e.models.includes(m))).map((e) => e.name)
    return [{ upstream: spec.name, models: shadowed, by }]
  })

type Defaults = Pick<AppConfigShape, "inferenceMaxConcurrency" | "inferenceMinConcurrency" | "inferenceTimeout">

/**
 * Headers the client sets itself (the body's framing, the connection, the host): given in `headers`, they broke
 * every call (a `Content-Length` of another size failed each one, and the upstream was taken for down). The JSON
 * content type and `accept-encoding: identity` may be given again, as they are.
 */
const CLIENT_HEADERS = new Set([
  "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
  "proxy-connection", "expect"
])
/** A variable named as a shell would (`${NAME}`, `$NAME`) or a LiteLLM config (`os.environ/NAME`): not expanded. */
const VARIABLE_REFERENCE = /^(?:\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?|os\.environ\/([A-Za-z_][A-Za-z0-9_]*))$/
/** The variable `text` names that way, if it does. */
const referencedVariable = (text: string | undefined) => {
  const match = text === undefined ? null : VARIABLE_REFERENCE.exec(text)
  return match === null ? undefined : match[1] ?? match[2]
}

/** What is wrong with an entry's key and headers as written (before any variable is read); undefined when nothing. */
const credentialsProblem = (entry: UpstreamEntry): string | undefined => {
  if (entry.api_key !== undefined && entry.api_key_env !== undefined) return "give api_key or api_key_env, not both"
  const named = referencedVariable(entry.api_key_env)
  if (named !== undefined) return `api_key_env takes the variable's name: ${named}, not ${entry.api_key_env}`
  const quoted = referencedVariable(entry.api_key)
  if (quoted !== undefined) return `api_key is sent as written (the file's variables are not expanded): give api_key_env: ${quoted}`
  const names = Object.keys(entry.headers ?? {}).map((name) => name.toLowerCase())
  const clients = names.find((name) => CLIENT_HEADERS.has(name))
  if (clients !== undefined) return `headers: ${clients} is set by the client itself (the calls' framing and connection)`
  if (names.includes("authorization") && (entry.api_key !== undefined || entry.api_key_env !== undefined)) {
    return "headers: Authorization and api_key (or api_key_env) both give the calls' credentials: give one"
  }
  return undefined
}

/** An entry resolved against the defaults and the environment, or what is wrong with it. */
const resolveEntry = (
  entry: UpstreamEntry,
  defaults: Defaults,
  env: Record<string, string | undefined>
): Either.Either<UpstreamSpec, string> => {
  const problem = (text: string) => Either.left(`upstream '${entry.name}': ${text}`)
  const credentials = credentialsProblem(entry)
  if (credentials !== undefined) return problem(credentials)
  let apiKey = Option.none<Redacted.Redacted>()
  if (entry.api_key_env !== undefined) {
    const value = env[entry.api_key_env]
    if (value === undefined || value === "") {
      return problem(`api_key_env names ${entry.api_key_env}, which is ${value === undefined ? "not set" : "empty"}`)
    }
    if (badHeaderValue(value)) {
      return problem(`${entry.api_key_env} holds a line break, a control character, a character beyond Latin-1 (such as …) or surrounding spaces (a trailing newline from a file?)`)
    }
    apiKey = Option.some(Redacted.make(value))
  } else if (entry.api_key !== undefined) {
    apiKey = Option.some(Redacted.make(entry.api_key))
  }
  const keyFrom = entry.api_key_env !== undefined ? `api_key_env ${entry.api_key_env}` : entry.api_key !== undefined ? "api_key" : undefined
  const maxConcurrency = entry.max_concurrency ?? Math.max(defaults.inferenceMaxConcurrency, entry.min_concurrency ?? 1)
  const minConcurrency = entry.min_concurrency ?? Math.min(defaults.inferenceMinConcurrency, maxConcurrency)
  if (minConcurrency > maxConcurrency) return problem("min_concurrency is larger than max_concurrency")
  const timeout = entry.timeout === undefined ? Option.some(defaults.inferenceTimeout) : parseDuration(entry.timeout)
  if (Option.isNone(timeout) || !Duration.greaterThan(timeout.value, Duration.zero)) {
    return problem(`timeout '${entry.timeout}' is not a positive duration such as "30 seconds", "30s", "10 minutes" or "2h" (a number and a unit: millis, seconds, minutes, hours, days, or ms, s, m, h, d)`)
  }
  const badAlias = Object.keys(entry.aliases ?? {}).find((name) => !isAliasedModel(name))
  if (badAlias !== undefined) return problem(`aliases: '${echo(badAlias, 64)}' is no model name (${ALIASED_MODEL})`)
  if ((entry.metrics_url === undefined) !== (entry.max_waiting === undefined)) {
    return problem("load-aware dispatch needs both metrics_url and max_waiting")
  }
  return Either.right({
    name: entry.name,
    baseUrl: entry.base_url.replace(/\/+$/, ""),
    apiKey,
    keyFrom,
    models: entry.aliases === undefined ? entry.models : [...new Set([...entry.models, ...Object.keys(entry.aliases)])],
    ...(entry.aliases === undefined ? {} : { aliases: new Map(Object.entries(entry.aliases)) }),
    maxConcurrency,
    minConcurrency,
    timeout: timeout.value,
    headers: entry.headers ?? {},
    loadAware: entry.metrics_url === undefined
      ? Option.none()
      : Option.some({ metricsUrl: entry.metrics_url, maxWaiting: entry.max_waiting! }),
    ...(entry.projects === undefined ? {} : { projects: entry.projects })
  })
}

/**
 * The field `given` likely means: a near miss (`max_concurency`), or one it begins or ends (`model`, `api_key_environment`).
 */
const likelyField = (given: string, fields: ReadonlyArray<string>) =>
  meantName(given, fields) ??
    (given.length >= 4
      ? fields.filter((field) => field.startsWith(given) || given.startsWith(field)).sort((a, b) => b.length - a.length)[0]
      : undefined)

/** Entries resolved, names unique; the problems otherwise (each naming its entry). */
export const resolveEntries = (
  entries: ReadonlyArray<unknown>,
  defaults: Defaults,
  env: Record<string, string | undefined> = process.env
): Either.Either<ReadonlyArray<UpstreamSpec>, string> => {
  const decoded = Schema.decodeUnknownEither(UpstreamsFile, { onExcessProperty: "error", errors: "all" })({ upstreams: entries })
  if (Either.isLeft(decoded)) {
    // `upstreams.0.max_concurency` said as `upstream 'vllm': max_concurency` when the entry has a name.
    const where = (path: ReadonlyArray<PropertyKey>) => {
      const name = (entries[Number(path[1])] as { name?: unknown } | null)?.name
      // A header "name" that is none is most often a whole header written as one (`Authorization: Bearer sk-…`):
      // not repeated.
      const shown = path[2] === "headers" && path.length > 3 && !isHeaderName(String(path[3]))
        ? [...path.slice(0, 3), "(a name that is no header name)"]
        : path
      return shown[0] === "upstreams" && typeof name === "string" && shown.length >= 2
        ? [`upstream '${name}'`, shown.slice(2).join(".")].filter(Boolean).join(": ")
        : shown.join(".")
    }
    const fields = Object.keys(UpstreamEntry.fields)
    let unknownField = false
    const problems = ParseResult.ArrayFormatter.formatErrorSync(decoded.left).map((issue) => {
      // An empty list is reported as its first element missing (`models.0: is missing`): said as it is.
      if (issue.message === "is missing" && issue.path.at(-1) === 0) {
        return `${where(issue.path.slice(0, -1))}: an empty list (at least one is needed)`
      }
      // An entry's unknown field, with the one it likely misspells (Schema's own words list every field, each time).
      if (issue._tag === "Unexpected" && issue.path.length === 3 && typeof issue.path[2] === "string") {
        unknownField = true
        const meant = likelyField(issue.path[2], fields)
        return `${where(issue.path.slice(0, 2))}: unknown field '${echo(issue.path[2], 64)}'${meant === undefined ? "" : ` (did you mean '${meant}'?)`}`
      }
      return `${where(issue.path)}: ${issue.message}`
    })
    return Either.left(`${problems.join("; ")}${unknownField ? `. An upstream's fields: ${fields.join(", ")}` : ""}`)
  }
  // Every entry's problems at once (the first one's alone hid the others' till the next start).
  const specs: Array<UpstreamSpec> = []
  const problems: Array<string> = []
  const names = new Set<string>()
  for (const [i, entry] of decoded.right.upstreams.entries()) {
    if (names.has(entry.name)) problems.push(`two upstreams are named '${entry.name}'`)
    names.add(entry.name)
    // Decoded into an object, that key is lost without a word (it sets the prototype).
    const aliases = (entries[i] as { aliases?: unknown }).aliases
    if (typeof aliases === "object" && aliases !== null && Object.hasOwn(aliases, "__proto__")) {
      problems.push(`upstream '${entry.name}': aliases: '__proto__' cannot be given as a model name`)
      continue
    }
    Either.match(resolveEntry(entry, defaults, env), { onLeft: (problem) => problems.push(problem), onRight: (spec) => specs.push(spec) })
  }
  return problems.length === 0 ? Either.right(specs) : Either.left(problems.join("; "))
}
