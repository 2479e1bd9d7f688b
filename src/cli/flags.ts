/**
 * The command line's flags and their checks, shared by the commands (`main.ts`): the connection, the output and
 * watch options, a base URL that is an API's, `--metadata` pairs.
 */
import * as Args from "@effect/cli/Args"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import { Config, Duration, Effect, Either, Option, type Redacted } from "effect"
import { checkedMetadata } from "../batches/validation.js"
import { withoutCredentials } from "../observability/urlText.js"
import { DEFAULT_BASE_URL } from "./BatchApi.js"
import { CliFailure, EXIT_INVALID } from "./failure.js"
import { modeOf } from "./output.js"
import { DEFAULT_RETRY_FOR } from "./patience.js"
import type { AfterCreate } from "./submit.js"

// Accepted by the top command and by each subcommand, so before or after the subcommand's name alike.
export const connection = {
  baseUrl: Options.text("base-url").pipe(
    Options.withPseudoName("URL"),
    Options.withDescription(`The API's base URL, /v1 included (else OPENAI_BASE_URL, else ${DEFAULT_BASE_URL})`),
    Options.optional
  ),
  apiKey: Options.redacted("api-key").pipe(Options.withPseudoName("KEY"), Options.withDescription("The API key (else OPENAI_API_KEY)"), Options.optional)
}
export type ConnectionFlags = { readonly baseUrl: Option.Option<string>; readonly apiKey: Option.Option<Redacted.Redacted> }

export const json = Options.boolean("json").pipe(Options.withDescription("Print JSON objects, one a line, instead of text"))
// Text, not `Options.directory`: its own check of the path ends in a raw system error for a path under a file;
// `checkOut` (download.ts) says what is wrong, before anything is done.
export const out = Options.text("out").pipe(
  Options.withPseudoName("DIR"),
  Options.withDescription("Where <batch_id>_output.jsonl and <batch_id>_error.jsonl are written (made if missing)"),
  Options.withDefault(".")
)
/** The shortest and the longest `--interval`, in seconds. */
const MIN_INTERVAL = 0.1
const MAX_INTERVAL = 3600

export const interval = Options.float("interval").pipe(
  Options.withPseudoName("SECONDS"),
  Options.withDescription("Seconds between two polls of the batch while watching"),
  // Bounded both ways: `Infinity` never polled again, `0.0001` polled as fast as the server answered.
  Options.filterMap(
    (s) => (s >= MIN_INTERVAL && s <= MAX_INTERVAL ? Option.some(Duration.millis(s * 1000)) : Option.none()),
    `--interval must be from ${MIN_INTERVAL} to ${MAX_INTERVAL} seconds`
  ),
  Options.withDefault(Duration.seconds(1))
)
export const retryFor = Options.float("retry-for").pipe(
  Options.withPseudoName("SECONDS"),
  Options.withDescription(
    "While watching or downloading, how long to keep retrying when the server cannot be reached or answers 408, 429 " +
      `or 5xx, before giving up (0: never retry; default ${Duration.toSeconds(DEFAULT_RETRY_FOR)})`
  ),
  Options.filterMap(
    (s) => (s >= 0 && Number.isFinite(s) ? Option.some(Duration.millis(s * 1000)) : Option.none()),
    "--retry-for must be a number of seconds, 0 or more"
  ),
  Options.withDefault(DEFAULT_RETRY_FOR)
)
const watchFlag = Options.boolean("watch").pipe(
  Options.withDescription("Watch the batch until it ends, then write its output and error files to --out")
)
export const batchId = Args.text({ name: "BATCH_ID" })
/** What `submit` and `retry` do once their batch is created (`--watch` and how). */
export const afterCreateOptions = { watch: watchFlag, out, json, interval, retryFor }
export const afterCreate = (o: Omit<AfterCreate, "mode"> & { readonly json: boolean }): AfterCreate => ({
  watch: o.watch,
  out: o.out,
  mode: modeOf(o.json),
  interval: o.interval,
  retryFor: o.retryFor
})

export const fromEnv = (name: string) =>
  Config.option(Config.string(name)).pipe(Effect.map(Option.filter((value) => value !== "")), Effect.orDie)

/**
 * The base URL given, or a failure (exit 2) when it is no http(s) URL (echoed without its credentials): an empty
 * `--base-url ""` (a script's unset variable) would otherwise be the `openai` client's default, OpenAI's own API,
 * and the input file would go there.
 */
export const checkedBaseUrl = (url: string, source: string): Effect.Effect<string, CliFailure> => {
  const parsed = URL.canParse(url) ? new URL(url) : undefined
  const refused = (problem: string) =>
    Effect.fail(new CliFailure({ exitCode: EXIT_INVALID, message: `${source} must be ${problem} (got '${withoutCredentials(url)}').` }))
  if (parsed === undefined || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
    return refused("an http:// or https:// URL, /v1 included")
  }
  // A query is sent before each call's path (`/v1?token=x/batches`); a page's address (the dashboard's `/ui`, a
  // route) is no base: each was answered 404, with a hint to add /v1 to it.
  if (parsed.search !== "" || parsed.hash !== "") return refused("the API's base URL, without ?query or #fragment (not shown)")
  const route = /\/(ui\/?|v1\/(batches|files|uploads|models)(\/.*)?)$/.exec(parsed.pathname)
  if (route !== null) {
    const base = `${parsed.origin}${parsed.pathname.slice(0, route.index)}/v1`
    return refused(`the API's base URL, /v1 included, not a page's or a route's (${withoutCredentials(base)}?)`)
  }
  return Effect.succeed(url)
}

/**
 * `--metadata KEY=VALUE`, repeatable, as an object checked by `metadataOf`: the same flag, and the same refusals (exit
 * 2), for `submit`'s metadata and `list`'s filter (whose own parser refused `--metadata sweep` in @effect/cli's words,
 * "text options do not have a default value").
 */
export const metadataOption = (description: string) =>
  Options.text("metadata").pipe(
    Options.withPseudoName("KEY=VALUE"),
    Options.withDescription(description),
    Options.repeated,
    Options.mapEffect((pairs) =>
      Either.match(metadataOf(pairs), {
        onLeft: (problem) => Effect.fail(ValidationError.invalidValue(HelpDoc.p(problem))),
        onRight: Effect.succeed
      })
    )
  )

/**
 * `--metadata` pairs as an object: each `KEY=VALUE` with a key (the value may be empty, or hold `=`), a key given
 * once, within OpenAI's limits (16 pairs, keys of 64 characters, values of 512): found out before the upload, not
 * after it.
 */
const metadataOf = (pairs: ReadonlyArray<string>): Either.Either<Record<string, string>, string> => {
  const metadata: Record<string, string> = {}
  for (const pair of pairs) {
    const at = pair.indexOf("=")
    if (at <= 0) return Either.left(`--metadata takes KEY=VALUE, with a key before the '=': got '${pair}'`)
    const key = pair.slice(0, at)
    if (Object.hasOwn(metadata, key)) return Either.left(`--metadata gives '${key}' twice`)
    // Defined, not assigned: `__proto__=x` assigned set the object's prototype, and the pair was lost unsaid.
    Object.defineProperty(metadata, key, { value: pair.slice(at + 1), enumerable: true, writable: true, configurable: true })
  }
  const checked = checkedMetadata(metadata)
  return "code" in checked ? Either.left(`--metadata: ${checked.message}`) : Either.right(metadata)
}
