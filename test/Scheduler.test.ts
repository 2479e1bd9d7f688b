/**
 * The server's scheduler: a fiber that keeps going (as a batch's workers do, waking each other) leaves Node room to
 * read its sockets between its steps, and `makeApp` runs what it builds on it.
 */
import { expect, it } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { createConnection, createServer, type Socket } from "node:net"
import { AppConfig } from "../src/Config.js"
import { InferenceScripted } from "../src/inference/Inference.js"
import { makeApp } from "../src/Layers.js"
import { SchedulerLive } from "../src/Scheduler.js"
import { TestDataDir } from "./support/TestApp.js"

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
