/**
 * `submit`: the file checked locally (nothing is uploaded when a line has a problem: exit 2), then streamed up, the
 * batch created and its id printed; with `--watch`, followed to its end. A file whose batch the server refused is
 * deleted again, so that a failed submit leaves nothing behind. `retry` shares the part after the create.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import type { Batch, BatchCreateParams } from "openai/resources/batches"
import type { FileObject } from "openai/resources/files"
import { Cause, Effect, Either, Option } from "effect"
import * as Path from "node:path"
import { uploadFilename } from "../files/uploadChecks.js"
import { BatchApi, type RerunKind } from "./BatchApi.js"
import { problemLine } from "./describe.js"
import { CliFailure, EXIT_INVALID } from "./failure.js"
import { checkOut } from "./download.js"
import { follow, type FollowSettings } from "./follow.js"
import { checkFile } from "./localValidation.js"
import { note, printJson, say } from "./output.js"
import { count, plural } from "./progress.js"
import { withUploadProgress } from "./transferProgress.js"

export interface AfterCreate extends FollowSettings {
  readonly watch: boolean
}

/** Prints the new batch (its id, or its object with --json) and, with --watch, follows it. */
const created = (batch: Batch, after: AfterCreate) =>
  Effect.zipRight(
    after.mode === "json" ? printJson(batch) : say(batch.id),
    after.watch ? follow(batch.id, { ...after, printed: batch }) : Effect.void
  )

export interface SubmitOptions extends AfterCreate {
  readonly file: string
  /** How the file is named to the user (`-` for the standard input's spooled copy); `file` when not given. */
  readonly shownAs?: string | undefined
  readonly endpoint: Option.Option<string>
  readonly metadata: Readonly<Record<string, string>>
  /** The most requests the server takes in a batch (its `MAX_REQUESTS_PER_BATCH`). */
  readonly maxRequests: number
  /** Makes the batch once for this key: run again, the submit gives the batch made the first time. */
  readonly idempotencyKey?: string | undefined
}

/**
 * After a failed create: deletes the upload when the server refused the batch (a 4xx; best effort: the refusal is
 * what the user hears of). When no answer came (the connection lost, a timeout, Ctrl-C), or a 5xx (a gateway's 502
 * while the server restarts, or the last of a keyed create's tries after an answer was lost: the first may have made
 * the batch), the batch may exist and need its input: the file stays, and the user is told which it is.
 */
const discard = (file: FileObject, keyed: boolean) => (failure: Cause.Cause<CliFailure>) =>
  Option.match(Cause.failureOption(failure), {
    onSome: (e) => e.answered === true && (e.status === undefined || e.status < 500),
    onNone: () => false
  })
    ? Effect.flatMap(BatchApi, (api) => Effect.either(api.deleteFile(file.id))).pipe(
      Effect.flatMap(Either.match({
        onLeft: (e) => note(`the batch was not created, and ${file.id} (uploaded for it) is left: ${e.message ?? "its delete failed"}`),
        onRight: () => note(`the batch was not created: ${file.id} (uploaded for it) is deleted`)
      }))
    )
    : note(
      `no clear answer to the create: a batch may exist for ${file.id} (kept); ` +
        (keyed ? "the same command again gives it, or makes it: the key makes that safe" : "`openai-batch list` shows it")
    )

export const submit = (options: SubmitOptions) =>
  Effect.gen(function*() {
    const api = yield* BatchApi
    const shown = options.shownAs ?? options.file
    // The server's check of the name sent (the openai client sends control characters raw: the server could not
    // read the part's headers, and said only that).
    const name = uploadFilename(Path.basename(options.file))
    if (Either.isLeft(name)) {
      return yield* new CliFailure({ exitCode: EXIT_INVALID, message: `${shown}: ${name.left.error.message} Rename it; nothing was uploaded.` })
    }
    const check = yield* checkFile(options.file, options.endpoint, options.maxRequests)
    if (check.problems.length > 0) {
      for (const problem of check.problems) yield* options.mode === "json" ? printJson(problem) : say(problemLine(problem))
      // A file's own problems (empty, UTF-16) were checked against no endpoint: naming the default one would say it was.
      const against = check.problems.every((p) => p.line == null) ? "" : ` for ${check.endpoint}`
      return yield* new CliFailure({
        exitCode: EXIT_INVALID,
        message: `${shown}: ${count(check.found)} ${plural("problem", check.found)}${against} ` +
          `(the server would refuse the file or fail the batch with the same); nothing was uploaded.`
      })
    }
    if (options.watch) yield* checkOut(options.out)
    const requests = `${count(check.requests)} ${plural("request", check.requests)}`
    yield* note(`${shown}: ${requests} for ${check.endpoint}, no problems found; uploading…`)
    const bytes = yield* Effect.flatMap(FileSystem.FileSystem, (fs) => fs.stat(options.file)).pipe(
      Effect.map((info) => Number(info.size)),
      Effect.mapError((e) => new CliFailure({ exitCode: EXIT_INVALID, message: `cannot read ${shown}: ${e.message}` }))
    )
    const file = yield* withUploadProgress(shown, bytes, (onRead) => api.upload(options.file, shown, onRead)).pipe(
      // Stopped (Ctrl-C, SIGTERM) before the server's answer: said, as a stopped create is (`discard`).
      Effect.onInterrupt(() =>
        note(`the upload of ${shown} was stopped before the server answered: no batch was created (the server may have kept the file)`))
    )
    const batch = yield* api.create({
      input_file_id: file.id,
      // Any path the server accepts (its EXTRA_BATCH_ENDPOINTS too), not only the client's list.
      endpoint: check.endpoint as BatchCreateParams["endpoint"],
      completion_window: "24h",
      ...(Object.keys(options.metadata).length > 0 ? { metadata: options.metadata } : {}),
      ...(options.idempotencyKey === undefined ? {} : { idempotency_key: options.idempotencyKey })
    }).pipe(Effect.onError(discard(file, options.idempotencyKey !== undefined)))
    // Made before with the key, from an earlier upload of the same bytes (the server compared them): this one is
    // not needed.
    yield* batch.input_file_id === file.id
      ? note(`uploaded ${file.id} (${count(file.bytes)} bytes), created ${batch.id}`)
      : Effect.flatMap(Effect.either(api.deleteFile(file.id)), (deleted) =>
        note(
          `${batch.id} was created before with this idempotency key, from ${batch.input_file_id}; ` +
            (Either.isRight(deleted) ? `${file.id}, uploaded again, is deleted` : `${file.id}, uploaded again, is left: ${deleted.left.message ?? "its delete failed"}`)
        ))
    yield* created(batch, options)
  })

export const retry = (id: string, only: ReadonlyArray<RerunKind>, idempotencyKey: string | undefined, after: AfterCreate) =>
  Effect.zipRight(after.watch ? checkOut(after.out) : Effect.void, Effect.flatMap(BatchApi, (api) => api.retry(id, only, idempotencyKey))).pipe(
    Effect.flatMap((batch) => created(batch, after))
  )
