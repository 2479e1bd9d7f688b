/**
 * Measures the server's peak memory while it receives one large upload (default 200 MB, streamed chunked like the
 * openai SDK's `fs.createReadStream` upload). Runs the compiled server (`npm run build` first) as a child process
 * and reads its peak resident set size (VmHWM) from /proc.
 *
 * The server runs with the node flags of `npm start` (small young generation, old generation grown by 20 % at a
 * time): with V8's defaults the young and old generations grow by ~60 MB of short-lived garbage while bytes
 * stream through (peak ~200 MB instead of ~120 MB).
 *
 * Then it downloads the file again and reports the peak after that too (bytes are streamed both ways).
 *
 *   npm run bench:upload [-- --mb 200] [--pg]
 *
 * `--pg` runs the server on PostgreSQL (a scratch schema, dropped afterwards), where file bytes are stored as chunks
 * in the database (`FILE_STORAGE=sql`, the default there).
 */
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { request } from "node:http"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { Effect } from "effect"
import { createScratchSchema, dropScratchSchema } from "../test/support/Postgres.js"
import { freePort } from "../test/support/ServerProcess.js"
import { buildPrograms, memoryMb, spawnServer, startFlags, waitHealthy } from "./server-process.js"

const mbArg = process.argv.indexOf("--mb")
const megabytes = mbArg > 0 ? Number(process.argv[mbArg + 1]) : 200
const PG = process.argv.includes("--pg")

const main = async () => {
  buildPrograms()
  const dataDir = mkdtempSync(Path.join(tmpdir(), "upload-bench-"))
  const port = await freePort()
  const database = PG ? await Effect.runPromise(createScratchSchema("bench")) : undefined
  // The node flags of `npm start`; BENCH_NODE_FLAGS replaces them, to compare.
  const nodeFlags = process.env.BENCH_NODE_FLAGS?.split(" ").filter(Boolean) ?? startFlags()
  const server = spawnServer({ port, dataDir, nodeFlags, env: database === undefined ? {} : { DATABASE_URL: database.url } })
  try {
    await waitHealthy(`http://127.0.0.1:${port}/v1/health`)
    const idle = memoryMb(server.pid!, "VmHWM")
    const total = megabytes * 1024 * 1024
    const chunk = randomBytes(1024 * 1024)
    const boundary = "bench-boundary"
    const started = Date.now()
    const body = await new Promise<string>((resolve, reject) => {
      const req = request(`http://127.0.0.1:${port}/v1/files`, {
        method: "POST",
        headers: { "content-type": `multipart/form-data; boundary=${boundary}`, "transfer-encoding": "chunked" }
      }, (res) => {
        let text = ""
        res.on("data", (d) => (text += d))
        res.on("end", () => resolve(text))
      })
      req.on("error", reject)
      req.write(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n`)
      let sent = 0
      const pump = () => {
        while (sent < total) {
          sent += chunk.length
          if (!req.write(chunk)) return void req.once("drain", pump)
        }
        req.end(`\r\n--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--${boundary}--\r\n`)
      }
      pump()
    })
    const seconds = (Date.now() - started) / 1000
    const file = JSON.parse(body)
    if (file.bytes !== total) throw new Error(`upload failed: ${body}`)
    const peak = memoryMb(server.pid!, "VmHWM")
    const storage = PG ? "PostgreSQL, bytes in SQL chunks" : "SQLite, bytes in local files"
    console.log(`upload of ${megabytes} MB (${storage}): ${seconds.toFixed(1)} s (${(megabytes / seconds).toFixed(0)} MB/s)`)
    console.log(`server peak RSS: ${peak.toFixed(0)} MB (idle before the upload: ${idle.toFixed(0)} MB), target < 150 MB`)

    const downloadStarted = Date.now()
    const response = await fetch(`http://127.0.0.1:${port}/v1/files/${file.id}/content`)
    let received = 0
    for await (const part of response.body as any as AsyncIterable<Uint8Array>) received += part.length
    if (received !== total) throw new Error(`download returned ${received} bytes, expected ${total}`)
    const afterDownload = memoryMb(server.pid!, "VmHWM")
    console.log(`download: ${((Date.now() - downloadStarted) / 1000).toFixed(1)} s, server peak RSS since start: ${afterDownload.toFixed(0)} MB`)
    if (afterDownload >= 150) process.exitCode = 1
  } finally {
    server.kill("SIGTERM")
    await new Promise((resolve) => server.exitCode !== null ? resolve(null) : server.once("exit", resolve))
    if (database !== undefined) await Effect.runPromise(dropScratchSchema(database.schema))
    rmSync(dataDir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
