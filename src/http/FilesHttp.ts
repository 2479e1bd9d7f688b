/** Handlers of the `files` group: HTTP in, `FileStore` calls out. */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Cause, Effect, Exit, Option, Stream } from "effect"
import { audit, Auth, CurrentCaller } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import { invalidRequest, type NotFound, notFound, type ServerError, serverError } from "../domain/Errors.js"
import { FileDeleted } from "../domain/Files.js"
import type { FileId } from "../domain/Ids.js"
import { type Visibility, visibilityOf } from "../domain/Projects.js"
import { FileCommands, fileTooLarge } from "../files/FileCommands.js"
import { FileStore, type FileStoreShape } from "../files/FileStore.js"
import { attachment } from "../files/attachment.js"
import { wantedRange } from "../files/byteRange.js"
import { isMissingBlob } from "../storage/BlobStore.js"
import { sliceBytes } from "../storage/sliceBytes.js"
import { parseUploadForm, uploadFilename } from "../files/uploadChecks.js"
import { nowSeconds } from "../storage/Sql.js"
import { OpenAIApi } from "./Api.js"
import { resent, SDK_RETRY_WINDOW_SECONDS } from "./clientRetries.js"
import { envelope } from "./EarlyAnswer.js"
import { readFileForm } from "./fileField.js"
import { Budget, busy, cutWhenStalled, holdUntilAnswered, type Holder, holderOf, overShare, type Taken } from "./holding.js"
import { echo } from "../domain/Text.js"
import { LARGE_PAGES_AT_ONCE, listAnswer, storedJson } from "./StoredResponse.js"

// `param: "id"`, as OpenAI names it (observed); the code is the contract's `not_found`.
const fileNotFound = (id: string) => notFound(`No such File object: ${echo(id)}`, "id")

/**
 * Fails unless the first bytes of `bytes` can be read: the headers, once sent, promise the whole file, and a file
 * whose bytes are gone (a database restored beside older files, a blob removed by hand) answered 200 and then cut
 * the connection, which clients take for a network fault and retry. Missing bytes are a 500 that says so, with an
 * error line, unless the file itself went meanwhile (deleted as it was asked for: a 404); any other fault reading
 * them is answered as such faults are (a database out of reach: 503). One piece is read twice for it.
 */
const contentPresent = (files: FileStoreShape, id: FileId, bytes: Stream.Stream<Uint8Array>) =>
  Effect.flatMap(Effect.exit(Stream.runHead(bytes)), (read) => {
    if (Exit.isSuccess(read) && Option.isSome(read.value)) return Effect.void
    if (Exit.isFailure(read) && !isMissingBlob(Cause.squash(read.cause))) return Effect.failCause(read.cause)
    const missing = Effect.zipRight(
      Effect.logError(`The bytes of file ${id} are missing from file storage: its content cannot be served`),
      Effect.fail(serverError(`The content of file ${id} is missing from the server's storage.`))
    )
    return Effect.flatMap(Effect.either(files.get(id, "all")), (file): Effect.Effect<never, NotFound | ServerError> =>
      file._tag === "Left" ? Effect.fail(fileNotFound(id)) : missing)
  })

/**
 * Whether a delete that found no file is a client's retry of the delete that removed it (`clientRetries.ts`): its
 * answer was lost, and a 404 told the client the delete had failed.
 */
const deletedJustBefore = (files: FileStoreShape, id: FileId, visibility: Visibility) =>
  Effect.flatMap(resent, (again) =>
    again ? Effect.flatMap(nowSeconds, (now) => files.removedSince(id, visibility, now - SDK_RETRY_WINDOW_SECONDS)) : Effect.succeed(false))

/** A `Range` past a file's end of `size` bytes: a 416 in the envelope, saying the size as RFC 9110 asks. */
const rangeNotSatisfiable = (size: number) =>
  envelope(
    {
      error: {
        message: `The range asked for is not in the file (${size} bytes).`,
        type: "invalid_request_error",
        param: null,
        code: "range_not_satisfiable"
      }
    },
    416,
    { "content-range": `bytes */${size}` }
  )

/** A download beyond `MAX_DOWNLOADS_AT_ONCE` (or its project's share, of which `holder` holds what it says). */
const downloadsBusy = (downloads: Budget, taken: Taken, holder: Holder | undefined) =>
  taken === "share"
    ? overShare(`Your project is downloading too many files at once (it holds ${downloads.heldBy(holder)}, as many as it may now); try again in a few seconds.`, 5)
    : busy(`The server is sending too many files at once (${downloads.limit}); try again in a few seconds.`, 5)

export const FilesHttpLive = HttpApiBuilder.group(OpenAIApi, "files", (handlers) =>
  Effect.gen(function*() {
    const files = yield* FileStore
    const commands = yield* FileCommands
    const { maxDownloadsAtOnce, maxUploadBytes, stallTimeout } = yield* AppConfig
    const downloads = new Budget(maxDownloadsAtOnce)
    const holder = holderOf(yield* Auth)
    const listed = listAnswer(new Budget(LARGE_PAGES_AT_ONCE), stallTimeout, holder)

    const upload = Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const { project } = yield* CurrentCaller // an operator's uploads too belong to its own project
      const place = yield* commands.startUpload(project)
      const form = yield* readFileForm(request, {
        field: "file",
        maxFileBytes: maxUploadBytes,
        maxParts: 32,
        tooLarge: fileTooLarge(maxUploadBytes),
        open: (sent) =>
          Effect.gen(function*() {
            const filename = yield* uploadFilename(sent)
            const writer = yield* files.openUpload
            return { write: writer.write, finish: Effect.map(writer.finish, (staged) => ({ staged, filename })) }
          }),
        refuse: place.received
      })
      if (form.fields.has("file")) {
        // Beside a file part, which of the two was meant is anyone's guess (as with two file parts).
        return yield* form.stored === undefined
          ? invalidRequest("'file' must be a file part with a filename, not a text field.", "file", "invalid_type")
          : invalidRequest("The 'file' field was sent more than once (a text field beside the file part); send the file once.", "file", "invalid_value")
      }
      const meta = yield* parseUploadForm(form.fields, form.stored?.filename, form.repeated)
      yield* place.beforeStoring(form.stored!.staged.bytes)
      return yield* Effect.zipLeft(files.commit(form.stored!.staged, { ...meta, project }), place.stored)
    }).pipe(Effect.scoped, Effect.withSpan("Files.upload"))

    return handlers
      // The declared payload documents the form; the body is parsed by `parseFormData` (see there why).
      .handle("upload", () => Effect.tap(upload, (file) => audit("file.upload", file.id)))
      .handle("list", ({ urlParams }) =>
        Effect.flatMap(CurrentCaller, (caller) => files.list({
          visibility: visibilityOf(caller),
          purpose: urlParams.purpose,
          after: urlParams.after,
          limit: urlParams.limit ?? 10_000,
          order: urlParams.order ?? "desc"
        }).pipe(
          Effect.flatMap(listed),
          Effect.catchTag("UnknownCursor", ({ after }) =>
            invalidRequest(`No such File object for the 'after' cursor: ${echo(after)}`, "after", "invalid_value"))
        )))
      .handle("retrieve", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => files.get(path.file_id, visibilityOf(caller))).pipe(
          Effect.map((file) => storedJson(file)),
          Effect.catchTag("FileNotFound", ({ id }) => fileNotFound(id))
        ))
      .handle("content", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => files.content(path.file_id, visibilityOf(caller))).pipe(
          Effect.flatMap(({ file, stream, streamFrom }) =>
            Effect.flatMap(holder, (by) =>
              Effect.flatMap(holdUntilAnswered(downloads, by), (taken) =>
                taken === "taken"
                  ? Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
                    const wanted = wantedRange(request.headers["range"], file.bytes)
                    if (wanted._tag === "Unsatisfiable") return Effect.succeed(rangeNotSatisfiable(file.bytes))
                    const part = wanted._tag === "Part" ? wanted : undefined
                    // Read from the range's first byte (the store skips those before it), up to its last.
                    const bytes = part === undefined ? stream : sliceBytes(streamFrom(part.start), 0, part.end - part.start)
                    const present = file.bytes === 0 ? Effect.void : contentPresent(files, file.id, bytes)
                    return Effect.zipRight(present, cutWhenStalled(stallTimeout, bytes)).pipe(Effect.map((body) =>
                      HttpServerResponse.stream(body, {
                        status: part === undefined ? 200 : 206,
                        contentType: "application/octet-stream",
                        contentLength: part === undefined ? file.bytes : part.end - part.start + 1,
                        headers: {
                          "accept-ranges": "bytes",
                          "content-disposition": attachment(file.filename),
                          ...(part === undefined ? {} : { "content-range": `bytes ${part.start}-${part.end}/${file.bytes}` })
                        }
                      })))
                  })
                  : Effect.succeed(downloadsBusy(downloads, taken, by)))).pipe(Effect.scoped)
          ),
          Effect.catchTag("FileNotFound", ({ id }) => fileNotFound(id))
        ))
      .handle("delete", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) =>
          files.remove(path.file_id, visibilityOf(caller)).pipe(
            Effect.zipRight(audit("file.delete", path.file_id)),
            Effect.as(new FileDeleted({ id: path.file_id, object: "file", deleted: true })),
            Effect.catchTag("FileNotFound", ({ id }) => Effect.flatMap(deletedJustBefore(files, id, visibilityOf(caller)), (deleted) =>
              deleted ? Effect.succeed(new FileDeleted({ id, object: "file", deleted: true })) : fileNotFound(id)))
          )))
  }))
