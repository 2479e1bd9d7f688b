/**
 * The `Metrics` service: what the rest of the code records this node's figures through (outcomes, tokens, upstream
 * attempts and gauges, status moves, HTTP requests), and the text `GET /metrics` serves (`http/MetricsHttp.ts`). The
 * figures themselves, their labels and how they are counted are in `metricsRegistry.ts` (`makeMetrics`, on
 * prom-client); this module is the interface and the layers, so that a caller depends on no metrics library.
 *
 * The request path of a running batch passes here thousands of times a second, so recording costs no Effect and no
 * allocation: a run asks `requests(…)` once for its labels and counts each outcome with a plain call on the
 * `RequestTally` it gets.
 *
 * `Metrics` is a `Context.Reference`: recording needs nothing in the context, and where the live layer is not
 * provided (a module tested alone, an app embedding the services without it) every call is a no-op.
 */
import { Context, Effect, Layer } from "effect"
import { makeMetrics } from "./metricsRegistry.js"

/** Token counts of one answer (as `batches/usage.ts`'s `usageOf` gives them). */
export interface Tokens {
  readonly input: number
  readonly cached: number
  readonly output: number
  readonly reasoning: number
}

/** The outcomes of one endpoint, model and upstream's requests on this node, counted with plain calls. */
export interface RequestTally {
  /** An answer: a success when 2xx (its tokens counted), else an upstream error. */
  answered(status: number, usage: Tokens): void
  /** No usable answer (an `UpstreamFailure`: timeout, unreachable, too large, replay_miss…). */
  noResponse(): void
  /** `count` requests a cancel or an expiry ended before they were sent (`batch_cancelled`, `batch_expired` lines). */
  ended(outcome: "cancelled" | "expired", count: number): void
}

/** An upstream's state, read at scrape time. */
export interface UpstreamGauges {
  readonly inflight: () => number
  readonly limit: () => number
  /** Whether the upstream is up (false from the call that found it down until a probe succeeds). */
  readonly up: () => boolean
}

/** The file system holding `DATA_DIR`, as a scrape finds it (bytes). */
export interface DiskSpace {
  /** `DATA_DIR`, as configured (the gauges' `path` label). */
  readonly path: string
  /** Free to this process (what a write can still use: the root's reserve not counted). */
  readonly available: number
  readonly size: number
}

/** What a status move tells (the batch as moved: its status and timestamps, epoch seconds). */
export interface MovedBatch {
  readonly status: string
  readonly created_at: number
  readonly in_progress_at: number | null
  readonly completed_at: number | null
  readonly failed_at: number | null
  readonly expired_at: number | null
  readonly cancelled_at: number | null
}

export interface MetricsShape {
  /** The tally of `endpoint`, `model` and `upstream` (the same object for the same labels): ask once per run. */
  readonly requests: (endpoint: string, model: string | null | undefined, upstream: string) => RequestTally
  /** Records one attempt's duration at `upstream` (ask once per upstream, call per attempt). */
  readonly attempts: (upstream: string) => (model: string | null | undefined, seconds: number) => void
  /** Reports `upstream`'s in-flight calls and adaptive limit at every scrape; the returned function stops it. */
  readonly upstream: (upstream: string, gauges: UpstreamGauges) => () => void
  /** Reports the bytes of answer memory reserved (`inference/answerMemory.ts`) at every scrape; the returned function stops it. */
  readonly answerMemory: (reserved: () => number) => () => void
  /** A batch moved (`BatchStore`): queue wait on `in_progress`, finished count and duration on a final status. */
  readonly batchMoved: (batch: MovedBatch) => void
  /** One HTTP request answered (`route`: the matched route pattern, bounded). */
  readonly httpRequest: (method: string, route: string, status: number, seconds: number) => void
  /** A webhook delivery's turn this node ended: delivered, to be retried (after an attempt), or given up. */
  readonly webhookDelivery: (outcome: "delivered" | "retry" | "failed") => void
  /**
   * The metrics in the text exposition format, with `batch_batches_active` set from `active` (unfinished batches
   * by status) and `batch_data_dir_*_bytes` from `disk`; either left out when `undefined` (not read, or no
   * `DATA_DIR` in use) rather than stale.
   */
  readonly render: (active: ReadonlyMap<string, number> | undefined, disk?: DiskSpace) => Effect.Effect<string>
}

const noopTally: RequestTally = { answered() {}, noResponse() {}, ended() {} }
const noopAttempt = () => {}

/** Metrics off: every call does nothing, `render` gives no metric. */
export const noopMetrics: MetricsShape = {
  requests: () => noopTally,
  attempts: () => noopAttempt,
  upstream: () => () => {},
  answerMemory: () => () => {},
  batchMoved: () => {},
  httpRequest: () => {},
  webhookDelivery: () => {},
  render: () => Effect.succeed("")
}

/** The metrics of this node; a no-op unless a layer below (`MetricsLive`, `MetricsTest`) provides them. */
export class Metrics extends Context.Reference<Metrics>()("Metrics", { defaultValue: (): MetricsShape => noopMetrics }) {}

/** The metrics of this app, with the process's default metrics (what the server serves). */
export const MetricsLive: Layer.Layer<Metrics> = Layer.sync(Metrics, () => makeMetrics({ processWide: true }))

/** The metrics of this app alone, without the process's (a test reads only what the app counted). */
export const MetricsTest: Layer.Layer<Metrics> = Layer.sync(Metrics, () => makeMetrics({ processWide: false }))

/** Metrics off, explicitly (the default where no layer provides them). */
export const MetricsNone: Layer.Layer<Metrics> = Layer.succeed(Metrics, noopMetrics)
