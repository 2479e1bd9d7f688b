/**
 * Webhooks across server processes (issue 18): a SIGKILL between the final status and the delivery still delivers
 * once after the restart; two nodes on one database deliver each event once; a bad secret stops the start.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { startSimulator } from "../scripts/simulator.js"
import { sdk } from "./support/Batches.js"
import { runServerToExit, type ServerProcess, startServer, unusedPort } from "./support/ServerProcess.js"
import { backends, eventually, scratchDir, TestDatabase } from "./support/TestApp.js"
import { webhookReceiver } from "./support/WebhookReceiver.js"
import { deliveryWhen, finishedBatch, receivedFor, SECRET, sleep, unwrap } from "./support/Webhooks.js"

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

/** A server process, killed with the scope. */
const serverProcess = (env: Record<string, string>) =>
  Effect.acquireRelease(Effect.promise(() => startServer(env)), (s: ServerProcess) => Effect.promise(() => s.stop("SIGKILL")))

/** A simulator upstream, closed with the scope. */
const simulator = Effect.acquireRelease(Effect.promise(() => startSimulator()), (s) => Effect.promise(() => s.close()))

const databaseEnv = (backend: "sqlite" | "postgres") =>
  Effect.map(Effect.flatMap(Layer.build(TestDatabase.layer(backend)), (context) => Effect.succeed(Context.get(context, TestDatabase))), (db) =>
    Option.match(db.url, { onNone: (): Record<string, string> => ({}), onSome: (url) => ({ DATABASE_URL: Redacted.value(url) }) }))

describe.concurrent("server processes", () => {
  for (const backend of backends) {
    it.live(`${backend}: SIGKILL after the final status, before the delivery: delivered once after the restart`, () =>
      Effect.gen(function*() {
        const sim = yield* simulator
        const port = yield* Effect.promise(unusedPort) // nobody listens there yet: every attempt fails
        const env = serverEnv(port, {
          DATA_DIR: yield* scratchDir,
          NODE_ID: "webhook-node",
          INFERENCE_BASE_URL: sim.url,
          ...(yield* databaseEnv(backend))
        })
        const first = yield* serverProcess(env)
        const batch = yield* finishedBatch(sdk(first.url), ["deliver me later"])
        expect(batch.status).toBe("completed")
        const pending = yield* deliveryWhen(sdk(first.url), batch.id, (d) => d.attempts > 0)
        expect(pending).toMatchObject({ status: "pending", last_status_code: null })
        expect(pending.last_error).toContain("ECONNREFUSED")
        // The line follows the attempt's record by a moment, and the pipe may lag behind: read before the kill.
        yield* eventually(() => expect(first.stdout()).toContain(`"event":"webhook.retry"`), 5_000)
        yield* Effect.promise(() => first.stop("SIGKILL"))

        const receiver = yield* webhookReceiver(port)
        const second = yield* serverProcess(env)
        yield* eventually(() => expect(receiver.received).toHaveLength(1), 15_000)
        const event = yield* unwrap(receiver.received[0]!)
        expect(event).toMatchObject({ id: pending.id, type: "batch.completed", data: { id: batch.id } })
        expect(yield* deliveryWhen(sdk(second.url), batch.id, (d) => d.status === "delivered")).toMatchObject({ id: pending.id, last_status_code: 200 })
        yield* sleep(500) // a repeat would come within a retry's 200 ms
        expect(receiver.received).toHaveLength(1)
        yield* eventually(() => expect(second.stdout()).toContain(`"event":"webhook.delivered"`), 5_000)
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
          const sim = yield* simulator
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
      for (const batch of batches) {
        const [first, second] = receivedFor(receiver, batch.id)
        expect(first!.headers["webhook-id"]).toBe(second!.headers["webhook-id"])
        expect(yield* deliveryWhen(clientsOf[1]!, batch.id, (d) => d.status === "delivered")).toMatchObject({ attempts: 2 })
      }
      yield* sleep(500) // every delivery is stored: a third attempt anywhere would have come by now
      expect(byBatch()).toEqual(batches.map(() => 2))
    }).pipe(Effect.scoped), 90_000)

  it.live("a bad WEBHOOK_SECRET stops the start with a message naming it", () =>
    Effect.gen(function*() {
      const { code, output } = yield* Effect.promise(() =>
        runServerToExit({ WEBHOOK_URL: "http://127.0.0.1:9/hook", WEBHOOK_SECRET: "whsec_oops not base64", DATA_DIR: "/nonexistent-unused" }, 30_000))
      expect(code).toBe(1)
      expect(output).toContain("WEBHOOK_SECRET")
      expect(output).not.toContain("oops not base64")
    }), 40_000)
})
