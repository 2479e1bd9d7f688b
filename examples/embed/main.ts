/**
 * The whole server composed in code: the README's Embedding example. `PORT` and `DATA_DIR` come from the
 * environment here only so that a check can run it on a free port.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Layer } from "effect"
import { AppConfig, AppLive } from "effect-openai-batch"

const config = AppConfig.layerWith({
  port: Number(process.env.PORT ?? 8321),
  dataDir: process.env.DATA_DIR ?? ".data"
})

Layer.launch(AppLive.pipe(Layer.provide(config))).pipe(NodeRuntime.runMain)
