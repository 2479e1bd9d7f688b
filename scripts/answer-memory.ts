/**
 * Measures the server's peak memory while its batches get large upstream answers: `--batches` batches (default 2)
 * of `--lines` requests (default 32) each, every answer about `--mb` MiB (default 60), run at once with a window of
 * 32 per batch. Without a node-wide bound, every answer in flight is held at once (32 × 60 MiB took 2 GB); with
 * `INFERENCE_MAX_BUFFERED_BYTES` (default 512 MiB) the large answers wait for room instead. Runs the compiled server
 * (`npm run build` first) against the simulator and reads its peak resident set size (VmHWM) from /proc.
 *
 *   npm run bench:answers [-- --batches 2 --lines 32 --mb 60]
 *
 * The server's environment passes through: `INFERENCE_MAX_BUFFERED_BYTES=…` compares budgets.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI from "openai"
import { freePort } from "../test/support/ServerProcess.js"
import { buildPrograms, memoryMb, spawnServer, stopChildren, waitHealthy } from "./server-process.js"
import { startSimulator } from "./simulator.js"

const arg = (name: string, fallback: number) => {
  const at = process.argv.indexOf(`--${name}`)
  return at > 0 ? Number(process.argv[at + 1]) : fallback
}
const BATCHES = arg("batches", 2)
const LINES = arg("lines", 32)
const MB = arg("mb", 60)

const main = async () => {
  buildPrograms()
  const sim = await startSimulator()
  const dataDir = mkdtempSync(Path.join(tmpdir(), "answer-bench-"))
  const port = await freePort()
  const server = spawnServer({
    port,
    dataDir,
    env: {
      INFERENCE_BASE_URL: sim.url,
      MAX_CONCURRENT_BATCHES: String(BATCHES),
      MAX_CONCURRENT_REQUESTS_PER_BATCH: "32",
      LOG_LEVEL: "warning"
    },
    stdout: "inherit"
  })
  try {
    const base = `http://127.0.0.1:${port}`
    await waitHealthy(`${base}/v1/health`)
    const idle = memoryMb(server.pid!, "VmHWM")
    const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: "bench", maxRetries: 0 })
    const started = performance.now()
    const batches = await Promise.all(Array.from({ length: BATCHES }, async (_, b) => {
      const lines = Array.from({ length: LINES }, (_, i) =>
        JSON.stringify({
          custom_id: `b${b}-${i}`,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "sim-model", messages: [{ role: "user", content: `[big:${MB}] ${b} ${i}` }] }
        })).join("\n")
      const file = await openai.files.create({ file: new File([lines], "big.jsonl"), purpose: "batch" })
      return openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
    }))
    let peakRss = 0
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 250))
      peakRss = Math.max(peakRss, memoryMb(server.pid!, "VmRSS"))
      const states = await Promise.all(batches.map((b) => openai.batches.retrieve(b.id)))
      if (states.every((s) => ["completed", "failed", "expired", "cancelled"].includes(s.status))) {
        const counts = states.map((s) => s.request_counts!)
        const completed = counts.reduce((sum, c) => sum + c.completed, 0)
        const seconds = (performance.now() - started) / 1000
        console.log(`${BATCHES} batches × ${LINES} answers of ~${MB} MiB: ${completed}/${BATCHES * LINES} completed in ${seconds.toFixed(1)} s`)
        console.log(`server peak RSS: ${memoryMb(server.pid!, "VmHWM").toFixed(0)} MB (idle ${idle.toFixed(0)} MB)`)
        if (completed !== BATCHES * LINES) process.exitCode = 1
        return
      }
    }
  } catch (error) {
    console.error(`server exit code: ${server.exitCode}, signal: ${server.signalCode}`)
    throw error
  } finally {
    await stopChildren([server])
    await sim.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
