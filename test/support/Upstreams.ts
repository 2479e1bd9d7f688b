/** A test app over several simulators routed by `upstreams` entries, with the app's log lines recorded. */
import { Context, Effect, FiberRef, FiberRefs, HashMap, Layer, Logger, LogLevel, Option, Tracer } from "effect"
import type { AppConfigShape } from "../../src/Config.js"
import type { UpstreamEntry } from "../../src/upstreams/UpstreamSpec.js"
import { type Simulator, type SimulatorOptions, startSimulator } from "../../scripts/simulator.js"
import { chatLine, createBatch, sdk, upload } from "./Batches.js"
import { type Backend, baseUrl, testApp, type TestAppOptions } from "./TestApp.js"

/** The simulators of a test, by name. */
export class Simulators extends Context.Tag("test/Simulators")<Simulators, Record<string, Simulator>>() {}

/** The app's log lines (level, message, `event` annotation and the trace they are in), as they are written. */
export class LogLines extends Context.Tag("test/LogLines")<LogLines, Array<LogLine>>() {}

interface LogLine {
  readonly level: string
  readonly message: string
  readonly event?: unknown
  readonly traceId?: string | undefined
}

const simulators = (options: Record<string, SimulatorOptions>) =>
  Layer.scoped(
    Simulators,
    Effect.map(
      Effect.forEach(Object.entries(options), ([name, o]) =>
        Effect.map(
          Effect.acquireRelease(Effect.promise(() => startSimulator(o)), (sim) => Effect.promise(() => sim.close())),
          (sim) => [name, sim] as const
        )),
      (entries) => Object.fromEntries(entries)
    )
  )

/**
 * `testApp` whose upstreams are the simulators `sims` (started first, each with its options), routed by the
 * entries `upstreams` gives for them; every line, debug ones included, is recorded in `LogLines`; `auth`: its keys.
 */
export const testAppWithUpstreams = (
  sims: Record<string, SimulatorOptions>,
  upstreams: (sims: Record<string, Simulator>) => ReadonlyArray<UpstreamEntry>,
  overrides: Partial<AppConfigShape> = {},
  backend: Backend = "sqlite",
  auth?: TestAppOptions["auth"]
) =>
  // Made as the layer is built: a layer built twice (suites side by side) records each app's lines apart.
  Layer.unwrapEffect(Effect.sync(() => {
    const lines: Array<LogLine> = []
    const recorder = Logger.make(({ annotations, context, logLevel, message }) => {
      const span = Context.getOption(FiberRefs.getOrDefault(context, FiberRef.currentContext), Tracer.ParentSpan)
      lines.push({
        level: logLevel.label,
        message: Array.isArray(message) ? message.map(String).join(" ") : String(message),
        event: Option.getOrUndefined(HashMap.get(annotations, "event")),
        traceId: Option.getOrUndefined(span)?.traceId
      })
    })
    return Layer.unwrapEffect(Effect.map(Simulators, (all) =>
      testApp({ upstreams: Option.some(upstreams(all)), ...overrides }, backend, { logLevel: LogLevel.Debug, ...(auth && { auth }) }).pipe(
        Layer.provide(Logger.replace(Logger.defaultLogger, recorder))
      ))).pipe(
        Layer.provideMerge(simulators(sims)),
        Layer.merge(Layer.succeed(LogLines, lines))
      )
  }))

/** Log lines whose message matches `pattern`. */
export const logged = (lines: ReadonlyArray<{ message: string }>, pattern: RegExp) =>
  lines.filter((l) => pattern.test(l.message)).map((l) => l.message)

/** The official client, pointed at the app under test. */
export const client = Effect.map(baseUrl, sdk)

/** Uploads `n` chat lines for `model` (custom ids `prefix-i`) and creates their batch, through the official client. */
export const createModelBatch = (n: number, model: string, prefix: string) =>
  Effect.gen(function*() {
    const openai = yield* client
    const file = yield* upload(openai, Array.from({ length: n }, (_, i) => chatLine(`${prefix}-${i}`, `${prefix} ${i}`, model)))
    return yield* createBatch(openai, file.id)
  })
