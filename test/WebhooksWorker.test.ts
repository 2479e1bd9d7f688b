/**
 * The webhook delivery worker alone (`webhooks/Webhooks.ts`), over rows written straight into its table: the backoff
 * grows with every turn, even one that sends nothing (no webhook configured), up to `WEBHOOK_RETRY_MAX_DELAY`; a
 * row claimed past its time is failed without another attempt; a result whose claim was lost is not stored nor
 * counted as delivered; old settled rows are swept; a connection failure never quotes the URL. On both backends.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Cause, Context, Duration, Effect, Exit, Layer, Logger, Tracer } from "effect"
import type { AppConfigShape } from "../src/Config.js"
import { eventId } from "../src/domain/Ids.js"
import { Metrics, noopMetrics } from "../src/observability/Metrics.js"
import { SqlLive } from "../src/storage/Sql.js"
import { noAnswer } from "../src/webhooks/posting.js"
import { eventBody } from "../src/webhooks/signing.js"
import { DeliveryPolicy, type DeliveryPolicyShape, projectShare, retryWait, WebhooksLive, withinShares } from "../src/webhooks/Webhooks.js"
import { WebhookTargetsTest } from "../src/webhooks/WebhookTargets.js"
import { backends, configFor, eventually, eventuallyEffect, TestDatabase, TestDataDir } from "./support/TestApp.js"
import { answering, type Receiver, webhookReceiver } from "./support/WebhookReceiver.js"
import { SECRET, sleep } from "./support/Webhooks.js"

/** Every line the worker logs (info and up), and every delivery it counts. */
const logged: Array<{ readonly level: string; readonly message: string; readonly annotations: Record<string, unknown> }> = []
const counted: Array<string> = []
const recorder = Logger.make(({ annotations, logLevel, message }) =>
  void logged.push({ level: logLevel.label, message: String(message), annotations: Object.fromEntries(annotations) }))
const linesOf = (id: string, event: string) => logged.filter((l) => l.annotations.event_id === id && l.annotations.event === event)

/** The receiver, and the projects' webhooks (changed by the tests, read by the worker on each turn). */
class Hook extends Context.Tag("test/Hook")<Hook, {
  readonly receiver: Receiver
  readonly byProject: Record<string, { readonly url: string; readonly secret: string }>
}>() {}

const worker = (backend: "sqlite" | "postgres", overrides: Partial<AppConfigShape> = {}, policy?: DeliveryPolicyShape, extra: Layer.Layer<never> = Layer.empty) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const receiver = yield* webhookReceiver()
    const byProject: Record<string, { readonly url: string; readonly secret: string }> = {}
    return WebhooksLive.pipe(
      Layer.provide(WebhookTargetsTest({ byProject })),
      Layer.provide(policy === undefined ? Layer.empty : Layer.succeed(DeliveryPolicy, policy)),
      Layer.provide(Layer.succeed(Metrics, { ...noopMetrics, webhookDelivery: (outcome) => void counted.push(outcome) })),
      Layer.provideMerge(SqlLive),
      Layer.provideMerge(configFor({
        webhookRetryBaseDelay: Duration.millis(50),
        webhookRetryMaxDelay: Duration.millis(200),
        heartbeatInterval: Duration.millis(20),
        fileSweepInterval: Duration.millis(100),
        ...overrides
      })),
      Layer.provide(Layer.merge(TestDataDir.Default, TestDatabase.layer(backend))),
      Layer.provide(Logger.replace(Logger.defaultLogger, recorder)),
      Layer.provide(extra),
      Layer.merge(Layer.succeed(Hook, { receiver, byProject }))
    )
  }))

const DAY_S = 24 * 3600
const nowS = () => Math.floor(Date.now() / 1000)

/** A row as `makeOutbox` writes it (then as earlier turns left it), for `project`'s webhook; its id. */
const insertEvent = (row: {
  readonly project: string
  readonly createdAt: number
  readonly status?: "pending" | "delivered" | "failed"
  readonly attempts?: number
  readonly lastStatusCode?: number
  readonly lastError?: string
}) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const { receiver } = yield* Hook
    const id = eventId()
    const batchId = `batch_${id.slice(4)}`
    const status = row.status ?? "pending"
    yield* sql`INSERT INTO webhook_deliveries ${
      sql.insert({
        id,
        type: "batch.completed",
        batch_id: batchId,
        project: row.project,
        url: receiver.url,
        target: "project",
        body: eventBody({ id, type: "batch.completed", createdAt: row.createdAt, batchId }),
        status,
        turns: row.attempts ?? 0,
        attempts: row.attempts ?? 0,
        last_status_code: row.lastStatusCode ?? null,
        last_error: row.lastError ?? null,
        created_at: row.createdAt,
        next_attempt_ms: status === "pending" ? Date.now() : null
      })
    }`
    return id
  }).pipe(Effect.orDie)

const rowOf = (id: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<Record<string, unknown>>`
      SELECT status, turns, attempts, last_status_code, last_error, next_attempt_ms, claimed_by FROM webhook_deliveries WHERE id = ${id}`
    return row === undefined ? undefined : {
      status: row.status,
      turns: Number(row.turns),
      attempts: Number(row.attempts),
      last_status_code: row.last_status_code === null ? null : Number(row.last_status_code),
      last_error: row.last_error,
      next_attempt_ms: row.next_attempt_ms === null ? null : Number(row.next_attempt_ms),
      claimed_by: row.claimed_by
    }
  }).pipe(Effect.orDie)

const sentFor = (receiver: Receiver, id: string) => receiver.received.filter((r) => r.headers["webhook-id"] === id)

for (const backend of backends) {
  layer(worker(backend), { excludeTestServices: true, timeout: 30_000 })(`${backend}: the webhook worker`, (it) => {
    it.effect("no webhook for the project: nothing sent, but each turn waits longer (up to WEBHOOK_RETRY_MAX_DELAY); sent once it is back", () =>
      Effect.gen(function*() {
        const { byProject, receiver } = yield* Hook
        const start = Date.now()
        const id = yield* insertEvent({ project: "lost", createdAt: nowS() })
        const row = yield* eventuallyEffect(Effect.tap(rowOf(id), (r) => Effect.sync(() => expect(r!.turns).toBeGreaterThanOrEqual(6))), 10_000)
        const now = Date.now()
        // The waits before the 6th turn: 50 ms doubling, at most 200 ms, up to 20 % less: 40 + 80 + 160 + 160 + 160 ms at least.
        expect(now - start).toBeGreaterThanOrEqual(600)
        expect(row!.next_attempt_ms! - now).toBeLessThanOrEqual(200)
        expect(row).toMatchObject({ status: "pending", attempts: 0, last_error: "no webhook is configured for project lost" })
        // A turn's line comes after its row is stored (here and below): the sixth may still be on its way (CI read 5
        // once, on PostgreSQL).
        yield* eventually(() => expect(linesOf(id, "webhook.retry").length).toBeGreaterThanOrEqual(6), 2_000)

        byProject.lost = { url: `${receiver.url}/T0K3N?k=s3cret`, secret: SECRET }
        yield* eventuallyEffect(Effect.tap(rowOf(id), (r) => Effect.sync(() => expect(r).toMatchObject({ status: "delivered", attempts: 1 }))), 5_000)
        expect(sentFor(receiver, id)).toHaveLength(1)
        // The URL's path may hold a token (Slack's, Discord's): its lines give the origin alone.
        const [delivered] = yield* eventually(() => {
          const lines = linesOf(id, "webhook.delivered")
          expect(lines).toHaveLength(1)
          return lines
        }, 2_000)
        expect(delivered!.annotations.url).toBe(`${new URL(receiver.url).origin}/…`)
        expect(JSON.stringify(delivered)).not.toMatch(/T0K3N|s3cret/)
      }))

    it.effect("a row claimed past WEBHOOK_RETRY_FOR (an earlier turn's result never stored) is failed without another attempt", () =>
      Effect.gen(function*() {
        const { byProject, receiver } = yield* Hook
        byProject.late = { url: receiver.url, secret: SECRET }
        const failedBefore = counted.filter((o) => o === "failed").length
        const id = yield* insertEvent({ project: "late", createdAt: nowS() - 73 * 3600, attempts: 7, lastStatusCode: 503, lastError: "HTTP 503: busy" })
        yield* eventuallyEffect(Effect.tap(rowOf(id), (r) => Effect.sync(() => expect(r!.status).toBe("failed"))), 5_000)
        expect(yield* rowOf(id)).toMatchObject({ attempts: 7, last_status_code: 503, last_error: "HTTP 503: busy", next_attempt_ms: null, claimed_by: null })
        expect(sentFor(receiver, id)).toHaveLength(0)
        // Its line after its row, and its count before its line.
        yield* eventually(() => expect(linesOf(id, "webhook.failed")).toMatchObject([{ level: "ERROR" }]), 2_000)
        expect(counted.filter((o) => o === "failed").length).toBe(failedBefore + 1)
      }))

    it.scoped("a result whose claim another node took over is neither stored nor counted: a webhook.claim_lost line", () =>
      Effect.gen(function*() {
        const { byProject, receiver } = yield* Hook
        byProject.slow = { url: receiver.url, secret: SECRET }
        yield* answering(receiver, () => ({ status: 200, delayMs: 500 }))
        const deliveredBefore = counted.filter((o) => o === "delivered").length
        const id = yield* insertEvent({ project: "slow", createdAt: nowS() })
        yield* eventually(() => expect(sentFor(receiver, id)).toHaveLength(1), 5_000)
        const sql = yield* SqlClient.SqlClient
        yield* sql`UPDATE webhook_deliveries SET claimed_by = 'another-node', claimed_until = ${Date.now() + 3_600_000} WHERE id = ${id}`.pipe(Effect.orDie)
        yield* eventually(() => expect(linesOf(id, "webhook.claim_lost")).toMatchObject([{ level: "WARN" }]), 5_000)
        expect(linesOf(id, "webhook.delivered")).toHaveLength(0)
        expect(counted.filter((o) => o === "delivered").length).toBe(deliveredBefore)
        expect(yield* rowOf(id)).toMatchObject({ status: "pending", attempts: 0, claimed_by: "another-node" })
      }))

    it.scoped("a redirect is no delivery: not followed, tried again (a receiver moved to https lost every event)", () =>
      Effect.gen(function*() {
        const { byProject, receiver } = yield* Hook
        byProject.moved = { url: `${receiver.url}/old`, secret: SECRET }
        yield* Effect.addFinalizer(() => Effect.sync(() => void delete byProject.moved))
        yield* answering(receiver, (_, request) =>
          request.path === "/hook/old" ? { status: 307, headers: { location: `${receiver.url}/new` } } : { status: 200 })
        const id = yield* insertEvent({ project: "moved", createdAt: nowS() })
        const row = yield* eventuallyEffect(Effect.tap(rowOf(id), (r) => Effect.sync(() => expect(r!.attempts).toBeGreaterThanOrEqual(2))), 5_000)
        expect(row).toMatchObject({ status: "pending", last_status_code: 307 })
        expect(linesOf(id, "webhook.retry")[0]).toMatchObject({ level: "WARN", annotations: { status_code: 307 } })
        expect(receiver.received.filter((r) => r.path === "/hook/new")).toEqual([])
      }))

    it.effect("delivered and failed rows are deleted 30 days after their event; younger ones stay", () =>
      Effect.gen(function*() {
        const old = yield* Effect.all([
          insertEvent({ project: "history", createdAt: nowS() - 31 * DAY_S, status: "delivered", attempts: 1 }),
          insertEvent({ project: "history", createdAt: nowS() - 31 * DAY_S, status: "failed", attempts: 9 })
        ])
        const young = yield* insertEvent({ project: "history", createdAt: nowS() - 29 * DAY_S, status: "delivered", attempts: 1 })
        yield* eventuallyEffect(Effect.tap(Effect.forEach(old, rowOf), (rows) => Effect.sync(() => expect(rows).toEqual([undefined, undefined]))), 5_000)
        expect(yield* rowOf(young)).toMatchObject({ status: "delivered" })
      }))
  })
}

/** The worker's claim rounds so far, each a `Webhooks.claimDue` span (of the worker below). */
let claimRounds = 0
const countingClaimRounds = Layer.unwrapEffect(Effect.map(Effect.tracer, (tracer) =>
  Layer.setTracer(Tracer.make({
    span: (name, ...rest) => {
      if (name === "Webhooks.claimDue") claimRounds++
      return tracer.span(name, ...rest)
    },
    context: (f, fiber) => tracer.context(f, fiber)
  }))))

for (const backend of backends) {
  // Four attempts at once (a share of one a project), each waiting 20 s for its answer.
  layer(worker(backend, {}, { timeout: Duration.seconds(20), concurrency: 4 }, countingClaimRounds), { excludeTestServices: true, timeout: 30_000 })(
    `${backend}: the webhook worker, shared between projects`,
    (it) => {
      it.scoped("a project whose receiver never answers holds three of four attempts at most: another project's event goes out at once", () =>
        Effect.gen(function*() {
          const { byProject, receiver } = yield* Hook
          byProject.hanging = { url: `${receiver.url}/hang`, secret: SECRET }
          byProject.prompt = { url: `${receiver.url}/ok`, secret: SECRET }
          yield* answering(receiver, (_, request) => ({ status: 200, delayMs: request.path === "/hook/hang" ? 25_000 : 0 }))
          const hung = () => receiver.received.filter((r) => r.path === "/hook/hang").length
          yield* Effect.forEach(Array.from({ length: 12 }), () => insertEvent({ project: "hanging", createdAt: nowS() }))
          // Its share, then the room no other project needs, but one attempt's.
          yield* eventually(() => expect(hung()).toBe(3), 5_000)
          const prompt = yield* insertEvent({ project: "prompt", createdAt: nowS() })
          // Before any of the hanging attempts ends (20 s): it waited for them.
          yield* eventuallyEffect(Effect.tap(rowOf(prompt), (r) => Effect.sync(() => expect(r).toMatchObject({ status: "delivered", attempts: 1 }))), 10_000)
          expect(hung()).toBe(3)
          // With nothing it may start, the worker looks once a heartbeat (20 ms): it looked 12,000 times in 2 s.
          const before = claimRounds
          yield* sleep(1_000)
          expect(claimRounds - before).toBeLessThan(150)
        }))
    }
  )
}

describe("a project's share of a node's webhook attempts", () => {
  it("is a quarter of them, one at least; what is due beyond it waits, in order", () => {
    expect([1, 4, 16, 17].map(projectShare)).toEqual([1, 1, 4, 5])
    const due = ["a", "a", "b", "a", "c", "b"].map((project, i) => ({ project, i }))
    const { kept, beyond } = withinShares(due, new Map([["a", 1]]), 2)
    expect(kept.map((d) => d.i)).toEqual([0, 2, 4, 5])
    expect(beyond.map((d) => d.i)).toEqual([1, 3])
  })
})

describe("the wait before a delivery's next turn", () => {
  it("doubles from the base delay up to the longest, then spreads below it: events failing together come back apart", () => {
    const hour = 3_600_000
    expect([0, 1, 2].map((turns) => retryWait(turns, 5000, hour, 1))).toEqual([5000, 10_000, 20_000])
    expect(retryWait(2, 5000, hour, 0.8)).toBe(16_000)
    // At the cap, a fifth apart at most, never longer than the cap (all waited exactly an hour before).
    expect([retryWait(30, 5000, hour, 0.8), retryWait(30, 5000, hour, 0.9), retryWait(1000, 5000, hour, 1)]).toEqual([0.8 * hour, 0.9 * hour, hour])
  })
})

describe("what a failed connection is told as", () => {
  it("its code, else the kinds of error: never a message, which may quote the URL's token", () => {
    const request = HttpClientRequest.post("https://hooks.example.com/x?token=hunter2")
    const error = (cause: unknown) => new HttpClientError.RequestError({ request, reason: "Transport", cause })
    expect(noAnswer(error(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })))).toBe("connection failed: ECONNREFUSED")
    const told = noAnswer(error(new TypeError("fetch to https://hooks.example.com/x?token=hunter2 failed")))
    expect(told).toBe("connection failed: Transport, TypeError")
    expect(noAnswer("hunter2")).toBe("connection failed: unknown error")
  })
})

layer(worker("sqlite", { webhookRetryMaxDelay: Duration.hours(1) }), { excludeTestServices: true, timeout: 30_000 })("the webhook worker's last attempt", (it) => {
  it.scoped("comes at WEBHOOK_RETRY_FOR after the event, not a whole backoff past it; then the delivery is failed", () =>
    Effect.gen(function*() {
      const { byProject, receiver } = yield* Hook
      byProject.ending = { url: receiver.url, secret: SECRET }
      yield* answering(receiver, () => ({ status: 503 }))
      // 20 turns before: the next wait would be the longest, an hour; the event's 72 hours end in 3–4 s.
      const createdAt = nowS() - 72 * 3600 + 4
      const id = yield* insertEvent({ project: "ending", createdAt, attempts: 20, lastStatusCode: 503 })
      yield* eventuallyEffect(Effect.tap(rowOf(id), (r) => Effect.sync(() => expect(r!.attempts).toBe(21))), 5_000)
      expect((yield* rowOf(id))!.next_attempt_ms).toBeLessThanOrEqual((createdAt + 72 * 3600) * 1000)
      yield* eventuallyEffect(Effect.tap(rowOf(id), (r) => Effect.sync(() => expect(r!.status).toBe("failed"))), 10_000)
      expect(sentFor(receiver, id)).toHaveLength(2) // the turn at once, and the one at the deadline
    }))
})

layer(worker("sqlite", { maxConcurrentBatches: 0 }), { excludeTestServices: true, timeout: 30_000 })("the webhook worker of an API-only node", (it) => {
  // On SQLite the node that runs batches frees every claim when it starts: an API-only node beside it must hold none.
  it.effect("claims and sends nothing: the node that runs batches delivers their events", () =>
    Effect.gen(function*() {
      const { byProject, receiver } = yield* Hook
      byProject.api = { url: receiver.url, secret: SECRET }
      const id = yield* insertEvent({ project: "api", createdAt: nowS() })
      yield* Effect.sleep(Duration.millis(500)) // 25 heartbeats
      expect(yield* rowOf(id)).toMatchObject({ status: "pending", turns: 0, attempts: 0, claimed_by: null })
      expect(sentFor(receiver, id)).toEqual([])
    }))
})

// An app's test given a secret the configuration would refuse: its webhook was taken for none, nothing sent.
describe("WebhookTargetsTest", () => {
  it.effect("refuses a target the configuration would refuse, naming whose and why", () =>
    Effect.gen(function*() {
      const built = yield* Effect.exit(Layer.build(WebhookTargetsTest({
        global: { url: "http://127.0.0.1:1/hook", secret: SECRET },
        byProject: { research: { url: "http://127.0.0.1:1/hook", secret: "plain-secret" } }
      })).pipe(Effect.scoped))
      const said = Exit.match(built, { onFailure: Cause.pretty, onSuccess: () => "built" })
      expect(said).toContain("WebhookTargetsTest: project research: a webhook secret must be whsec_ followed by base64")
      expect(said).not.toContain("plain-secret")
      const fine = yield* Effect.exit(Layer.build(WebhookTargetsTest({ global: { url: "http://127.0.0.1:1/hook", secret: SECRET } })).pipe(Effect.scoped))
      expect(fine._tag).toBe("Success")
    }))
})
