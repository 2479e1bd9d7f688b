/**
 * The probes' answers on the wire: `GET /v1/health` (alive) and `GET /v1/ready` (ready, or not and why), as
 * `Readiness.ts` decides them.
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import { Schema } from "effect"

/** `200 {"status":"OK"}`: the process runs (nothing is checked). */
export const HealthSchema = Schema.Struct({ status: Schema.Literal("OK") })

export const NotReadyReason = Schema.Struct({
  code: Schema.Literal("draining", "database_unreachable"),
  message: Schema.String
})
export type NotReadyReason = typeof NotReadyReason.Type

/** Not ready, and why. */
export class NotReady extends Schema.TaggedError<NotReady>()("NotReady", { reasons: Schema.Array(NotReadyReason) }) {}

/** `200 {"status":"ready"}`. */
export const ReadySchema = Schema.Struct({ status: Schema.Literal("ready") })

/** `503 {"status":"not_ready","reasons":[{"code","message"}]}`: what a person reading the probe's answer needs. */
export const NotReadySchema = Schema.transform(
  Schema.Struct({ status: Schema.Literal("not_ready"), reasons: Schema.Array(NotReadyReason) }),
  Schema.typeSchema(NotReady),
  {
    strict: true,
    decode: (body) => new NotReady({ reasons: body.reasons }),
    encode: (error) => ({ status: "not_ready" as const, reasons: error.reasons })
  }
).annotations({ ...HttpApiSchema.annotations({ status: 503 }), identifier: "NotReady" })
