/**
 * One upstream (`upstreams/Upstream.ts`: its admission, judge and outages) over a scripted HTTP client that lists
 * model `m` at `GET /models` (or answers it as `models` says) and answers each call as `answer` says: its verdicts,
 * in test time.
 */
import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Duration, Effect, Option, Redacted } from "effect"
import { makeUpstream } from "../../src/upstreams/Upstream.js"

export const scriptedUpstream = (options: {
  readonly answer: (request: HttpClientRequest.HttpClientRequest) => Response
  readonly maxConcurrency: number
  readonly probeInterval: Duration.Duration
  readonly models?: () => Response
  readonly apiKey?: string
  readonly headers?: Record<string, string>
}) =>
  Effect.tap(
    makeUpstream({
      name: "u",
      baseUrl: "http://upstream.test/v1",
      apiKey: Option.map(Option.fromNullable(options.apiKey), Redacted.make),
      models: ["m"],
      maxConcurrency: options.maxConcurrency,
      minConcurrency: 1,
      timeout: Duration.seconds(10),
      headers: options.headers ?? {},
      loadAware: Option.none()
    }, {
      http: HttpClient.make((request) =>
        Effect.succeed(HttpClientResponse.fromWeb(
          request,
          request.method !== "GET"
            ? options.answer(request)
            : options.models?.() ?? new Response(`{"object":"list","data":[{"id":"m"}]}`)
        ))
      ),
      maxResponseBytes: 1 << 20,
      probeInterval: options.probeInterval,
      maxPause: Duration.seconds(60),
      listChanged: () => {}
    }),
    (upstream) => upstream.started
  )

/** Every call answered 500. */
export const failingEveryCall = () => new Response(`{"error":{"message":"boom"}}`, { status: 500 })
