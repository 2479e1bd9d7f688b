/**
 * The HTTP surface, declared once with `HttpApi`: the OpenAPI document, the server and typed clients all derive
 * from it. Every error is declared with its OpenAI envelope schema.
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as OpenApi from "@effect/platform/OpenApi"
import { Schema } from "effect"
import {
  ConflictSchema,
  InsufficientStorageSchema,
  InvalidRequestSchema,
  NotFoundSchema,
  PayloadTooLargeSchema,
  RateLimitedSchema,
  ServiceUnavailableSchema,
  ServerErrorSchema,
  UnauthorizedSchema
} from "../domain/Errors.js"
import { Batch, BatchList, CreateBatchBody, ListBatchesParams, RetryBatchBody } from "../domain/Batches.js"
import { BatchResultsParams } from "../domain/BatchResults.js"
import { StorableBatchId, StorableFileId, StorableUploadId } from "../domain/Ids.js"
import { FileDeleted, FileList, FileObject, ListFilesParams, UploadFileForm } from "../domain/Files.js"
import { CompleteUploadBody, CreateUploadBody, Upload, UploadPart, UploadPartForm } from "../domain/Uploads.js"
import { ListWebhookDeliveriesParams, WebhookDeliveryList } from "../domain/Webhooks.js"
import { Model, ModelList, UpstreamList } from "../domain/Models.js"
import { HealthSchema, NotReadySchema, ReadySchema } from "../domain/Health.js"
import { Authenticated } from "./Security.js"

const fileIdParam = HttpApiSchema.param("file_id", StorableFileId)
const batchIdParam = HttpApiSchema.param("batch_id", StorableBatchId)
const uploadIdParam = HttpApiSchema.param("upload_id", StorableUploadId)

export class HealthGroup extends HttpApiGroup.make("health")
  .add(
    HttpApiEndpoint.get("health", "/health")
      .addSuccess(HealthSchema)
      .annotate(OpenApi.Summary, "Liveness check")
  )
  .add(
    HttpApiEndpoint.get("ready", "/ready")
      .addSuccess(ReadySchema)
      .addError(NotReadySchema)
      .annotate(OpenApi.Summary, "Readiness check: 503 with the reasons while the database does not answer or the node shuts down")
  )
  .prefix("/v1")
{}

export class ModelsGroup extends HttpApiGroup.make("models")
  .add(
    HttpApiEndpoint.get("list", "/models")
      .addSuccess(ModelList)
      .annotate(OpenApi.Summary, "The models batches may name, each with the upstream serving it (`owned_by`)")
  )
  .add(
    // A wildcard: model ids hold slashes (`meta-llama/Llama-3.1-8B`), sent encoded by the JS SDK and as they are by
    // the Python one.
    HttpApiEndpoint.get("retrieve", "/models/*")
      .setPath(Schema.Struct({ "*": Schema.String }))
      .addSuccess(Model)
      .addError(NotFoundSchema)
      .annotate(OpenApi.Summary, "A model batches may name, with the upstream serving it; 404 `model_not_found` else")
  )
  .add(
    HttpApiEndpoint.get("upstreams", "/upstreams")
      .addSuccess(UpstreamList)
      .annotate(
        OpenApi.Summary,
        "(extension) The upstreams serving the caller's models, as this node sees them now: up, paused, recovering or down"
      )
  )
  .middleware(Authenticated)
  .prefix("/v1")
  .annotate(OpenApi.Title, "Models")
{}

/**
 * The models route's wildcard, in the OpenAPI document, as the `{model}` parameter OpenAI's own document names (the
 * router needs the wildcard; a document's `*` path and parameter read as a mistake).
 */
const modelPathNamed = (spec: Record<string, any>): Record<string, any> => {
  const { "/v1/models/*": wildcard, ...paths } = spec.paths ?? {}
  if (wildcard?.get === undefined) return spec
  const parameters = (wildcard.get.parameters ?? []).map((p: Record<string, unknown>) =>
    p.name === "*" ? { ...p, name: "model", description: "The model's id; it may hold slashes (`meta-llama/Llama-3.1-8B`)." } : p
  )
  return { ...spec, paths: { ...paths, "/v1/models/{model}": { ...wildcard, get: { ...wildcard.get, parameters } } } }
}

export class FilesGroup extends HttpApiGroup.make("files")
  .add(
    HttpApiEndpoint.post("upload", "/files")
      .setPayload(HttpApiSchema.MultipartStream(UploadFileForm))
      .addSuccess(FileObject)
      .addError(PayloadTooLargeSchema)
      .addError(RateLimitedSchema)
      .annotate(OpenApi.Summary, "Upload a file (multipart/form-data, streamed to storage)")
  )
  .add(
    HttpApiEndpoint.get("list", "/files")
      .setUrlParams(ListFilesParams)
      .addSuccess(FileList)
      .annotate(OpenApi.Summary, "List files, newest first by default")
  )
  .add(
    HttpApiEndpoint.get("retrieve")`/files/${fileIdParam}`
      .addSuccess(FileObject)
      .addError(NotFoundSchema)
      .annotate(OpenApi.Summary, "Retrieve a file's metadata")
  )
  .add(
    HttpApiEndpoint.get("content")`/files/${fileIdParam}/content`
      .addSuccess(HttpApiSchema.Uint8Array({ contentType: "application/octet-stream" }))
      .addError(NotFoundSchema)
      .addError(RateLimitedSchema)
      .annotate(OpenApi.Summary, "Download a file's bytes (streamed)")
  )
  .add(
    HttpApiEndpoint.del("delete")`/files/${fileIdParam}`
      .addSuccess(FileDeleted)
      .addError(NotFoundSchema)
      .annotate(OpenApi.Summary, "Delete a file and its bytes")
  )
  .middleware(Authenticated)
  .prefix("/v1")
  .annotate(OpenApi.Title, "Files")
{}

export class BatchesGroup extends HttpApiGroup.make("batches")
  .add(
    HttpApiEndpoint.post("create", "/batches")
      .setPayload(CreateBatchBody)
      .addSuccess(Batch)
      .addError(NotFoundSchema)
      .addError(ConflictSchema)
      .addError(PayloadTooLargeSchema)
      .addError(RateLimitedSchema)
      .annotate(
        OpenApi.Summary,
        "Create a batch from an uploaded JSONL file (purpose `batch`), or (extension) from `requests` given inline"
      )
  )
  .add(
    HttpApiEndpoint.get("retrieve")`/batches/${batchIdParam}`
      .addSuccess(Batch)
      .addError(NotFoundSchema)
      .annotate(OpenApi.Summary, "Retrieve a batch")
  )
  .add(
    HttpApiEndpoint.post("cancel")`/batches/${batchIdParam}/cancel`
      .addSuccess(Batch)
      .addError(NotFoundSchema)
      .addError(ConflictSchema)
      .annotate(OpenApi.Summary, "Cancel a batch: in-flight requests are aborted, finished results are kept")
  )
  .add(
    HttpApiEndpoint.post("retry")`/batches/${batchIdParam}/retry`
      .setPayload(RetryBatchBody)
      .addSuccess(Batch)
      .addError(NotFoundSchema)
      .addError(ConflictSchema)
      .addError(PayloadTooLargeSchema)
      .addError(RateLimitedSchema)
      .annotate(
        OpenApi.Summary,
        "(extension) Rerun a finished batch's requests that failed, expired or were cancelled (`only` picks which): " +
          "a new batch of their input lines, its metadata naming the original (`retry_of`)"
      )
  )
  .add(
    HttpApiEndpoint.get("results")`/batches/${batchIdParam}/results`
      .setUrlParams(BatchResultsParams)
      .addSuccess(HttpApiSchema.Text({ contentType: "application/jsonl" }))
      .addError(NotFoundSchema)
      .addError(RateLimitedSchema)
      .annotate(
        OpenApi.Summary,
        "(extension) The output (or error) file lines finished so far, in line order, up to the first request " +
          "not finished yet (one page: at most `limit` lines and 8 MiB of answers); headers `x-last-line`: the last " +
          "input line included (0 when none), `x-next-after`: the `after` of the next call"
      )
  )
  .add(
    HttpApiEndpoint.get("list", "/batches")
      .setUrlParams(ListBatchesParams)
      .addSuccess(BatchList)
      .annotate(OpenApi.Summary, "List batches, newest first")
  )
  .middleware(Authenticated)
  .prefix("/v1")
  .annotate(OpenApi.Title, "Batches")
{}

export class UploadsGroup extends HttpApiGroup.make("uploads")
  .add(
    HttpApiEndpoint.post("create", "/uploads")
      .setPayload(CreateUploadBody)
      .addSuccess(Upload)
      .annotate(OpenApi.Summary, "Start an upload of a large file in parts (it takes parts for an hour)")
  )
  .add(
    HttpApiEndpoint.post("addPart")`/uploads/${uploadIdParam}/parts`
      .setPayload(HttpApiSchema.MultipartStream(UploadPartForm))
      .addSuccess(UploadPart)
      .addError(NotFoundSchema)
      .addError(RateLimitedSchema)
      .annotate(OpenApi.Summary, "Add a part (multipart field `data`, at most 64 MB, streamed to storage); parts may be sent in parallel")
  )
  .add(
    HttpApiEndpoint.post("complete")`/uploads/${uploadIdParam}/complete`
      .setPayload(CompleteUploadBody)
      .addSuccess(Upload)
      .addError(NotFoundSchema)
      .annotate(OpenApi.Summary, "Assemble the parts, in the order of `part_ids`, into a File (checked against `md5` when given)")
  )
  .add(
    HttpApiEndpoint.post("cancel")`/uploads/${uploadIdParam}/cancel`
      .addSuccess(Upload)
      .addError(NotFoundSchema)
      .annotate(OpenApi.Summary, "Cancel an upload: its parts are deleted")
  )
  .middleware(Authenticated)
  .prefix("/v1")
  .annotate(OpenApi.Title, "Uploads")
{}

export class WebhooksGroup extends HttpApiGroup.make("webhooks")
  .add(
    HttpApiEndpoint.get("deliveries", "/webhook_deliveries")
      .setUrlParams(ListWebhookDeliveriesParams)
      .addSuccess(WebhookDeliveryList)
      .annotate(
        OpenApi.Summary,
        "(extension) The webhook events of the caller's batches and their delivery: status, attempts, last answer; newest first"
      )
  )
  .middleware(Authenticated)
  .prefix("/v1")
  .annotate(OpenApi.Title, "Webhooks")
{}

/**
 * Errors declared at the API level can be produced by the API-wide middleware (decode failures, unknown routes,
 * defects), which is what lets every response use the OpenAI envelope.
 */
export class OpenAIApi extends HttpApi.make("openai-batch")
  .add(HealthGroup)
  .add(ModelsGroup)
  .add(FilesGroup)
  .add(BatchesGroup)
  .add(WebhooksGroup)
  .add(UploadsGroup)
  .addError(InvalidRequestSchema)
  .addError(UnauthorizedSchema)
  .addError(NotFoundSchema)
  .addError(ConflictSchema)
  .addError(PayloadTooLargeSchema)
  .addError(ServerErrorSchema)
  .addError(ServiceUnavailableSchema)
  .addError(InsufficientStorageSchema)
  .annotate(OpenApi.Transform, modelPathNamed)
  .annotate(OpenApi.Title, "OpenAI-compatible Files and Batches")
  .annotate(OpenApi.Version, "0.1.0")
{}
