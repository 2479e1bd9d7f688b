/** Handler of the `health` group. */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { OpenAIApi } from "./Api.js"

export const HealthHttpLive = HttpApiBuilder.group(
  OpenAIApi,
  "health",
  (handlers) => handlers.handle("health", () => Effect.succeed({ status: "OK" as const }))
)
