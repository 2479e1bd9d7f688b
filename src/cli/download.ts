/**
 * `download`, and `watch`'s last step: saving a finished batch's output and error files as `DIR/<batch_id>_output.jsonl` and `DIR/<batch_id>_error.jsonl`:
 * each streamed to a temporary name beside its target and renamed once complete, so a file under the final name is
 * always whole (an interrupted download leaves nothing behind; one killed leaves its partial file, which the next
 * download of the file goes on from). A download cut by the server going away goes on once it is back
 * (`patience.ts`), from where it stopped when the server answers a `Range` (this one does), else over.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import { constants } from "node:fs"
import { access, lstat } from "node:fs/promises"
import * as Path from "node:path"
import type { Batch } from "openai/resources/batches"
import { Effect, Stream } from "effect"
import { makeDirectories } from "../storage/makeDirectories.js"
import { BatchApi } from "./BatchApi.js"
import { problemLine } from "./describe.js"
import { type ErrorReasons, makeErrorReasons, reasonsLine } from "./errorReasons.js"
import { CliFailure, EXIT_FAILED, EXIT_INVALID, failed, systemErrorText, unwritableDirectory } from "./failure.js"
import { type Mode, note, printJson, sayAll } from "./output.js"
import { type Patience, patiently } from "./patience.js"
import { count, isTerminal, plural } from "./progress.js"
import { withDownloadProgress } from "./transferProgress.js"

export interface Saved {
  readonly path: string
  readonly lines: number
  /** The error file's: why its lines failed, the most frequent first (`errorReasons.ts`). */
  readonly reasons?: ReadonlyArray<readonly [reason: string, lines: number]>
}

export interface SavedResults {
  readonly output: Saved | undefined
  readonly error: Saved | undefined
  /** The files the server no longer has (expired, `output_expires_after`, or deleted): the others are saved. */
  readonly gone: ReadonlyArray<{ readonly kind: "output" | "error"; readonly fileId: string }>
}

const NEWLINE = 10

/** A body that stops arriving half-way: the connection was lost, which may pass. */
const cut = (fileId: string) => (e: unknown) => {
  const reason = e instanceof Error ? e.message : String(e)
  return new CliFailure({ exitCode: EXIT_FAILED, message: `downloading file ${fileId}: ${reason}`, transient: reason })
}

/** Lines counted so far, and the last byte seen (a last line without its newline counts too); an error file's reasons. */
interface Counted {
  lines: number
  last: number
  readonly reasons: ErrorReasons | undefined
}

/** Counts the lines of `chunk` into `counted`. */
const countLines = (counted: Counted, chunk: Uint8Array) => {
  for (let i = chunk.indexOf(NEWLINE); i !== -1; i = chunk.indexOf(NEWLINE, i + 1)) counted.lines++
  if (chunk.length > 0) counted.last = chunk[chunk.length - 1]!
  counted.reasons?.feed(chunk)
}

/**
 * Streams file `fileId` to `path`, counting its lines (and, for an error file, their reasons); a try after a cut
 * (`again`) goes on from what the partial file holds when the server answers a `Range`, else over again.
 */
const save = (fileId: string, path: string, again: boolean, kind: "output" | "error") =>
  Effect.gen(function*() {
    const api = yield* BatchApi
    const fs = yield* FileSystem.FileSystem
    const partial = partialOf(path)
    // What was written, not what was received: a piece on its way to the file as the connection was cut is not in it.
    const onDisk = again ? yield* fs.stat(partial).pipe(Effect.map((info) => Number(info.size)), Effect.orElseSucceed(() => 0)) : 0
    const { body, resumed, size } = yield* api.content(fileId, onDisk)
    const counted: Counted = { lines: 0, last: NEWLINE, reasons: kind === "error" ? makeErrorReasons() : undefined }
    if (resumed) {
      yield* Stream.runForEach(fs.stream(partial), (chunk) => Effect.sync(() => countLines(counted, chunk))).pipe(
        Effect.mapError((e) => failed(`reading ${partial}: ${systemErrorText(e)}`))
      )
    }
    const from = resumed ? onDisk : 0
    let received = from
    // Named by its kind: the file's name (its batch id's 32 characters) left no room for the rate on 80 columns.
    yield* withDownloadProgress(`the ${kind} file`, size, from, (onReceived) =>
      Stream.fromReadableStream(() => body, cut(fileId)).pipe(
        Stream.tap((chunk) =>
          Effect.sync(() => {
            countLines(counted, chunk)
            onReceived((received += chunk.length))
          })
        ),
        Stream.run(fs.sink(partial, { flag: resumed ? "a" : "w" })),
        Effect.zipRight(fs.rename(partial, path)),
        Effect.mapError((e) => (e._tag === "CliFailure" ? e : failed(`writing ${path}: ${systemErrorText(e)}`)))
      ))
    const lines = counted.last === NEWLINE ? counted.lines : counted.lines + 1
    return { path, lines, ...(counted.reasons === undefined ? {} : { reasons: counted.reasons.counts() }) } satisfies Saved
  })

const partialOf = (path: string) => `${path}.${process.pid}.partial`

/** Whether process `pid` is alive (signal 0 tests it; EPERM: alive, another user's). */
const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** How long a partial file must have been left untouched to be taken over: a download elsewhere may still write it. */
const LEFT_FOR_MS = 30_000

/**
 * Takes over the partial file of `path` that a download killed before its end left (its process is gone; of several,
 * the largest), so that this one goes on from it (whether it took one); the others such are removed. They were left
 * behind and piled up, and the next download began again from the first byte. Only a plain file (no link) of this
 * user, untouched for `LEFT_FOR_MS`, is taken: one planted by another user of the directory, or written by a live
 * download in another container (whose pids are not seen here), is left alone.
 */
const adoptLeftPartial = (path: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const dir = Path.dirname(path)
    const prefix = `${Path.basename(path)}.`
    const named = (yield* fs.readDirectory(dir)).flatMap((name) => {
      const pid = name.startsWith(prefix) && name.endsWith(".partial") ? Number(name.slice(prefix.length, -".partial".length)) : NaN
      return Number.isInteger(pid) && pid > 0 && pid !== process.pid && !alive(pid) ? [Path.join(dir, name)] : []
    })
    const left = yield* Effect.promise(async () => {
      const found: Array<readonly [string, number]> = []
      for (const name of named) {
        const info = await lstat(name).catch(() => undefined)
        if (info?.isFile() && info.uid === process.getuid?.() && Date.now() - info.mtimeMs >= LEFT_FOR_MS) found.push([name, info.size])
      }
      return found
    })
    const [taken, ...rest] = left.sort((a, b) => b[1] - a[1]).map(([name]) => name)
    for (const name of rest) yield* fs.remove(name)
    if (taken === undefined) return false
    yield* fs.rename(taken, partialOf(path))
    return true
  }).pipe(Effect.orElseSucceed(() => false))

/**
 * Fails (exit 2, nothing done) unless `dir` can be made and written to: checked before a batch is made or watched,
 * not found out once it has run its hours.
 */
export const checkOut = (dir: string) =>
  Effect.tryPromise({
    try: async () => {
      await makeDirectories(dir)
      await access(dir, constants.W_OK)
    },
    catch: (e) =>
      new CliFailure({
        exitCode: EXIT_INVALID,
        message: `cannot write the results to ${dir} (--out): ${unwritableDirectory(e)}; nothing was done.`
      })
  })

/** A batch id that can name a file in any directory: what this server's ids (`batch_…`) are. */
const FILE_NAME_ID = /^[A-Za-z0-9_-]{1,200}$/

/**
 * Saves the files the batch has (none while it runs, or when it failed validation) into `dir`, made if missing; a
 * download the server cuts is made again, with `patience`.
 */
export const saveResults = (batch: Batch, dir: string, patience: Patience) =>
  Effect.gen(function*() {
    // The id names the files: one from a server that is not this one (`../../x`) must not write outside `dir`.
    if ((batch.output_file_id || batch.error_file_id) && !FILE_NAME_ID.test(batch.id)) {
      return yield* failed(`The server's batch id ${JSON.stringify(batch.id.slice(0, 200))} cannot name a file; nothing was written.`)
    }
    if (batch.output_file_id || batch.error_file_id) {
      yield* Effect.tryPromise({
        try: () => makeDirectories(dir),
        catch: (e) => failed(`cannot write the results to ${dir}: ${unwritableDirectory(e)}`)
      })
    }
    // A try cut half-way keeps its partial file for the next; the last one's failure removes it.
    const patientSave = (fileId: string, kind: "output" | "error") =>
      Effect.suspend(() => {
        const path = Path.join(dir, `${batch.id}_${kind}.jsonl`)
        let tries = 0
        const tried = (adopted: boolean) => Effect.suspend(() => save(fileId, path, adopted || tries++ > 0, kind))
        return Effect.flatMap(adoptLeftPartial(path), (adopted) =>
          patiently(tried(adopted), patience, `Nothing was written to ${path}; \`openai-batch download ${batch.id}\` tries again.`)).pipe(
          Effect.onError(() => Effect.flatMap(FileSystem.FileSystem, (fs) => Effect.ignore(fs.remove(partialOf(path)))))
        )
      })
    const gone: Array<SavedResults["gone"][number]> = []
    // One file gone (an output expired before its error file) no longer stops the other from being saved.
    const saveIfThere = (fileId: string, kind: "output" | "error") =>
      patientSave(fileId, kind).pipe(
        Effect.catchIf((e) => e.status === 404, () => Effect.sync(() => void gone.push({ kind, fileId })))
      )
    const output = batch.output_file_id ? yield* saveIfThere(batch.output_file_id, "output") : undefined
    const error = batch.error_file_id ? yield* saveIfThere(batch.error_file_id, "error") : undefined
    return { output: output ?? undefined, error: error ?? undefined, gone } satisfies SavedResults
  })

const lines = (n: number) => `${count(n)} ${plural("line", n)}`

/**
 * Where the files went, in words: `output: DIR/…_output.jsonl (980 lines)`, `errors: …`, and why the error lines
 * failed (`errors by reason: 200 × batch_cancelled, 3 × status 500`).
 */
export const savedLines = (saved: SavedResults): ReadonlyArray<string> => {
  const reasons = reasonsLine(saved.error?.reasons ?? [])
  return [
    ...(saved.output ? [`output: ${saved.output.path} (${lines(saved.output.lines)})`] : []),
    ...(saved.error ? [`errors: ${saved.error.path} (${lines(saved.error.lines)})`] : []),
    ...(reasons === undefined ? [] : [reasons]),
    ...saved.gone.map(({ fileId, kind }) => `${kind === "output" ? "output" : "errors"}: ${fileId} is no longer on the server (expired or deleted)`)
  ]
}

/** Where the files went, as `download --json` and the end of a `--json` watch print it. */
export const savedJson = (saved: SavedResults) => ({
  output_path: saved.output?.path ?? null,
  output_lines: saved.output?.lines ?? 0,
  error_path: saved.error?.path ?? null,
  error_lines: saved.error?.lines ?? 0,
  error_reasons: Object.fromEntries(saved.error?.reasons ?? []),
  gone_file_ids: saved.gone.map(({ fileId }) => fileId)
})

/** The `download` command: a finished batch's files into `dir` (a batch still running has none yet: exit 1). */
export const download = (id: string, dir: string, mode: Mode, patience: Pick<Patience, "retryFor">) =>
  Effect.gen(function*() {
    const batch = yield* (yield* BatchApi).retrieve(id)
    if (!isTerminal(batch.status)) {
      return yield* failed(`${batch.id} is ${batch.status}: its files are written when it ends (\`openai-batch watch ${batch.id}\` waits for that).`)
    }
    // Made only for a batch that has files to write (an unknown id left an empty directory behind).
    if (batch.output_file_id || batch.error_file_id) yield* checkOut(dir)
    const saved = yield* saveResults(batch, dir, { ...patience, tell: note })
    const none = !saved.output && !saved.error && saved.gone.length === 0
    if (mode === "json") {
      // A batch that failed validation has no file: what the server found wrong comes along instead.
      yield* printJson({
        object: "batch.files",
        id: batch.id,
        status: batch.status,
        ...savedJson(saved),
        ...(none ? { errors: batch.errors?.data ?? [] } : {})
      })
    } else {
      yield* sayAll(savedLines(saved))
      if (none) yield* sayAll((batch.errors?.data ?? []).map(problemLine))
    }
    // Exit 1 in both modes: a script learns that nothing, or not everything, was saved.
    if (none) return yield* failed(`${batch.id} has no output or error file (it ended ${batch.status}).`)
    if (saved.gone.length > 0) return yield* new CliFailure({ exitCode: EXIT_FAILED })
  })
