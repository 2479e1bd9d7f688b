/**
 * Handlers of the `models` group: what `Inference` routes for the caller's project (the models of every upstream
 * open to it), in OpenAI's shapes. A model no upstream lists is still one batches may name when an upstream serving
 * any model (`"*"`) takes it: retrieved too.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { CurrentCaller } from "../auth/Auth.js"
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
    /** The models the caller's batches may name (an operator's too: its batches are its own project's). */
    const listed = Effect.flatMap(CurrentCaller, ({ project }) =>
      Effect.map(inference.modelsOf?.(project) ?? inference.models, (list) => ({ list, project })))
    return handlers
      .handle("list", () =>
        Effect.map(listed, ({ list }) => ({
          object: "list" as const,
          data: list.data.map(({ id, ownedBy }) => model(id, ownedBy))
        })))
      .handle("retrieve", ({ path }) =>
        Effect.flatMap(listed, ({ list, project }) => {
          const id = path["*"]
          const ownedBy = list.data.find((m) => m.id === id)?.ownedBy ?? inference.upstreamName?.(id, project)
          return ownedBy === undefined ? Effect.fail(modelNotFound(echo(id))) : Effect.succeed(model(id, ownedBy))
        }))
  }))
