/**
 * Measures the server's peak memory while it receives one large upload (default 200 MB, streamed chunked like the
 * openai SDK's `fs.createReadStream` upload). Runs the compiled server (`npm run build` first) as a child process
 * and reads its peak resident set size (VmHWM) from /proc.
 *
 * The server runs with `--optimize-for-size`, like `npm start`: without it V8 lets the young and old generations
 * grow by ~60 MB of short-lived garbage while bytes stream through (peak ~205 MB instead of ~120 MB).
 *
 *   npm run bench:upload [-- --mb 200]
 */
import { execSync, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { request } from "node:http"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { freePort } from "../test/support/ServerProcess.js"
import { memoryMb, root, startFlags, waitHealthy } from "./server-process.js"

const mbArg = process.argv.indexOf("--mb")
const megabytes = mbArg > 0 ? Number(process.argv[mbArg + 1]) : 200

const main = async () => {
  execSync("npx tsc -p tsconfig.build.json", { cwd: root, stdio: "inherit" })
  const dataDir = mkdtempSync(Path.join(tmpdir(), "upload-bench-"))
  const port = await freePort()
  // The node flags of `npm start`; BENCH_NODE_FLAGS replaces them, to compare.
  const nodeFlags = process.env.BENCH_NODE_FLAGS?.split(" ").filter(Boolean) ?? startFlags()
  const server = spawn(process.execPath, [...nodeFlags, "dist/main.js"], {
    cwd: root,
    env: { ...process.env, DATA_DIR: dataDir, PORT: String(port), HOST: "127.0.0.1" },
    stdio: ["ignore", "ignore", "inherit"]
  })
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
    console.log(`upload of ${megabytes} MB: ${seconds.toFixed(1)} s (${(megabytes / seconds).toFixed(0)} MB/s)`)
    console.log(`server peak RSS: ${peak.toFixed(0)} MB (idle before the upload: ${idle.toFixed(0)} MB), target < 150 MB`)
    if (peak >= 150) process.exitCode = 1
  } finally {
    server.kill("SIGTERM")
    rmSync(dataDir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
