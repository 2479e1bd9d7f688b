/**
 * End-to-end benchmark (not a test): a 50,000-request chat batch against the simulator with zero latency.
 *
 *   npm run bench [-- --requests 50000 --concurrency 32] [--pg] [--nodes 2] [--latency 0]
 *
 * `--pg` runs the server on PostgreSQL (a scratch schema in `TEST_DATABASE_URL`, default the machine's
 * postgres://postgres@127.0.0.1:5432/test, dropped afterwards; file bytes in SQL, the default there);
 * `--nodes N` (implies `--pg`) runs N server nodes on that database, each with `--concurrency` upstream slots.
 * `--latency MS` makes the simulator answer after MS milliseconds (a real model's latency), for the baseline too;
 * the running phase's rate is then also given as a share of window ÷ latency (the most any client could reach).
 *
 * 1. Baseline: a plain undici client sends the same number of chat requests to the same simulator at the same
 *    concurrency: the raw rate the upstream allows on this machine.
 * 2. The service: upload the JSONL with the `openai` SDK, create the batch, poll `GET /v1/batches/{id}` every
 *    50 ms, wait for `completed`, download the output file. Requests/s is measured over that whole span.
 * 3. The baseline again: the ratio is taken to the mean of both baseline runs, so that a machine whose speed drifts
 *    during the run (shared hosts do) does not tilt it either way.
 * Prints requests/s, the ratio to the baseline, each server's peak RSS (VmHWM) and the p99 of the polls (sent to
 * the first node, which also gets the upload and the create).
 * The server runs compiled (`dist/`) with the node flags of `npm start` (read from package.json); simulator and server are separate
 * processes, the driver is this one.
 */
import { spawn } from "node:child_process"
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI from "openai"
import { Agent, request } from "undici"
import { Effect } from "effect"
import { createScratchSchema, dropScratchSchema } from "../test/support/Postgres.js"
import { freePort } from "../test/support/ServerProcess.js"
import { buildPrograms, memoryMb, root, startFlags, stopChildren, waitHealthy } from "./server-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const REQUESTS = arg("requests", 50_000)
const NODES = arg("nodes", 1)
const PG = NODES > 1 || process.argv.includes("--pg")
/** Upstream slots per node; the baseline uses as many as all nodes together. */
const CONCURRENCY = arg("concurrency", 32)
const TOTAL_CONCURRENCY = CONCURRENCY * NODES
const LATENCY_MS = arg("latency", 0)

const percentile = (values: Array<number>, p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN
}

const body = (i: number) => JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: `request ${i}` }] })

/** The raw rate: `REQUESTS` chat requests through undici at `CONCURRENCY`. */
const baseline = async (simUrl: string) => {
  const agent = new Agent({ connections: TOTAL_CONCURRENCY, keepAliveTimeout: 60_000 })
  let next = 0
  const started = performance.now()
  await Promise.all(Array.from({ length: TOTAL_CONCURRENCY }, async () => {
    while (next < REQUESTS) {
      const i = next++
      const res = await request(`${simUrl}/chat/completions`, {
        method: "POST",
        body: body(i),
        headers: { "content-type": "application/json" },
        dispatcher: agent
      })
      await res.body.json()
    }
  }))
  const seconds = (performance.now() - started) / 1000
  await agent.close()
  return REQUESTS / seconds
}

const main = async () => {
  buildPrograms()
  const dir = mkdtempSync(Path.join(tmpdir(), "batch-bench-"))
  const children: Array<ReturnType<typeof spawn>> = []
  const cleanups: Array<() => Promise<unknown>> = []
  try {
    const simPort = await freePort()
    children.push(spawn(process.execPath, ["--import", "tsx", "scripts/simulator.ts", "--port", String(simPort), "--latency", String(LATENCY_MS)], { cwd: root, stdio: "ignore" }))
    const simUrl = `http://127.0.0.1:${simPort}/v1`
    await waitHealthy(`${simUrl}/models`)

    const database = PG ? await Effect.runPromise(createScratchSchema("bench")) : undefined
    if (database !== undefined) cleanups.push(() => Effect.runPromise(dropScratchSchema(database.schema)))
    // The node flags of `npm start` (BENCH_NODE_FLAGS replaces them, to compare), plus BENCH_SERVER_FLAGS (e.g.
    // "--cpu-prof" to profile the server).
    const serverFlags = [
      ...(process.env.BENCH_NODE_FLAGS?.split(" ").filter(Boolean) ?? startFlags()),
      ...(process.env.BENCH_SERVER_FLAGS ?? "").split(" ").filter(Boolean)
    ]
    const servers: Array<{ readonly base: string; readonly pid: number }> = []
    for (let n = 0; n < NODES; n++) {
      const port = await freePort()
      const server = spawn(process.execPath, [...serverFlags, "dist/main.js"], {
        cwd: root,
        env: {
          ...process.env,
          PORT: String(port),
          HOST: "127.0.0.1",
          NODE_ID: `bench-${n + 1}`,
          DATA_DIR: Path.join(dir, `data-${n + 1}`),
          ...(database === undefined ? {} : { DATABASE_URL: database.url }),
          INFERENCE_BASE_URL: simUrl,
          MAX_CONCURRENT_REQUESTS_PER_BATCH: String(CONCURRENCY),
          INFERENCE_MAX_CONCURRENCY: String(CONCURRENCY),
          MAX_REQUESTS_PER_BATCH: String(Math.max(50_000, REQUESTS))
        },
        stdio: ["ignore", process.env.BENCH_SERVER_STDOUT ? "inherit" : "ignore", "inherit"]
      })
      children.push(server)
      servers.push({ base: `http://127.0.0.1:${port}`, pid: server.pid! })
    }
    for (const { base } of servers) await waitHealthy(`${base}/v1/health`)
    const { base } = servers[0]!

    console.log(`baseline: undici → simulator, ${REQUESTS} requests at concurrency ${TOTAL_CONCURRENCY}…`)
    const rawBefore = await baseline(simUrl)
    console.log(`  ${rawBefore.toFixed(0)} requests/s`)

    const input = Path.join(dir, "input.jsonl")
    writeFileSync(
      input,
      Array.from({ length: REQUESTS }, (_, i) =>
        `{"custom_id":"req-${i}","method":"POST","url":"/v1/chat/completions","body":${body(i)}}\n`).join("")
    )
    const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: "bench", maxRetries: 0 })
    console.log(`service: upload → batch → completed → output downloaded…`)
    const started = performance.now()
    const file = await openai.files.create({ file: createReadStream(input), purpose: "batch" })
    // When each phase was first seen (by the polls, so to within a poll).
    const phases: Array<[string, number]> = [["upload", started], ["validating", performance.now()]]
    const batch = await openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
    const polls: Array<number> = []
    const pollsByStatus = new Map<string, Array<number>>()
    let status = batch
    let lastLine = 0
    while (!["completed", "failed", "expired", "cancelled"].includes(status.status)) {
      await new Promise((r) => setTimeout(r, 50))
      const t0 = performance.now()
      status = await openai.batches.retrieve(batch.id)
      if (status.status !== phases.at(-1)![0]) phases.push([status.status, performance.now()])
      const took = performance.now() - t0
      polls.push(took)
      pollsByStatus.set(status.status, [...(pollsByStatus.get(status.status) ?? []), took])
      if (performance.now() - lastLine > 1000) {
        lastLine = performance.now()
        const c = status.request_counts!
        const rss = servers.map((s) => memoryMb(s.pid, "VmRSS").toFixed(0)).join(" + ")
        process.stdout.write(`  ${status.status} ${c.completed + c.failed}/${c.total}, server RSS ${rss} MB\n`)
      }
    }
    if (status.status !== "completed" || status.request_counts!.completed !== REQUESTS) {
      throw new Error(`batch ended ${status.status}: ${JSON.stringify(status.request_counts)} ${JSON.stringify(status.errors)}`)
    }
    const downloadStarted = performance.now()
    const output = await openai.files.content(status.output_file_id!)
    let lines = 0
    for await (const chunk of output.body as any as AsyncIterable<Uint8Array>) {
      for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, at + 1)) lines++
    }
    phases.push(["download", downloadStarted], ["end", performance.now()])
    const seconds = (performance.now() - started) / 1000
    if (lines !== REQUESTS) throw new Error(`output has ${lines} lines, expected ${REQUESTS}`)
    console.log(`baseline again…`)
    const rawAfter = await baseline(simUrl)
    console.log(`  ${rawAfter.toFixed(0)} requests/s`)
    const rawRate = (rawBefore + rawAfter) / 2
    const rate = REQUESTS / seconds
    const peaks = servers.map((s) => memoryMb(s.pid, "VmHWM"))
    const rss = Math.max(...peaks)
    const p99 = percentile(polls, 99)
    const ratio = rate / rawRate
    const setup = `${PG ? "PostgreSQL" : "SQLite"}, ${NODES} node(s) × concurrency ${CONCURRENCY}, upstream latency ${LATENCY_MS} ms`
    console.log(`\nresults (${REQUESTS} requests; ${setup}):`)
    console.log(`  end to end:          ${seconds.toFixed(1)} s, ${rate.toFixed(0)} requests/s`)
    const spans = phases.slice(0, -1).map(([name, at], i) => `${name} ${((phases[i + 1]![1] - at) / 1000).toFixed(1)} s`)
    console.log(`  phases:              ${spans.join(", ")}`)
    console.log(`  raw undici rate:     ${rawRate.toFixed(0)} requests/s (before ${rawBefore.toFixed(0)}, after ${rawAfter.toFixed(0)})`)
    // With a real latency the bound is the window: at most TOTAL_CONCURRENCY requests answered per latency.
    const running = phases.findIndex(([name]) => name === "in_progress")
    if (LATENCY_MS > 0 && running >= 0) {
      const runningSeconds = (phases[running + 1]![1] - phases[running]![1]) / 1000
      const bound = TOTAL_CONCURRENCY / (LATENCY_MS / 1000)
      const runningRate = REQUESTS / runningSeconds
      console.log(
        `  running phase:       ${runningRate.toFixed(0)} requests/s = ${(runningRate / bound).toFixed(3)} of window ÷ latency ` +
          `(${bound.toFixed(0)}/s; target ≥ 0.95), raw undici ${(rawRate / bound).toFixed(3)} of it`
      )
    }
    console.log(`  ratio:               ${ratio.toFixed(2)}   (target ≥ 0.5)`)
    console.log(`  server peak RSS:     ${peaks.map((p) => p.toFixed(0)).join(" / ")} MB   (target ≤ 250 MB)`)
    console.log(`  GET /v1/batches/{id} p99: ${p99.toFixed(1)} ms over ${polls.length} polls   (target ≤ 50 ms)`)
    const slowest = [...pollsByStatus].map(([name, times]) =>
      `${name} ${Math.max(...times).toFixed(0)} ms (p99 ${percentile(times, 99).toFixed(0)}, ${times.length} polls)`)
    console.log(`  slowest poll by status seen: ${slowest.join(", ")}`)
    if (ratio < 0.5 || rss > 250 || p99 > 50) process.exitCode = 1
  } finally {
    await stopChildren(children)
    for (const cleanup of cleanups) await cleanup()
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
