/**
 * Watching a batch until it ends: its object polled every `interval`, shown as a live bar on a terminal, as plain
 * lines elsewhere, or as JSON objects. Ctrl-C stops the wait at once (a poll in flight is aborted); on a terminal it
 * asks whether to cancel the batch, elsewhere (nobody to answer), or at a SIGTERM, it stops watching and says how
 * to cancel. Once the
 * batch was seen, a poll that fails for a reason that may pass (the server restarting, the connection lost) is made
 * again for a while (`patience.ts`), and so is the first poll of a batch the command has just made (`printed`);
 * another's first poll that fails ends the watch at once (a wrong URL or id, most likely).
 */
import * as Prompt from "@effect/cli/Prompt"
import type { Batch } from "openai/resources/batches"
import { type Duration, Effect, Either, Option, Queue } from "effect"
import { BatchApi } from "./BatchApi.js"
import { CliFailure, STOP_SIGNAL_NAMES, STOP_SIGNALS, type StopSignal } from "./failure.js"
import { columns, interactive, type Mode, note, printJson, say, write } from "./output.js"
import { type Patience, patiently } from "./patience.js"
import { servingUpstream, stallNote, upstreamNote } from "./upstreamNotes.js"
import { runTime } from "./describe.js"
import { addSample, barLine, countsOf, isTerminal, plainLine, plainLineDue, type Printed, rate, type Sample } from "./progress.js"

export interface WatchSettings extends Pick<Patience, "retryFor"> {
  readonly mode: Mode
  readonly interval: Duration.Duration
  /** Seconds the counts may stand still, the upstream up, before the watch says why (`stallNote`; default 15). */
  readonly stallNoteAfter?: number | undefined
  /**
   * The batch's object as printed already by the command that made it (`submit`, `retry`): not printed again unless
   * it changed, and known to exist (its first poll's failure is ridden out).
   */
  readonly printed?: Batch | undefined
}

interface Display {
  readonly show: (batch: Batch, perSecond: number | undefined, now: number) => Effect.Effect<void>
  /** Ends the live line, before anything else is written. */
  readonly settle: Effect.Effect<void>
}

const CLEAR_LINE = "\r\x1b[2K"

/** What a JSON watch compares to tell a change: its status and counts. */
const jsonSeen = (batch: Batch) => `${batch.status} ${countsOf(batch).done}`

const makeDisplay = (mode: Mode, printed: Batch | undefined): Display => {
  switch (mode) {
    case "tty": {
      let drawn = false
      return {
        show: (batch, perSecond) =>
          Effect.suspend(() => {
            drawn = true
            return write(barLine(batch, perSecond, columns()), CLEAR_LINE)
          }),
        settle: Effect.suspend(() => (drawn ? Effect.sync(() => (drawn = false)).pipe(Effect.zipRight(write("\n"))) : Effect.void))
      }
    }
    case "plain": {
      let last: Printed | undefined
      return {
        show: (batch, perSecond, now) =>
          Effect.suspend(() => {
            if (!plainLineDue(last, batch, now)) return Effect.void
            last = { status: batch.status, done: countsOf(batch).done, at: now }
            // The batch's own clock, in its stamps' whole seconds, as the summary's "completed in 4s" (the watch's
            // began after the upload: "[2s] … completed" then "completed in 1s"); a server's clock ahead of ours: 0s.
            return say(plainLine(batch, perSecond, Math.max(0, runTime(batch, Math.floor(now / 1000)))))
          }),
        settle: Effect.void
      }
    }
    case "json": {
      let last = printed === undefined ? undefined : jsonSeen(printed)
      return {
        show: (batch) =>
          Effect.suspend(() => {
            const seen = jsonSeen(batch)
            if (seen === last) return Effect.void
            last = seen
            return printJson(batch)
          }),
        settle: Effect.void
      }
    }
  }
}

/**
 * Each Ctrl-C (SIGINT) and SIGTERM as an item in a queue while the scope lasts (`main.ts` then leaves the command
 * running).
 */
const stopSignals = Effect.acquireRelease(
  Effect.gen(function*() {
    const queue = yield* Queue.sliding<StopSignal>(1)
    const handlers = STOP_SIGNAL_NAMES.map((signal) =>
      [signal, () => Queue.unsafeOffer(queue, signal)] as const)
    for (const [signal, handler] of handlers) process.on(signal, handler)
    return { queue, handlers }
  }),
  ({ handlers }) => Effect.sync(() => {
    for (const [signal, handler] of handlers) process.off(signal, handler)
  })
)

const stopped = (id: string, signal: StopSignal) =>
  new CliFailure({
    exitCode: STOP_SIGNALS[signal],
    message: `Stopped watching ${id}; the batch keeps running. Watch it again with \`openai-batch watch ${id}\`, ` +
      `or cancel it with \`openai-batch cancel ${id}\`.`
  })

/**
 * After a Ctrl-C: on a terminal, asks whether to cancel (and does); elsewhere, or at a second Ctrl-C, stops. A
 * SIGTERM stops, as off a terminal: nobody is there to answer.
 */
const onStopSignal = (id: string, mode: Mode, signal: StopSignal) =>
  Effect.gen(function*() {
    if (signal === "SIGTERM" || !interactive(mode)) return yield* stopped(id, signal)
    const cancel = yield* Prompt.confirm({ message: `Cancel batch ${id}?`, initial: false }).pipe(
      Effect.catchTag("QuitException", () => Effect.zipRight(write("\n"), stopped(id, signal)))
    )
    if (!cancel) return
    const batch = yield* Effect.either((yield* BatchApi).cancel(id))
    yield* Either.match(batch, {
      onLeft: (e) => note(e.message ?? `cancelling ${id} failed`),
      onRight: (b) => note(`${id} is ${b.status}: requests in flight are stopped, finished results kept.`)
    })
  })

/** Watches batch `id` until it ends, and gives its last object. */
export const watch = (id: string, settings: WatchSettings) =>
  Effect.scoped(Effect.gen(function*() {
    const api = yield* BatchApi
    const { queue } = yield* stopSignals
    const display = makeDisplay(settings.mode, settings.printed)
    let samples: ReadonlyArray<Sample> = []
    const patience: Patience = { retryFor: settings.retryFor, tell: (line) => Effect.zipRight(display.settle, note(line)) }
    const afterGivingUp = `Batch ${id} is not affected: \`openai-batch watch ${id}\` picks it up again.`
    // A batch just made (`printed`) exists: a first poll that fails is the network's, waited out as any later one's
    // (a connection reset then ended `submit --watch` at once, as if the id were wrong).
    let seen = settings.printed !== undefined
    // The batch's upstream is asked about when the running batch did not move since the last poll, and until it is
    // said to be back once it was said to be down (also when the batch ended since: its last poll may come after
    // the upstream's return); never again from a server without the route.
    let lastDone = -1
    let saidDown = false
    let asking = true
    /** When the counts last moved (ms), and whether the stall since was said (`stallNote`). */
    let movedAt = Date.now()
    let saidStall = false
    const tellUpstream = (batch: Batch, now: number) =>
      Effect.gen(function*() {
        const done = countsOf(batch).done
        const stalled = done === lastDone
        lastDone = done
        if (!stalled) [movedAt, saidStall] = [now, false]
        const running = batch.status === "in_progress"
        if (!asking || !batch.model || !(saidDown || (running && stalled))) return
        const upstreams = yield* api.upstreams
        if (upstreams === "unsupported") asking = false
        if (typeof upstreams === "string") return
        const upstream = servingUpstream(upstreams, batch.model)
        const line = upstreamNote(upstream, saidDown, now / 1000, isTerminal(batch.status))
        if (line !== undefined) {
          saidDown = !saidDown
          return yield* Effect.zipRight(display.settle, note(line))
        }
        const stall = saidStall || !running || upstream?.state !== "up" ? undefined : stallNote((now - movedAt) / 1000, settings.stallNoteAfter)
        if (stall === undefined) return
        saidStall = true
        yield* Effect.zipRight(display.settle, note(stall))
      })
    const poll = Effect.gen(function*() {
      const batch = yield* (seen ? patiently(api.poll(id), patience, afterGivingUp) : api.retrieve(id))
      seen = true
      const now = Date.now()
      samples = addSample(samples, { at: now, done: countsOf(batch).done })
      yield* tellUpstream(batch, now)
      yield* display.show(batch, rate(samples), now)
      if (isTerminal(batch.status)) return Option.some(batch)
      yield* Effect.sleep(settings.interval)
      return Option.none<Batch>()
    })
    const loop = Effect.gen(function*() {
      for (;;) {
        const outcome = yield* Effect.raceFirst(Effect.map(poll, Either.right), Effect.map(Queue.take(queue), Either.left))
        if (Either.isRight(outcome) && Option.isSome(outcome.right)) return outcome.right.value
        if (Either.isLeft(outcome)) {
          yield* display.settle
          yield* onStopSignal(id, settings.mode, outcome.left)
        }
      }
    })
    // The live line is ended however the watch ends, so that what follows starts on a line of its own.
    return yield* Effect.ensuring(loop, display.settle)
  }))
