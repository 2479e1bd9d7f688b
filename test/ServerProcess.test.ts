/** The real server process: restarts, crashes mid-upload, graceful shutdown, and bad configuration. */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI, { toFile } from "openai"
import { runServerToExit, STALLED_UPLOAD_END, stalledUpload, startServer } from "./support/ServerProcess.js"
import { filesUnder } from "./support/TestApp.js"

const scratch = () => mkdtempSync(Path.join(tmpdir(), "batch-proc-"))
const stagingFiles = (dataDir: string) => filesUnder(Path.join(dataDir, "files", "staging"))
const blobFiles = (dataDir: string) => readdirSync(Path.join(dataDir, "files", "blobs"))
const sdk = (url: string) => new OpenAI({ baseURL: `${url}/v1`, apiKey: "sk-test", maxRetries: 0 })

/** Starts a chunked upload, sends `bytes`, and keeps the request open (the client "hangs" mid-upload). */
const waitFor = async (check: () => boolean, what: string, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

// Concurrent: each test has its own data directory and port, and most of its time is a child process starting or
// shutting down.
describe.concurrent("server process", () => {
  it.live("a restart (graceful or SIGKILL) keeps every uploaded file, byte for byte", () =>
    Effect.promise(async () => {
      const dataDir = scratch()
      try {
        let server = await startServer({ DATA_DIR: dataDir })
        const binary = randomBytes(3 * 1024 * 1024)
        const a = await sdk(server.url).files.create({ file: await toFile(binary, "a.bin"), purpose: "user_data" })
        const b = await sdk(server.url).files.create({ file: await toFile(Buffer.from("{}\n"), "b.jsonl"), purpose: "batch" })
        expect(await server.stop("SIGTERM")).toBe(0)

        server = await startServer({ DATA_DIR: dataDir })
        const c = await sdk(server.url).files.create({ file: await toFile(Buffer.from("c"), "c.txt"), purpose: "user_data" })
        expect(await server.stop("SIGKILL")).toBe("SIGKILL")

        server = await startServer({ DATA_DIR: dataDir })
        const listed = await sdk(server.url).files.list()
        expect(listed.data.map((f) => f.id)).toEqual([c.id, b.id, a.id])
        const content = Buffer.from(await (await sdk(server.url).files.content(a.id)).arrayBuffer())
        expect(content.equals(binary)).toBe(true)
        await server.stop()
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }))

  it.live("an upload killed by SIGKILL leaves no listed file and no bytes after the restart", () =>
    Effect.promise(async () => {
      const dataDir = scratch()
      try {
        // The same node (NODE_ID) restarted: it removes what it left in its staging directory.
        const node = { DATA_DIR: dataDir, NODE_ID: "node-a" }
        let server = await startServer(node)
        const { req } = stalledUpload(server.url, randomBytes(2 * 1024 * 1024))
        await waitFor(() => stagingFiles(dataDir).some((f) => statSync(Path.join(dataDir, "files", "staging", f)).size > 0), "bytes to reach the staging area")
        await server.stop("SIGKILL")
        req.destroy()
        expect(stagingFiles(dataDir).length).toBe(1) // what the crash left behind...

        server = await startServer(node)
        expect((await sdk(server.url).files.list()).data).toEqual([])
        expect(stagingFiles(dataDir)).toEqual([]) // ...is gone after the restart
        expect(blobFiles(dataDir)).toEqual([])
        await server.stop()
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }))

  it.live("SIGTERM lets an upload that finishes in time complete, and cuts a stalled one after SHUTDOWN_TIMEOUT", () =>
    Effect.promise(async () => {
      const dataDir = scratch()
      try {
        let server = await startServer({ DATA_DIR: dataDir, SHUTDOWN_TIMEOUT: "2 seconds" })
        const finishing = stalledUpload(server.url, randomBytes(512 * 1024))
        const stalled = stalledUpload(server.url, randomBytes(1024 * 1024))
        await waitFor(() => stagingFiles(dataDir).length === 2, "both uploads to start")
        const started = Date.now()
        const exit = server.stop("SIGTERM")
        // The upload ends once the shutdown has started, not before (a fixed sleep could be either on a busy machine).
        await waitFor(() => server.stdout().includes('"event":"server.shutdown_started"'), "the shutdown to start")
        finishing.req.end(STALLED_UPLOAD_END)
        expect(await finishing.response).toBe(200)
        expect(await exit).toBe(0)
        expect(Date.now() - started).toBeLessThan(6_000)
        expect(await stalled.response).toBe("aborted")

        server = await startServer({ DATA_DIR: dataDir })
        const listed = (await sdk(server.url).files.list()).data
        expect(listed.map((f) => f.bytes)).toEqual([512 * 1024])
        expect(stagingFiles(dataDir)).toEqual([])
        expect(blobFiles(dataDir)).toEqual([listed[0]!.id])
        await server.stop()
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }))

  it.live("invalid configuration fails at start with a message naming the variable", () =>
    Effect.promise(async () => {
      const dataDir = scratch()
      try {
        const invalid = [["PORT", "not-a-port"], ["MAX_UPLOAD_BYTES", "-5"], ["FILE_SWEEP_INTERVAL", "often"], ["DATABASE_URL", "mysql://db/x"]]
        // Started together: the four starts are independent of each other.
        const runs = await Promise.all(invalid.map(([name, value]) => runServerToExit({ DATA_DIR: dataDir, [name!]: value! })))
        runs.forEach(({ code, output }, i) => {
          expect(code).toBe(1)
          expect(output).toContain("Invalid configuration")
          expect(output).toContain(invalid[i]![0])
        })
        expect(existsSync(Path.join(dataDir, "batches.sqlite"))).toBe(false)
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }))
})
