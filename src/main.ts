/**
 * The server process: configuration from the environment, then the application until SIGINT/SIGTERM (or until
 * another process takes its NODE_ID: `launch`), which interrupts it and closes every layer in reverse order (the
 * server stops accepting and lets open requests end).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, ConfigError, ConfigProvider, Deferred, Duration, Effect, FiberRef, HashSet, Layer, Logger, Option, Runtime } from "effect"
import { constants } from "node:os"
import { AppConfig, type AppConfigShape, defaults, nodeIdOfEnvironment, RESTART_TO_APPLY } from "./Config.js"
import { AppLive } from "./Layers.js"
import { LoggingLive, loggerLayer } from "./observability/Logging.js"
import { NodeIdTakenOver, OnNodeIdTakenOver } from "./storage/NodeIdLock.js"
import { configFaultLine, listenFaultLine, startFaultLine } from "./startFaultLines.js"
import { misspeltVariables, recordingReads, serviceLinkedSettings } from "./configTypos.js"
import { SERVED_BY_CLI } from "./serveMarker.js"

/** A fault that ends the server (a port in use, a database unreachable at start), logged in the configured format. */
const logFault = (cause: Cause.Cause<unknown>) =>
  Effect.gen(function*() {
    if (
      Cause.isInterruptedOnly(cause) ||
      Option.exists(Cause.failureOption(cause), (e) => ConfigError.isConfigError(e) || e instanceof NodeIdTakenOver)
    ) return
    const listen = listenFaultLine(cause)
    if (Option.isSome(listen)) return yield* Effect.annotateLogs(Effect.logError(listen.value), "event", "server.listen_failed")
    const start = yield* startFaultLine(cause)
    if (Option.isSome(start)) return yield* Effect.annotateLogs(Effect.logError(start.value), "event", "server.start_failed")
    yield* Effect.logError("The server stopped on a fault", cause)
  })

/** Signals this close after the first are the same stop, sent twice. */
const REPEAT_WINDOW_MS = 1_000

/**
 * How long a stop may take before the process ends all the same: the HTTP stop's own bound (`SHUTDOWN_DELAY`,
 * `SHUTDOWN_TIMEOUT`, 5 s for the handlers it cut), then 10 s for the services' release and the tracer's last export.
 * A release held up by a database that does not answer took ~70 s, past a container's grace period.
 */
const stopDeadline = (config: Pick<AppConfigShape, "shutdownDelay" | "shutdownTimeout">) =>
  Duration.sum(Duration.sum(config.shutdownDelay, config.shutdownTimeout), Duration.seconds(15))

/** Node's longest timer: a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1

type RunSync = <A, E>(effect: Effect.Effect<A, E>) => A

/** Says why, then ends the process with `code`; what it leaves unfinished resumes at the next start. */
const stopNow = (runSync: RunSync, why: string, code: number) => {
  runSync(Effect.annotateLogs(
    Effect.logWarning(`${why}: stopping at once; unfinished work resumes at the next start`),
    "event",
    "server.stopped_at_once"
  ))
  process.exit(code)
}

/** Ends the process `deadline` from now (a stop that began) with `code`, unless it has ended by then. */
const endLateStop = (runSync: RunSync, deadline: Duration.Duration, code: number) => {
  const why = `The shutdown did not end within ${Duration.format(deadline)} (something it releases does not answer: the database?)`
  setTimeout(() => stopNow(runSync, why, code), Math.min(Duration.toMillis(deadline), MAX_TIMER_MS)).unref()
}

/**
 * A stop that ends in time (`stopDeadline`), and the signals after the first. runMain stops listening once it has
 * begun the shutdown, so a second SIGINT ended the process undrained. A Ctrl-C under `npm start` is two SIGINTs
 * milliseconds apart (the terminal's to the server, and the one npm passes on): repeats within a second are that
 * same stop, and change nothing. A later one is an operator who will not wait: said, then the process ends at once.
 */
const stopAtOnceOnALaterSignal = Effect.gen(function*() {
  const runSync: RunSync = Runtime.runSync(yield* Effect.runtime<never>())
  const deadline = stopDeadline(yield* AppConfig)
  let first: number | undefined
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now()
    const code = 128 + constants.signals[signal]
    if (first === undefined) {
      first = now // runMain's own listener begins the shutdown
      endLateStop(runSync, deadline, code)
    } else if (now - first >= REPEAT_WINDOW_MS) stopNow(runSync, `${signal} again during the shutdown`, code)
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
})

/**
 * SIGHUP, the usual "reload", when there is no keys file to re-read (`AuthLive` re-reads it when there is one):
 * said, and nothing else. Node's default ends the process: an operator who edited `UPSTREAMS_FILE` and ran
 * `systemctl reload` stopped the server without a line.
 */
const sayHangupChangesNothing = Effect.gen(function*() {
  if (Option.isSome((yield* AppConfig).apiKeysFile)) return
  const runSync = Runtime.runSync(yield* Effect.runtime<never>())
  process.on("SIGHUP", () =>
    runSync(Effect.annotateLogs(
      Effect.logWarning(`SIGHUP: nothing to re-read (only API_KEYS_FILE is, and it is not set); ${RESTART_TO_APPLY}`),
      "event",
      "server.hangup"
    )))
})

/**
 * Started by `openai-batch serve` (an IPC channel to it, and `SERVED_BY_CLI` set): when that process is gone (a
 * supervisor's SIGKILL, which it cannot pass on), this one stops at once too. Left running, in a process group of its
 * own, it went on serving and holding its NODE_ID, and the restarted server waited for it, then failed. The channel
 * keeps nothing alive.
 */
const stopWhenStarterGone = Effect.gen(function*() {
  if (process.channel === undefined || process.env[SERVED_BY_CLI] !== "1") return
  const runSync: RunSync = Runtime.runSync(yield* Effect.runtime<never>())
  process.channel.unref()
  process.once("disconnect", () => stopNow(runSync, "The openai-batch serve process that started this server is gone", 1))
})

/**
 * Node's process warnings (a library's deprecation, node-postgres' note on `sslmode=require`) as log lines of the
 * configured format (`node.warning`), in place of Node's own plain text on stderr, which a log pipeline reading one
 * JSON object a line could not parse.
 */
const logNodeWarnings = Effect.gen(function*() {
  // Silenced as Node is told (`NODE_NO_WARNINGS=1`, `--no-warnings`): Node still emits them, only does not print.
  if (process.env.NODE_NO_WARNINGS === "1" || process.execArgv.includes("--no-warnings")) return
  const runSync: RunSync = Runtime.runSync(yield* Effect.runtime<never>())
  process.removeAllListeners("warning") // Node's printer
  process.on("warning", (warning) =>
    runSync(Effect.annotateLogs(Effect.logWarning(`${warning.name}: ${warning.message}`), {
      event: "node.warning",
      ...("code" in warning && typeof warning.code === "string" ? { code: warning.code } : {})
    })))
})

/** The configuration's reads, noted: once the app is up, a variable set that is none of them but close is said. */
const configReads = recordingReads(ConfigProvider.fromEnv())

/** A warning for each variable that looks like a misspelt setting (it is ignored: the setting keeps its default). */
const warnMisspeltVariables = Effect.suspend(() =>
  Effect.forEach(
    misspeltVariables(process.env, configReads.read),
    ({ given, meant }) =>
      Effect.annotateLogs(
        // Not "ignored": a secret so named may be an upstream's `api_key_env`, read as it is.
        Effect.logWarning(`The variable ${given} looks like a misspelt setting: ${meant}? (a misspelt setting is not read: it keeps its default)`),
        { event: "server.config_unknown", variable: given, setting: meant }
      ),
    { discard: true }
  ))

/** A warning for each setting whose variable Kubernetes took for a service link (passed over as unset). */
const warnServiceLinks = Effect.suspend(() =>
  Effect.forEach(
    serviceLinkedSettings(process.env),
    (name) =>
      Effect.annotateLogs(
        Effect.logWarning(
          `${name}=${process.env[name]} is Kubernetes' link to a Service named ${name.slice(0, -"_PORT".length).toLowerCase()}, not a port: passed over, as unset (set the pod's enableServiceLinks: false to be rid of it, or ${name} to a port number)`
        ),
        { event: "server.config_service_link", variable: name }
      ),
    { discard: true }
  ))

/**
 * The application until it is interrupted, or until another process takes this node's id (`NodeIdTakenOver`: it
 * started under it while this node was cut off from PostgreSQL): said at once, then the node stops as at SIGTERM and
 * exits 1. Its work goes on in the other process; both under one id would send the same requests twice.
 */
const launch = Effect.gen(function*() {
  const takenOver = yield* Deferred.make<never, NodeIdTakenOver>()
  const runSync: RunSync = Runtime.runSync(yield* Effect.runtime<never>())
  const deadline = stopDeadline(yield* AppConfig)
  const stop = (error: NodeIdTakenOver) =>
    Effect.annotateLogs(Effect.logError(`${error.message} This process stops.`), "event", "server.node_id_taken_over").pipe(
      Effect.zipRight(Effect.sync(() => endLateStop(runSync, deadline, 1))),
      Effect.zipRight(Deferred.fail(takenOver, error))
    )
  // `Layer.launch` with its wait for ever made a wait for the takeover, in the same fiber: the layers are released
  // before the program ends either way (a race's loser was released after it, the last lines out of order).
  return yield* Effect.scoped(Effect.zipRight(Layer.build(AppLive), Effect.zipRight(Effect.zip(warnMisspeltVariables, warnServiceLinks), Deferred.await(takenOver)))).pipe(
    Effect.provideService(OnNodeIdTakenOver, (error) => Effect.asVoid(stop(error)))
  )
})

/**
 * The logger of a configuration that could not be read: `LOG_FORMAT` as set when that value is valid, else its
 * default (JSON when stdout is not a terminal), so that a log shipper reads this line as it reads the others.
 */
const configFaultLogging = loggerLayer(
  process.env.LOG_FORMAT === "json" || process.env.LOG_FORMAT === "pretty" ? process.env.LOG_FORMAT : defaults.logFormat,
  "error",
  nodeIdOfEnvironment()
)

// Logs go through `LOG_FORMAT`'s logger from the start to the last line: provided around the whole program (and
// runMain's own pretty logger and error report disabled, or each line would be written twice).
const program = Effect.zipRight(Effect.all([logNodeWarnings, stopAtOnceOnALaterSignal, sayHangupChangesNothing, stopWhenStarterGone]), launch).pipe(
  Effect.onInterrupt(() => Effect.annotateLogs(Effect.logInfo("Shutdown finished"), "event", "server.shutdown_finished")),
  Effect.tapErrorCause(logFault),
  Effect.provide(LoggingLive),
  Effect.provide(AppConfig.layer),
  Effect.withConfigProvider(configReads.provider),
  Effect.catchIf(ConfigError.isConfigError, (error) =>
    Effect.annotateLogs(Effect.logError(configFaultLine(error)), "event", "server.config_invalid").pipe(
      Effect.provide(configFaultLogging),
      // Only that logger: a start that failed after `LoggingLive` was installed (a bad OTEL_* value, read by the
      // app's layers) left its logger in place, and the line was written twice.
      Effect.locally(FiberRef.currentLoggers, HashSet.make<[Logger.Logger<unknown, any>]>(Logger.defaultLogger)),
      Effect.zipRight(Effect.sync(() => process.exit(1)))
    ))
)

/** What `--help` says: the server takes no argument (a mistyped `--port` would otherwise be ignored silently). */
const USAGE = `Usage: node dist/main.js   (npm start, openai-batch serve)

The OpenAI-compatible Files and Batches server. It takes no arguments: it is configured by environment variables,
among them PORT (8321), HOST (127.0.0.1), DATA_DIR (.data), DATABASE_URL (PostgreSQL; SQLite in DATA_DIR without
it), INFERENCE_BASE_URL or UPSTREAMS_FILE (the upstreams), API_KEYS, LOG_FORMAT and LOG_LEVEL. The README's
Configuration section lists them all.`

const args = process.argv.slice(2)
if (args.length > 0) {
  if (args.every((a) => a === "--help" || a === "-h")) {
    console.log(USAGE)
    process.exit(0)
  }
  console.error(`Unexpected argument ${args[0]}.\n\n${USAGE}`)
  process.exit(2)
}

// A log reader that went away (`npm start | head`, a log shipper that died) closes stdout or stderr: the server
// keeps serving, its lines dropped. Without a listener each write's EPIPE was an uncaught exception, whose report
// to the closed stderr was another: the process spun at full CPU, its batches stopped and SIGTERM went unheard.
for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {})

// Last resort: a fault that escapes every handler (a throw in a library's event callback) is logged, and the
// server keeps serving everyone else instead of ending the process and every request in flight with it.
process.on("uncaughtException", (error) => console.error("Uncaught exception; the server keeps running:", error))
process.on("unhandledRejection", (reason) => console.error("Unhandled rejection; the server keeps running:", reason))

NodeRuntime.runMain(program, { disablePrettyLogger: true, disableErrorReporting: true })
