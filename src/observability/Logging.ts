/**
 * The server's log output (`LOG_FORMAT`, `LOG_LEVEL`), on Effect's own loggers: `json`, one object per line (what a
 * log shipper reads), or Effect's `pretty` logger (for a terminal). `main.ts` installs it; an app embedding the
 * layers keeps whatever logger it installs itself (`loggerLayer` is exported for those who want this one).
 *
 * What goes into a line is what the code annotates: `Effect.annotateLogs` (`batch_id` on a batch's fiber,
 * `request_id` on a request's) and the current span's ids (`trace_id`, `span_id`), so a line can be found from a
 * trace and the other way round; with several nodes on one log store, the server's JSON lines say which node wrote
 * them (`node_id`). Nothing here reads secrets: a line holds only what the code chose to log.
 */
import { Context, Effect, FiberRef, FiberRefs, Inspectable, Layer, Logger, LogLevel, Option, Tracer } from "effect"
import { AppConfig, type AppConfigShape } from "../Config.js"

export type LogFormat = AppConfigShape["logFormat"]
export type LogLevelName = AppConfigShape["logLevel"]

const levels: Record<LogLevelName, LogLevel.LogLevel> = {
  trace: LogLevel.Trace,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warning: LogLevel.Warning,
  error: LogLevel.Error
}

/** The fields every line has; annotations of the same names do not overwrite them. */
const RESERVED = new Set(["timestamp", "level", "message", "trace_id", "span_id", "cause", "spans", "fiber"])
/** Annotations written first when present, in this order (the others follow in no particular order). */
const FIRST = ["event", "request_id", "batch_id"]

/**
 * Effect's structured log entry (`Logger.structuredLogger`: message, level, timestamp, annotations, log spans,
 * cause) as one flat JSON object: the node's id when given, the annotations at the top level (`batch_id`, not
 * `annotations.batch_id`, as log queries expect), then the current span's `trace_id` and `span_id`. Serialized as
 * Effect's `Logger.jsonLogger` does (`Inspectable.stringifyCircular`: a circular or odd value never makes a line fail).
 */
export const jsonLineLoggerOf = (nodeId?: string): Logger.Logger<unknown, string> => Logger.make((options) => {
  const entry = Logger.structuredLogger.log(options)
  // A cause logged alone (`Effect.logError(cause)`, as runMain reports a failed program) has no message: its first line is.
  const message = Array.isArray(entry.message) && entry.message.length === 0 && entry.cause !== undefined
    ? entry.cause.split("\n")[0]
    : entry.message
  const line: Record<string, unknown> = { timestamp: entry.timestamp, level: entry.logLevel, message }
  if (nodeId !== undefined) line.node_id = nodeId
  for (const key of FIRST) {
    if (key in entry.annotations) line[key] = entry.annotations[key]
  }
  for (const [key, value] of Object.entries(entry.annotations)) {
    if (!RESERVED.has(key) && !(key === "node_id" && nodeId !== undefined)) line[key] = value
  }
  const span = Context.getOption(FiberRefs.getOrDefault(options.context, FiberRef.currentContext), Tracer.ParentSpan)
  if (Option.isSome(span)) {
    line.trace_id = span.value.traceId
    line.span_id = span.value.spanId
  }
  if (entry.cause !== undefined) line.cause = entry.cause
  if (Object.keys(entry.spans).length > 0) line.spans = entry.spans
  line.fiber = entry.fiberId
  return Inspectable.stringifyCircular(line)
})

/** The JSON lines without a node's id (an embedding app's own logger, say). */
export const jsonLineLogger = jsonLineLoggerOf()

/**
 * Replaces Effect's default logger with the one of `format` (JSON lines with `nodeId` when given) and drops lines
 * below `level`. (Effect's own `json` and `pretty` layers replace the default logger the same way.)
 */
export const loggerLayer = (format: LogFormat, level: LogLevelName, nodeId?: string): Layer.Layer<never> =>
  Layer.merge(
    Logger.replace(Logger.defaultLogger, format === "json" ? Logger.withConsoleLog(jsonLineLoggerOf(nodeId)) : Logger.prettyLogger()),
    Logger.minimumLogLevel(levels[level])
  )

/** The logger `LOG_FORMAT` and `LOG_LEVEL` ask for, its JSON lines under the node's `NODE_ID`. */
export const LoggingLive: Layer.Layer<never, never, AppConfig> = Layer.unwrapEffect(
  Effect.map(AppConfig, ({ logFormat, logLevel, nodeId }) => loggerLayer(logFormat, logLevel, nodeId))
)
