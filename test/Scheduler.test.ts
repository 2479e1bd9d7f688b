/**
 * The server's scheduler: a fiber that keeps going (as a batch's workers do, waking each other) leaves Node room to
 * read its sockets between its steps; a request's steps are not held behind such fibers; `makeApp` runs what it
 * builds on it, its requests first and the batches they start in the background. Effect's concurrent `forEach`,
 * interrupted as it starts, ends on it (on Effect's matrix of the same two schedulers it waited for ever), and so a
 * layer failing beside `HttpLive` ends the app's start with its failure.
 */
import { expect, it } from "@effect/vitest"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Cause, Chunk, Effect, Exit, Fiber, FiberRef, Layer, Logger, LogLevel, Option, Scheduler } from "effect"
import { createConnection, createServer, type Socket } from "node:net"
import { AppConfig } from "../src/Config.js"
import { HttpLive } from "../src/http/Http.js"
import { Inference, InferenceScripted, scriptedAnswer } from "../src/inference/Inference.js"
import { makeApp, makeServices, NodeServerLive } from "../src/Layers.js"
import { BACKGROUND_PRIORITY, ioFirstScheduler, REQUEST_PRIORITY, SchedulerLive, serverScheduler } from "../src/Scheduler.js"
import { chatLine, sdk, terminal, waitFor } from "./support/Batches.js"
import { baseUrl, TestDataDir, TestHttpServer } from "./support/TestApp.js"

/** A connected pair of local sockets, and whether the server side has received anything. */
const socketPair = Effect.acquireRelease(
  Effect.async<{ readonly client: Socket; readonly received: () => boolean; readonly close: () => void }>((resume) => {
    let received = false
    let accepted: Socket | undefined
    const server = createServer((socket) => {
      accepted = socket
      socket.on("data", () => {
        received = true
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number }
      const client = createConnection(port, "127.0.0.1", () =>
        resume(Effect.succeed({
          client,
          received: () => received,
          close: () => {
            client.destroy()
            accepted?.destroy()
            server.close()
          }
        })))
    })
  }),
  (pair) => Effect.sync(() => pair.close())
)

/**
 * Writes a byte to a local socket, then yields up to 1,000 times, as a busy fiber does between its steps: the step
 * at which the other end had read it, or none if it never got the chance.
 */
const stepWhenSocketRead = Effect.scoped(Effect.gen(function*() {
  const { client, received } = yield* socketPair
  yield* Effect.async<void>((resume) => {
    client.write("x", () => resume(Effect.void))
  })
  for (let step = 0; step < 1000; step++) {
    if (received()) return Option.some(step)
    yield* Effect.yieldNow()
  }
  return Option.none()
}))

it.effect("on the server's scheduler, a fiber that keeps yielding lets Node read its sockets within a few steps", () =>
  Effect.gen(function*() {
    const step = yield* stepWhenSocketRead
    expect(Option.getOrElse(step, () => Infinity)).toBeLessThan(10)
  }).pipe(Effect.provide(SchedulerLive)))

it.effect("on Effect's default scheduler the same fiber runs all its steps before the socket is read (the reason for the one above)", () =>
  Effect.gen(function*() {
    expect(yield* stepWhenSocketRead).toEqual(Option.none())
  }))

it.scoped("an app built with makeApp runs what it is provided to on the server's scheduler", () =>
  Effect.gen(function*() {
    const step = yield* stepWhenSocketRead
    expect(Option.getOrElse(step, () => Infinity)).toBeLessThan(10)
  }).pipe(
    Effect.provide(makeApp({ inference: InferenceScripted(() => Effect.never) }).pipe(
      Layer.provideMerge(Layer.unwrapEffect(Effect.map(TestDataDir, ({ path }) => AppConfig.layerWith({ dataDir: path, port: 0, host: "127.0.0.1" })))),
      Layer.provide(TestDataDir.Default)
    ))
  ))

/**
 * Ten background fibers stepping forever (yielding, as batch workers wake each other), and a fiber at `priority`
 * taking 20 steps: how many steps the background fibers took meanwhile.
 */
const backgroundStepsDuring = (priority: number) =>
  Effect.gen(function*() {
    let steps = 0
    for (let i = 0; i < 10; i++) {
      yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Effect.sync(() => steps++), Effect.yieldNow())))
    }
    yield* Effect.yieldNow() // the background fibers are under way
    const before = steps
    for (let i = 0; i < 20; i++) yield* Effect.withSchedulingPriority(Effect.yieldNow(), priority)
    return steps - before
  })

it.scoped("on the server's scheduler, a request's steps are not held behind background work; background steps are", () =>
  Effect.gen(function*() {
    expect(yield* backgroundStepsDuring(REQUEST_PRIORITY)).toBeLessThan(10)
    // At the background's priority each step waits for a turn of the others (the reason for the one above).
    expect(yield* backgroundStepsDuring(BACKGROUND_PRIORITY)).toBeGreaterThanOrEqual(100)
  }).pipe(Effect.provide(SchedulerLive)))

it.scoped("HttpLive answers at REQUEST_PRIORITY; a batch a request created runs at BACKGROUND_PRIORITY, without the request in its context", () =>
  Effect.gen(function*() {
    const seen = { models: [] as Array<number>, calls: [] as Array<number>, holdingRequest: [] as Array<boolean> }
    // The fiber's priority, and whether it holds an HTTP request (a batch waiting for its turn held its creator's).
    const priority = Effect.map(
      Effect.zip(FiberRef.get(FiberRef.currentSchedulingPriority), Effect.serviceOption(HttpServerRequest.HttpServerRequest)),
      ([p, request]) => (seen.holdingRequest.push(Option.isSome(request)), p)
    )
    const answer = scriptedAnswer(200, {
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: "ok" } }],
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }
    })
    // A scripted upstream that notes the priority of the fibers calling it.
    const recording = Layer.succeed(Inference, Inference.of({
      send: () => Effect.map(priority, (p) => (seen.calls.push(p), answer)),
      models: Effect.map(priority, (p) => (seen.models.push(p), { data: [{ id: "sim-model", ownedBy: "scripted" }], complete: true })),
      reachable: () => Effect.void,
      unreachable: () => Effect.never,
      upstreamName: () => "scripted"
    }))
    const app = yield* Layer.build(HttpLive.pipe(
      Layer.provide(makeServices({ inference: recording })),
      Layer.provideMerge(TestHttpServer),
      Layer.provide(Layer.unwrapEffect(Effect.map(TestDataDir, ({ path }) => AppConfig.layerWith({ dataDir: path })))),
      Layer.provide(TestDataDir.Default),
      Layer.provide(Logger.minimumLogLevel(LogLevel.Warning)),
      Layer.provide(SchedulerLive)
    ))
    const openai = sdk(yield* Effect.provide(baseUrl, app))
    yield* Effect.promise(() => openai.models.list())
    const file = yield* Effect.promise(() =>
      openai.files.create({ file: new File([[chatLine("a", "one"), chatLine("b", "two")].join("\n")], "in.jsonl"), purpose: "batch" }))
    const created = yield* Effect.promise(() =>
      openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" }))
    expect((yield* waitFor(openai, created.id, terminal)).status).toBe("completed")
    expect(seen.models).toEqual([REQUEST_PRIORITY, BACKGROUND_PRIORITY]) // GET /v1/models, then the batch's validation
    expect(seen.calls).toEqual([BACKGROUND_PRIORITY, BACKGROUND_PRIORITY])
    expect(seen.holdingRequest).toEqual([true, false, false, false])
  }))

/**
 * A concurrent `forEach` forked at a request's priority on `scheduler`, and interrupted once it has begun (its fibers
 * not yet started): whether it ended within 2 s (a daemon, which the test leaves behind when it does not).
 */
const interruptedAsItStarts = (scheduler: Scheduler.Scheduler) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.forkDaemon(Effect.forEach([1, 2], () => Effect.sleep("10 millis"), { concurrency: 2, discard: true }))
    yield* Effect.yieldNow()
    yield* Fiber.interruptFork(fiber)
    return Option.isSome(yield* Effect.option(Effect.timeout(Fiber.await(fiber), "2 seconds")))
  }).pipe(Effect.withSchedulingPriority(REQUEST_PRIORITY), Effect.withScheduler(scheduler))

it.live("a concurrent forEach at a request's priority, interrupted as it starts, ends (on Effect's matrix it waited for ever)", () =>
  Effect.gen(function*() {
    expect(yield* interruptedAsItStarts(serverScheduler)).toBe(true)
    const matrix = Scheduler.makeMatrix([BACKGROUND_PRIORITY, ioFirstScheduler], [REQUEST_PRIORITY, Scheduler.defaultScheduler])
    expect(yield* interruptedAsItStarts(matrix)).toBe(false)
  }))

it.live("a layer failing beside HttpLive, as an app's own can, ends the start with its failure", () =>
  Effect.gen(function*() {
    // It yields once first: its failure then interrupts HttpLive's build under way.
    const failing = Layer.effectDiscard(Effect.zipRight(Effect.yieldNow(), Effect.fail("the app's own layer failed")))
    const launched = yield* Layer.launch(Layer.merge(HttpLive, failing).pipe(
      Layer.provide(NodeServerLive.pipe(Layer.provideMerge(makeServices()))),
      Layer.provide(SchedulerLive)
    )).pipe(
      Effect.provide(Layer.unwrapEffect(Effect.map(TestDataDir, ({ path }) => AppConfig.layerWith({ dataDir: path, port: 0, host: "127.0.0.1" })))),
      Effect.provide(TestDataDir.Default),
      Effect.provide(Logger.minimumLogLevel(LogLevel.None)),
      Effect.forkDaemon // left behind if it hangs
    )
    const exit = Option.getOrThrow(yield* Effect.option(Effect.timeout(Fiber.await(launched), "10 seconds")))
    expect(Exit.isFailure(exit) && Cause.failures(exit.cause)).toEqual(Chunk.of("the app's own layer failed"))
  }))
