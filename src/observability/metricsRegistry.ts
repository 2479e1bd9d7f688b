/**
 * This node's Prometheus figures: `makeMetrics`, the `Metrics` service (`Metrics.ts`) on a prom-client `Registry` of
 * the batch, upstream and HTTP figures below, then prom-client's default process and event-loop metrics.
 *
 *   batch_batches_active{status}                        gauge: unfinished batches by status, read from the database
 *                                                       at scrape time (the cluster's view, set by `render`)
 *   batch_batches_finished_total{status}                final moves this node made
 *   batch_requests_total{endpoint,model,upstream,outcome}   outcomes of this node's requests: success (2xx),
 *                                                       upstream_error (another status), no_response (no usable
 *                                                       answer), cancelled / expired (never sent: ended by the batch)
 *   batch_tokens_total{model,type}                      tokens of the successful answers: input, output, cached, reasoning
 *   batch_upstream_request_duration_seconds{upstream,model}  histogram, one observation per attempt (each retry too)
 *   batch_upstream_up{upstream}, batch_upstream_inflight{upstream}, batch_upstream_concurrency_limit{upstream}
 *   batch_upstream_answer_bytes
 *                                                                                   gauges, read at scrape time
 *   batch_queue_wait_seconds                            histogram: created → in_progress (validation included)
 *   batch_duration_seconds{status}                      histogram: created → final status
 *   batch_http_requests_total{method,route,status}, batch_http_request_duration_seconds{method,route}
 *   batch_webhook_deliveries_total{outcome}            webhook deliveries' turns this node ended: delivered, retry, failed
 *   batch_data_dir_available_bytes{path}, batch_data_dir_size_bytes{path}   the file system holding DATA_DIR,
 *                                                       read at scrape time (set by `render`)
 *
 * The request path's figures are plain numbers (`Tally`, `TokenCell`), copied into the prom-client counters only
 * when the registry is read (their `collect`); upstream gauges are read from the admission's state at scrape time.
 *
 * Every label is bounded: `model` takes the first `MAX_MODELS` distinct models this node sees, later ones are
 * `other` (`none` for a batch naming no model); endpoints and upstreams are bounded by the configuration, statuses
 * by the API, HTTP routes by the API's route patterns (`http/MetricsHttp.ts`).
 */
import { Effect } from "effect"
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client"
import type { DiskSpace, MetricsShape, MovedBatch, RequestTally, Tokens, UpstreamGauges } from "./Metrics.js"

/** The content type of the text exposition format (`text/plain; version=0.0.4; charset=utf-8`). */
export const CONTENT_TYPE: string = Registry.PROMETHEUS_CONTENT_TYPE

/** Distinct `model` label values kept; later models share the label `other`. */
export const MAX_MODELS = 100

const ACTIVE_STATUSES = ["validating", "in_progress", "finalizing", "cancelling"] as const
const FINAL_STATUSES = ["completed", "failed", "expired", "cancelled"] as const

/** Upstream attempts: 5 ms (a local server) to 10 minutes (`INFERENCE_TIMEOUT`'s default). */
const ATTEMPT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600]
/**
 * Batch times, from their stored timestamps (whole seconds): a second to the 24 hours of a completion window, and on
 * to the 7 days the README suggests as `COMPLETION_WINDOW` for slow local servers.
 */
const BATCH_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 345600, 604800]
const HTTP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/** Token counts of one model, added to by every tally of that model. */
class TokenCell {
  input = 0
  output = 0
  cached = 0
  reasoning = 0
  constructor(readonly model: string) {}
}

class Tally implements RequestTally {
  success = 0
  upstreamError = 0
  noResponses = 0
  cancelled = 0
  expired = 0
  constructor(
    readonly labels: { readonly endpoint: string; readonly model: string; readonly upstream: string },
    private readonly tokens: TokenCell
  ) {}

  answered(status: number, usage: Tokens): void {
    if (status >= 200 && status < 300) {
      this.success++
      const t = this.tokens
      t.input += usage.input
      t.output += usage.output
      t.cached += usage.cached
      t.reasoning += usage.reasoning
    } else {
      this.upstreamError++
    }
  }

  noResponse(): void {
    this.noResponses++
  }

  ended(outcome: "cancelled" | "expired", count: number): void {
    if (outcome === "cancelled") this.cancelled += count
    else this.expired += count
  }
}

/** Where the last status of a final move is stamped. */
const finishedAt = (batch: MovedBatch): number | null =>
  batch.completed_at ?? batch.failed_at ?? batch.expired_at ?? batch.cancelled_at

/** HTTP methods kept as they are in the `method` label; any other is `other`. */
const METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])

/** The process's default metrics (CPU, memory, handles, GC, event-loop lag): one collector per process. */
let processRegistry: Registry | undefined
const processMetrics = (): Registry => {
  if (processRegistry === undefined) {
    processRegistry = new Registry()
    collectDefaultMetrics({ register: processRegistry })
  }
  return processRegistry
}

/** The metrics of one app over a registry of its own, followed by the process metrics when `processWide`. */
export const makeMetrics = (options: { readonly processWide: boolean }): MetricsShape => {
  const registry = new Registry()
  // Started with the app, not at the first scrape: the event-loop monitor and the GC observer then have measured
  // since the start (begun at the first scrape, that scrape's lag figures were its empty histogram's: min 9.2e9 s).
  const processFigures = options.processWide ? processMetrics() : undefined
  const registers = [registry]

  // --- bounded model labels ---
  const modelLabels = new Map<string, string>()
  const modelLabel = (model: string | null | undefined): string => {
    if (model === null || model === undefined) return "none"
    const known = modelLabels.get(model)
    if (known !== undefined) return known
    if (modelLabels.size >= MAX_MODELS) return "other"
    modelLabels.set(model, model)
    return model
  }

  // --- requests and tokens: cells, copied into the counters at scrape time ---
  const tallies = new Map<string, Tally>()
  const tokenCells = new Map<string, TokenCell>()
  const tokenCell = (model: string) => {
    let cell = tokenCells.get(model)
    if (cell === undefined) {
      cell = new TokenCell(model)
      tokenCells.set(model, cell)
    }
    return cell
  }
  const requests = (endpoint: string, model: string | null | undefined, upstream: string): RequestTally => {
    const label = modelLabel(model)
    const key = `${endpoint}\n${label}\n${upstream}`
    let tally = tallies.get(key)
    if (tally === undefined) {
      tally = new Tally({ endpoint, model: label, upstream }, tokenCell(label))
      tallies.set(key, tally)
    }
    return tally
  }

  new Counter({
    name: "batch_requests_total",
    help: "Requests of batches that ended on this node, by outcome: success (a 2xx answer), upstream_error (an " +
      "answer with another status), no_response (no usable answer: timeout, unreachable, too large, replay miss…), " +
      "cancelled and expired (ended by the batch's cancel or expiry before being sent).",
    labelNames: ["endpoint", "model", "upstream", "outcome"] as const,
    registers,
    collect() {
      this.reset()
      for (const t of tallies.values()) {
        const { endpoint, model, upstream } = t.labels
        this.inc({ endpoint, model, upstream, outcome: "success" }, t.success)
        this.inc({ endpoint, model, upstream, outcome: "upstream_error" }, t.upstreamError)
        this.inc({ endpoint, model, upstream, outcome: "no_response" }, t.noResponses)
        this.inc({ endpoint, model, upstream, outcome: "cancelled" }, t.cancelled)
        this.inc({ endpoint, model, upstream, outcome: "expired" }, t.expired)
      }
    }
  })

  new Counter({
    name: "batch_tokens_total",
    help: "Tokens reported by the successful (2xx) answers of this node's requests, by type: input, output, " +
      "cached (of the input) and reasoning (of the output).",
    labelNames: ["model", "type"] as const,
    registers,
    collect() {
      this.reset()
      for (const cell of tokenCells.values()) {
        this.inc({ model: cell.model, type: "input" }, cell.input)
        this.inc({ model: cell.model, type: "output" }, cell.output)
        this.inc({ model: cell.model, type: "cached" }, cell.cached)
        this.inc({ model: cell.model, type: "reasoning" }, cell.reasoning)
      }
    }
  })

  // --- upstreams ---
  const attemptDuration = new Histogram({
    name: "batch_upstream_request_duration_seconds",
    help: "Duration of each attempt sent to an upstream by this node (retries are attempts of their own), from " +
      "sending to the last byte of the answer or the failure.",
    labelNames: ["upstream", "model"] as const,
    buckets: ATTEMPT_BUCKETS,
    registers
  })
  const attempts = (upstream: string) => {
    const labels = new Map<string | null | undefined, { readonly upstream: string; readonly model: string }>()
    return (model: string | null | undefined, seconds: number) => {
      let l = labels.get(model)
      if (l === undefined) {
        l = { upstream, model: modelLabel(model) }
        if (labels.size < MAX_MODELS + 1) labels.set(model, l)
      }
      attemptDuration.observe(l, seconds)
    }
  }

  const upstreams = new Map<string, UpstreamGauges>()
  const upstream = (name: string, gauges: UpstreamGauges) => {
    upstreams.set(name, gauges)
    return () => {
      if (upstreams.get(name) === gauges) upstreams.delete(name)
    }
  }
  /** A gauge per upstream, read from its admission at each scrape. */
  const upstreamGauge = (name: string, help: string, read: (gauges: UpstreamGauges) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["upstream"] as const,
      registers,
      collect() {
        this.reset()
        for (const [upstream, gauges] of upstreams) this.set({ upstream }, read(gauges))
      }
    })
  upstreamGauge(
    "batch_upstream_up",
    "1 while this node finds the upstream up, 0 while it is down or on trial after an outage (until a call succeeds).",
    (g) => (g.up() ? 1 : 0)
  )
  upstreamGauge("batch_upstream_inflight", "Calls this node has in flight to each upstream.", (g) => g.inflight())
  upstreamGauge(
    "batch_upstream_concurrency_limit",
    "Each upstream's adaptive concurrency limit on this node (AIMD, between min_concurrency and max_concurrency).",
    (g) => g.limit()
  )

  let answerBytes: (() => number) | undefined
  const answerMemory = (reserved: () => number) => {
    answerBytes = reserved
    return () => {
      if (answerBytes === reserved) answerBytes = undefined
    }
  }
  new Gauge({
    name: "batch_upstream_answer_bytes",
    help: "Bytes of large upstream answers (over 1 MiB) this node holds, being read or waiting to be stored: at most " +
      "INFERENCE_MAX_BUFFERED_BYTES (calls wait for room).",
    registers,
    collect() {
      this.set(answerBytes?.() ?? 0)
    }
  })

  // --- batches ---
  const active = new Gauge({
    name: "batch_batches_active",
    help: "Unfinished batches by status, counted in the database at scrape time: every node's batches (the " +
      "cluster's view with several nodes).",
    labelNames: ["status"] as const,
    registers
  })
  const finished = new Counter({
    name: "batch_batches_finished_total",
    help: "Batches this node moved to a final status, by that status.",
    labelNames: ["status"] as const,
    registers
  })
  for (const status of FINAL_STATUSES) finished.inc({ status }, 0)
  const queueWait = new Histogram({
    name: "batch_queue_wait_seconds",
    help: "Time from a batch's creation to in_progress (validation included), observed by the node that moved it; " +
      "whole seconds, from the stored timestamps.",
    buckets: BATCH_BUCKETS,
    registers
  })
  const duration = new Histogram({
    name: "batch_duration_seconds",
    help: "Time from a batch's creation to its final status, observed by the node that moved it; whole seconds, " +
      "from the stored timestamps.",
    labelNames: ["status"] as const,
    buckets: BATCH_BUCKETS,
    registers
  })
  const batchMoved = (batch: MovedBatch) => {
    if (batch.status === "in_progress" && batch.in_progress_at !== null) {
      queueWait.observe(Math.max(0, batch.in_progress_at - batch.created_at))
      return
    }
    if (!(FINAL_STATUSES as ReadonlyArray<string>).includes(batch.status)) return
    finished.inc({ status: batch.status })
    const at = finishedAt(batch)
    if (at !== null) duration.observe({ status: batch.status }, Math.max(0, at - batch.created_at))
  }

  // --- HTTP ---
  const httpTotal = new Counter({
    name: "batch_http_requests_total",
    help: "HTTP requests answered, by method, route pattern (unknown routes: unmatched) and status.",
    labelNames: ["method", "route", "status"] as const,
    registers
  })
  const httpDuration = new Histogram({
    name: "batch_http_request_duration_seconds",
    help: "Time to answer an HTTP request, until its response starts (a streamed body's transfer not included).",
    labelNames: ["method", "route"] as const,
    buckets: HTTP_BUCKETS,
    registers
  })
  const httpRequest = (method: string, route: string, status: number, seconds: number) => {
    const m = METHODS.has(method) ? method : "other"
    httpTotal.inc({ method: m, route, status: String(status) })
    httpDuration.observe({ method: m, route }, seconds)
  }

  // --- webhooks ---
  const webhookDeliveries = new Counter({
    name: "batch_webhook_deliveries_total",
    help: "Webhook deliveries' turns this node ended, by outcome: delivered (a 2xx answer), retry (another answer, a " +
      "timeout or a connection error; tried again later) and failed (the delivery given up: after a last attempt, or " +
      "without one once past WEBHOOK_RETRY_FOR).",
    labelNames: ["outcome"] as const,
    registers
  })
  for (const outcome of ["delivered", "retry", "failed"] as const) webhookDeliveries.inc({ outcome }, 0)
  const webhookDelivery = (outcome: "delivered" | "retry" | "failed") => webhookDeliveries.inc({ outcome })

  // --- disk ---
  const diskAvailable = new Gauge({
    name: "batch_data_dir_available_bytes",
    help: "Bytes free to this process on the file system holding DATA_DIR (the SQLite database and local file " +
      "bytes), read at scrape time: uploads get a 507 and batches wait once it is out.",
    // Labelled, so that a scrape that could not read it leaves it out (an unlabelled gauge would show 0 bytes).
    labelNames: ["path"] as const,
    registers
  })
  const diskSize = new Gauge({
    name: "batch_data_dir_size_bytes",
    help: "Size in bytes of the file system holding DATA_DIR, read at scrape time.",
    labelNames: ["path"] as const,
    registers
  })

  const render = (counts: ReadonlyMap<string, number> | undefined, disk?: DiskSpace) =>
    Effect.promise(async () => {
      active.reset()
      if (counts !== undefined) {
        for (const status of ACTIVE_STATUSES) active.set({ status }, counts.get(status) ?? 0)
      }
      diskAvailable.reset()
      diskSize.reset()
      if (disk !== undefined) {
        diskAvailable.set({ path: disk.path }, disk.available)
        diskSize.set({ path: disk.path }, disk.size)
      }
      const own = await registry.metrics()
      return processFigures === undefined ? own : `${own}\n${await processFigures.metrics()}`
    })

  return { requests, attempts, upstream, answerMemory, batchMoved, httpRequest, webhookDelivery, render }
}
