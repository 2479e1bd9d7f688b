/** Handlers of the `health` group: liveness (the process serves) and readiness (`observability/Readiness.ts`). */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Effect } from "effect"
import { Readiness } from "../observability/Readiness.js"
import { OpenAIApi } from "./Api.js"

export const HealthHttpLive = HttpApiBuilder.group(OpenAIApi, "health", (handlers) =>
  Effect.map(Readiness, (readiness) =>
    handlers
      .handle("health", () => Effect.succeed({ status: "OK" as const }))
      .handle("ready", () => Effect.as(readiness.check, { status: "ready" as const }))))
