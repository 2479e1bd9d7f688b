/**
 * Webhooks (issue 18), as OpenAI sends them: each final status (completed, failed, cancelled, expired) sends one
 * event, signed so that the official client's `webhooks.unwrap` accepts it; a receiver that fails gets the same
 * event again (same `webhook-id`) with backoff, until `WEBHOOK_RETRY_FOR` runs out; a project's own webhook (keys
 * file) replaces the global one; `GET /v1/webhook_deliveries` shows each project its own deliveries. The event row
 * is written in the transaction of the final move; it survives a SIGKILL; of two nodes, one delivers each event.
 * On SQLite and PostgreSQL.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Context, Duration, Effect, Either, Exit, Layer, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { writeFileSync } from "node:fs"
import * as Path from "node:path"
import OpenAI from "openai"
import { startSimulator } from "../scripts/simulator.js"
import { parseKeysFile } from "../src/auth/Auth.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { defaults, validateConfig } from "../src/Config.js"
import { SqlLive } from "../src/storage/Sql.js"
import { DeliveryPolicy, type DeliveryPolicyShape } from "../src/webhooks/Webhooks.js"
import { WebhookTargetsTest } from "../src/webhooks/WebhookTargets.js"
import { chatLine, createBatch, sdk, terminal, upload, validatingBatch, waitFor } from "./support/Batches.js"
import { freePort, runServerToExit, type ServerProcess, startServer } from "./support/ServerProcess.js"
import {
  backends,
  baseUrl,
  configFor,
  eventually,
  scratchDir,
  TestDatabase,
  TestDataDir,
  testAppWithUpstream
} from "./support/TestApp.js"
import { type Receiver, webhookReceiver } from "./support/WebhookReceiver.js"

const SECRET = `whsec_${randomBytes(32).toString("base64")}`
const OWN_SECRET = `whsec_${randomBytes(24).toString("base64")}`
const KEYS = { a: "sk-webhooks-a-1f2e3d", b: "sk-webhooks-b-9c8d7e", admin: "sk-webhooks-admin-77aa" }
/** Verifies signatures only: never sends a request. */
const verifier = new OpenAI({ apiKey: "unused", baseURL: "http://127.0.0.1:9/v1" })

/** The official client's batch events: `data` holds the batch's id. */
type BatchEvent = Extract<OpenAI.Webhooks.UnwrapWebhookEvent, { readonly type: `batch.${string}` }>
/** The event, as the official client verifies and parses it. */
const unwrap = (received: { readonly body: string; readonly headers: Record<string, string> }, secret = SECRET) =>
  Effect.promise(() => verifier.webhooks.unwrap(received.body, received.headers, secret) as Promise<BatchEvent>)
const rejects = (received: { readonly body: string; readonly headers: Record<string, string> }, secret: string) =>
  Effect.promise(() => verifier.webhooks.unwrap(received.body, received.headers, secret).then(() => false, () => true))

/** The batch id a received event is about. */
const batchOf = (body: string): string => JSON.parse(body).data.id
const sleep = (ms: number) => Effect.promise(() => new Promise((resolve) => setTimeout(resolve, ms)))

interface DeliveryJson {
  readonly id: string
  readonly object: string
  readonly type: string
  readonly batch_id: string
  readonly url: string
  readonly status: "pending" | "delivered" | "failed"
  readonly attempts: number
  readonly last_status_code: number | null
  readonly last_error: string | null
  readonly created_at: number
  readonly next_attempt_at: number | null
  readonly delivered_at: number | null
}
interface DeliveryPage {
  readonly object: "list"
  readonly data: ReadonlyArray<DeliveryJson>
  readonly first_id: string | null
  readonly last_id: string | null
  readonly has_more: boolean
}

/** `GET /v1/webhook_deliveries` through the official client's generic `get`. */
const deliveries = (openai: OpenAI, query: { readonly limit?: number; readonly after?: string } = {}) =>
  Effect.promise(() => openai.get<DeliveryPage>("/webhook_deliveries", { query }))
/** The delivery of `batchId`'s event once `done` holds of it (polled in real time). */
const deliveryWhen = (openai: OpenAI, batchId: string, done: (d: DeliveryJson) => boolean, timeoutMs = 15_000) =>
  Effect.promise(async () => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const page = await openai.get<DeliveryPage>("/webhook_deliveries", { query: { limit: 100 } })
      const found = page.data.find((d) => d.batch_id === batchId)
      if (found !== undefined && done(found)) return found
      if (Date.now() > deadline) throw new Error(`delivery of ${batchId} stuck: ${JSON.stringify(found)}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  })

class Receivers extends Context.Tag("test/Receivers")<Receivers, { readonly global: Receiver; readonly own: Receiver }>() {}

/**
 * The app with keys over two projects and an operator key (a keys file), `projA` with a webhook of its own, every
 * other project on the global one (its URL with a token in the query); retries fast, batches expire after 3 s.
 */
const app = (backend: "sqlite" | "postgres", policy: Partial<DeliveryPolicyShape> = {}) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const global = yield* webhookReceiver()
    const own = yield* webhookReceiver()
    const keysFile = Path.join(yield* scratchDir, "keys.txt")
    writeFileSync(keysFile, [
      `${KEYS.a}:projA`,
      `${KEYS.b}:projB`,
      `admin:${KEYS.admin}`,
      `webhook:projA ${own.url} ${OWN_SECRET}`
    ].join("\n"))
    return testAppWithUpstream({
      apiKeysFile: Option.some(keysFile),
      webhookUrl: Option.some(`${global.url}?token=hunter2`),
      webhookSecret: Option.some(Redacted.make(SECRET)),
      webhookRetryBaseDelay: Duration.millis(50),
      webhookRetryFor: Duration.seconds(4),
      heartbeatInterval: Duration.millis(100),
      completionWindow: Duration.seconds(3),
      maxConcurrentBatches: 4 // a batch that sleeps until it expires holds no other one back
    }, {}, backend).pipe(
      Layer.provide(Layer.succeed(DeliveryPolicy, { ...DeliveryPolicy.defaultValue(), ...policy })),
      Layer.merge(Layer.succeed(Receivers, { global, own }))
    )
  }))

const clients = Effect.map(baseUrl, (base) => {
  const client = (apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
  return { a: client(KEYS.a), b: client(KEYS.b), admin: client(KEYS.admin) }
})

/** A finished batch of `prompts` (simulator directives in them) or of one `raw` line, by `openai`; cancelled at once when asked. */
const finishedBatch = (
  openai: OpenAI,
  prompts: ReadonlyArray<string>,
  options: { readonly cancel?: boolean; readonly raw?: string; readonly timeoutMs?: number } = {}
) =>
  Effect.gen(function*() {
    const lines = options.raw !== undefined ? [options.raw] : prompts.map((p, i) => chatLine(`c${i}`, p))
    const batch = yield* createBatch(openai, (yield* upload(openai, lines)).id)
    if (options.cancel === true) yield* Effect.promise(() => openai.batches.cancel(batch.id))
    return yield* waitFor(openai, batch.id, terminal, options.timeoutMs ?? 15_000)
  })

/** What `receiver` got about `batchId`. */
const receivedFor = (receiver: Receiver, batchId: string) => receiver.received.filter((r) => batchOf(r.body) === batchId)

for (const backend of backends) {
  layer(app(backend), { excludeTestServices: true, timeout: 60_000 })(`${backend}: webhooks`, (it) => {
    it.effect("each final status sends one event, which the official client's webhooks.unwrap verifies", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        const batches = yield* Effect.all([
          finishedBatch(b, ["hello"]),
          finishedBatch(b, [], { raw: "this line is not JSON" }),
          finishedBatch(b, ["slow [sleep:5000]"], { cancel: true }),
          finishedBatch(b, ["too slow [sleep:10000]"])
        ], { concurrency: "unbounded" })
        expect(batches.map((batch) => batch.status)).toEqual(["completed", "failed", "cancelled", "expired"])

        yield* eventually(() => expect(batches.map((batch) => receivedFor(global, batch.id).length)).toEqual([1, 1, 1, 1]), 10_000)
        for (const batch of batches) {
          const [received] = receivedFor(global, batch.id)
          const event = yield* unwrap(received!)
          const stamp = batch.completed_at ?? batch.failed_at ?? batch.cancelled_at ?? batch.expired_at
          expect(event).toEqual({ id: received!.headers["webhook-id"], object: "event", type: `batch.${batch.status}`, created_at: stamp, data: { id: batch.id } })
          expect(event.id).toMatch(/^evt_[0-9a-f]{32}$/)
          expect(received!.headers["content-type"]).toBe("application/json")
          // What unwrap refuses: another secret, a changed body.
          expect(yield* rejects(received!, OWN_SECRET)).toBe(true)
          expect(yield* rejects({ ...received!, body: received!.body.replace(batch.id, "batch_other") }, SECRET)).toBe(true)
        }
        yield* sleep(300)
        expect(batches.map((batch) => receivedFor(global, batch.id).length)).toEqual([1, 1, 1, 1])
      }))

    it.effect("a receiver failing 3 times gets the 4th attempt, same webhook-id, each signed anew; the list and metrics show it", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        const attemptsOf = new Map<string, number>()
        global.answer = (_, request) => {
          const id = request.headers["webhook-id"]!
          attemptsOf.set(id, (attemptsOf.get(id) ?? 0) + 1)
          return attemptsOf.get(id)! <= 3 ? { status: 500, body: "receiver busy" } : { status: 200 }
        }
        const batch = yield* finishedBatch(b, ["retry me"])
        yield* eventually(() => expect(receivedFor(global, batch.id)).toHaveLength(4), 10_000)
        const attempts = receivedFor(global, batch.id)
        expect(new Set(attempts.map((r) => r.headers["webhook-id"])).size).toBe(1)
        expect(new Set(attempts.map((r) => r.body)).size).toBe(1)
        for (const attempt of attempts) expect((yield* unwrap(attempt)).data.id).toBe(batch.id)
        // The waits between attempts double: 50 ms, 100 ms, 200 ms (±20 %), then whole heartbeats at most.
        const delivery = yield* deliveryWhen(b, batch.id, (d) => d.status === "delivered")
        expect(delivery).toMatchObject({
          id: attempts[0]!.headers["webhook-id"],
          object: "webhook_delivery",
          type: "batch.completed",
          batch_id: batch.id,
          url: `${global.url}?…`,
          status: "delivered",
          attempts: 4,
          last_status_code: 200,
          last_error: null,
          created_at: batch.completed_at,
          next_attempt_at: null
        })
        expect(delivery!.delivered_at).toBeGreaterThanOrEqual(batch.completed_at!)
        yield* sleep(300)
        expect(receivedFor(global, batch.id)).toHaveLength(4)

        const base = yield* baseUrl
        const metrics = yield* Effect.promise(() =>
          fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${KEYS.admin}` } }).then((r) => r.text()))
        const count = (outcome: string) => Number(new RegExp(`^batch_webhook_deliveries_total\\{outcome="${outcome}"\\} (\\d+)`, "m").exec(metrics)?.[1])
        expect(count("retry")).toBeGreaterThanOrEqual(3)
        expect(count("delivered")).toBeGreaterThanOrEqual(1)
      }))

    it.effect("a receiver that keeps failing: retried until WEBHOOK_RETRY_FOR, then the delivery is failed", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        global.answer = () => ({ status: 503, body: "down for\nmaintenance" })
        const batch = yield* finishedBatch(b, ["never delivered"])
        const given = yield* deliveryWhen(b, batch.id, (d) => d.status === "failed")
        expect(given).toMatchObject({ status: "failed", last_status_code: 503, last_error: "HTTP 503: down for\\u000amaintenance", next_attempt_at: null, delivered_at: null })
        expect(given!.attempts).toBeGreaterThanOrEqual(4)
        expect(receivedFor(global, batch.id)).toHaveLength(given!.attempts)
        yield* sleep(500)
        expect(receivedFor(global, batch.id)).toHaveLength(given!.attempts)
        global.answer = () => ({ status: 200 })
      }))

    it.effect("a project's own webhook replaces the global one; each project lists only its deliveries; never a secret", () =>
      Effect.gen(function*() {
        const { global, own } = yield* Receivers
        const { a, admin, b } = yield* clients
        const [ofA, ofB] = yield* Effect.all([finishedBatch(a, ["project a"]), finishedBatch(b, ["project b"])], { concurrency: 2 })
        yield* eventually(() => {
          expect(receivedFor(own, ofA.id)).toHaveLength(1)
          expect(receivedFor(global, ofB.id)).toHaveLength(1)
        }, 10_000)
        expect(receivedFor(global, ofA.id)).toHaveLength(0)
        expect(receivedFor(own, ofB.id)).toHaveLength(0)
        expect((yield* unwrap(receivedFor(own, ofA.id)[0]!, OWN_SECRET)).data.id).toBe(ofA.id)
        expect(yield* rejects(receivedFor(own, ofA.id)[0]!, SECRET)).toBe(true)

        const listA = yield* deliveries(a, { limit: 100 })
        const listB = yield* deliveries(b, { limit: 100 })
        const listAll = yield* deliveries(admin, { limit: 100 })
        expect(listA.data.map((d) => d.batch_id)).toEqual([ofA.id])
        expect(listA.data[0]).toMatchObject({ url: own.url, status: "delivered", attempts: 1 })
        expect(listB.data.map((d) => d.batch_id)).toContain(ofB.id)
        expect(listB.data.map((d) => d.batch_id)).not.toContain(ofA.id)
        expect(listAll.data.map((d) => d.batch_id)).toEqual(expect.arrayContaining([ofA.id, ofB.id]))
        expect(listAll.data.length).toBe(listA.data.length + listB.data.length)
        const text = JSON.stringify([listA, listB, listAll])
        for (const secret of [SECRET, OWN_SECRET, SECRET.slice(6), OWN_SECRET.slice(6), "hunter2"]) expect(text).not.toContain(secret)

        // Pages of one, newest first, as the other lists; a cursor another project's (or nobody's) is unknown.
        const first = yield* deliveries(b, { limit: 1 })
        expect(first).toMatchObject({ object: "list", has_more: true, first_id: listB.data[0]!.id, last_id: listB.data[0]!.id })
        const second = yield* deliveries(b, { limit: 1, after: first.last_id! })
        expect(second.data[0]!.id).toBe(listB.data[1]!.id)
        for (const after of [listA.data[0]!.id, "evt_unknown"]) {
          const error = yield* Effect.promise(() => b.get("/webhook_deliveries", { query: { after } }).then(() => undefined, (e) => e))
          expect(error).toMatchObject({ status: 400, error: { type: "invalid_request_error", param: "after", code: "invalid_value" } })
        }
        const unauthorized = yield* Effect.promise(() =>
          new OpenAI({ baseURL: a.baseURL, apiKey: "sk-nobody", maxRetries: 0 }).get("/webhook_deliveries").then(() => undefined, (e) => e))
        expect(unauthorized).toMatchObject({ status: 401 })
      }))
  })
}

layer(app("sqlite", { timeout: Duration.millis(300) }), { excludeTestServices: true, timeout: 60_000 })("a receiver that hangs", (it) => {
  it.effect("an attempt without an answer within the time limit is retried", () =>
    Effect.gen(function*() {
      const { global } = yield* Receivers
      const { b } = yield* clients
      global.answer = (n) => ({ status: 200, delayMs: n === 1 ? 2000 : 0 })
      const batch = yield* finishedBatch(b, ["slow receiver"])
      yield* eventually(() => expect(receivedFor(global, batch.id)).toHaveLength(1), 10_000)
      const first = yield* deliveryWhen(b, batch.id, (d) => d.attempts === 1)
      expect(first).toMatchObject({ status: "pending", last_status_code: null, last_error: "no answer within 300ms" })
      const delivered = yield* deliveryWhen(b, batch.id, (d) => d.status === "delivered")
      expect(delivered.attempts).toBe(2)
      expect(new Set(receivedFor(global, batch.id).map((r) => r.headers["webhook-id"])).size).toBe(1)
    }))
})

describe("the event row is part of the final move's transaction", () => {
  const storeWith = (backend: "sqlite" | "postgres", targets: Parameters<typeof WebhookTargetsTest>[0]) =>
    BatchStoreLive.pipe(
      Layer.provide(WebhookTargetsTest(targets)),
      Layer.provideMerge(SqlLive),
      Layer.provide(configFor()),
      Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend)))
    )
  const target = { url: "http://127.0.0.1:9/hook", secret: SECRET }

  for (const backend of backends) {
    it.scoped(`${backend}: written with the final status, not without; a failed write leaves the status unchanged`, () =>
      Effect.gen(function*() {
        const store = yield* BatchStore
        const sql = yield* SqlClient.SqlClient
        const rows = () => sql<{ type: string; batch_id: string; body: string }>`SELECT type, batch_id, body FROM webhook_deliveries`
        const id = yield* validatingBatch(1)
        const failed = Option.getOrThrow(yield* store.transition(id, "validationFailed", { errors: [] }))
        const [row, ...others] = yield* rows()
        expect(others).toHaveLength(0)
        expect(row!.type).toBe("batch.failed")
        expect(JSON.parse(row!.body)).toMatchObject({ object: "event", type: "batch.failed", created_at: failed.failed_at, data: { id } })

        // A move that is not final writes nothing; a project without a webhook gets none.
        const cancelling = yield* validatingBatch(1)
        yield* store.transition(cancelling, "cancel")
        expect(yield* rows()).toHaveLength(1)

        // The event cannot be written: the final move is not made either.
        const other = yield* validatingBatch(1)
        yield* sql`ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_away`
        const exit = yield* Effect.exit(store.transition(other, "validationFailed", { errors: [] }))
        yield* sql`ALTER TABLE webhook_deliveries_away RENAME TO webhook_deliveries`
        expect(Exit.isFailure(exit)).toBe(true)
        expect((yield* store.get(other, "all")).batch.status).toBe("validating")
      }).pipe(Effect.provide(storeWith(backend, { global: target }))))

    it.scoped(`${backend}: no webhook for the batch's project, no event`, () =>
      Effect.gen(function*() {
        const store = yield* BatchStore
        const sql = yield* SqlClient.SqlClient
        const id = yield* validatingBatch(1)
        yield* store.transition(id, "validationFailed", { errors: [] })
        expect(yield* sql`SELECT id FROM webhook_deliveries`).toHaveLength(0)
      }).pipe(Effect.provide(storeWith(backend, { byProject: { someone_else: target } }))))
  }
})

describe("webhook settings", () => {
  const check = (overrides: Partial<typeof defaults>) =>
    Either.match(validateConfig({ ...defaults, ...overrides }), { onLeft: (e) => String(e), onRight: () => "ok" })
  const secret = Option.some(Redacted.make(SECRET))

  it("WEBHOOK_URL and WEBHOOK_SECRET: both or neither, an http(s) URL, whsec_ and base64; never echoed", () => {
    expect(check({ webhookUrl: Option.some("https://hooks.example.com/openai?token=x"), webhookSecret: secret })).toBe("ok")
    expect(check({ webhookUrl: Option.some("https://hooks.example.com/x") })).toContain("WEBHOOK_URL")
    expect(check({ webhookSecret: secret })).toContain("WEBHOOK_URL")
    for (const url of ["ftp://hooks.example.com/x", "https://user:pass@hooks.example.com/x", "https://h.example.com/x#f", "hooks.example.com"]) {
      const message = check({ webhookUrl: Option.some(url), webhookSecret: secret })
      expect(message).toContain("WEBHOOK_URL")
      expect(message).not.toContain(url)
    }
    for (const bad of ["sk-not-a-secret-1234", "whsec_not base64!", "whsec_====", "whsec_abc", "whsec_dGVzdB=="]) {
      const message = check({ webhookUrl: Option.some("https://hooks.example.com/x"), webhookSecret: Option.some(Redacted.make(bad)) })
      expect(message).toContain("WEBHOOK_SECRET")
      expect(message).not.toContain(bad)
    }
    expect(check({ webhookRetryBaseDelay: Duration.zero })).toContain("WEBHOOK_RETRY_BASE_DELAY")
    expect(check({ webhookRetryFor: Duration.zero })).toContain("WEBHOOK_RETRY_FOR")
  })

  it("a keys file's webhook lines: project, URL and secret checked, one per project, the problem by line number", () => {
    const ok = parseKeysFile(`sk-a:projA\nwebhook:projA  https://a.example.com/hook?t=1   ${SECRET}\n`)
    expect(ok).toMatchObject({ webhooks: [{ project: "projA", url: "https://a.example.com/hook?t=1", secret: SECRET }] })
    const problems = [
      [`webhook:projA https://a.example.com/hook`, "line 1"],
      [`webhook:not a project https://a.example.com/hook ${SECRET}`, "line 1"],
      [`# comment\nwebhook:projA https://a.example.com/hook whsec_bad!`, "line 2"],
      [`webhook:projA ftp://a.example.com/hook ${SECRET}`, "line 1"],
      [`webhook:projA https://a.example.com/1 ${SECRET}\nwebhook:projA https://a.example.com/2 ${SECRET}`, "line 2"]
    ] as const
    for (const [text, where] of problems) {
      const parsed = parseKeysFile(text)
      expect("problem" in parsed && parsed.problem).toContain(where)
      expect(JSON.stringify(parsed)).not.toContain(SECRET.slice(6))
    }
  })

  it.live("a bad WEBHOOK_SECRET stops the start with a message naming it", () =>
    Effect.gen(function*() {
      const { code, output } = yield* Effect.promise(() =>
        runServerToExit({ WEBHOOK_URL: "http://127.0.0.1:9/hook", WEBHOOK_SECRET: "whsec_oops not base64", DATA_DIR: "/nonexistent-unused" }, 30_000))
      expect(code).toBe(1)
      expect(output).toContain("WEBHOOK_SECRET")
      expect(output).not.toContain("oops not base64")
    }), 40_000)
})

/** A server process of the webhook tests: fast retries and heartbeats, events to `port`. */
const serverEnv = (port: number, extra: Record<string, string>) => ({
  WEBHOOK_URL: `http://127.0.0.1:${port}/hook`,
  WEBHOOK_SECRET: SECRET,
  WEBHOOK_RETRY_BASE_DELAY: "200 millis",
  HEARTBEAT_INTERVAL: "100 millis",
  LEASE_TTL: "3 seconds",
  MAX_CONCURRENT_BATCHES: "4",
  ...extra
})

const serverProcess = (env: Record<string, string>) =>
  Effect.acquireRelease(Effect.promise(() => startServer(env)), (s: ServerProcess) => Effect.promise(() => s.stop("SIGKILL")))

const databaseEnv = (backend: "sqlite" | "postgres") =>
  Effect.map(Effect.flatMap(Layer.build(TestDatabase.layer(backend)), (context) => Effect.succeed(Context.get(context, TestDatabase))), (db) =>
    Option.match(db.url, { onNone: (): Record<string, string> => ({}), onSome: (url) => ({ DATABASE_URL: Redacted.value(url) }) }))

describe("server processes", () => {
  for (const backend of backends) {
    it.live(`${backend}: SIGKILL after the final status, before the delivery: delivered once after the restart`, () =>
      Effect.gen(function*() {
        const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))
        const port = yield* Effect.promise(freePort) // nobody listens there yet: every attempt fails
        const env = serverEnv(port, {
          DATA_DIR: yield* scratchDir,
          NODE_ID: "webhook-node",
          INFERENCE_BASE_URL: sim.url,
          ...(yield* databaseEnv(backend))
        })
        const first = yield* Effect.promise(() => startServer(env))
        let openai = sdk(first.url)
        const batch = yield* finishedBatch(openai, ["deliver me later"])
        expect(batch.status).toBe("completed")
        const pending = yield* deliveryWhen(openai, batch.id, (d) => d.attempts > 0)
        expect(pending).toMatchObject({ status: "pending", last_status_code: null })
        expect(pending.last_error).toContain("ECONNREFUSED")
        yield* Effect.promise(() => first.stop("SIGKILL"))
        expect(first.stdout()).toContain(`"event":"webhook.retry"`)

        const receiver = yield* webhookReceiver(port)
        const second = yield* serverProcess(env)
        openai = sdk(second.url)
        yield* eventually(() => expect(receiver.received).toHaveLength(1), 15_000)
        const event = yield* unwrap(receiver.received[0]!)
        expect(event).toMatchObject({ id: pending.id, type: "batch.completed", data: { id: batch.id } })
        yield* sleep(1000)
        expect(receiver.received).toHaveLength(1)
        expect(yield* deliveryWhen(openai, batch.id, (d) => d.status === "delivered")).toMatchObject({ id: pending.id, last_status_code: 200 })
        expect(second.stdout()).toContain(`"event":"webhook.delivered"`)
      }).pipe(Effect.scoped), 60_000)
  }

  it.live("postgres: two nodes on one database deliver each event once", () =>
    Effect.gen(function*() {
      // Slow answers, and a 500 to each event's first attempt: both nodes look for due events all the time.
      const seen = new Map<string, number>()
      const receiver = yield* webhookReceiver(0, (_, request) => {
        const id = request.headers["webhook-id"]!
        seen.set(id, (seen.get(id) ?? 0) + 1)
        return { status: seen.get(id) === 1 ? 500 : 200, delayMs: 200 }
      })
      const database = yield* databaseEnv("postgres")
      const node = (name: string) =>
        Effect.gen(function*() {
          const sim = yield* Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))
          return yield* serverProcess(serverEnv(receiver.port, { DATA_DIR: yield* scratchDir, NODE_ID: name, INFERENCE_BASE_URL: sim.url, ...database }))
        })
      const [a, b] = yield* Effect.all([node("node-a"), node("node-b")], { concurrency: 2 })
      const clientsOf = [sdk(a.url), sdk(b.url)]
      const batches = yield* Effect.all(
        Array.from({ length: 6 }, (_, i) => finishedBatch(clientsOf[i % 2]!, [`batch ${i}`], { timeoutMs: 40_000 })),
        { concurrency: "unbounded" }
      )
      const byBatch = () => batches.map((batch) => receivedFor(receiver, batch.id).length)
      yield* eventually(() => expect(byBatch()).toEqual(batches.map(() => 2)), 20_000)
      yield* sleep(1500)
      expect(byBatch()).toEqual(batches.map(() => 2))
      for (const batch of batches) {
        const [first, second] = receivedFor(receiver, batch.id)
        expect(first!.headers["webhook-id"]).toBe(second!.headers["webhook-id"])
        expect(yield* deliveryWhen(clientsOf[1]!, batch.id, (d) => d.status === "delivered")).toMatchObject({ attempts: 2 })
      }
    }).pipe(Effect.scoped), 90_000)
})
