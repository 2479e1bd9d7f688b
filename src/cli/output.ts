/**
 * Where the CLI writes: results (ids, tables, progress, JSON objects) on stdout, notes and errors on stderr, so
 * `ID=$(openai-batch submit requests.jsonl)` and `… --json | jq` get only the results.
 */
import { Console, Effect } from "effect"

/** An SGR escape sequence: the colours and bold of @effect/cli's help and command-line errors. */
const SGR = /\x1b\[[0-9;]*m/g

/**
 * Whether `stream` is a terminal that draws escape sequences: not a pipe, nor `TERM=dumb` (Emacs' shell, some CI
 * consoles), which printed the live bar's and the colours' codes as text.
 */
export const drawsInPlace = (stream: NodeJS.WriteStream): boolean => stream.isTTY === true && process.env.TERM !== "dumb"

/** Whether `stream` shows colours: a terminal that draws them, unless `NO_COLOR` is set (no-color.org). */
const showsColours = (stream: NodeJS.WriteStream) => drawsInPlace(stream) && !process.env.NO_COLOR

const withoutColoursOn = (stream: NodeJS.WriteStream) => (args: ReadonlyArray<unknown>) =>
  showsColours(stream) ? args : args.map((arg) => (typeof arg === "string" ? arg.replace(SGR, "") : arg))

/**
 * `effect` with a console that drops colour codes where they would not be colours (a pipe, a file, `NO_COLOR`):
 * `openai-batch --help | less` and a CI log get the help's text, not its escape sequences.
 */
export const colourWhereShown = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.consoleWith((console) => {
    const out = withoutColoursOn(process.stdout)
    const err = withoutColoursOn(process.stderr)
    return Effect.withConsole(effect, {
      ...console,
      log: (...args) => console.log(...out(args)),
      error: (...args) => console.error(...err(args)),
      // Effect's pretty logger writes here, in colour whenever stdout is a terminal.
      unsafe: {
        ...console.unsafe,
        log: (...args) => console.unsafe.log(...out(args)),
        error: (...args) => console.unsafe.error(...err(args))
      }
    })
  })

/** `tty`: a live bar redrawn in place; `plain`: progress lines (pipes, CI logs); `json`: one JSON object a line. */
export type Mode = "tty" | "plain" | "json"

export const modeOf = (json: boolean): Mode => (json ? "json" : drawsInPlace(process.stdout) ? "tty" : "plain")

/** Ctrl-C may ask a question only when someone can answer it, and not inside a stream of JSON objects. */
export const interactive = (mode: Mode): boolean => mode !== "json" && process.stdin.isTTY === true && process.stdout.isTTY === true

/**
 * Control characters (C0 but tab and newline, DEL, C1) and the bidirectional controls, drawn as `⟨U+001B⟩`: a
 * server's text (a batch's metadata, a model name in an error message) cannot retitle or clear the terminal, move
 * its cursor, or reorder what is shown. Every line written goes through it, or through `printJson`.
 */
export const visible = (text: string): string => text.replace(CONTROLS, (c) => `⟨U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}⟩`)
const CONTROLS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g

/** `line` as one line: its newlines drawn too (a server's batch id holding one forged a line of `status` or `list`). */
const oneLineOf = (line: string) => visible(line).replaceAll("\n", "⟨U+000A⟩")

export const say = (line: string) => Console.log(oneLineOf(line))
export const sayAll = (lines: ReadonlyArray<string>) => Effect.forEach(lines, say, { discard: true })
export const note = (line: string) => Console.error(oneLineOf(line))
/** One JSON object a line; the controls JSON leaves as they are (C1, DEL, bidirectional) escaped as `\u202e`. */
export const printJson = (value: unknown) =>
  Console.log(JSON.stringify(value).replace(JSON_UNESCAPED_CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`))
const JSON_UNESCAPED_CONTROLS = /[\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g

/** Writes `text` without a newline, after `control` (the live bar: the sequence that clears its line, then the bar). */
export const write = (text: string, control = "") => Effect.sync(() => process.stdout.write(control + visible(text)))

/** Terminal columns (80 when unknown). */
export const columns = (): number => process.stdout.columns || 80
