/**
 * Webhooks (issue 18), as OpenAI sends them: each final status (completed, failed, cancelled, expired) sends one
 * event, signed so that the official client's `webhooks.unwrap` accepts it, with no tracing headers; a receiver
 * that fails gets the same event again (same `webhook-id`, signed anew) with growing waits, until
 * `WEBHOOK_RETRY_FOR` runs out; a 2xx is enough, whatever its body does; a project's own webhook replaces the
 * global one; `GET /v1/webhook_deliveries` shows each project its own deliveries, and the server's webhook URL to
 * operators only. The event row is written in the transaction of the final move. On SQLite and PostgreSQL.
 * (The worker alone: WebhooksWorker.test.ts; server processes: WebhooksProcess.test.ts.)
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Context, Duration, Effect, Either, Exit, Layer, Option, Redacted } from "effect"
import { writeFileSync } from "node:fs"
import * as Path from "node:path"
import OpenAI from "openai"
import { parseKeysFile } from "../src/auth/Auth.js"
import { BatchStore, BatchStoreLive } from "../src/batches/BatchStore.js"
import { type AppConfigShape, defaults, validateConfig } from "../src/Config.js"
import { SqlLive } from "../src/storage/Sql.js"
import { secretProblem, signingKeys, webhookHeaders } from "../src/webhooks/signing.js"
import { DeliveryPolicy } from "../src/webhooks/Webhooks.js"
import { WebhookTargetsTest } from "../src/webhooks/WebhookTargets.js"
import { validatingBatch } from "./support/Batches.js"
import { backends, baseUrl, configFor, eventually, scratchDir, TestDatabase, TestDataDir, testAppWithUpstream } from "./support/TestApp.js"
import { sideBySide } from "./support/SideBySide.js"
import { answering, type Receiver, webhookReceiver } from "./support/WebhookReceiver.js"
import { deliveries, deliveryWhen, finishedBatch, OWN_SECRET, receivedFor, rejects, SECRET, sleep, unwrap } from "./support/Webhooks.js"

const KEYS = { a: "sk-webhooks-a-1f2e3d", b: "sk-webhooks-b-9c8d7e", admin: "sk-webhooks-admin-77aa" }

class Receivers extends Context.Tag("test/Receivers")<Receivers, { readonly global: Receiver; readonly own: Receiver }>() {}

/**
 * The app with keys over two projects and an operator key (a keys file), `projA` with a webhook of its own, every
 * other project on the global one (its URL with a token in the query); retries fast, batches expire after 9 s
 * (long enough for a quick batch on a busy machine: 6 s was outlasted once by a one-line batch, the suite run with
 * ten CPU-burning processes beside it).
 */
const app = (backend: "sqlite" | "postgres", overrides: Partial<AppConfigShape> = {}, timeout = Duration.seconds(15)) =>
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
      webhookRetryFor: Duration.seconds(6), // 4 s was outlasted once by a receiver failing 3 times on a loaded machine
      heartbeatInterval: Duration.millis(100),
      completionWindow: Duration.seconds(9),
      maxConcurrentBatches: 4, // a batch that sleeps until it expires holds no other one back
      ...overrides
    }, {}, backend).pipe(
      Layer.provide(Layer.succeed(DeliveryPolicy, { ...DeliveryPolicy.defaultValue(), timeout })),
      Layer.merge(Layer.succeed(Receivers, { global, own }))
    )
  }))

const clients = Effect.map(baseUrl, (base) => {
  const client = (apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
  return { a: client(KEYS.a), b: client(KEYS.b), admin: client(KEYS.admin) }
})

/**
 * Each of `batches` (ended) sent `receiver` one event of its final status, which the official client's
 * `webhooks.unwrap` verifies, with no tracing headers; and no second one later.
 */
const oneEventEach = (receiver: Receiver, batches: ReadonlyArray<OpenAI.Batch>) =>
  Effect.gen(function*() {
    const ones = batches.map(() => 1)
    yield* eventually(() => expect(batches.map((batch) => receivedFor(receiver, batch.id).length)).toEqual(ones), 10_000)
    for (const batch of batches) {
      const [received] = receivedFor(receiver, batch.id)
      const event = yield* unwrap(received!)
      const stamp = batch.completed_at ?? batch.failed_at ?? batch.cancelled_at ?? batch.expired_at
      expect(event).toEqual({ id: received!.headers["webhook-id"], object: "event", type: `batch.${batch.status}`, created_at: stamp, data: { id: batch.id } })
      expect(event.id).toMatch(/^evt_[0-9a-f]{32}$/)
      expect(received!.headers["content-type"]).toBe("application/json")
      // As OpenAI's: no trace context (the server's spans are its own business).
      expect(Object.keys(received!.headers).filter((name) => /^(traceparent|tracestate|b3|x-b3-.*)$/.test(name))).toEqual([])
      // What unwrap refuses: another secret, a changed body.
      expect(yield* rejects(received!, OWN_SECRET)).toBe(true)
      expect(yield* rejects({ ...received!, body: received!.body.replace(batch.id, "batch_other") }, SECRET)).toBe(true)
    }
    yield* sleep(200)
    expect(batches.map((batch) => receivedFor(receiver, batch.id).length)).toEqual(ones)
  })

for (const backend of backends) {
  sideBySide(`${backend}: webhooks`, () => layer(app(backend), { excludeTestServices: true, timeout: 60_000 })((it) => {
    it.effect("each final status sends one event, which the official client's webhooks.unwrap verifies; no tracing headers", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        // (An expired batch's: the suite of expiries below.)
        const batches = yield* Effect.all([
          finishedBatch(b, ["hello"]),
          finishedBatch(b, [], { raw: "this line is not JSON" }),
          finishedBatch(b, ["slow [sleep:5000]"], { cancel: true })
        ], { concurrency: "unbounded" })
        expect(batches.map((batch) => batch.status)).toEqual(["completed", "failed", "cancelled"])
        yield* oneEventEach(global, batches)
      }))

    it.scoped("a receiver failing 3 times gets the 4th attempt, same webhook-id, each signed anew, waits growing; the list and metrics show it", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { admin, b } = yield* clients
        const attemptsOf = new Map<string, number>()
        yield* answering(global, (_, request) => {
          const id = request.headers["webhook-id"]!
          const n = (attemptsOf.get(id) ?? 0) + 1
          attemptsOf.set(id, n)
          // The first refusal comes a second late: the next attempt is in a later second, with another signature.
          return n <= 3 ? { status: 500, body: "receiver busy", delayMs: n === 1 ? 1000 : 0 } : { status: 200 }
        })
        const batch = yield* finishedBatch(b, ["retry me"])
        // Its waits add up to ~5 s: 20 s for a loaded machine (CI's full suite saw 3 of 4 at 10 s).
        yield* eventually(() => expect(receivedFor(global, batch.id)).toHaveLength(4), 20_000)
        const attempts = receivedFor(global, batch.id)
        expect(new Set(attempts.map((r) => r.headers["webhook-id"])).size).toBe(1)
        expect(new Set(attempts.map((r) => r.body)).size).toBe(1)
        for (const attempt of attempts) expect((yield* unwrap(attempt)).data.id).toBe(batch.id)
        // Each attempt signed at its own time: its timestamp is the second it was sent in, each timestamp its own signature.
        const stamps = attempts.map((r) => Number(r.headers["webhook-timestamp"]))
        attempts.forEach((r, i) => expect(Math.abs(stamps[i]! - Math.floor(r.at / 1000))).toBeLessThanOrEqual(1))
        expect(stamps[1]).toBeGreaterThan(stamps[0]!)
        expect(new Set(attempts.map((r) => r.headers["webhook-signature"])).size).toBe(new Set(stamps).size)
        // The waits double from 50 ms (±20 %): at least 80 ms before the 3rd attempt, 160 ms before the 4th.
        expect(attempts[2]!.at - attempts[1]!.at).toBeGreaterThanOrEqual(80)
        expect(attempts[3]!.at - attempts[2]!.at).toBeGreaterThanOrEqual(160)

        const delivery = yield* deliveryWhen(b, batch.id, (d) => d.status === "delivered")
        expect(delivery).toMatchObject({
          id: attempts[0]!.headers["webhook-id"],
          object: "webhook_delivery",
          type: "batch.completed",
          batch_id: batch.id,
          url: null, // the server's webhook, not the project's: its URL is the operator's
          target: "server",
          status: "delivered",
          attempts: 4,
          last_status_code: 200,
          last_error: null,
          created_at: batch.completed_at,
          next_attempt_at: null
        })
        expect(delivery.delivered_at).toBeGreaterThanOrEqual(batch.completed_at!)
        // An operator sees where it went, without the query's token.
        expect(yield* deliveryWhen(admin, batch.id, () => true)).toMatchObject({ url: `${global.url}?…`, target: "server" })
        yield* sleep(200)
        expect(receivedFor(global, batch.id)).toHaveLength(4)

        const base = yield* baseUrl
        const metrics = yield* Effect.promise(() =>
          fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${KEYS.admin}` } }).then((r) => r.text()))
        const count = (outcome: string) => Number(new RegExp(`^batch_webhook_deliveries_total\\{outcome="${outcome}"\\} (\\d+)`, "m").exec(metrics)?.[1])
        expect(count("retry")).toBeGreaterThanOrEqual(3)
        expect(count("delivered")).toBeGreaterThanOrEqual(1)
      }))

    it.scoped("a receiver that keeps failing: retried until WEBHOOK_RETRY_FOR, then the delivery is failed", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { admin, b } = yield* clients
        yield* answering(global, () => ({ status: 503, body: "down for\nmaintenance" }))
        const batch = yield* finishedBatch(b, ["never delivered"])
        const given = yield* deliveryWhen(b, batch.id, (d) => d.status === "failed")
        // The project sees the status; what the operator's receiver answered, the operator only.
        expect(given).toMatchObject({ status: "failed", last_status_code: 503, last_error: "HTTP 503", next_attempt_at: null, delivered_at: null })
        expect(yield* deliveryWhen(admin, batch.id, () => true)).toMatchObject({ last_error: "HTTP 503: down for\\u000amaintenance" })
        expect(given.attempts).toBeGreaterThanOrEqual(4)
        expect(receivedFor(global, batch.id)).toHaveLength(given.attempts)
        yield* sleep(300)
        expect(receivedFor(global, batch.id)).toHaveLength(given.attempts)
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

        // A receiver has the call before the worker stores its answer: wait for both rows to say so.
        yield* Effect.all([
          deliveryWhen(a, ofA.id, (d) => d.status === "delivered"),
          deliveryWhen(b, ofB.id, (d) => d.status === "delivered")
        ])
        const listA = yield* deliveries(a, { limit: 100 })
        const listB = yield* deliveries(b, { limit: 100 })
        const listAll = yield* deliveries(admin, { limit: 100 })
        expect(listA.data.map((d) => d.batch_id)).toEqual([ofA.id])
        expect(listA.data[0]).toMatchObject({ url: own.url, target: "project", status: "delivered", attempts: 1 })
        expect(listB.data.map((d) => d.batch_id)).toContain(ofB.id)
        expect(listB.data.map((d) => d.batch_id)).not.toContain(ofA.id)
        // The server's webhook: no URL for the project (its path may hold a token too); the operator's list has it.
        expect(listB.data.every((d) => d.url === null && d.target === "server")).toBe(true)
        expect(listAll.data.find((d) => d.batch_id === ofB.id)).toMatchObject({ url: `${global.url}?…`, target: "server" })
        expect(listAll.data.find((d) => d.batch_id === ofA.id)).toMatchObject({ url: own.url, target: "project" })
        expect(listAll.data.map((d) => d.batch_id)).toEqual(expect.arrayContaining([ofA.id, ofB.id]))
        expect(listAll.data.length).toBe(listA.data.length + listB.data.length)
        expect(JSON.stringify(listB)).not.toContain(global.url)
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
  }))
}

// An app of its own whose batches expire after 2 s: the suite above keeps 9 s for its quick batches on a busy machine.
for (const backend of backends) {
  const expiring = app(backend, { completionWindow: Duration.seconds(2) })
  sideBySide(`${backend}: webhooks of expired batches`, () => layer(expiring, { excludeTestServices: true, timeout: 60_000 })((it) => {
    it.effect("an expired batch sends one event too", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        const batch = yield* finishedBatch(b, ["too slow [sleep:20000]"])
        expect(batch.status).toBe("expired")
        yield* oneEventEach(global, [batch])
      }))
  }))
}

// Attempts limited to 1 s (a receiver's head comes well within it on a loaded machine; 300 ms was missed once); a 1 s
// base delay keeps a pending delivery in view for 20 polls between attempts.
sideBySide("a receiver that hangs", () =>
  layer(app("sqlite", { webhookRetryBaseDelay: Duration.seconds(1) }, Duration.seconds(1)), { excludeTestServices: true, timeout: 60_000 })((it) => {
    it.scoped("an attempt without an answer within the time limit is retried", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        yield* answering(global, (n) => ({ status: 200, delayMs: n === 1 ? 3000 : 0 }))
        const batch = yield* finishedBatch(b, ["slow receiver"])
        const first = yield* deliveryWhen(b, batch.id, (d) => d.attempts === 1)
        expect(first).toMatchObject({ status: "pending", last_status_code: null, last_error: "no answer within 1s" })
        const delivered = yield* deliveryWhen(b, batch.id, (d) => d.status === "delivered")
        expect(delivered.attempts).toBe(2)
        expect(new Set(receivedFor(global, batch.id).map((r) => r.headers["webhook-id"])).size).toBe(1)
      }))

    it.scoped("a 2xx whose body never ends is delivered: the status decides", () =>
      Effect.gen(function*() {
        const { global } = yield* Receivers
        const { b } = yield* clients
        yield* answering(global, () => ({ status: 202, body: "received, and then…", stall: true }))
        const batch = yield* finishedBatch(b, ["a stalling receiver"])
        const delivered = yield* deliveryWhen(b, batch.id, (d) => d.status !== "pending" || d.attempts > 0)
        expect(delivered).toMatchObject({ status: "delivered", attempts: 1, last_status_code: 202, last_error: null })
        expect(receivedFor(global, batch.id)).toHaveLength(1)
      }))
  }))

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
        const rows = () => sql<{ type: string; body: string; created_at: number | string }>`SELECT type, body, created_at FROM webhook_deliveries`
        const id = yield* validatingBatch(1)
        const failed = Option.getOrThrow(yield* store.transition(id, "validationFailed", { errors: [] }))
        const [row, ...others] = yield* rows()
        expect(others).toHaveLength(0)
        expect(row!.type).toBe("batch.failed")
        expect(Number(row!.created_at)).toBe(failed.failed_at)
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
    expect(defaults.webhookRetryMaxDelay).toEqual(Duration.hours(1))
    expect(check({ webhookRetryBaseDelay: Duration.minutes(2), webhookRetryMaxDelay: Duration.minutes(1) })).toContain("WEBHOOK_RETRY_MAX_DELAY")
    expect(check({ webhookRetryBaseDelay: Duration.minutes(1), webhookRetryMaxDelay: Duration.minutes(1) })).toBe("ok")
  })

  it.effect("while a secret is rotated, the old and the new: each attempt is signed with both, and a receiver that knows either accepts it", () =>
    Effect.gen(function*() {
      const both = `${OWN_SECRET}  ${SECRET}`
      expect(check({ webhookUrl: Option.some("https://hooks.example.com/x"), webhookSecret: Option.some(Redacted.make(both)) })).toBe("ok")
      const five = Array(5).fill(SECRET).join(" ")
      expect(secretProblem(five)).toContain("up to 4")
      const badSecond = check({ webhookUrl: Option.some("https://hooks.example.com/x"), webhookSecret: Option.some(Redacted.make(`${SECRET} whsec_bad!`)) })
      expect(badSecond).toContain("WEBHOOK_SECRET")
      expect(badSecond).not.toContain(SECRET.slice(6))
      const line = parseKeysFile(`sk-a:projA\nwebhook:projA https://a.example.com/hook ${OWN_SECRET} ${SECRET}\n`)
      expect(line).toMatchObject({ webhooks: [{ project: "projA", secret: `${OWN_SECRET} ${SECRET}` }] })

      const body = '{"id":"evt_1","object":"event","type":"batch.completed","created_at":1,"data":{"id":"batch_1"}}'
      const headers = webhookHeaders(signingKeys(both)!, "evt_1", Math.floor(Date.now() / 1000), body)
      expect(headers["webhook-signature"]).toMatch(/^v1,\S+ v1,\S+$/)
      expect((yield* unwrap({ body, headers }, SECRET)).data.id).toBe("batch_1")
      expect((yield* unwrap({ body, headers }, OWN_SECRET)).data.id).toBe("batch_1")
      expect(yield* rejects({ body, headers }, `whsec_${Buffer.from("another key").toString("base64")}`)).toBe(true)
    }))

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
})
