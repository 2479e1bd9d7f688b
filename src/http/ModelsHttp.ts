/**
 * Handlers of the `models` group: what `Inference` routes (every upstream's models), in OpenAI's shapes. A model no
 * upstream lists is still one batches may name when an upstream serving any model (`"*"`) takes it: retrieved too.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { modelNotFound } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { Inference } from "../inference/Inference.js"
import { OpenAIApi } from "./Api.js"

export const ModelsHttpLive = HttpApiBuilder.group(OpenAIApi, "models", (handlers) =>
  Effect.gen(function*() {
    const inference = yield* Inference
    // Upstreams do not say when a model appeared: the time this server started stands for it.
    const created = Math.floor(Date.now() / 1000)
    const model = (id: string, ownedBy: string) => ({ id, object: "model" as const, created, owned_by: ownedBy })
    return handlers
      .handle("list", () =>
        Effect.map(inference.models, ({ data }) => ({
          object: "list" as const,
          data: data.map(({ id, ownedBy }) => model(id, ownedBy))
        })))
      .handle("retrieve", ({ path }) =>
        Effect.flatMap(inference.models, ({ data }) => {
          const id = path["*"]
          const ownedBy = data.find((m) => m.id === id)?.ownedBy ?? inference.upstreamName?.(id)
          return ownedBy === undefined ? Effect.fail(modelNotFound(echo(id))) : Effect.succeed(model(id, ownedBy))
        }))
  }))
