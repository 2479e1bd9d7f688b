/**
 * A Node readable's bytes as an Effect stream, each element all that arrived since the previous one.
 *
 * Why not the platform's `NodeStream.fromReadable`: Node runs its pending callbacks after each body chunk its HTTP
 * parser hands on, so a reader woken by 'readable' read each chunk alone, and each stream element costs ~17 µs of
 * Effect's machinery: a body sent in 1-byte chunks took ~20 µs of CPU a byte (100 KB: 2 s, while other requests
 * waited). Here a reader is woken on the next turn of the event loop, once the socket's bytes at hand have all been
 * parsed, and takes them in one piece. Paused mode, as there: past the readable's buffer, Node stops reading the
 * socket until the bytes are taken.
 */
import { Chunk, Effect, Option, Stream } from "effect"
import type { Readable } from "node:stream"

/** Ended before its end: a readable destroyed without an error of its own (its client went away). */
class ClosedEarly extends Error {
  constructor() {
    super("The body's stream closed before its end.")
  }
}

export const bodyStream = (source: Readable): Stream.Stream<Uint8Array, unknown> =>
  Stream.fromPull(Effect.gen(function*() {
    let waiting: (() => void) | undefined
    let woken: ReturnType<typeof setImmediate> | undefined
    const wake = () => {
      woken ??= setImmediate(() => {
        woken = undefined
        const resume = waiting
        waiting = undefined
        resume?.()
      })
    }
    for (const event of ["readable", "end", "error", "close"]) source.on(event, wake)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const event of ["readable", "end", "error", "close"]) source.off(event, wake)
        if (woken !== undefined) clearImmediate(woken)
      })
    )
    return Effect.async<Chunk.Chunk<Uint8Array>, Option.Option<unknown>>((resume) => {
      const take = () => {
        const bytes = source.read() as Uint8Array | null
        if (bytes !== null) return resume(Effect.succeed(Chunk.of(bytes)))
        if (source.errored !== null) return resume(Effect.fail(Option.some(source.errored)))
        if (source.readableEnded) return resume(Effect.fail(Option.none()))
        if (source.destroyed) return resume(Effect.fail(Option.some(new ClosedEarly())))
        waiting = take
      }
      take()
      return Effect.sync(() => {
        waiting = undefined
      })
    })
  }))
