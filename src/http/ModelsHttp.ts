/**
 * Handlers of the `models` group: what `Inference` routes for the caller's project (the models of every upstream
 * open to it), in OpenAI's shapes, and those upstreams' states (`GET /v1/upstreams`, an extension). A model no
 * upstream lists is still one batches may name when an upstream serving any model (`"*"`) takes it: retrieved too.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { CurrentCaller } from "../auth/Auth.js"
import { modelNotFound } from "../domain/Errors.js"
import { echo } from "../domain/Text.js"
import { Inference, type UpstreamReport } from "../inference/Inference.js"
import { OpenAIApi } from "./Api.js"

/** An upstream's report in the wire shape (`domain/Models.ts`); its load (every project's) to an operator only. */
const upstreamObject = (u: UpstreamReport, operator: boolean) => ({
  object: "upstream" as const,
  name: u.name,
  state: u.state,
  down_since: u.outage === undefined ? null : Math.floor(u.outage.since / 1000),
  down_reason: u.outage?.kind ?? null,
  models: u.models,
  serves_any_model: u.servesAnyModel,
  concurrency_limit: operator ? u.limit : null,
  in_flight: operator ? u.inflight : null,
  waiting: operator ? u.waiting : null
})

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
      .handle("upstreams", () =>
        Effect.flatMap(CurrentCaller, ({ admin, project }) =>
          // An operator sees every upstream (the projects' it serves too), a project's key those open to it.
          Effect.map(inference.upstreamsOf?.(admin ? undefined : project) ?? Effect.succeed([]), (reports) => ({
            object: "list" as const,
            data: reports.map((report) => upstreamObject(report, admin))
          }))))
  }))
