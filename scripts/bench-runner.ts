/**
 * The runner's own cost without the HTTP API (not a test): a batch of N requests through the real BatchRunner,
 * BatchStore and FileStore on SQLite, in this process. Prints the validating time, requests/s of the running phase
 * with the share of that time spent in garbage collection, the main thread's CPU per request (and of every thread of
 * the process: V8's collector helpers work beside it), and the finalizing time.
 *
 *   npx tsx scripts/bench-runner.ts [--requests 20000] [--concurrency 32] [--upstream [--latency MS]] [--cpu-prof FILE]
 *                                   [--no-metrics]
 *
 * By default `Inference` answers at once with a canned body (the runner and store alone); `--upstream` sends every
 * request over HTTP to the simulator in a child process instead (the live Inference and upstream client).
 * With `OTEL_EXPORTER_OTLP_ENDPOINT` set the runner is traced as the server would be (`observability/Tracing.ts`).
 * `--cpu-prof FILE` writes a CPU profile of the running and finalizing phases (open it in Chrome's DevTools). Node flags go before
 * the script: `node --max-semi-space-size=4 --import tsx scripts/bench-runner.ts`.
 */
import { Duration, Effect, Layer, Stream } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { Session } from "node:inspector/promises"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { PerformanceObserver } from "node:perf_hooks"
import { BatchRunner, BatchRunnerLive } from "../src/batches/BatchRunner.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { WorkLeasesLive } from "../src/batches/WorkLeases.js"
import { AppConfig } from "../src/Config.js"
import { BatchId } from "../src/domain/Ids.js"
import { FileStore, FileStoreLive } from "../src/files/FileStore.js"
import { Inference, InferenceLive } from "../src/inference/Inference.js"
import { StorageLive } from "../src/Layers.js"
import { TracingLive } from "../src/observability/Tracing.js"
import { MetricsLive, MetricsNone } from "../src/observability/Metrics.js"
import { freePort } from "../test/support/ServerProcess.js"
import { newChatBatch } from "../test/support/Batches.js"
import { root, waitHealthy } from "./server-process.js"

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1] : undefined
}
const REQUESTS = Number(arg("requests") ?? 20_000)
const CONCURRENCY = Number(arg("concurrency") ?? 32)
const UPSTREAM = process.argv.includes("--upstream")
const CPU_PROFILE = arg("cpu-prof")
const LATENCY_MS = arg("latency") ?? "0"
/** The metrics are counted as the server counts them, unless `--no-metrics`. */
const METRICS = !process.argv.includes("--no-metrics")

const answer = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1,
  model: "sim-model",
  choices: [{ index: 0, message: { role: "assistant", content: "echo" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }
})

/** Answers every request at once (after a microtask), like an upstream with no latency and no network. */
const InstantInference = Layer.succeed(Inference, {
  send: () =>
    Effect.promise(() => Promise.resolve()).pipe(
      Effect.as({ status: 200, text: answer, json: JSON.parse(answer), requestId: "req_1" })
    ),
  models: Effect.succeed({ data: [], complete: false }),
  reachable: () => Effect.void,
  unreachable: () => Effect.never
})

/** The simulator in a child process, for as long as the scope lives; its base URL. */
const simulator = Effect.acquireRelease(
  Effect.promise(async () => {
    const port = await freePort()
    const child = spawn(process.execPath, ["--import", "tsx", "scripts/simulator.ts", "--port", String(port), "--latency", LATENCY_MS], {
      cwd: root,
      stdio: "ignore"
    })
    const url = `http://127.0.0.1:${port}/v1`
    await waitHealthy(`${url}/models`)
    return { child, url }
  }),
  ({ child }) => Effect.sync(() => child.kill())
)

const dir = mkdtempSync(Path.join(tmpdir(), "bench-runner-"))
const services = Layer.unwrapScoped(Effect.map(
  UPSTREAM ? Effect.map(simulator, ({ url }) => url) : Effect.succeed("http://127.0.0.1:9/v1"),
  (inferenceBaseUrl) =>
    BatchRunnerLive.pipe(
      Layer.provideMerge(Layer.mergeAll(FileStoreLive, BatchStoreLive, WorkLeasesLive, UPSTREAM ? InferenceLive : InstantInference)),
      Layer.provide(StorageLive),
      Layer.provide(METRICS ? MetricsLive : MetricsNone),
      Layer.provide(AppConfig.layerWith({
        dataDir: dir,
        inferenceBaseUrl,
        maxConcurrentRequestsPerBatch: CONCURRENCY,
        inferenceMaxConcurrency: CONCURRENCY,
        maxRequestsPerBatch: Math.max(50_000, REQUESTS),
        heartbeatInterval: Duration.seconds(1)
      })),
      Layer.provide(TracingLive) // traced as the OTEL_* variables say (none: not at all)
    )
))

let gcMs = 0
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcMs += entry.duration
}).observe({ entryTypes: ["gc"] })

/** CPU time of this process's main thread (Linux: /proc; NaN elsewhere), in milliseconds. */
const mainThreadCpuMs = () => {
  try {
    const fields = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10 // utime + stime, in clock ticks of 10 ms
  } catch {
    return NaN
  }
}

const profiler = new Session()
profiler.connect()

const program = Effect.gen(function*() {
  const files = yield* FileStore
  const store = yield* BatchStore
  const runner = yield* BatchRunner
  const lines = Array.from({ length: REQUESTS }, (_, i) =>
    `{"custom_id":"req-${i}","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"user","content":"request ${i}"}]}}\n`).join("")
  const input = yield* files.create({ filename: "in.jsonl", purpose: "batch", project: "default" }, Stream.make(new TextEncoder().encode(lines)))
  const { record } = yield* store.create(newChatBatch(BatchId.make("batch_bench"), input.id))
  // The bench's own polls (every 5 ms) are not the runner's work: never traced.
  const statusNow = Effect.map(Effect.orDie(store.get(record.batch.id, "all")), ({ batch }) => batch.status).pipe(Effect.withTracerEnabled(false))
  const validationStarted = performance.now()
  yield* runner.submit(record.batch.id)
  let status = record.batch.status
  while (status === "validating") {
    yield* Effect.sleep(Duration.millis(5))
    status = yield* statusNow
  }
  console.log(`validating: ${((performance.now() - validationStarted) / 1000).toFixed(2)} s`)
  if (CPU_PROFILE !== undefined) {
    yield* Effect.promise(() => profiler.post("Profiler.enable").then(() => profiler.post("Profiler.start")))
  }
  const startedAt = performance.now()
  const gcBefore = gcMs
  const cpuBefore = process.cpuUsage()
  const mainBefore = mainThreadCpuMs()
  const loopBefore = performance.eventLoopUtilization()
  while (status === "in_progress") {
    yield* Effect.sleep(Duration.millis(5))
    status = yield* statusNow
  }
  const seconds = (performance.now() - startedAt) / 1000
  const gc = (gcMs - gcBefore) / 1000
  console.log(`running phase: ${REQUESTS} requests in ${seconds.toFixed(2)} s = ${(REQUESTS / seconds).toFixed(0)} requests/s`)
  console.log(`garbage collection: ${gc.toFixed(2)} s (${((gc / seconds) * 100).toFixed(0)} %)`)
  const cpu = process.cpuUsage(cpuBefore)
  const loop = performance.eventLoopUtilization(loopBefore)
  const mainCpu = mainThreadCpuMs() - mainBefore
  console.log(
    `main thread: event loop busy ${(loop.utilization * 100).toFixed(0)} %, on CPU ${(mainCpu / 10 / seconds).toFixed(0)} % ` +
      `(${(mainCpu * 1000 / REQUESTS).toFixed(0)} µs/request); every thread of this process: ` +
      `${((cpu.user + cpu.system) / REQUESTS).toFixed(0)} µs/request`
  )
  const finalizingStarted = performance.now()
  while (status === "finalizing") {
    yield* Effect.sleep(Duration.millis(5))
    status = yield* statusNow
  }
  console.log(`finalizing: ${((performance.now() - finalizingStarted) / 1000).toFixed(2)} s (${status})`)
  if (CPU_PROFILE !== undefined) {
    const { profile } = yield* Effect.promise(() => profiler.post("Profiler.stop"))
    writeFileSync(CPU_PROFILE, JSON.stringify(profile))
    console.log(`CPU profile of the running phase: ${CPU_PROFILE}`)
  }
})

Effect.runPromise(Effect.scoped(Effect.flatMap(Layer.build(services), (context) => Effect.provide(program, context))))
  .finally(() => rmSync(dir, { recursive: true, force: true }))
