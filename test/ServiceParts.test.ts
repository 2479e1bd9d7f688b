/**
 * The parts `makeServices` and `makeApp` take, as an embedding app's compiler sees them: a misspelled part is a type
 * error (it would otherwise be ignored, the live part used instead), and what a start fails with is typed.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, type Layer } from "effect"
import { InferenceScripted, type LiveServicesError, makeApp, makeServices, scriptedAnswer } from "../src/index.js"

const scripted = InferenceScripted(() => Effect.succeed(scriptedAnswer(200, {})), ["m"])

describe("the parts of makeServices and makeApp", () => {
  it("a part they do not know is refused by the compiler; the error type names the live parts' errors", () => {
    // @ts-expect-error: `infrence` is no part (beside a part it is, the compiler said nothing before)
    const misspelled = makeServices({ inference: scripted, infrence: scripted })
    // @ts-expect-error: nor for the whole app
    const app = makeApp({ inference: scripted, infrence: scripted })
    const services: Layer.Layer<any, LiveServicesError, any> = makeServices({ inference: scripted })
    expect([misspelled, app, services].every((layer) => typeof layer === "object")).toBe(true)
  })
})
