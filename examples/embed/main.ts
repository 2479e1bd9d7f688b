/**
 * The whole server composed in code: the README's Embedding example. `PORT` and `DATA_DIR` come from the
 * environment here only so that a check can run it on a free port.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { AppConfig, AppLive, LoggingLive } from "effect-openai-batch"

const config = AppConfig.layerWith({
  port: Number(process.env.PORT ?? 8321),
  dataDir: process.env.DATA_DIR ?? ".data"
})

// The service's log lines (LOG_FORMAT: JSON off a terminal), instead of runMain's pretty logger: with both, every
// line would be written twice.
Layer.launch(AppLive).pipe(
  Effect.provide(LoggingLive),
  Effect.provide(config),
  NodeRuntime.runMain({ disablePrettyLogger: true })
)
