/**
 * A large upload's or download's progress, on stderr beside the notes (stdout keeps only the results): on a terminal
 * a line redrawn in place (`uploading requests.jsonl: 45% of 200.0 MB, 12.3 MB/s, 9s left`), in pipes and CI logs a
 * plain line every 5 s, as a batch's. One done before its first turn shows nothing. A 200 MB file on a slow link went
 * up (or down) for minutes with nothing said. An upload's bytes counted are those read from the file: a few MB ahead
 * of what the server has, held in the connection's buffers.
 */
import { Duration, Effect, Fiber } from "effect"
import { cutToColumns } from "./columns.js"
import { drawsInPlace, visible } from "./output.js"
import { duration, etaSeconds, PLAIN_EVERY_MS } from "./progress.js"

/** `0.4 MB`, `12.3 MB`, `1,204.5 MB`: decimal megabytes, as file sizes are shown. */
export const megabytes = (bytes: number): string =>
  `${(bytes / 1e6).toFixed(1).replace(/\B(?=(\d{3})+(?!\d))/g, ",")} MB`

/**
 * The line for `sent` of `total` bytes, `seconds` after the upload began. Once every byte is read, what is left is in
 * the connection's buffers (and a proxy's, which may hold all of it): the server's answer is what is waited for,
 * `waited` seconds so far ("100%, 0s left" stood for half a minute behind a slow proxy).
 */
export const uploadLine = (name: string, sent: number, total: number, seconds: number, waited = 0): string => {
  if (sent >= total && total > 0) return `uploading ${name}: all ${megabytes(total)} sent, waiting for the server (${duration(waited)})`
  return `uploading ${name}: ${shareLine(sent, total, seconds > 0 ? sent / seconds : undefined)}`
}

/** `45% of 200.0 MB, 9.0 MB/s, 12s left`: `moved` of `total` bytes at `perSecond` (the rate and time left when known). */
const shareLine = (moved: number, total: number, perSecond: number | undefined): string => {
  const left = etaSeconds(total - moved, perSecond)
  const percent = total > 0 ? Math.min(100, Math.floor((moved / total) * 100)) : 100
  return `${percent}% of ${megabytes(total)}` +
    (perSecond === undefined ? "" : `, ${megabytes(perSecond)}/s`) +
    (left === undefined ? "" : `, ${duration(left)} left`)
}

/**
 * The line for `received` of `total` bytes (unknown: a server that sends no length), `seconds` after the download
 * began at byte `from` (a download going on from a partial file).
 */
export const downloadLine = (name: string, received: number, total: number | undefined, seconds: number, from = 0): string => {
  const perSecond = seconds > 0 ? (received - from) / seconds : undefined
  if (total !== undefined) return `downloading ${name}: ${shareLine(received, total, perSecond)}`
  return `downloading ${name}: ${megabytes(received)}` + (perSecond === undefined ? "" : `, ${megabytes(perSecond)}/s`)
}

export interface ProgressSink {
  /** Whether it is a terminal: the line redrawn in place, four times a second, cut to its width (a wrapped line is not). */
  readonly tty: boolean
  readonly columns: () => number
  readonly write: (text: string) => void
}

export const stderrSink: ProgressSink = {
  tty: drawsInPlace(process.stderr),
  columns: () => process.stderr.columns || 80,
  write: (text) => void process.stderr.write(text)
}

const CLEAR_LINE = "\r\x1b[2K"
const TTY_EVERY = Duration.millis(250)
const PLAIN_EVERY = Duration.millis(PLAIN_EVERY_MS)

/**
 * Runs `transfer`, given the callback it tells the bytes moved so far, with its progress shown on `sink` meanwhile
 * (`lineOf` the bytes, the seconds since the start, and since every byte of `total` had moved); the live line is
 * cleared once it ends, however it ends, and before each note `transfer` writes (a busy server's "trying again in
 * 2s…" was written on the end of it), drawn again once the transfer moves again.
 */
const withProgress = <A, E, R>(
  total: number | undefined,
  lineOf: (moved: number, seconds: number, waited: number) => string,
  transfer: (onMoved: (bytes: number) => void) => Effect.Effect<A, E, R>,
  sink: ProgressSink
): Effect.Effect<A, E, R> =>
  Effect.gen(function*() {
    let moved = 0
    let drawn = false
    /** When a line first saw every byte moved (since the attempt's start). */
    let allMovedAt: number | undefined
    /** How many times the transfer told its bytes; at a note, that count: no line until it tells again (a busy wait's). */
    let told = 0
    let quietUntil: number | undefined
    const started = yield* Effect.clockWith((clock) => clock.currentTimeMillis)
    const every = sink.tty ? TTY_EVERY : PLAIN_EVERY
    const show = Effect.flatMap(Effect.clockWith((clock) => clock.currentTimeMillis), (now) =>
      Effect.sync(() => {
        if (quietUntil === told) return
        quietUntil = undefined
        // The file's name as every line shows it: its controls drawn (`⟨U+202E⟩`), not sent to the terminal.
        if (total !== undefined && moved >= total) allMovedAt ??= now
        const line = visible(lineOf(moved, (now - started) / 1000, (now - (allMovedAt ?? now)) / 1000))
        if (sink.tty) {
          drawn = true
          sink.write(CLEAR_LINE + cutToColumns(line, Math.max(0, sink.columns() - 1)))
        } else sink.write(`${line}\n`)
      }))
    const clear = Effect.sync(() => {
      if (drawn) sink.write(CLEAR_LINE)
      drawn = false
    })
    const ticker = yield* Effect.fork(Effect.forever(Effect.delay(show, every)))
    // A note (a busy server's "trying again in 30s…") is the last word until the next attempt moves bytes: it said
    // "all 0.0 MB sent, waiting for the server" while it waited out the server's Retry-After.
    const quiet = Effect.sync(() => {
      quietUntil = told
      allMovedAt = undefined
    })
    return yield* Effect.consoleWith((console) =>
      Effect.withConsole(
        transfer((bytes) => {
          moved = bytes
          told++
        }),
        { ...console, error: (...args) => Effect.zipRight(Effect.zipRight(clear, quiet), console.error(...args)) }
      )
    ).pipe(Effect.ensuring(Effect.zipRight(Fiber.interrupt(ticker), clear)))
  })

/** `upload` of a file of `total` bytes named `name`, its progress shown (`uploadLine`) as it reads them. */
export const withUploadProgress = <A, E, R>(
  name: string,
  total: number,
  upload: (onRead: (bytes: number) => void) => Effect.Effect<A, E, R>,
  sink: ProgressSink = stderrSink
): Effect.Effect<A, E, R> =>
  withProgress(total, (sent, seconds, waited) => uploadLine(name, sent, total, seconds, waited), upload, sink)

/**
 * `download` into the file named `name`, of `total` bytes when known, from byte `from` on, its progress shown
 * (`downloadLine`) as the bytes reach the file (counted from 0, `from` included).
 */
export const withDownloadProgress = <A, E, R>(
  name: string,
  total: number | undefined,
  from: number,
  download: (onReceived: (bytes: number) => void) => Effect.Effect<A, E, R>,
  sink: ProgressSink = stderrSink
): Effect.Effect<A, E, R> =>
  withProgress(total, (received, seconds) => downloadLine(name, received, total, seconds, from), download, sink)
