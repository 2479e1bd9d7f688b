/** Identifier formats of the objects this service hands out, shaped like OpenAI's. */
import { createHash, randomFillSync } from "node:crypto"

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

/**
 * Random bytes from a pool refilled 4 KiB at a time: a call into the system's generator per id cost more than
 * the rest of validating a line (one id per request).
 */
const pool = Buffer.alloc(4096)
let used = pool.length
const randomBytes = (n: number): Buffer => {
  if (n > pool.length) return randomFillSync(Buffer.alloc(n))
  if (used + n > pool.length) {
    randomFillSync(pool)
    used = 0
  }
  used += n
  return pool.subarray(used - n, used)
}

/** `n` random base62 characters (rejection sampling keeps them uniform). */
const base62 = (n: number): string => {
  let out = ""
  while (out.length < n) {
    for (const byte of randomBytes(n * 2)) {
      if (byte < 248 && out.length < n) out += BASE62[byte % 62]
    }
  }
  return out
}

const hex = (bytes: number): string => randomBytes(bytes).toString("hex")

/** `file-` + 24 base62 characters. */
export const fileId = (): string => `file-${base62(24)}`
/** A file id derived from `seed`: the same seed always gives the same id (see `FileMetadata.id`). */
export const derivedFileId = (seed: string): string => {
  const digest = createHash("sha256").update(seed).digest()
  let out = ""
  for (let i = 0; out.length < 24; i++) out += BASE62[digest[i % digest.length]! % 62]
  return `file-${out}`
}

/** `batch_` + 32 hex characters. */
export const batchId = (): string => `batch_${hex(16)}`
/** `batch_req_` + 32 hex characters: the id of one line of an output or error file. */
export const batchRequestId = (): string => `batch_req_${hex(16)}`
/** `req_` + 32 hex characters: the `x-request-id` of a response. */
export const requestId = (): string => `req_${hex(16)}`
