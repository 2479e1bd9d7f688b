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

// Last resort: a fault that escapes every handler (a throw in a library's event callback) is logged, and the
// server keeps serving everyone else instead of ending the process and every request in flight with it.
process.on("uncaughtException", (error) => console.error("Uncaught exception; the server keeps running:", error))
process.on("unhandledRejection", (reason) => console.error("Unhandled rejection; the server keeps running:", reason))

NodeRuntime.runMain(program)
