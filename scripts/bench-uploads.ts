/**
 * The Uploads API at size (not a test): a 300 MB batch input sent as 5 parts in parallel through the `openai`
 * client (`uploads.create`, `uploads.parts.create` streaming each part from disk, `uploads.complete` with the md5),
 * to the compiled server (`dist/`, with the node flags of `npm start`) as a child process. Prints the server's peak
 * RSS (VmHWM) once the file is assembled (target < 200 MB), then runs a batch from that file against the simulator
 * (20,000 chat requests, each padded with a long system message to reach the size) and prints how it went.
 *
 *   npm run bench:uploads [-- --mb 300 --lines 20000] [--pg]
 *
 * `--pg` runs the server on PostgreSQL (a scratch schema, dropped afterwards), file bytes in SQL chunks.
 */
import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { Effect } from "effect"
import OpenAI from "openai"
import { createScratchSchema, dropScratchSchema } from "../test/support/Postgres.js"
import { freePort } from "../test/support/ServerProcess.js"
import { buildPrograms, memoryMb, root, spawnServer, stopChildren, waitHealthy } from "./server-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const TOTAL = arg("mb", 300) * 1024 * 1024
const LINES = arg("lines", 20_000)
const PARTS = 5
const PG = process.argv.includes("--pg")

/** Writes `LINES` chat requests of `TOTAL` bytes in all to `path` (never whole in memory); returns their md5. */
const writeInput = async (path: string) => {
  const out = createWriteStream(path)
  const hash = createHash("md5")
  const line = (i: number, bytes: number) => {
    const head = `{"custom_id":"req-${i}","method":"POST","url":"/v1/chat/completions","body":{"model":"sim-model","messages":[{"role":"system","content":"`
    const tail = `"},{"role":"user","content":"request ${i}"}]}}\n`
    return head + "x".repeat(bytes - head.length - tail.length) + tail
  }
  let written = 0
  for (let i = 0; i < LINES; i++) {
    const text = line(i, i === LINES - 1 ? TOTAL - written : Math.floor(TOTAL / LINES))
    written += text.length
    hash.update(text)
    if (!out.write(text)) await new Promise<void>((resolve) => out.once("drain", () => resolve()))
  }
  await new Promise<void>((resolve) => out.end(() => resolve()))
  return hash.digest("hex")
}

const main = async () => {
  buildPrograms()
  const dir = mkdtempSync(Path.join(tmpdir(), "uploads-bench-"))
  const children: Array<ReturnType<typeof spawn>> = []
  const database = PG ? await Effect.runPromise(createScratchSchema("bench")) : undefined
  try {
    const simPort = await freePort()
    children.push(spawn(process.execPath, ["--import", "tsx", "scripts/simulator.ts", "--port", String(simPort)], { cwd: root, stdio: "ignore" }))
    const simUrl = `http://127.0.0.1:${simPort}/v1`
    const port = await freePort()
    const server = spawnServer({
      port,
      dataDir: Path.join(dir, "data"),
      env: {
        ...(database === undefined ? {} : { DATABASE_URL: database.url }),
        INFERENCE_BASE_URL: simUrl,
        MAX_BATCH_INPUT_BYTES: String(TOTAL + 1024 * 1024)
      }
    })
    children.push(server)
    const base = `http://127.0.0.1:${port}`
    await Promise.all([waitHealthy(`${simUrl}/models`), waitHealthy(`${base}/v1/health`)])
    const idle = memoryMb(server.pid!, "VmHWM")

    const input = Path.join(dir, "input.jsonl")
    const md5 = await writeInput(input)
    const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: "bench", maxRetries: 0, timeout: 10 * 60_000 })
    const started = performance.now()
    const upload = await openai.uploads.create({ bytes: TOTAL, filename: "input.jsonl", mime_type: "text/jsonl", purpose: "batch" })
    const size = Math.ceil(TOTAL / PARTS)
    const parts = await Promise.all(Array.from({ length: PARTS }, (_, i) =>
      openai.uploads.parts.create(upload.id, {
        data: createReadStream(input, { start: i * size, end: Math.min(TOTAL, (i + 1) * size) - 1 })
      })))
    const partsDone = performance.now()
    const completed = await openai.uploads.complete(upload.id, { part_ids: parts.map((p) => p.id), md5 })
    const done = performance.now()
    if (completed.status !== "completed" || completed.file?.bytes !== TOTAL) throw new Error(`complete: ${JSON.stringify(completed)}`)
    const uploadPeak = memoryMb(server.pid!, "VmHWM")
    const mb = (TOTAL / 1024 / 1024).toFixed(0)
    const storage = PG ? "PostgreSQL, bytes in SQL chunks" : "SQLite, bytes in local files"
    console.log(`upload of ${mb} MiB in ${PARTS} parallel parts (${storage}):`)
    console.log(`  parts ${((partsDone - started) / 1000).toFixed(1)} s, complete (assembly + md5) ${((done - partsDone) / 1000).toFixed(1)} s`)
    console.log(`  server peak RSS: ${uploadPeak.toFixed(0)} MB (idle ${idle.toFixed(0)} MB), target < 200 MB`)

    const batchStarted = performance.now()
    let batch = await openai.batches.create({ input_file_id: completed.file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
    const phases: Array<[string, number]> = [["validating", batchStarted]]
    while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
      await new Promise((r) => setTimeout(r, 200))
      batch = await openai.batches.retrieve(batch.id)
      if (batch.status !== phases.at(-1)![0]) phases.push([batch.status, performance.now()])
    }
    phases.push(["end", performance.now()])
    const counts = batch.request_counts!
    if (batch.status !== "completed" || counts.completed !== LINES) {
      throw new Error(`batch ended ${batch.status}: ${JSON.stringify(counts)} ${JSON.stringify(batch.errors)}`)
    }
    const spans = phases.slice(0, -1).map(([name, at], i) => `${name} ${((phases[i + 1]![1] - at) / 1000).toFixed(1)} s`)
    console.log(`batch of ${LINES} requests from it: ${batch.status}, ${counts.completed}/${counts.total} succeeded, ` +
      `${((performance.now() - batchStarted) / 1000).toFixed(1)} s (${spans.join(", ")})`)
    console.log(`  server peak RSS since start: ${memoryMb(server.pid!, "VmHWM").toFixed(0)} MB`)
    if (uploadPeak >= 200) process.exitCode = 1
  } finally {
    await stopChildren(children)
    if (database !== undefined) await Effect.runPromise(dropScratchSchema(database.schema))
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
