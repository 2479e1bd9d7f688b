/**
 * An `Inference` of an app's own (`makeServices({ inference })`), its answers held to `UpstreamResponse`'s contract
 * as the service's own upstream calls are (`asJsonBody`): the text one line of JSON holding an object (a
 * pretty-printed body is compacted), a non-2xx one that is not an object wrapped in an error envelope, a 2xx one that
 * is not an object an `invalid_upstream_response`, and a request id always there. The text is embedded as is in a
 * JSONL line of the output file: an app's `JSON.stringify(json, null, 2)` wrote one result across several lines.
 */
import { Context, Effect, Layer } from "effect"
import { requestId } from "../domain/Ids.js"
import { asJsonBody, isVouchedFor, UpstreamFailure, type UpstreamResponse } from "./answers.js"
import { Inference } from "./Inference.js"

/** `res` as the service's own calls give answers, or the failure one that is not usable would be. */
const checkedAnswer = (res: UpstreamResponse): Effect.Effect<UpstreamResponse, UpstreamFailure> => {
  if (typeof res.text !== "string" || !Number.isInteger(res.status) || res.status < 100 || res.status > 599) {
    return Effect.fail(new UpstreamFailure({
      code: "invalid_upstream_response",
      message: "The inference answered without a status (100–599) and a text."
    }))
  }
  const body = asJsonBody(res.status, res.text, {})
  if (body instanceof UpstreamFailure) return Effect.fail(body)
  const id = typeof res.requestId === "string" && res.requestId !== "" ? res.requestId : requestId()
  return Effect.succeed({ status: res.status, text: body.text, json: body.json, requestId: id })
}

/** The `Inference` that `layer` gives, its answers checked (`checkedAnswer`) unless its `send` is vouched for. */
export const withCheckedAnswers = <E, R>(layer: Layer.Layer<Inference, E, R>): Layer.Layer<Inference, E, R> =>
  Layer.map(layer, (context) => {
    const inference = Context.get(context, Inference)
    if (isVouchedFor(inference.send)) return context
    return Context.add(context, Inference, {
      ...inference,
      send: (endpoint, body, options) => Effect.flatMap(inference.send(endpoint, body, options), checkedAnswer)
    })
  })
