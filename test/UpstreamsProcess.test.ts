/**
 * The server process with an `UPSTREAMS_FILE`, as an operator runs it: the start-up probe logs each upstream's
 * state and models, a base URL without its `/v1` is reported, an `https` upstream is reached through
 * `HTTPS_PROXY` (the proxy sees the tunnel), each model's batch goes to its upstream, and an upstream open to a
 * project no request can come from is reported.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import { type Simulator, startSimulator } from "../scripts/simulator.js"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { startProxy, type TestProxy } from "./support/Proxy.js"
import { type ServerProcess, startServer } from "./support/ServerProcess.js"
import { eventually } from "./support/TestApp.js"

const certPath = new URL("./fixtures/tls/localhost.crt", import.meta.url).pathname
const tls = { cert: readFileSync(certPath, "utf8"), key: readFileSync(new URL("./fixtures/tls/localhost.key", import.meta.url), "utf8") }

describe("the server with an upstreams file", () => {
  let plain: Simulator
  let secure: Simulator
  let proxy: TestProxy
  let server: ServerProcess
  let dir: string

  beforeAll(async () => {
    plain = await startSimulator({ models: ["model-a"] })
    secure = await startSimulator({ models: ["model-b"], tls })
    proxy = await startProxy()
    dir = mkdtempSync(Path.join(tmpdir(), "upstreams-process-"))
    const file = Path.join(dir, "upstreams.yaml")
    writeFileSync(file, [
      "upstreams:",
      "  - name: plain",
      `    base_url: ${plain.url}`,
      "    models: [model-a]",
      "  - name: secure",
      `    base_url: ${secure.url.replace("127.0.0.1", "localhost")}`,
      "    api_key_env: SECURE_KEY",
      "    models: ['*']",
      "    max_concurrency: 4",
      "  - name: misrouted",
      `    base_url: ${plain.url.replace(/\/v1$/, "")}`,
      "    models: [model-c]",
      "  - name: typo",
      `    base_url: ${plain.url}`,
      "    models: [model-aa]",
      "  - name: wrongpath",
      `    base_url: ${plain.url}/x`,
      "    models: [model-w]",
      "  - name: closed",
      `    base_url: ${plain.url}`,
      "    models: [model-z]",
      "    projects: [research]",
      ""
    ].join("\n"))
    server = await startServer({
      DATA_DIR: dir,
      UPSTREAMS_FILE: file,
      SECURE_KEY: "sk-upstream-secret",
      HTTPS_PROXY: proxy.url,
      NO_PROXY: "127.0.0.1", // the plain upstream is reached directly
      NODE_EXTRA_CA_CERTS: certPath
    })
  }, 60_000)

  afterAll(async () => {
    await server?.stop()
    await Promise.all([plain?.close(), secure?.close(), proxy?.close()])
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it("logs each upstream's state and models at start, and a base URL without /v1", async () => {
    await Effect.runPromise(eventually(() => {
      expect(server.output()).toMatch(/Upstream plain at http:\/\/127\.0\.0\.1:\d+\/v1 is up; lists 1 model\(s\): model-a; serves model-a/)
      expect(server.output()).toMatch(/Upstream secure at https:\/\/localhost:\d+\/v1 is up; lists 1 model\(s\): model-b/)
      expect(server.output()).toMatch(/Upstream misrouted answered 404 to GET http:\/\/127\.0\.0\.1:\d+\/models: check its base URL/)
      expect(server.output()).toMatch(/Upstream typo does not list 'model-aa', which its entry names/)
      // Without keys every request is the project 'default': no batch of 'research' can come.
      expect(server.output()).toContain(
        "Upstream closed is open to 'research', which no request comes from without API keys (all are the project " +
          "'default'): no batch goes to it for them (a misspelt project?)"
      )
    }, 10_000))
    expect(server.output()).not.toMatch(/Upstream (plain|secure) does not list/)
    expect(server.output()).not.toContain("sk-upstream-secret")
  })

  it("routes each model to its upstream; the https one through the proxy", async () => {
    const openai = sdk(server.url)
    const listed = await openai.models.list()
    expect(listed.data.map((m) => `${m.id}@${m.owned_by}`)).toEqual(["model-a@plain", "model-b@secure", "model-c@misrouted", "model-aa@typo", "model-w@wrongpath"])
    const run = (model: string, n: number) =>
      Effect.runPromise(Effect.gen(function*() {
        const file = yield* upload(openai, Array.from({ length: n }, (_, i) => chatLine(`${model}-${i}`, `hello ${i}`, model)))
        const batch = yield* createBatch(openai, file.id)
        return yield* waitFor(openai, batch.id, terminal, 30_000)
      }))
    const [a, b] = await Promise.all([run("model-a", 20), run("model-b", 30)])
    expect([a.status, a.request_counts?.completed, b.status, b.request_counts?.completed]).toEqual(["completed", 20, "completed", 30])
    expect(Object.fromEntries(plain.stats.byModel)).toEqual({ "model-a": 20 })
    expect(Object.fromEntries(secure.stats.byModel)).toEqual({ "model-b": 30 })
    expect(proxy.connects.length).toBeGreaterThan(0)
    expect(new Set(proxy.connects)).toEqual(new Set([new URL(secure.url).host.replace("127.0.0.1", "localhost")]))
    expect(secure.stats.maxInFlight).toBeLessThanOrEqual(4)

    // The upstream without its /v1 (GET /models answers 404, GET /v1/models a list): down, as in an outage, and the
    // log says why. Its batch waits, no line failed, for a restart with the right base URL; every line was a 404.
    const c = await Effect.runPromise(Effect.gen(function*() {
      const file = yield* upload(openai, [0, 1, 2].map((i) => chatLine(`model-c-${i}`, `hello ${i}`, "model-c")))
      return yield* createBatch(openai, file.id)
    }))
    await Effect.runPromise(eventually(() => {
      expect(server.output()).toMatch(new RegExp(
        "Upstream misrouted is down \\(its base URL lacks the API's version path: POST http://127\\.0\\.0\\.1:\\d+/chat/completions " +
          "and GET /models answer 404, GET http://127\\.0\\.0\\.1:\\d+/v1/models answers; set it to http://127\\.0\\.0\\.1:\\d+/v1 and restart\\)"
      ))
    }, 10_000))
    const waiting = await openai.batches.retrieve(c.id)
    expect([waiting.status, waiting.request_counts]).toEqual(["in_progress", { total: 3, completed: 0, failed: 0 }])
    await openai.batches.cancel(c.id)
    expect((await Effect.runPromise(waitFor(openai, c.id, terminal, 30_000))).status).toBe("cancelled")
    // A wrong path with no sign of a missing /v1 (as a gateway without GET /models, whose 404s may be the requests'):
    // its lines fail, each with its 404, the log says what to check, and the upstream is not taken down.
    const w = await run("model-w", 3)
    expect(w.request_counts).toEqual({ total: 3, completed: 0, failed: 3 })
    expect(server.output()).toMatch(/Upstream wrongpath answered 404 to POST http:\/\/127\.0\.0\.1:\d+\/v1\/x\/chat\/completions: it does not serve that path/)
    expect(server.output()).not.toMatch(/Upstream wrongpath is down/)

    // A refused key and a redirect, though the upstream answered well before: each said once (a minute apart at most).
    const refused = await Effect.runPromise(Effect.gen(function*() {
      const file = yield* upload(openai, ["[fail:401] a", "[fail:401] b", "[fail:307] c", "[fail:307] d"].map((p, i) => chatLine(`r${i}`, p, "model-a")))
      return yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 30_000)
    }))
    expect(refused.request_counts).toEqual({ total: 4, completed: 0, failed: 4 })
    expect(server.output().match(/Upstream plain answered 401 to POST http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions: it refuses the call's credentials/g)).toHaveLength(1)
    expect(server.output().match(/Upstream plain answered 307 to POST http:\/\/127\.0\.0\.1:\d+\/v1\/chat\/completions: redirects are not followed/g)).toHaveLength(1)
  }, 60_000)
})
