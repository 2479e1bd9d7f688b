/**
 * What the CLI reads of a server's answers, checked before it is read: a server of another API, a proxy's page or a
 * broken gateway answered 200 with HTML or `null`, and the commands printed `undefined`, watched for ever or ended
 * on a stack trace. Each check throws an `Error` whose message the call's failure says (`BatchApi.ts`).
 */
import type { Batch } from "openai/resources/batches"
import type { FileObject } from "openai/resources/files"
import { echo } from "../domain/Text.js"
import type { UpstreamSeen } from "./upstreamNotes.js"

/** At most 80 characters of an answer that is not what was asked for. */
const shown = (answer: unknown): string => echo(typeof answer === "string" ? answer : JSON.stringify(answer) ?? String(answer), 80)

const hasStringId = (answer: unknown): answer is { readonly id: string } =>
  typeof answer === "object" && answer !== null && typeof (answer as { id?: unknown }).id === "string"

/** `answer` as a batch: an object with a string `id` and `status`. */
export const asBatch = (answer: unknown): Batch => {
  if (hasStringId(answer) && typeof (answer as { status?: unknown }).status === "string") return answer as Batch
  throw new Error(`the server's answer is not a batch: ${shown(answer)}`)
}

/** `answer` as a file: an object with a string `id`. */
export const asFile = (answer: unknown): FileObject => {
  if (hasStringId(answer)) return answer as FileObject
  throw new Error(`the server's answer is not a file: ${shown(answer)}`)
}

/** `body` as a page of a list: an object whose `data` is an array (a page of HTML was read as an empty list). */
export const asListPage = (body: unknown): void => {
  if (typeof body !== "object" || body === null || !Array.isArray((body as { data?: unknown }).data)) {
    throw new Error(`the server's answer is not a list: ${shown(body)}`)
  }
}

/** The entries of `GET /v1/upstreams` that are upstreams as the CLI reads them (a name, a list of models). */
export const upstreamsSeen = (data: ReadonlyArray<unknown>): ReadonlyArray<UpstreamSeen> =>
  data.filter((u): u is UpstreamSeen =>
    typeof u === "object" && u !== null && typeof (u as { name?: unknown }).name === "string" &&
    Array.isArray((u as { models?: unknown }).models))
