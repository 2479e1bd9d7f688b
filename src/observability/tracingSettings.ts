/**
 * The traces' settings, from the standard `OTEL_*` variables (and `TRACE_UPSTREAM_CALLS`), kept apart from the layer
 * that acts on them (`Tracing.ts`) so that they can be read and tested without it. Read with Effect's `Config`: a
 * wrong value stops the start with `Invalid configuration: …`. Tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT`
 * (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `tracingSettings` is `None` otherwise.
 */
import { Config, ConfigError, Either, Option, Redacted } from "effect"
import { hasNonHeaderCharacter } from "../http/headerValue.js"

export type TracesSampler =
  | "always_on"
  | "always_off"
  | "traceidratio"
  | "parentbased_always_on"
  | "parentbased_always_off"
  | "parentbased_traceidratio"

const SAMPLERS: ReadonlyArray<TracesSampler> = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
]

export type OtlpProtocol = "http/protobuf" | "http/json"

export interface TracingSettings {
  /** Where spans are posted: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`. */
  readonly url: string
  readonly protocol: OtlpProtocol
  /** Sent with every export (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`: `name=value,…`, values percent-decoded). */
  readonly headers: Redacted.Redacted<Record<string, string>>
  readonly serviceName: string
  readonly sampler: TracesSampler
  /** The ratio of the `*traceidratio` samplers (`OTEL_TRACES_SAMPLER_ARG`, 0–1, default 1). */
  readonly samplerArg: number
  /** The fraction of upstream calls that get a span (`TRACE_UPSTREAM_CALLS`: `all`, `none` or 0–1). */
  readonly upstreamCalls: number
  /**
   * The resource's `service.instance.id`, which tells the nodes' spans apart: `OTEL_RESOURCE_ATTRIBUTES`'s when it
   * sets one; else `TracingLive` gives the node's id (`NODE_ID`).
   */
  readonly instanceId?: string | undefined
  /** The resource's other attributes (`OTEL_RESOURCE_ATTRIBUTES`: `key=value,…`, values percent-decoded). */
  readonly resourceAttributes: Readonly<Record<string, string>>
}

/** The default service name (`OTEL_SERVICE_NAME`). */
export const DEFAULT_SERVICE_NAME = "effect-openai-batch"
/** The default fraction of upstream calls traced when the sampler is not `always_on`. */
export const DEFAULT_UPSTREAM_CALLS = 0.01

/** An unset or empty variable is absent (environment templates often leave them empty). */
const optionalString = (name: string) =>
  Config.string(name).pipe(Config.option, Config.map(Option.filter((value) => value.trim() !== "")))

/** Variable `name`, when set, read by `parse` (its message names the variable in the `ConfigError`). */
const optional = <A>(name: string, parse: (text: string) => Either.Either<A, string>) =>
  optionalString(name).pipe(Config.mapOrFail((value) =>
    Option.match(value, {
      onNone: () => Either.right(Option.none<A>()),
      onSome: (text) =>
        Either.mapBoth(parse(text.trim()), { onLeft: (message) => ConfigError.InvalidData([name], message), onRight: Option.some })
    })
  ))

/** An endpoint may carry credentials (a user and password, a token in its query): no message repeats it. */
const httpUrl = (text: string): Either.Either<string, string> => {
  const url = URL.canParse(text) ? new URL(text) : undefined
  return url !== undefined && (url.protocol === "http:" || url.protocol === "https:")
    ? Either.right(text)
    : Either.left(url === undefined ? "Expected an http:// or https:// URL, got no URL" : `Expected an http:// or https:// URL, got a ${url.protocol} one`)
}

/** The base endpoint's traces URL: `/v1/traces` added to its path (a query it carries, such as a token, stays a query). */
const tracesUrlOf = (base: string): string => {
  const url = new URL(base) // checked by `httpUrl`
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/v1/traces`
  return url.href
}

const protocolOf = (text: string): Either.Either<OtlpProtocol, string> =>
  text === "http/protobuf" || text === "http/json"
    ? Either.right(text)
    : Either.left(`Expected http/protobuf or http/json${text === "grpc" ? " (gRPC is not supported)" : ""}, got '${text.slice(0, 64)}'`)

/**
 * `key=value,…` in W3C baggage form, values percent-decoded, as OpenTelemetry's variables are written (a value may
 * hold `=`, or an encoded `,`): the pairs, or what is wrong (`item` names a key: `name`, or `key`).
 */
const baggagePairs = (text: string, item: { readonly key: string; readonly of: string }): Either.Either<Array<readonly [string, string]>, string> => {
  const pairs: Array<readonly [string, string]> = []
  for (const entry of text.split(",")) {
    if (entry.trim() === "") continue
    const at = entry.indexOf("=")
    const key = at < 0 ? "" : entry.slice(0, at).trim()
    if (key === "") return Either.left(`Expected ${item.key}=value pairs separated by commas`)
    try {
      pairs.push([key, decodeURIComponent(entry.slice(at + 1).trim())])
    } catch {
      return Either.left(`The value of ${item.of}'${key.slice(0, 64)}' has a broken percent-encoding`)
    }
  }
  return Either.right(pairs)
}

/** `name=value,…` (W3C baggage form: values percent-encoded), as the OTLP exporter specification says. */
export const parseHeaders = (text: string): Either.Either<Record<string, string>, string> =>
  Either.flatMap(baggagePairs(text, { key: "name", of: "header " }), (pairs) => {
    const headers: Record<string, string> = {}
    for (const [name, value] of pairs) {
      if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) return Either.left("Expected name=value pairs separated by commas")
      if (hasNonHeaderCharacter(value)) {
        return Either.left(`The value of header '${name}' has a line break or another character a header cannot carry`)
      }
      headers[name.toLowerCase()] = value
    }
    return Either.right(headers)
  })

/** Headers may hold a key: read as redacted, and no message repeats a value. */
const headers = (name: string) =>
  Config.redacted(name).pipe(
    Config.option,
    Config.mapOrFail((value) =>
      Option.match(value, {
        onNone: () => Either.right<Record<string, string>>({}),
        onSome: (text) => Either.mapLeft(parseHeaders(Redacted.value(text)), (message) => ConfigError.InvalidData([name], message))
      })
    )
  )

const fraction = (text: string): Either.Either<number, string> => {
  const value = Number(text)
  return text !== "" && Number.isFinite(value) && value >= 0 && value <= 1
    ? Either.right(value)
    : Either.left(`Expected a number from 0 to 1, got '${text.slice(0, 64)}'`)
}

const samplerOf = (text: string): Either.Either<TracesSampler, string> => {
  const name = text.toLowerCase()
  return (SAMPLERS as ReadonlyArray<string>).includes(name)
    ? Either.right(name as TracesSampler)
    : Either.left(`Expected one of ${SAMPLERS.join(", ")}, got '${text.slice(0, 64)}'`)
}

const exporterOf = (text: string): Either.Either<"otlp" | "none", string> => {
  const name = text.toLowerCase()
  return name === "otlp" || name === "none" ? Either.right(name) : Either.left(`Expected otlp or none, got '${text.slice(0, 64)}'`)
}

const callsFraction = (text: string): Either.Either<number, string> => {
  const word = text.toLowerCase()
  if (word === "all" || word === "true") return Either.right(1)
  if (word === "none" || word === "false") return Either.right(0)
  return Either.mapLeft(fraction(text), () => `Expected all, none or a number from 0 to 1, got '${text.slice(0, 64)}'`)
}

/**
 * `OTEL_RESOURCE_ATTRIBUTES`: `key=value,…` (`baggagePairs`), as OpenTelemetry's specification reads it (the platform's
 * reader took `k8s.pod.name=a=b` for no pair and left values encoded). A broken value refuses the whole, as the
 * specification asks, and the start says so.
 */
export const parseResourceAttributes = (text: string): Either.Either<Record<string, string>, string> =>
  Either.map(baggagePairs(text, { key: "key", of: "" }), (pairs) => Object.fromEntries(pairs))

/** The attribute `name` in `attributes`, unless empty. */
const resourceAttribute = (attributes: Readonly<Record<string, string>>, name: string) =>
  Option.fromNullable(attributes[name]).pipe(Option.filter((value) => value !== ""))

/**
 * The traces' settings from the standard `OTEL_*` variables; `None` when tracing is off (no endpoint,
 * `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`).
 */
export const tracingSettings: Config.Config<Option.Option<TracingSettings>> = Config.all({
  disabled: Config.boolean("OTEL_SDK_DISABLED").pipe(Config.withDefault(false)),
  exporter: optional("OTEL_TRACES_EXPORTER", exporterOf),
  tracesEndpoint: optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", httpUrl),
  endpoint: optional("OTEL_EXPORTER_OTLP_ENDPOINT", httpUrl),
  tracesProtocol: optional("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocolOf),
  protocol: optional("OTEL_EXPORTER_OTLP_PROTOCOL", protocolOf),
  tracesHeaders: headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
  headers: headers("OTEL_EXPORTER_OTLP_HEADERS"),
  serviceName: optionalString("OTEL_SERVICE_NAME"),
  resourceAttributes: Config.map(optional("OTEL_RESOURCE_ATTRIBUTES", parseResourceAttributes), Option.getOrElse(() => ({}))),
  sampler: Config.map(optional("OTEL_TRACES_SAMPLER", samplerOf), Option.getOrElse((): TracesSampler => "parentbased_always_on")),
  samplerArg: Config.map(optional("OTEL_TRACES_SAMPLER_ARG", fraction), Option.getOrElse(() => 1)),
  upstreamCalls: optional("TRACE_UPSTREAM_CALLS", callsFraction)
}).pipe(Config.map((c): Option.Option<TracingSettings> => {
  const url = Option.orElse(c.tracesEndpoint, () => Option.map(c.endpoint, tracesUrlOf))
  if (c.disabled || Option.contains(c.exporter, "none") || Option.isNone(url)) return Option.none()
  const neverSampled = c.sampler === "always_off" || c.sampler === "parentbased_always_off" ||
    (c.sampler.endsWith("traceidratio") && c.samplerArg === 0)
  return Option.some({
    url: url.value,
    protocol: Option.getOrElse(Option.orElse(c.tracesProtocol, () => c.protocol), () => "http/protobuf" as const),
    headers: Redacted.make({ ...c.headers, ...c.tracesHeaders }),
    serviceName: Option.getOrElse(Option.orElse(c.serviceName, () => resourceAttribute(c.resourceAttributes, "service.name")), () => DEFAULT_SERVICE_NAME),
    instanceId: Option.getOrUndefined(resourceAttribute(c.resourceAttributes, "service.instance.id")),
    resourceAttributes: c.resourceAttributes,
    sampler: c.sampler,
    samplerArg: c.samplerArg,
    upstreamCalls: Option.getOrElse(c.upstreamCalls, () => (neverSampled ? 0 : c.sampler === "always_on" ? 1 : DEFAULT_UPSTREAM_CALLS))
  })
}))
