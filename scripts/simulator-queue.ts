/**
 * The simulator's vLLM-like scheduler: at most `limit` requests are processed at once, the others wait in FIFO order;
 * and the Prometheus gauges that show it, as vLLM exposes them at `GET /metrics`.
 */

/** The counters the queue keeps up to date (a part of the simulator's stats). */
export interface QueueCounters {
  running: number
  waiting: number
  maxWaiting: number
}

export interface Queue {
  /** Requests processed at once; `undefined`: no limit (nothing waits). Raising it starts waiting requests at once. */
  limit: number | undefined
  /**
   * Calls `start` once a processing slot is free (at once when one is). Returns the function to call when the request
   * is over (answered or abandoned): it frees the slot, or leaves the queue when still waiting. Idempotent.
   */
  readonly enter: (start: () => void) => () => void
}

export const makeQueue = (counters: QueueCounters, initialLimit: number | undefined): Queue => {
  let limit = initialLimit
  const waiting: Array<{ readonly start: () => void; state: "waiting" | "running" | "done" }> = []
  const free = () => limit === undefined || counters.running < limit
  const run = (ticket: (typeof waiting)[number]) => {
    ticket.state = "running"
    counters.running++
    ticket.start()
  }
  const pump = () => {
    while (waiting.length > 0 && free()) {
      const ticket = waiting.shift()!
      counters.waiting = waiting.length
      run(ticket)
    }
  }
  return {
    get limit() {
      return limit
    },
    set limit(value) {
      limit = value
      pump()
    },
    enter: (start) => {
      const ticket: (typeof waiting)[number] = { start, state: "waiting" }
      if (waiting.length === 0 && free()) run(ticket)
      else {
        waiting.push(ticket)
        counters.waiting = waiting.length
        counters.maxWaiting = Math.max(counters.maxWaiting, counters.waiting)
      }
      return () => {
        const was = ticket.state
        ticket.state = "done"
        if (was === "waiting") {
          waiting.splice(waiting.indexOf(ticket), 1)
          counters.waiting = waiting.length
        } else if (was === "running") {
          counters.running--
          pump()
        }
      }
    }
  }
}

const gauge = (name: string, help: string, model: string, value: number) =>
  [`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name}{model_name=${JSON.stringify(model)}} ${value}`]

/**
 * The Prometheus text (exposition format 0.0.4) of `GET /metrics`: vLLM's queue gauges for `model`, and the
 * simulator's own figures (what a trial run from the command line reads: the most requests in flight at once).
 */
export const metricsText = (
  model: string,
  counters: QueueCounters & { readonly requests: number; readonly rejected: number; readonly maxInFlight: number }
) =>
  [
    ...gauge("vllm:num_requests_running", "Number of requests in model execution batches.", model, counters.running),
    ...gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", model, counters.waiting),
    "# HELP simulator_requests_total Inference requests received (every attempt), refused ones included.",
    "# TYPE simulator_requests_total counter",
    `simulator_requests_total ${counters.requests}`,
    "# HELP simulator_rejected_total Inference requests refused (overload, failAll).",
    "# TYPE simulator_rejected_total counter",
    `simulator_rejected_total ${counters.rejected}`,
    "# HELP simulator_max_in_flight The most inference requests in flight at once since the start or a reset.",
    "# TYPE simulator_max_in_flight gauge",
    `simulator_max_in_flight ${counters.maxInFlight}`,
    ""
  ].join("\n")

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
