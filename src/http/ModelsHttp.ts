/** Handler of the `models` group: what `Inference` routes (every upstream's models), in OpenAI's list shape. */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { Inference } from "../inference/Inference.js"
import { OpenAIApi } from "./Api.js"

export const ModelsHttpLive = HttpApiBuilder.group(OpenAIApi, "models", (handlers) =>
  Effect.gen(function*() {
    const inference = yield* Inference
    // Upstreams do not say when a model appeared: the time this server started stands for it.
    const created = Math.floor(Date.now() / 1000)
    return handlers.handle("list", () =>
      Effect.map(inference.models, ({ data }) => ({
        object: "list" as const,
        data: data.map(({ id, ownedBy }) => ({ id, object: "model" as const, created, owned_by: ownedBy }))
      })))
  }))
