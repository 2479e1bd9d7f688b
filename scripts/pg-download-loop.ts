/**
 * The PostgreSQL download loop of issue 12: a server process on a scratch schema (file bytes in SQL), a 3 MB file
 * and a small one, then N times, each request on a connection of its own: download the large file, download the
 * small one, get the small one's metadata. Prints how many answers were not 2xx (or broke off mid-body). A download
 * whose client is gone interrupts the statement reading its bytes; @effect/sql-pg used to cancel that statement
 * with `pg_cancel_backend`, which could hit the next request's statement on the same pooled connection (a 500
 * with `canceling statement due to user request`): 111 of 5,000 iterations failed before the fix.
 *
 *   npm run bench:pg-downloads [-- --iterations 5000] [--abort]
 *
 * `--abort` makes the client drop each large download after its first bytes instead of reading it whole. Exits
 * with 1 when any answer was not 2xx. `test/PgDownloadLoop.test.ts` runs a shorter loop of this kind.
 */
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { request } from "node:http"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { Effect } from "effect"
import { createScratchSchema, dropScratchSchema } from "../test/support/Postgres.js"
import { startServer } from "../test/support/ServerProcess.js"

export interface Answer {
  readonly status: number
  /** The first bytes of the body (of an error's whole body), or what went wrong with the connection. */
  readonly body: string
  readonly bytes: number
}

/**
 * One request on a connection of its own. `abortAfterFirstChunk` destroys the connection once the first bytes of
 * the body arrived. A connection that breaks is an answer too, with status 0 (a body cut off after its headers).
 */
export const send = (
  base: string,
  method: string,
  path: string,
  options: {
    readonly body?: { readonly headers: Record<string, string>; readonly bytes: Uint8Array }
    readonly abortAfterFirstChunk?: boolean
  } = {}
) =>
  new Promise<Answer>((resolve) => {
    let status = 0
    let bytes = 0
    const req = request(`${base}${path}`, { method, agent: false, headers: options.body?.headers }, (res) => {
      status = res.statusCode!
      const parts: Array<Buffer> = []
      res.on("data", (chunk: Buffer) => {
        bytes += chunk.length
        if (options.abortAfterFirstChunk) {
          req.destroy()
          resolve({ status, body: "", bytes })
        } else if (status >= 300 || parts.length === 0) parts.push(chunk)
      })
      res.on("end", () => resolve({ status, body: Buffer.concat(parts).toString("utf8", 0, 500), bytes }))
      res.on("error", failed)
    })
    function failed(e: Error) {
      resolve({ status: 0, body: `${method} ${path} (status ${status}): ${e.message}`, bytes })
    }
    req.on("error", failed)
    req.setTimeout(10_000, () => req.destroy(new Error("no answer in 10 s")))
    req.end(options.body?.bytes)
  })

/** Uploads `bytes` as a `user_data` file named `name`; its id. */
export const upload = async (base: string, name: string, bytes: Uint8Array): Promise<string> => {
  const boundary = `----loop${randomBytes(8).toString("hex")}`
  const body = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n`),
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${name}"\r\n`),
    Buffer.from("Content-Type: application/octet-stream\r\n\r\n"),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`)
  ])
  const answer = await send(base, "POST", "/v1/files", {
    body: {
      headers: { "content-type": `multipart/form-data; boundary=${boundary}`, "content-length": String(body.length) },
      bytes: body
    }
  })
  if (answer.status !== 200) throw new Error(`upload failed: ${answer.status} ${answer.body}`)
  return JSON.parse(answer.body).id
}

export interface LoopResult {
  readonly iterations: number
  readonly requests: number
  /** Each distinct failure (`status body`) with how often it came. */
  readonly failures: ReadonlyMap<string, number>
  readonly failed: number
  readonly seconds: number
}

/**
 * The loop against the server at `base`: uploads a `largeBytes` file and a 1 KiB one, then `iterations` times
 * downloads the large one (dropped after its first bytes with `abort`), downloads the small one (checking its
 * length) and gets its metadata. A large download that is read whole must also arrive whole.
 */
export const downloadLoop = async (
  base: string,
  options: {
    readonly iterations: number
    readonly abort: boolean
    readonly largeBytes?: number
    readonly onProgress?: (done: number, failed: number) => void
  }
): Promise<LoopResult> => {
  const largeBytes = options.largeBytes ?? 3 * 1024 * 1024
  const large = await upload(base, "large.bin", randomBytes(largeBytes))
  const small = await upload(base, "small.bin", randomBytes(1024))
  const failures = new Map<string, number>()
  let failed = 0
  const fail = (key: string) => {
    failed++
    failures.set(key, (failures.get(key) ?? 0) + 1)
  }
  const started = Date.now()
  for (let i = 0; i < options.iterations; i++) {
    const expected = [options.abort ? undefined : largeBytes, 1024, undefined]
    const answers = [
      await send(base, "GET", `/v1/files/${large}/content`, { abortAfterFirstChunk: options.abort }),
      await send(base, "GET", `/v1/files/${small}/content`),
      await send(base, "GET", `/v1/files/${small}`)
    ]
    answers.forEach((a, j) => {
      if (a.status < 200 || a.status >= 300) fail(`${a.status} ${a.body.replaceAll(/file-\w+/g, "file-…")}`)
      else if (expected[j] !== undefined && a.bytes !== expected[j]) fail(`${a.status} with ${a.bytes} of ${expected[j]} bytes`)
    })
    if ((i + 1) % 500 === 0) options.onProgress?.(i + 1, failed)
  }
  return { iterations: options.iterations, requests: 3 * options.iterations, failures, failed, seconds: (Date.now() - started) / 1000 }
}

const main = async () => {
  const arg = (name: string) => {
    const i = process.argv.indexOf(`--${name}`)
    return i === -1 ? undefined : process.argv[i + 1]
  }
  const iterations = Number(arg("iterations") ?? 5000)
  const abort = process.argv.includes("--abort")
  const database = await Effect.runPromise(createScratchSchema("loop"))
  const dataDir = mkdtempSync(Path.join(tmpdir(), "pg-download-loop-"))
  try {
    const server = await startServer({ DATABASE_URL: database.url, FILE_STORAGE: "sql", DATA_DIR: dataDir })
    try {
      const result = await downloadLoop(server.url, {
        iterations,
        abort,
        onProgress: (done, failed) => console.log(`${done}/${iterations} iterations, ${failed} non-2xx`)
      })
      console.log(
        `${result.iterations} iterations (${abort ? "large downloads aborted" : "whole downloads"}), ` +
          `${result.requests} requests, ${result.failed} non-2xx answers, ${result.seconds.toFixed(1)} s`
      )
      for (const [key, n] of result.failures) console.log(`  ${n} × ${key}`)
      const cancelled = server.output().split("\n").filter((l) => l.includes("canceling statement")).length
      if (cancelled > 0) console.log(`  the server logged "canceling statement" ${cancelled} times`)
      process.exitCode = result.failed > 0 ? 1 : 0
    } finally {
      await server.stop()
    }
  } finally {
    await Effect.runPromise(dropScratchSchema(database.schema))
    rmSync(dataDir, { recursive: true, force: true })
  }
}

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/^.*\/scripts\//, "scripts/"))
if (isMain) {
  main().catch((error) => {
    console.error(error)
    process.exit(2)
  })
}
