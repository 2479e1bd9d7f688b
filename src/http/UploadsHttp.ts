/** Handlers of the `uploads` group (OpenAI's Uploads API): part streaming here, checks in `uploadChecks.ts`, the work in `Uploads`. */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Effect, Option } from "effect"
import { audit, type Caller, CurrentCaller } from "../auth/Auth.js"
import { AppConfig } from "../Config.js"
import { invalidRequest, notFound, overQuota, payloadTooLarge } from "../domain/Errors.js"
import type { UploadId } from "../domain/Ids.js"
import { visibilityOf } from "../domain/Projects.js"
import { echo } from "../domain/Text.js"
import { type CreateUploadBody, MAX_PART_BYTES, MAX_UPLOAD_TOTAL_BYTES } from "../domain/Uploads.js"
import { FileStore } from "../files/FileStore.js"
import { type UploadClosed, Uploads } from "../files/Uploads.js"
import { OpenAIApi } from "./Api.js"
import { parseCompleteUpload, parseCreateUpload } from "../files/uploadChecks.js"
import { readFileForm } from "./fileField.js"

const uploadNotFound = (id: string) => notFound(`No such Upload object: ${echo(id)}`, "upload_id")

const closedBecause: Record<UploadClosed["status"], string> = {
  pending: "it is pending",
  completing: "it is being completed",
  completed: "it is already completed",
  cancelled: "it was cancelled",
  expired: "it expired (an upload takes parts and can be completed for an hour after its creation)"
}

/** The 400 of an action on an upload that no longer allows it. */
const closed = (action: string) => (e: UploadClosed) =>
  invalidRequest(`Cannot ${action} upload ${e.id}: ${closedBecause[e.status]}.`)

const partTooLarge = payloadTooLarge(`A part may hold at most ${MAX_PART_BYTES} bytes.`, "data")

export const UploadsHttpLive = HttpApiBuilder.group(OpenAIApi, "uploads", (handlers) =>
  Effect.gen(function*() {
    const uploads = yield* Uploads
    const files = yield* FileStore
    const { maxFileBytesPerProject, maxUploadBytes } = yield* AppConfig
    const maxBytes = Math.min(MAX_UPLOAD_TOTAL_BYTES, maxUploadBytes)

    const create = (body: CreateUploadBody, caller: Caller) =>
      Effect.gen(function*() {
        const upload = yield* parseCreateUpload(body, maxBytes)
        // A pending upload holds its bytes in the project's quota from the start (`FileStore.projectBytes`).
        if (Option.isSome(maxFileBytesPerProject)) {
          const quota = maxFileBytesPerProject.value
          const room = quota - (yield* files.projectBytes(caller.project))
          if (upload.bytes > room) return yield* overQuota(quota, room, "bytes")
        }
        return yield* uploads.create({ ...upload, project: caller.project })
      })

    /** Streams the form's one `data` file part into a new part's storage, then adds it to the upload. */
    const addPart = (id: UploadId, caller: Caller) =>
      Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        const visibility = visibilityOf(caller)
        // Checked before a byte is stored: a closed or unknown upload gets its answer at once.
        const room = yield* uploads.partRoom(id, visibility)
        const form = yield* readFileForm(request, {
          field: "data",
          maxFileBytes: MAX_PART_BYTES,
          maxParts: 8,
          tooLarge: partTooLarge,
          open: () => uploads.openPart, // the part's name as sent is not kept
          refuse: (bytes) => {
            if (bytes > room.upload) {
              return invalidRequest(
                `This part would take the parts of upload ${id} past its bytes (parts named in no complete included).`,
                "data",
                "invalid_value"
              )
            }
            // Finite only with a quota configured.
            return bytes > room.quota ? overQuota(Option.getOrThrow(maxFileBytesPerProject), room.quota, "data") : undefined
          }
        })
        if (form.fields.has("data")) {
          return yield* invalidRequest("'data' must be a file part (with a filename), not a text field.", "data", "invalid_type")
        }
        if (form.stored === undefined) {
          return yield* invalidRequest("Missing required parameter: 'data' (a file part).", "data", "missing_required_parameter")
        }
        return yield* uploads.addPart(id, visibility, form.stored)
      }).pipe(Effect.scoped)

    return handlers
      .handle("create", ({ payload }) =>
        Effect.flatMap(CurrentCaller, (caller) => create(payload, caller)).pipe(
          Effect.tap((upload) => audit("upload.create", upload.id)),
          Effect.withSpan("Uploads.http.create")
        ))
      // The declared payload documents the form; the body is parsed by `parseFormData` (see there why).
      .handle("addPart", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => addPart(path.upload_id, caller)).pipe(
          Effect.catchTags({
            UploadNotFound: ({ id }) => uploadNotFound(id),
            UploadClosed: closed("add a part to"),
            PartRefused: ({ message }) => invalidRequest(message, "data", "invalid_value"),
            PartOverQuota: ({ quota, room }) => overQuota(quota, room, "data")
          }),
          Effect.withSpan("Uploads.http.addPart")
        ))
      .handle("complete", ({ path, payload }) =>
        Effect.gen(function*() {
          const { md5, partIds } = yield* parseCompleteUpload(payload)
          const caller = yield* CurrentCaller
          return yield* uploads.complete(path.upload_id, visibilityOf(caller), partIds, md5)
        }).pipe(
          Effect.catchTags({
            UploadNotFound: ({ id }) => uploadNotFound(id),
            UploadClosed: closed("complete"),
            PartsMismatch: ({ message, param }) => invalidRequest(message, param, "invalid_value")
          }),
          Effect.tap((upload) => audit("upload.complete", upload.id)),
          Effect.withSpan("Uploads.http.complete")
        ))
      .handle("cancel", ({ path }) =>
        Effect.flatMap(CurrentCaller, (caller) => uploads.cancel(path.upload_id, visibilityOf(caller))).pipe(
          Effect.catchTags({ UploadNotFound: ({ id }) => uploadNotFound(id), UploadClosed: closed("cancel") }),
          Effect.tap((upload) => audit("upload.cancel", upload.id)),
          Effect.withSpan("Uploads.http.cancel")
        ), { uninterruptible: true })
  }))
