/**
 * The whole product in one command: starts the upstream simulator and the server, runs a 1,000-request chat
 * batch through the official `openai` client with a progress line, downloads the output and error files and
 * prints where they are.
 *
 *   npm run demo [-- --requests 1000 --latency 100]
 *
 * Every 50th request asks the simulator for a 400, so the error file has lines too; a few get a 429 first and
 * are retried. The server keeps its data in `.demo/data` (deleted at each start), the files land in `.demo/`.
 */
import { spawn } from "node:child_process"
import { createReadStream, createWriteStream, mkdirSync, rmSync, writeFileSync } from "node:fs"
import * as Path from "node:path"
import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import OpenAI from "openai"
import { freePort } from "../test/support/ServerProcess.js"
import { root, waitHealthy } from "./server-process.js"
import { startSimulator } from "./simulator.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const REQUESTS = arg("requests", 1000)
const LATENCY_MS = arg("latency", 100)

const prompt = (i: number) =>
  i % 50 === 49 ? `request ${i} [fail:400]` : i % 100 === 10 ? `request ${i} [flaky:429x1]` : `Say something about the number ${i}`

const main = async () => {
  const demoDir = Path.join(root, ".demo")
  rmSync(demoDir, { recursive: true, force: true })
  mkdirSync(demoDir, { recursive: true })

  const sim = await startSimulator({ latencyMs: LATENCY_MS })
  console.log(`upstream simulator: ${sim.url} (${LATENCY_MS} ms per answer)`)
  const port = await freePort()
  const server = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: root,
    env: { ...process.env, PORT: String(port), DATA_DIR: Path.join(demoDir, "data"), INFERENCE_BASE_URL: sim.url },
    stdio: ["ignore", "ignore", "inherit"]
  })
  const stop = async () => {
    server.kill("SIGTERM")
    await sim.close()
  }
  try {
    const base = `http://127.0.0.1:${port}`
    await waitHealthy(`${base}/v1/health`)
    console.log(`batch server:       ${base} (API docs at ${base}/docs)\n`)

    const input = Path.join(demoDir, "input.jsonl")
    writeFileSync(
      input,
      Array.from({ length: REQUESTS }, (_, i) =>
        JSON.stringify({
          custom_id: `request-${i}`,
          method: "POST",
          url: "/v1/chat/completions",
          body: { model: "sim-model", messages: [{ role: "user", content: prompt(i) }] }
        }) + "\n").join("")
    )
    const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: "demo" })
    const file = await openai.files.create({ file: createReadStream(input), purpose: "batch" })
    console.log(`uploaded ${file.filename}: ${file.id}, ${file.bytes} bytes`)
    let batch = await openai.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
      metadata: { demo: "true" }
    })
    console.log(`created ${batch.id}`)
    const started = Date.now()
    while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
      await new Promise((r) => setTimeout(r, 200))
      batch = await openai.batches.retrieve(batch.id)
      const { completed = 0, failed = 0, total = 0 } = batch.request_counts ?? {}
      const seconds = ((Date.now() - started) / 1000).toFixed(1)
      process.stdout.write(`\r  ${batch.status.padEnd(11)} ${completed + failed}/${total} done (${failed} failed), ${seconds} s   `)
    }
    process.stdout.write("\n\n")
    if (batch.status !== "completed") throw new Error(`the batch ended ${batch.status}: ${JSON.stringify(batch.errors)}`)

    const download = async (id: string | null | undefined, name: string) => {
      if (!id) return `(no ${name} file: no such lines)`
      const path = Path.join(demoDir, name)
      const response = await openai.files.content(id)
      await pipeline(Readable.fromWeb(response.body as any), createWriteStream(path))
      return `${path}   (${id})`
    }
    console.log(`output file: ${await download(batch.output_file_id, "output.jsonl")}`)
    console.log(`error file:  ${await download(batch.error_file_id, "errors.jsonl")}`)
    console.log(`usage: ${batch.usage?.total_tokens} tokens; ${batch.request_counts?.completed} completed, ${batch.request_counts?.failed} failed`)
  } finally {
    await stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
