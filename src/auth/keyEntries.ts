/**
 * The forms of key entries in `API_KEYS`, `ADMIN_API_KEYS` and the keys file (see README's Security section): read
 * at start by the configuration's rules and again by `Auth` on every reload. A problem never repeats the key.
 */
import { PROJECT_NAME } from "../domain/Projects.js"
import { secretProblem, urlProblem } from "../webhooks/signing.js"

/** The parts of a `KEY[:PROJECT]` entry (`KEY` possibly `sha256:<hex>`), or the reason it is not one (never echoing the key). */
export const parseKeyEntry = (
  entry: string
): { readonly key: string; readonly project: string | undefined } | { readonly problem: string } => {
  const hashed = /^sha256:([^:]*)(?::(.*))?$/s.exec(entry)
  const colon = entry.lastIndexOf(":")
  const [key, project] = hashed !== null
    ? [`sha256:${hashed[1]!.trim()}`, hashed[2]?.trim()]
    : colon < 0
    ? [entry.trim(), undefined]
    : [entry.slice(0, colon).trim(), entry.slice(colon + 1).trim()]
  if (key === "" || key === "sha256:") return { problem: "an entry has an empty key" }
  if (/[\s\p{Cc}]/u.test(key)) return { problem: "a key holds a space or a control character" }
  if (hashed !== null && !/^sha256:[0-9a-f]{64}$/.test(key)) {
    return { problem: "sha256: must be followed by the 64 lowercase hex digits of the key's SHA-256" }
  }
  if (project !== undefined && !PROJECT_NAME.test(project)) {
    return { problem: "a project name must be 1–64 characters among A–Z, a–z, 0–9, _ and -" }
  }
  return { key, project }
}

/** An operator key (`ADMIN_API_KEYS`, or a keys file's `admin:` line): a key, or `sha256:<hex>`; never a project. */
export const parseAdminKey = (entry: string): { readonly key: string } | { readonly problem: string } => {
  const text = entry.trim()
  if (text === "") return { problem: "an entry has an empty key" }
  if (/[\s\p{Cc}]/u.test(text)) return { problem: "a key holds a space or a control character" }
  if (text.startsWith("sha256:") && !/^sha256:[0-9a-f]{64}$/.test(text)) {
    return { problem: "sha256: must be followed by the 64 lowercase hex digits of the key's SHA-256" }
  }
  return { key: text }
}

/** A project's own webhook, from a keys file's `webhook:<project> <url> <whsec_…>…` line. */
export interface WebhookEntry {
  readonly project: string
  readonly url: string
  /** Its secrets, separated by spaces (several while one is rotated: `signing.ts`). */
  readonly secret: string
}

/**
 * The parts of a `webhook:` line's text after `webhook:` (`<project> <url> <whsec_…>`, and more secrets while one is
 * rotated, separated by spaces), or the reason it is not one (never echoing the URL, which may hold a token, nor the
 * secrets).
 */
export const parseWebhookEntry = (text: string): WebhookEntry | { readonly problem: string } => {
  const parts = text.trim().split(/\s+/)
  if (parts.length < 3) return { problem: "a webhook line must be webhook:<project> <url> <whsec_…>" }
  const [project, url] = parts as [string, string]
  const secret = parts.slice(2).join(" ")
  if (!PROJECT_NAME.test(project)) {
    return { problem: "a project name must be 1–64 characters among A–Z, a–z, 0–9, _ and -" }
  }
  const problem = urlProblem(url) ?? secretProblem(secret)
  return problem === undefined ? { project, url, secret } : { problem }
}
