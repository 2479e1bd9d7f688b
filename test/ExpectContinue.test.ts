/**
 * A client that sends `Expect: 100-continue` (curl's uploads over 1 MB) sends its body only once the server reads
 * it: an upload refused before that (no key: 401; a Content-Length over MAX_UPLOAD_BYTES: 413) is answered without a
 * `100 Continue`, so its body is never sent; one accepted is told to go on and stored; one without a body keeps its
 * connection (Node closes one whose 100 was never sent). Before, Node answered 100 to every such request as it
 * arrived, and a refused upload was sent whole first.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { mkdtempSync, rmSync } from "node:fs"
import { Agent, createServer, request } from "node:http"
import { type AddressInfo, connect } from "node:net"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { continueWhenRead } from "../src/http/continueWhenRead.js"
import { type ServerProcess, startServer } from "./support/ServerProcess.js"

const KEY = "sk-continue"
const BOUNDARY = "continue-boundary"

/** A multipart upload of `bytes` bytes of JSONL. */
const uploadBody = (bytes: number) => {
  const line = JSON.stringify({ custom_id: "x", method: "POST", url: "/v1/chat/completions", body: { model: "m", messages: [] } }) + "\n"
  const content = line.repeat(Math.ceil(bytes / line.length))
  return Buffer.from(
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n` +
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n` +
      `${content}\r\n--${BOUNDARY}--\r\n`
  )
}

/**
 * `POST /v1/files` with `Expect: 100-continue` and `headers`, its body sent only when the server says to go on:
 * whether it did, and the answer.
 */
const expectingContinue = (url: string, body: Buffer, headers: Record<string, string>) =>
  new Promise<{ continued: boolean; status: number; json: any }>((resolve, reject) => {
    let continued = false
    const req = request(`${url}/v1/files`, {
      method: "POST",
      headers: {
        expect: "100-continue",
        "content-type": `multipart/form-data; boundary=${BOUNDARY}`,
        "content-length": String(body.length),
        ...headers
      }
    })
    req.on("continue", () => {
      continued = true
      req.end(body)
    })
    req.on("response", (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("end", () => {
        resolve({ continued, status: res.statusCode!, json: JSON.parse(Buffer.concat(chunks).toString()) })
        req.destroy() // a body never sent: nothing more to say on this connection
      })
    })
    req.on("error", reject)
    req.flushHeaders()
  })

describe("an upload sent with Expect: 100-continue", () => {
  let server: ServerProcess
  let dir: string
  beforeAll(async () => {
    dir = mkdtempSync(Path.join(tmpdir(), "batch-continue-"))
    server = await startServer({ DATA_DIR: dir, API_KEYS: `${KEY}:projA`, MAX_UPLOAD_BYTES: String(2 * 1024 * 1024) })
  })
  afterAll(async () => {
    await server?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  it("without a key is refused 401 before its body is sent", async () => {
    const answer = await expectingContinue(server.url, uploadBody(1024 * 1024), {})
    expect(answer).toMatchObject({ continued: false, status: 401 })
    expect(answer.json.error.code).toBe("invalid_api_key")
  })

  it("over MAX_UPLOAD_BYTES by its Content-Length is refused 413 before its body is sent", async () => {
    const answer = await expectingContinue(server.url, uploadBody(3 * 1024 * 1024), { authorization: `Bearer ${KEY}` })
    expect(answer).toMatchObject({ continued: false, status: 413 })
  })

  it("without a body (a GET, a cancel) keeps its connection open: a second request goes on the same one", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    try {
      const ask = (method: string, path: string) =>
        new Promise<{ status: number; connection: string | undefined; reused: boolean }>((resolve, reject) => {
          const req = request(`${server.url}${path}`, { method, agent, headers: { expect: "100-continue", authorization: `Bearer ${KEY}`, "content-length": "0" } })
          req.on("response", (res) => {
            res.resume()
            res.on("end", () => resolve({ status: res.statusCode!, connection: res.headers.connection, reused: req.reusedSocket }))
          })
          req.on("error", reject)
          req.end()
        })
      expect(await ask("GET", "/v1/health")).toEqual({ status: 200, connection: "keep-alive", reused: false })
      expect(await ask("POST", "/v1/batches/batch_missing/cancel")).toEqual({ status: 404, connection: "keep-alive", reused: true })
      expect(await ask("GET", "/v1/files")).toEqual({ status: 200, connection: "keep-alive", reused: true })
    } finally {
      agent.destroy()
    }
  })

  it("with a key and within the bound is told to go on, and stored", async () => {
    const body = uploadBody(1024 * 1024)
    const answer = await expectingContinue(server.url, body, { authorization: `Bearer ${KEY}` })
    expect(answer).toMatchObject({ continued: true, status: 200 })
    expect(answer.json).toMatchObject({ object: "file", purpose: "batch", filename: "in.jsonl" })
    expect(answer.json.bytes).toBeGreaterThan(1024 * 1024 - 1)
  })
})

describe("continueWhenRead", () => {
  it("writes no 100 Continue once the answer has begun, when the body is read only after that", async () => {
    // A 100 written after the final answer's head is garbage inside that answer (the client reads it as body bytes).
    // Through the real server the late reader is `lingerAfterEarlyAnswers`, which starts once Node has let go of the
    // socket; a handler that answers first and reads after is the case the guard is for.
    const server = createServer()
    continueWhenRead(server)
    server.on("request", (req, res) => {
      res.writeHead(200, { "content-type": "text/plain" })
      res.flushHeaders()
      const chunks: Array<Buffer> = []
      req.on("data", (c: Buffer) => chunks.push(c))
      req.on("end", () => res.end(`got ${Buffer.concat(chunks).toString()}`))
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    try {
      const wire = await new Promise<string>((resolve, reject) => {
        const socket = connect((server.address() as AddressInfo).port, "127.0.0.1")
        let got = ""
        socket.on("data", (c: Buffer) => {
          if (got === "") socket.write("hello") // the body, once the answer has begun
          got += c.toString("latin1")
          if (got.includes("got hello")) socket.end()
        })
        socket.on("close", () => resolve(got))
        socket.on("error", reject)
        socket.write("POST /x HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
      })
      expect(wire.match(/HTTP\/1\.1 \d{3}/g)).toEqual(["HTTP/1.1 200"])
      expect(wire).toContain("got hello")
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })
})
