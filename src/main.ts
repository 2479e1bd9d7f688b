/**
 * The server process: configuration from the environment, then the application until SIGINT/SIGTERM, which
 * interrupts it and closes every layer in reverse order (the server stops accepting and lets open requests end).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { ConfigError, Console, Effect, Layer } from "effect"
import { AppConfig } from "./Config.js"
import { AppLive } from "./Layers.js"

const program = Layer.launch(AppLive.pipe(Layer.provide(AppConfig.layer))).pipe(
  Effect.catchIf(ConfigError.isConfigError, (error) =>
    Console.error(`Invalid configuration: ${String(error)}`).pipe(
      Effect.zipRight(Effect.sync(() => process.exit(1)))
    ))
)

NodeRuntime.runMain(program)
