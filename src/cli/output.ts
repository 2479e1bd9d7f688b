/**
 * Where the CLI writes: results (ids, tables, progress, JSON objects) on stdout, notes and errors on stderr, so
 * `ID=$(openai-batch submit requests.jsonl)` and `… --json | jq` get only the results.
 */
import { Console, Effect } from "effect"

/** `tty`: a live bar redrawn in place; `plain`: progress lines (pipes, CI logs); `json`: one JSON object a line. */
export type Mode = "tty" | "plain" | "json"

export const modeOf = (json: boolean): Mode => (json ? "json" : process.stdout.isTTY ? "tty" : "plain")

/** Ctrl-C may ask a question only when someone can answer it, and not inside a stream of JSON objects. */
export const interactive = (mode: Mode): boolean => mode !== "json" && process.stdin.isTTY === true && process.stdout.isTTY === true

export const say = (line: string) => Console.log(line)
export const sayAll = (lines: ReadonlyArray<string>) => Effect.forEach(lines, say, { discard: true })
export const note = (line: string) => Console.error(line)
export const printJson = (value: unknown) => Console.log(JSON.stringify(value))

/** Writes without a newline (the live bar). */
export const write = (text: string) => Effect.sync(() => process.stdout.write(text))

/** Terminal columns (80 when unknown). */
export const columns = (): number => process.stdout.columns || 80
