/**
 * What the CLI reads of a server's answers, checked before it is read: a server of another API, a proxy's page or a
 * broken gateway answered 200 with HTML or `null`, and the commands printed `undefined`, watched for ever or ended
 * on a stack trace. Each check throws an `Error` whose message the call's failure says (`BatchApi.ts`).
 */
import type { Batch } from "openai/resources/batches"
import type { FileObject } from "openai/resources/files"
import { echo } from "../domain/Text.js"

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
