/** What the Uploads tests share: two projects' keys and clients, the SDK calls they repeat, the stored part bytes. */
import * as SqlClient from "@effect/sql/SqlClient"
import { Effect } from "effect"
import { createHash } from "node:crypto"
import OpenAI, { toFile } from "openai"
import { AuthTest } from "../../src/auth/Auth.js"
import { baseUrl, storedBlobs } from "./TestApp.js"

export const KEYS = { a: "sk-uploads-a-5f1c", b: "sk-uploads-b-93e0" }
export const auth = AuthTest({ apiKeys: [`${KEYS.a}:projA`, `${KEYS.b}:projB`] })

export const clients = Effect.map(baseUrl, (base) => {
  const client = (apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
  return { a: client(KEYS.a), b: client(KEYS.b), stranger: client("sk-unknown") }
})

export const md5 = (bytes: Uint8Array) => createHash("md5").update(bytes).digest("hex")

export const createUpload = (openai: OpenAI, bytes: number, extra: Partial<OpenAI.Uploads.UploadCreateParams> = {}) =>
  Effect.promise(() =>
    openai.uploads.create({ bytes, filename: "input.jsonl", mime_type: "text/jsonl", purpose: "batch", ...extra })
  )

export const sendPartPromise = async (openai: OpenAI, uploadId: string, bytes: Uint8Array) =>
  openai.uploads.parts.create(uploadId, { data: await toFile(bytes, "part") })
export const sendPart = (openai: OpenAI, uploadId: string, bytes: Uint8Array) =>
  Effect.promise(() => sendPartPromise(openai, uploadId, bytes))

/** The keys of stored part bytes (and staging areas left behind) in the app's storage. */
export const partBlobs = Effect.map(storedBlobs, ({ blobs, staging }) => ({
  parts: blobs.filter((key) => key.startsWith("part_")),
  staging
}))

export const sql = (text: string) => Effect.flatMap(SqlClient.SqlClient, (client) => client.unsafe(text)).pipe(Effect.orDie)
