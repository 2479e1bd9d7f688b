/**
 * API keys → the caller of a request: its project, whether it is an operator, and a short hash naming the key in
 * logs. Keys come from `API_KEYS`, `ADMIN_API_KEYS` and `API_KEYS_FILE` (re-read on SIGHUP); with none of them set,
 * no key is needed and every request is the `localCaller` (the server then serves loopback only, see
 * `http/Security.ts`).
 *
 * Keys are held only as SHA-256 digests, and a request's key is looked up by its digest (see `lookup`). No key is
 * ever logged or put in an error message: logs name a key by `keyHash`, the first 12 hex digits of its SHA-256.
 *
 * A keys file holds one entry a line: `KEY`, `KEY:PROJECT`, `sha256:<64 lowercase hex>[:PROJECT]` (the SHA-256 of
 * the key's UTF-8 bytes, so that no secret sits on disk) or `admin:<KEY or sha256:hex>` (an operator key); blank
 * lines and lines starting with `#` are ignored. A line `webhook:<PROJECT> <URL> <whsec_…>` gives a project a
 * webhook of its own (`webhooks/WebhookTargets.ts`), in place of `WEBHOOK_URL` for its batches.
 */
import { ConfigError, Context, Effect, Layer, Option, Redacted, Ref, Runtime } from "effect"
import { createHash } from "node:crypto"
import { readBounded, unreadable } from "../boundedRead.js"
import { AppConfig, type AppConfigShape, exposedWithoutKeys, keysConfigured, RESTART_TO_APPLY } from "../Config.js"
import { DEFAULT_PROJECT } from "../domain/Projects.js"
import { parseAdminKey, parseKeyEntry, parseWebhookEntry, type WebhookEntry } from "./keyEntries.js"

/** Who a request comes from. */
export interface Caller {
  /** The project whose objects the request sees and creates. */
  readonly project: string
  /** An operator key: sees and may act on every project's objects. */
  readonly admin: boolean
  /** The first 12 hex digits of the key's SHA-256: names the key in logs without revealing it. */
  readonly keyHash: string
}

/** The caller of the request being served; provided by the HTTP security middleware (see `http/Security.ts`). */
export class CurrentCaller extends Context.Tag("CurrentCaller")<CurrentCaller, Caller>() {}

/** Every request's caller when no key is configured: one local project, with an operator's view of every project. */
export const localCaller: Caller = { project: DEFAULT_PROJECT, admin: true, keyHash: "none" }

/** What a (re)load found, for the log: never a key. */
export interface KeysSummary {
  readonly keys: number
  readonly admins: number
  readonly projects: number
  /** Projects a `webhook:` line names that no key belongs to (misspelt?): no batch of theirs can use it. */
  readonly webhooksWithoutKey: ReadonlyArray<string>
  /** Every project a key in use belongs to, an operator key's own included (the listening line's checks; not logged). */
  readonly projectNames: ReadonlyArray<string>
  /** The short hashes naming the keys in use (`keyHash`), for what a reload added and removed. */
  readonly keyHashes: ReadonlyArray<string>
}

export interface AuthShape {
  /** Whether requests need a key: some key variable is set. Fixed for the life of the process. */
  readonly required: boolean
  /** The caller a key belongs to (the bearer token as sent), or none; when keys are not required, `localCaller`. */
  readonly authenticate: (key: string) => Effect.Effect<Option.Option<Caller>>
  /**
   * Re-reads `API_KEYS_FILE` and puts its keys in use with those of the environment; a file that cannot be read or
   * holds a bad line changes nothing and fails, naming the variable and the line. Without a file, nothing to do.
   */
  readonly reload: Effect.Effect<KeysSummary, ConfigError.ConfigError>
  /** How many keys, operator keys and projects are in use now. */
  readonly summary: Effect.Effect<KeysSummary>
  /** The webhook the keys file gives `project` (its `webhook:` line), as now loaded; none without one. */
  readonly webhookOf: (project: string) => Effect.Effect<Option.Option<WebhookEntry>>
}

export class Auth extends Context.Tag("Auth")<Auth, AuthShape>() {}

const sha256 = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest()

/** The short hash that names `key` in logs (as `Caller.keyHash`): the first 12 hex digits of its SHA-256. */
export const keyHash = (key: string): string => sha256(key).toString("hex").slice(0, 12)

/** One key: where it was listed (for messages), its digest, and whose it is. */
interface KeyEntry {
  readonly where: string
  readonly digest: Buffer
  readonly caller: Caller
}

/** The entry of `key` (plain or `sha256:<hex>`), for `project` (else a project of its own). */
const entryOf = (where: string, key: string, project: string | undefined, admin: boolean): KeyEntry => {
  const digest = key.startsWith("sha256:") ? Buffer.from(key.slice("sha256:".length), "hex") : sha256(key)
  const hash = digest.toString("hex").slice(0, 12)
  return { where, digest, caller: { project: project ?? `key-${hash}`, admin, keyHash: hash } }
}

const invalid = (variable: string, message: string) => ConfigError.InvalidData([variable], message)

/** The entries of the environment's variables (already checked by `Config`'s rules; checked again here). */
const environmentEntries = (
  config: Pick<AppConfigShape, "apiKeys" | "adminApiKeys">
): Effect.Effect<ReadonlyArray<KeyEntry>, ConfigError.ConfigError> =>
  Effect.suspend(() => {
    const entries: Array<KeyEntry> = []
    for (const [i, redacted] of config.apiKeys.entries()) {
      const parsed = parseKeyEntry(Redacted.value(redacted))
      if ("problem" in parsed) return Effect.fail(invalid("API_KEYS", `entry ${i + 1}: ${parsed.problem}`))
      entries.push(entryOf(`API_KEYS entry ${i + 1}`, parsed.key, parsed.project, false))
    }
    for (const [i, redacted] of config.adminApiKeys.entries()) {
      const parsed = parseAdminKey(Redacted.value(redacted))
      if ("problem" in parsed) return Effect.fail(invalid("ADMIN_API_KEYS", `entry ${i + 1}: ${parsed.problem}`))
      entries.push(entryOf(`ADMIN_API_KEYS entry ${i + 1}`, parsed.key, undefined, true))
    }
    return Effect.succeed(entries)
  })

/** What a keys file lists: its keys, and the projects' own webhooks. */
interface KeysFile {
  readonly entries: ReadonlyArray<KeyEntry>
  readonly webhooks: ReadonlyArray<WebhookEntry>
}

/** The entries of a keys file's text, or the first bad line (by number, never by content). */
export const parseKeysFile = (text: string): KeysFile | { readonly problem: string } => {
  const entries: Array<KeyEntry> = []
  const webhooks: Array<WebhookEntry> = []
  const lines = text.split("\n")
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim()
    if (line === "" || line.startsWith("#")) continue
    const where = `API_KEYS_FILE line ${i + 1}`
    if (line.startsWith("webhook:")) {
      const parsed = parseWebhookEntry(line.slice("webhook:".length))
      if ("problem" in parsed) return { problem: `line ${i + 1}: ${parsed.problem}` }
      if (webhooks.some((w) => w.project === parsed.project)) {
        return { problem: `line ${i + 1}: a second webhook line for project ${parsed.project}` }
      }
      webhooks.push(parsed)
    } else if (line.startsWith("admin:")) {
      const parsed = parseAdminKey(line.slice("admin:".length))
      if ("problem" in parsed) return { problem: `line ${i + 1}: ${parsed.problem}` }
      entries.push(entryOf(where, parsed.key, undefined, true))
    } else {
      const parsed = parseKeyEntry(line)
      if ("problem" in parsed) return { problem: `line ${i + 1}: ${parsed.problem}` }
      entries.push(entryOf(where, parsed.key, parsed.project, false))
    }
  }
  return { entries, webhooks }
}

/** The keys in use: every entry, each key once; the projects' own webhooks; and their counts. */
interface KeyTable {
  /** Each key's caller, by the hex of the key's SHA-256. */
  readonly callers: ReadonlyMap<string, Caller>
  readonly webhooks: ReadonlyMap<string, WebhookEntry>
  /** Counted once: the budgets' shares read it on every request that holds some (`http/holding.ts`). */
  readonly summary: KeysSummary
}

const summaryOf = (entries: ReadonlyArray<KeyEntry>, webhooks: ReadonlyArray<WebhookEntry>): KeysSummary => {
  const projects = new Set(entries.filter((e) => !e.caller.admin).map((e) => e.caller.project))
  return {
    keys: entries.length,
    admins: entries.filter((e) => e.caller.admin).length,
    projects: projects.size,
    webhooksWithoutKey: webhooks.filter((w) => !projects.has(w.project)).map((w) => w.project),
    projectNames: [...new Set(entries.map((e) => e.caller.project))],
    keyHashes: entries.map((e) => e.caller.keyHash)
  }
}

/** `entries` as a table, refused (naming `variable`) when one key is listed twice. */
const tableOf = (
  entries: ReadonlyArray<KeyEntry>,
  webhooks: ReadonlyArray<WebhookEntry>,
  variable: string
): Effect.Effect<KeyTable, ConfigError.ConfigError> => {
  const seen = new Map<string, KeyEntry>()
  for (const entry of entries) {
    const hex = entry.digest.toString("hex")
    const before = seen.get(hex)
    if (before !== undefined) return Effect.fail(invalid(variable, `${entry.where} repeats the key of ${before.where}`))
    seen.set(hex, entry)
  }
  const callers = new Map([...seen].map(([hex, entry]) => [hex, entry.caller]))
  return Effect.succeed({ callers, webhooks: new Map(webhooks.map((w) => [w.project, w])), summary: summaryOf(entries, webhooks) })
}

/**
 * The caller of the key whose SHA-256 is `digest`, looked up by that digest. What the lookup's time may tell is how
 * close the digest of a guess came to a key's: no way to a key (but to guess a weak one offline, which a weak key
 * allows anyway), and the logs name keys by 12 hex digits of it. Every entry compared in turn cost 170 ms a request
 * with 800,000 keys.
 */
const lookup = (table: KeyTable, digest: Buffer): Option.Option<Caller> =>
  Option.fromNullable(table.callers.get(digest.toString("hex")))

/** A keys file's size, at most: ~100,000 keys (a 189 MB file took 2.3 GB to refuse for a repeated key). */
const MAX_KEYS_FILE_BYTES = 16 * 1024 * 1024

/** Reads and parses the keys file at `path`, failing with a `ConfigError` naming `API_KEYS_FILE` (and the line). */
const readKeysFile = (path: string): Effect.Effect<KeysFile, ConfigError.ConfigError> =>
  Effect.promise(() => readBounded(path, MAX_KEYS_FILE_BYTES)).pipe(Effect.flatMap((read) => {
    if (read._tag !== "Read") return Effect.fail(invalid("API_KEYS_FILE", `${path} ${unreadable(read, MAX_KEYS_FILE_BYTES, "a keys file")}`))
    const parsed = parseKeysFile(read.text)
    return "problem" in parsed
      ? Effect.fail(invalid("API_KEYS_FILE", `${path} ${parsed.problem}`))
      : Effect.succeed(parsed)
  }))

type KeySources = Pick<AppConfigShape, "apiKeys" | "adminApiKeys" | "apiKeysFile">

/**
 * The service for `sources`: their keys read now (a bad entry or file fails, as a `ConfigError`), and `reload`
 * re-reading the file. Without any key, nobody needs one.
 */
export const makeAuth = (sources: KeySources): Effect.Effect<AuthShape, ConfigError.ConfigError> =>
  Effect.gen(function*() {
    const required = keysConfigured(sources)
    const fromEnvironment = yield* environmentEntries(sources)
    const load = Effect.gen(function*() {
      const file = Option.isSome(sources.apiKeysFile) ? yield* readKeysFile(sources.apiKeysFile.value) : undefined
      const variable = Option.isSome(sources.apiKeysFile) ? "API_KEYS_FILE" : "API_KEYS"
      return yield* tableOf([...fromEnvironment, ...(file?.entries ?? [])], file?.webhooks ?? [], variable)
    })
    const table = yield* Ref.make(yield* load)
    const reloading = yield* Effect.makeSemaphore(1)
    return {
      required,
      authenticate: required
        ? (key) => key === "" ? Effect.succeedNone : Effect.map(Ref.get(table), (keys) => lookup(keys, sha256(key)))
        : () => Effect.succeed(Option.some(localCaller)),
      reload: reloading.withPermits(1)(
        Effect.flatMap(load, (loaded) => Effect.as(Ref.set(table, loaded), loaded.summary))
      ),
      summary: Effect.map(Ref.get(table), (keys) => keys.summary),
      webhookOf: (project) => Effect.map(Ref.get(table), (keys) => Option.fromNullable(keys.webhooks.get(project)))
    }
  })

/**
 * The line saying the keys are `loaded` or reloaded (counts only), and a warning for a webhook line no key's project
 * can use: a misspelt project sent its events nowhere (or to `WEBHOOK_URL`) without a word. No key at all (an
 * emptied file) is a warning: keys are still required, so every tenant gets a 401, which an Info line hid.
 */
const sayKeys = (what: string, { keyHashes: _, projectNames: __, webhooksWithoutKey, ...counts }: KeysSummary, more = {}) =>
  Effect.zipRight(
    (counts.keys === 0
      ? Effect.logWarning(`${what}; no key is in use: every request will now be refused (401) until keys are added`)
      : Effect.logInfo(what)).pipe(Effect.annotateLogs({ ...counts, ...more })),
    webhooksWithoutKey.length === 0 ? Effect.void : Effect.logWarning(
      `API_KEYS_FILE has a webhook line for ${webhooksWithoutKey.map((p) => `'${p}'`).join(", ")}, which no key ` +
        "belongs to: no batch can use it (a misspelt project?)"
    )
  )

/** How many added or removed keys' hashes a reload's line lists, at most. */
const MAX_HASHES_SAID = 20

/**
 * Logs what is loaded. Without keys nothing: the listening line says so, and a line here would come before a
 * configuration error found later in the start.
 */
const logLoaded = (auth: AuthShape) => auth.required ? Effect.flatMap(auth.summary, (summary) => sayKeys("API keys loaded", summary)) : Effect.void

/**
 * The keys of the configuration. With `API_KEYS_FILE`, SIGHUP re-reads the file without a restart: the new keys are
 * in use once the log says so; a file that cannot be read or has a bad line keeps the previous keys and logs an
 * error naming the line. A bad file at start fails the layer with a `ConfigError` (`main.ts` then exits with 1).
 */
export const AuthLive: Layer.Layer<Auth, ConfigError.ConfigError, AppConfig> = Layer.scoped(
  Auth,
  Effect.gen(function*() {
    const config = yield* AppConfig
    const auth = yield* makeAuth(config)
    yield* logLoaded(auth)
    if (Option.isSome(config.apiKeysFile)) {
      const runtime = yield* Effect.runtime<never>()
      // What changed, by the keys' hashes: a rotation (one key in, one out) is told from a reload that changed nothing.
      // The hashes listed are the first MAX_HASHES_SAID: a file of thousands of keys replaced is one line still.
      const reload = Effect.gen(function*() {
        const before = new Set((yield* auth.summary).keyHashes)
        const after = yield* auth.reload
        const now = new Set(after.keyHashes)
        const added = after.keyHashes.filter((h) => !before.has(h))
        const removed = [...before].filter((h) => !now.has(h))
        yield* sayKeys(
          `API keys reloaded: ${added.length} added, ${removed.length} removed (on this node; ${RESTART_TO_APPLY})`,
          after,
          { keys_added: added.slice(0, MAX_HASHES_SAID), keys_removed: removed.slice(0, MAX_HASHES_SAID) }
        )
      })
      const onHangup = () =>
        Runtime.runFork(runtime)(reload.pipe(
          Effect.catchAll((error) =>
            Effect.logError(`API_KEYS_FILE could not be reloaded; the previous keys stay in use: ${String(error)}`))
        ))
      yield* Effect.acquireRelease(
        Effect.sync(() => process.on("SIGHUP", onHangup)),
        () => Effect.sync(() => process.off("SIGHUP", onHangup))
      )
    }
    return auth
  })
)

/**
 * Fixed keys, for tests and embedding: `apiKeys` in `API_KEYS` form (`KEY` or `KEY:PROJECT`), `adminApiKeys` as
 * `ADMIN_API_KEYS`. With neither, keys are not required.
 */
export const AuthTest = (keys: { readonly apiKeys?: ReadonlyArray<string>; readonly adminApiKeys?: ReadonlyArray<string> } = {}) =>
  Layer.effect(
    Auth,
    makeAuth({
      apiKeys: (keys.apiKeys ?? []).map((k) => Redacted.make(k)),
      adminApiKeys: (keys.adminApiKeys ?? []).map((k) => Redacted.make(k)),
      apiKeysFile: Option.none()
    })
  )

/**
 * The start refused (a `ConfigError` naming `HOST`) when the server would bind a non-loopback `HOST` and the `Auth`
 * in use asks for no key (unless `allowUnauthenticated`): judged on that `Auth`, which an app may have swapped for
 * one of its own, not only on the configuration's keys. Built right after `Auth`, before any storage or batch work.
 */
export const HostCheckLive: Layer.Layer<never, ConfigError.ConfigError, Auth | AppConfig> = Layer.effectDiscard(
  Effect.gen(function*() {
    const exposed = exposedWithoutKeys(yield* AppConfig, (yield* Auth).required)
    if (Option.isSome(exposed)) return yield* Effect.fail(exposed.value)
  })
)

/**
 * An audit line for `action` on `objectId` by the current caller, at Info level: project, key hash, action, object.
 */
export const audit = (action: string, objectId: string): Effect.Effect<void, never, CurrentCaller> =>
  Effect.flatMap(CurrentCaller, (caller) =>
    Effect.logInfo("audit").pipe(Effect.annotateLogs({
      action,
      project: caller.project,
      key_hash: caller.keyHash,
      admin: caller.admin,
      object_id: objectId
    })))
