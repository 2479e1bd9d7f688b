/**
 * The server's own lifecycle lines, and the first step of its shutdown. Built once the server listens (after the
 * HTTP app), so released first: on SIGINT/SIGTERM, readiness turns 503 before the server stops accepting, and
 * `SHUTDOWN_DELAY` (when set) keeps the node serving meanwhile, for a load balancer to see it go.
 */
import { isIPv6 } from "node:net"
import * as HttpServer from "@effect/platform/HttpServer"
import { Context, Duration, Effect, Layer, Option } from "effect"
import { Auth } from "../auth/Auth.js"
import { AppConfig, type AppConfigShape, runsBatches } from "../Config.js"
import { DEFAULT_PROJECT } from "../domain/Projects.js"
import { type Proxies, proxiesOf, unmatchedNoProxy } from "../inference/proxies.js"
import { Inference } from "../inference/Inference.js"
import type { UpstreamSpec } from "../upstreams/UpstreamSpec.js"
import { describeDatabase, Readiness, type ReadinessShape } from "./Readiness.js"
import { tracingSettings } from "./tracingSettings.js"
import { withoutCredentials } from "./urlText.js"

/**
 * How an upstream reads in the listening line: `default at http://127.0.0.1:8000/v1 (*)`, and `openai at
 * https://api.openai.com/v1 (gpt-4o; for research)` when only some projects' batches go to it.
 */
const upstreamText = (spec: Pick<UpstreamSpec, "name" | "baseUrl" | "models" | "projects">) =>
  `${spec.name} at ${spec.baseUrl} (${spec.models.join(", ")}${spec.projects === undefined ? "" : `; for ${spec.projects.join(", ")}`})`

/**
 * The server's address as a URL: an IPv6 one in brackets (the platform's `formatAddress` printed `http://::1:8321`).
 * `HOST=::` (or `::0`…) listens on IPv6 and IPv4 alike, which the platform's address calls `0.0.0.0`: said as `[::]`.
 */
export const addressUrl = (address: HttpServer.Address, host?: string): string =>
  address._tag === "TcpAddress" && address.hostname === "0.0.0.0" && host !== undefined && isIPv6(host) && /^[0:]+$/.test(host)
    ? `http://[::]:${address.port}`
    : address._tag === "TcpAddress" && address.hostname.includes(":")
    ? `http://[${address.hostname}]:${address.port}`
    : HttpServer.formatAddress(address)

/** An address to give a client: on every interface (`0.0.0.0`, `::`, printed `http://:::8321`), this machine's. */
const reachable = (address: string) => address.replace(/^http:\/\/(0\.0\.0\.0|::|\[::\]):(\d+)$/, "http://localhost:$2")

/**
 * The listening line: where, on which database, to which upstreams (each also logs its state once probed), and
 * what is on: keys (`keysRequired`: whether the keys in use ask for one), tracing (`tracesUrl`: where spans go, or
 * `None`), the proxies of upstream calls (without their credentials), the default webhook (whether set: its URL may
 * hold a token).
 */
export const listeningLine = (
  address: string,
  config: Pick<
    AppConfigShape,
    | "databaseUrl"
    | "dataDir"
    | "nodeId"
    | "inferenceMode"
    | "inferenceRecordings"
    | "maxConcurrentBatches"
    | "webhookUrl"
  >,
  keysRequired: boolean,
  upstreams: ReadonlyArray<Pick<UpstreamSpec, "name" | "baseUrl" | "models" | "maxConcurrency" | "loadAware" | "projects">> | undefined,
  tracesUrl: Option.Option<string>,
  proxies?: Proxies,
  storage: ReadinessShape["database"] = undefined,
  mountPath = ""
) => {
  const database = storage?.text ?? describeDatabase(config)
  const inference = config.inferenceMode === "replay"
    ? `answers replayed from ${Option.getOrElse(config.inferenceRecordings, () => "?")}`
    : upstreams === undefined
    ? "no upstream: the app's own Inference answers"
    : `${upstreams.length === 1 ? "upstream" : "upstreams"} ${upstreams.map(upstreamText).join("; ")}`
  const runs = runsBatches(config)
  const tracing = Option.map(tracesUrl, withoutCredentials)
  const proxy = proxies === undefined ? null : {
    http: proxies.http === undefined ? null : withoutCredentials(proxies.http),
    https: proxies.https === undefined ? null : withoutCredentials(proxies.https),
    no_proxy: proxies.noProxy
  }
  const notes = [
    runs ? [] : ["runs no batch: other nodes do"],
    keysRequired ? ["API keys required"] : ["no API keys"],
    Option.match(tracing, { onNone: () => [], onSome: (url) => [`traces to ${url}`] }),
    proxy === null ? [] : [`upstream calls through ${[...new Set([proxy.https, proxy.http])].filter(Boolean).join(" and ")}`]
  ].flat()
  return {
    // Where to point an SDK and a browser, said once: a newcomer opened the bare address and got a 404.
    message: `Listening on ${address} (${[database, inference, ...notes].join("; ")}): the SDKs' base URL is ` +
      `${reachable(address)}${mountPath}/v1, the dashboard ${reachable(address)}${mountPath}/ui/`,
    fields: {
      event: "server.listening",
      address,
      node_id: config.nodeId,
      backend: storage?.backend ?? (Option.isSome(config.databaseUrl) ? "postgresql" : "sqlite"),
      database,
      inference_mode: config.inferenceMode,
      runs_batches: runs,
      upstreams: (upstreams ?? []).map((u) => ({
        name: u.name,
        base_url: u.baseUrl,
        models: u.models,
        max_concurrency: u.maxConcurrency,
        ...(u.projects === undefined ? {} : { projects: u.projects }),
        ...Option.match(u.loadAware, {
          onNone: () => ({}),
          onSome: (l) => ({ load_aware: { metrics_url: withoutCredentials(l.metricsUrl), max_waiting: l.maxWaiting } })
        })
      })),
      api_keys: keysRequired,
      tracing: Option.getOrNull(tracing),
      proxy,
      default_webhook: Option.isSome(config.webhookUrl)
    }
  }
}

/** What happens once a shutdown starts, in the order it happens. */
const shutdownLine = (config: Pick<AppConfigShape, "shutdownDelay" | "shutdownTimeout">, mountPath: string) => {
  const delay = Duration.greaterThan(config.shutdownDelay, Duration.zero)
    ? `still serving for ${Duration.format(config.shutdownDelay)}, then no new connection`
    : "no new connection"
  return `Shutting down: ${mountPath}/v1/ready answers 503; ${delay}; open requests get ${Duration.format(config.shutdownTimeout)} to finish`
}

/**
 * Where an app mounted the API on a router of its own (`HttpRouter.mountApp("/openai", api)`: `"/openai"`), for the
 * lines that name its addresses; the root unless the app says so (the mount is its router's, unseen here).
 */
export class ApiMountPath extends Context.Reference<ApiMountPath>()("ApiMountPath", {
  defaultValue: (): string => ""
}) {}

/**
 * How long open requests get at shutdown on the server in use, when it says (`makeNodeServer`'s option, which an
 * app gives as it likes): the shutdown line says that, not the configuration's `shutdownTimeout`.
 */
export class ServerShutdownTimeout extends Context.Reference<ServerShutdownTimeout>()("ServerShutdownTimeout", {
  defaultValue: (): Option.Option<Duration.Duration> => Option.none()
}) {}

/**
 * The projects each upstream is open to (`projects`) that no request can come from: no key belongs to them, or,
 * without keys, any project but the one local project (`DEFAULT_PROJECT`). A misspelt name left its project's
 * batches to the other upstreams, or to none, without a word.
 */
export const upstreamProjectsWithoutKey = (
  upstreams: ReadonlyArray<Pick<UpstreamSpec, "name" | "projects">>,
  keysRequired: boolean,
  keyProjects: ReadonlyArray<string>
): ReadonlyArray<{ readonly upstream: string; readonly projects: ReadonlyArray<string> }> =>
  upstreams.flatMap(({ name, projects }) => {
    const known = keysRequired ? keyProjects : [DEFAULT_PROJECT]
    const unknown = (projects ?? []).filter((p) => !known.includes(p))
    return unknown.length === 0 ? [] : [{ upstream: name, projects: unknown }]
  })

/** Logs the listening line now, and on release the shutdown line, after readiness has turned 503. */
export const ServerLifecycleLive: Layer.Layer<
  never,
  never,
  HttpServer.HttpServer | AppConfig | Auth | Inference | Readiness
> = Layer
  .scopedDiscard(Effect.gen(function*() {
    const config = yield* AppConfig
    const auth = yield* Auth
    const readiness = yield* Readiness
    const server = yield* HttpServer.HttpServer
    // Those of the `Inference` in use: an app may have given its own, which sends to none of the configured ones.
    const { upstreams } = yield* Inference
    const tracesUrl = Option.map(yield* Effect.orElseSucceed(tracingSettings, () => Option.none()), (t) => t.url)
    const address = addressUrl(server.address, config.host)
    const mountPath = yield* ApiMountPath
    const { fields, message } = listeningLine(address, config, auth.required, upstreams, tracesUrl, proxiesOf(process.env), readiness.database, mountPath)
    yield* Effect.annotateLogs(Effect.logInfo(message), fields)
    const unmatched = unmatchedNoProxy(process.env)
    if (unmatched.length > 0) {
      yield* Effect.logWarning(
        `NO_PROXY gives ${unmatched.join(", ")}: address ranges are not matched (list the hosts, or their domain as ` +
          ".example.internal): calls to those hosts go through the proxy"
      )
    }
    const keyProjects = auth.required ? (yield* auth.summary).projectNames : []
    for (const { projects, upstream } of upstreamProjectsWithoutKey(upstreams ?? [], auth.required, keyProjects)) {
      yield* Effect.logWarning(
        `Upstream ${upstream} is open to ${projects.map((p) => `'${p}'`).join(", ")}, which no ` +
          (auth.required ? "API key belongs to" : `request comes from without API keys (all are the project '${DEFAULT_PROJECT}')`) +
          ": no batch goes to it for them (a misspelt project?)"
      )
    }
    const shutdownTimeout = Option.getOrElse(yield* ServerShutdownTimeout, () => config.shutdownTimeout)
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        yield* readiness.drain
        yield* Effect.annotateLogs(Effect.logInfo(shutdownLine({ ...config, shutdownTimeout }, mountPath)), "event", "server.shutdown_started")
        if (Duration.greaterThan(config.shutdownDelay, Duration.zero)) yield* Effect.sleep(config.shutdownDelay)
      })
    )
  }))
