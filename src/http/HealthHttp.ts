/** Handler of the `health` group. */
import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { OpenAIApi } from "./Api.js"

export const HealthHttpLive = HttpApiBuilder.group(
  OpenAIApi,
  "health",
  (handlers) => handlers.handle("health", () => Effect.succeed({ status: "OK" as const }))
)
