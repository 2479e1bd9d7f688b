/**
 * One request's send, for `Inference.ts`: routed to the upstream serving its model when it runs, its attempts
 * through that upstream's admission and verdicts (`upstreams/Upstream.ts`), and the retries: 408/5xx, timeouts and
 * lost connections with exponential backoff and jitter, honouring `Retry-After`, never waiting past the caller's
 * deadline. A 404 about the model from a `"*"` upstream asks its list again, and may find the model gone.
 */
import { Clock, Duration, Effect, FiberRef, identity, Option, Random } from "effect"
import { withMemberValue } from "../batches/jsonText.js"
import type { AppConfigShape } from "../Config.js"
import type { BatchEndpoint } from "../domain/Batches.js"
import { echo } from "../domain/Text.js"
import { type TracedCall, traceUpstreamCall, upstreamIdentity } from "../observability/upstreamCallSpans.js"
import { type Attempt, isRefusal } from "../upstreams/judge.js"
import type { Upstream } from "../upstreams/Upstream.js"
import { servesAnyModel, type UpstreamSpec } from "../upstreams/UpstreamSpec.js"
import { aboutTheModel, askedWait, type HandBack, HandedBack, unlessHandedBack, UpstreamFailure, type UpstreamResponse } from "./answers.js"
import { currentAnswerHold } from "./answerMemory.js"

export interface SendOptions {
  /** Epoch milliseconds after which no retry is scheduled (the batch's `expires_at`). */
  readonly deadline?: number | undefined
  /** The batch's model: it picks the upstream. */
  readonly model?: string | null | undefined
  /**
   * The batch's project: only upstreams open to it serve the request (an upstream's `projects`), and calls waiting
   * for an upstream are served round-robin by project.
   */
  readonly project?: string | undefined
  /**
   * The batch's id: a batch whose every request fails while the upstream serves others is told apart from an
   * outage (`upstreams/batchBlame.ts`).
   */
  readonly batch?: string | undefined
  /**
   * The attempts this request has used, which the caller keeps across sends an outage interrupted (a run ends when
   * its upstream goes down): the send counts on from there and records each attempt it counts. Without it, requests
   * failing together often enough to look like an outage (a server failing those bodies while it answers its
   * probes) would start over after each one, and never fail.
   */
  readonly attempts?: AttemptsUsed | undefined
  /**
   * Takes the request back unsent while it waits for its upstream (a retry's backoff, a permit at the upstream):
   * the send then fails with `HandedBack`, its attempts recorded in `attempts` for the next send. So does one whose
   * model no upstream serves (its batch then waits for a route), where a send without `handBack` fails, and one
   * whose model was never checked (`modelUnchecked`).
   */
  readonly handBack?: HandBack | undefined
  /**
   * The batch's model could not be checked when it was validated (an upstream serving any model had given no list):
   * no upstream serving it now is the batch's mistake, as validation would have said, not a route lost.
   */
  readonly modelUnchecked?: boolean | undefined
  /**
   * Wraps the wait between two attempts (a backoff, a `Retry-After`), told whether the last attempt was refused
   * (429, 503) or got no answer (an overload, or an outage): a batch's run gives the request's place in its window
   * to another request meanwhile, but after an overload (`batches/running.ts`), and takes one back before the next
   * attempt.
   */
  readonly backingOff?: (<A, E>(wait: Effect.Effect<A, E>, overloaded: boolean) => Effect.Effect<A, E>) | undefined
}

/** How many attempts a request has used (counted ones: not a call sent again because its upstream was down). */
export interface AttemptsUsed {
  used: number
  /** Epoch milliseconds before which the next attempt is not sent: a backoff a hand-back cut short. */
  retryAt?: number
}

/** `body` as `spec`'s upstream takes it: its model renamed where the upstream knows it by another (`aliases`). */
const bodyFor = (spec: UpstreamSpec, model: string | null | undefined, body: string) => {
  const own = model == null ? undefined : spec.aliases?.get(model)
  return own === undefined ? body : withMemberValue(body, "model", JSON.stringify(own))
}

/** Whether an attempt may say its upstream is overloaded or down: refused (429, 503), or no answer at all. */
const overloadedBy = (result: Attempt) => result._tag === "Failure" || isRefusal(result)

export interface SendingOptions {
  readonly config: Pick<AppConfigShape, "inferenceMaxAttempts" | "inferenceRetryBaseDelay" | "inferenceRetryMaxDelay">
  /** The upstream serving `model` for `project` now; undefined when none does. */
  readonly route: (model: string | null | undefined, project?: string) => Upstream | undefined
  /** Which calls get a span (`observability/upstreamCallSpans.ts`); undefined when none does. */
  readonly pickTraced: (() => boolean) | undefined
}

/** The send of `Inference`'s interface over the upstreams `route` gives. */
export const makeSend = ({ config, pickTraced, route }: SendingOptions) => {
  const baseDelay = Duration.toMillis(config.inferenceRetryBaseDelay)
  const maxDelay = Duration.toMillis(config.inferenceRetryMaxDelay)

  /** How long to wait before attempt `n + 1`: what the upstream asked (`askedWait`) when it did, else exponential with jitter. */
  const retryDelay = (result: Attempt, n: number) =>
    Effect.map(Random.nextRange(0.8, 1.2), (jitter) => {
      const backoff = Math.min(maxDelay, baseDelay * 2 ** (n - 1) * jitter)
      if (result._tag === "Failure") return backoff
      return Math.min(maxDelay, Option.match(askedWait(result.response.status, result.headers, Date.now()), { onNone: () => backoff, onSome: (asked) => asked.ms }))
    })

  // Routed when run, not when built: the lists may be known only by then.
  const send = (
    endpoint: BatchEndpoint,
    body: string,
    options: SendOptions = {}
  ): Effect.Effect<UpstreamResponse, UpstreamFailure | HandedBack> => Effect.suspend(() => {
    const upstream = route(options.model, options.project)
    if (upstream === undefined) {
      // A batch's line stays pending: its batch waits for a route (`reachable`).
      if (options.handBack !== undefined && options.modelUnchecked !== true) return Effect.fail(new HandedBack())
      const unchecked = options.modelUnchecked === true
        ? " It could not be checked when the batch was validated: its upstream had not answered yet."
        : ""
      return Effect.fail(new UpstreamFailure({
        code: "model_not_found",
        message: `No upstream serves the model '${echo(String(options.model), 64)}'.${unchecked}`
      }))
    }
    const { attempts, handBack } = options
    const sent = bodyFor(upstream.spec, options.model, body)
    const backingOff = options.backingOff ?? identity
    const { batch, model, project = "", deadline = Number.MAX_SAFE_INTEGER } = options
    const ticket = { project, batch, deadline, model, handBack }
    const whyRetried = (result: Attempt) => result._tag === "Failure" ? result.failure.code : `status ${result.response.status}`
    const final = (result: Attempt) =>
      result._tag === "Failure" ? Effect.fail(result.failure) : Effect.succeed(result.response)
    /** After attempt `n` gave `result`: wait and try again, unless attempts or time (the deadline) are used up. */
    const retry = (result: Attempt, n: number, traced?: TracedCall): Effect.Effect<UpstreamResponse, UpstreamFailure | HandedBack> => {
      if (attempts !== undefined) attempts.used = n
      if (n >= config.inferenceMaxAttempts) return final(result)
      return Effect.gen(function*() {
        const delay = yield* retryDelay(result, n)
        const now = yield* Clock.currentTimeMillis
        if (options.deadline !== undefined && now + delay > options.deadline) return yield* final(result)
        traced?.retried(n, whyRetried(result))
        const hold = yield* FiberRef.get(currentAnswerHold)
        hold?.release() // the answer let go is not held through the wait
        if (attempts !== undefined) attempts.retryAt = now + delay
        yield* backingOff(unlessHandedBack(Effect.sleep(Duration.millis(delay)), handBack), overloadedBy(result))
        // Its backoff over as its turn ended (the same instant): not sent all the same.
        if (handBack?.wanted()) return yield* Effect.fail(new HandedBack())
        return yield* loop(n + 1, traced)
      })
    }
    /** Attempt `n` again: its failure was the outage's, not the request's (uncounted), and a traced call's span says so. */
    const again = (result: Attempt, n: number, traced?: TracedCall) => {
      traced?.retried(n, whyRetried(result))
      return loop(n, traced)
    }
    // The usual case, an answer that needs no retry, is kept to a few steps: thousands of calls run a second.
    const loop = (n: number, traced?: TracedCall): Effect.Effect<UpstreamResponse, UpstreamFailure | HandedBack> =>
      Effect.flatMap(upstream.attempt(endpoint, sent, ticket, n, traced?.traceparent), ([result, verdict]) =>
        verdict === "final"
          ? final(result)
          : verdict === "again"
          ? (handBack?.wanted() ? Effect.fail(new HandedBack()) : again(result, n, traced))
          : retry(result, n, traced))
    const first = Math.min(attempts?.used ?? 0, config.inferenceMaxAttempts - 1) + 1
    // A request handed back in its backoff waits out the rest of it before its next attempt: at most a backoff's
    // longest, whatever time was stored (a node whose clock leapt stored one 10 minutes on, and held its batch so).
    const start = (traced?: TracedCall) =>
      attempts?.retryAt === undefined
        ? loop(first, traced)
        : Effect.flatMap(Clock.currentTimeMillis, (now) =>
          now >= attempts.retryAt!
            ? loop(first, traced)
            : Effect.zipRight(
              backingOff(unlessHandedBack(Effect.sleep(Duration.millis(Math.min(attempts.retryAt! - now, maxDelay))), handBack), true),
              loop(first, traced)
            ))
    /**
     * A 404 about the model from a `"*"` upstream: its list is asked again (`relisted`). Still listing the model,
     * the 404 is the request's; else the request goes where the model is routed now, or, routed nowhere, stays
     * pending while its batch waits for a route (`reachable`): a server that swapped its model without going away
     * (behind a load balancer) failed the rest of the batch's lines with its 404s.
     */
    const notServed = (response: UpstreamResponse) =>
      Effect.zipRight(
        upstream.relisted,
        Effect.suspend(() => (route(options.model, options.project) === upstream ? Effect.succeed(response) : send(endpoint, body, options)))
      )
    const answered = pickTraced !== undefined && pickTraced()
      ? traceUpstreamCall(upstreamIdentity(upstream.spec.name, upstream.spec.baseUrl), endpoint, options.model, sent, start)
      : start()
    if (!servesAnyModel(upstream.spec)) return answered
    return Effect.flatMap(answered, (response) => (aboutTheModel(response) ? notServed(response) : Effect.succeed(response)))
  })
  return send
}
