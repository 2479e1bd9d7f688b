/**
 * API keys: the exact 401 on every protected route (raw and through the official `openai` client), the routes that
 * need none, projects and operator keys, the keys file (`sha256:` entries, comments, `admin:` lines) and its reload
 * on SIGHUP (the function, and once a real server process), the start refused on a bad file or a non-loopback HOST
 * without keys, and audit lines that name the key by its hash only.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { ConfigProvider, Context, Effect, Exit, HashMap, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { execFileSync } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import OpenAI, { toFile } from "openai"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { Auth, AuthLive, AuthTest, HostCheckLive, keyHash } from "../src/auth/Auth.js"
import { AppConfig, appConfig } from "../src/Config.js"
import { ApiLive, HttpLive } from "../src/http/Http.js"
import { makeNodeServer, makeServices, ServicesLive } from "../src/Layers.js"
import { chatLine } from "./support/Batches.js"
import { runServerToExit, startServer } from "./support/ServerProcess.js"
import { baseUrl, configFor, TestDatabase, TestDataDir, Upstream, TestHttpServer } from "./support/TestApp.js"

const sha256 = (key: string) => createHash("sha256").update(key, "utf8").digest("hex")

/** The answer to a missing or wrong key: OpenAI's envelope, its message saying what was wrong. */
const unauthorizedBody = (message: string) => ({ error: { message, type: "authentication_error", param: null, code: "invalid_api_key" } })
const UNAUTHORIZED = unauthorizedBody("Incorrect API key provided.")
const NO_KEY = "You didn't provide an API key: send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY)."
const NOT_BEARER = "The Authorization header holds no Bearer key: send Authorization: Bearer YOUR_KEY."

const KEYS = {
  alpha1: "sk-alpha-1-7f3a9c",
  alpha2: "sk-alpha-2-0b8e1d",
  beta: "sk-beta-55c2e4",
  solo: "sk-solo-93d1aa",
  admin: "sk-admin-c0ffee"
}
const allKeys = Object.values(KEYS)

/** Everything the app logged, as text (for "no key in any log line") and as records (for the audit lines). */
interface LogRecord {
  readonly level: string
  readonly message: string
  readonly annotations: Record<string, unknown>
}
const logged: Array<LogRecord> = []
const recorder = Logger.make(({ annotations, logLevel, message }) => {
  logged.push({
    level: logLevel.label,
    message: (Array.isArray(message) ? message : [message]).map(String).join(" "),
    annotations: Object.fromEntries(HashMap.toEntries(annotations))
  })
})
/** The audit lines' own fields (without the `request_id` every line logged while serving a request carries). */
const auditLines = () =>
  logged.filter((r) => r.message === "audit").map(({ annotations: { request_id: _, ...fields } }) => fields)

/** The app with keys over two projects, a key of its own project and an operator key, on an upstream simulator. */
const keyedApp = Layer.unwrapEffect(Effect.map(Upstream, (sim) =>
  HttpLive.pipe(
    Layer.provide(AuthLive),
    Layer.provide(ServicesLive),
    Layer.provideMerge(TestHttpServer),
    Layer.provideMerge(configFor({
      inferenceBaseUrl: sim.url,
      apiKeys: [`${KEYS.alpha1}:projA`, ` ${KEYS.alpha2} : projA `, `${KEYS.beta}:projB`, KEYS.solo].map((k) => Redacted.make(k)),
      adminApiKeys: [Redacted.make(KEYS.admin)]
    })),
    Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite")))
  ))).pipe(
    Layer.provideMerge(Upstream.layer()),
    // Every level, so that a key in a debug line would be caught too.
    Layer.provide(Logger.replace(Logger.defaultLogger, recorder)),
    Layer.provide(Logger.minimumLogLevel(LogLevel.All))
  )

const client = (base: string, apiKey: string) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })

/** Every protected route, as a raw request (a body where the route takes one). */
const protectedRoutes: ReadonlyArray<readonly [string, string, (() => RequestInit)?]> = [
  ["GET", "/v1/files"],
  ["POST", "/v1/files", () => {
    const form = new FormData()
    form.append("purpose", "batch")
    form.append("file", new Blob(["{}\n"]), "x.jsonl")
    return { body: form }
  }],
  ["GET", "/v1/files/file-abc"],
  ["GET", "/v1/files/file-abc/content"],
  ["DELETE", "/v1/files/file-abc"],
  ["GET", "/v1/batches?limit=2"],
  ["POST", "/v1/batches", () => ({
    body: JSON.stringify({ input_file_id: "file-abc", endpoint: "/v1/chat/completions", completion_window: "24h" }),
    headers: { "content-type": "application/json" }
  })],
  ["GET", "/v1/batches/batch_abc"],
  ["POST", "/v1/batches/batch_abc/cancel"],
  ["GET", "/v1/models"],
  ["POST", "/v1/uploads", () => ({ body: "{}", headers: { "content-type": "application/json" } })],
  ["GET", "/v1/uploads/upload_abc"],
  ["GET", "/v1/no-such-route"]
]

/**
 * Credentials that must not get in, with what the 401 says: none, a wrong key, a valid key's prefix or extension,
 * other schemes, a valid key in another gateway's header.
 */
const badCredentials: ReadonlyArray<readonly [Record<string, string>, string]> = [
  [{}, NO_KEY],
  [{ authorization: "Bearer sk-wrong" }, UNAUTHORIZED.error.message],
  [{ authorization: `Bearer ${KEYS.alpha1.slice(0, -1)}` }, UNAUTHORIZED.error.message],
  [{ authorization: `Bearer ${KEYS.alpha1}x` }, UNAUTHORIZED.error.message],
  [{ authorization: `Basic ${Buffer.from(`user:${KEYS.alpha1}`).toString("base64")}` }, NOT_BEARER],
  [{ authorization: KEYS.alpha1 }, NOT_BEARER],
  [{ authorization: "Bearer " }, NOT_BEARER],
  [{ authorization: `Bearer sha256:${sha256(KEYS.alpha1)}` }, UNAUTHORIZED.error.message], // the digest is not the key
  [{ "x-litellm-api-key": KEYS.alpha1 }, "This server reads the API key from the Authorization header (Authorization: Bearer YOUR_KEY), not from x-litellm-api-key."],
  [{ "x-api-key": KEYS.alpha1 }, "This server reads the API key from the Authorization header (Authorization: Bearer YOUR_KEY), not from x-api-key."]
]

layer(keyedApp, { excludeTestServices: true })("API keys over HTTP", (it) => {
  it.effect("a missing or wrong key gets the 401 envelope on every protected route, saying what was wrong, with an x-request-id", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      for (const [method, path, init] of protectedRoutes) {
        for (const [credentials, message] of badCredentials) {
          const extra = init?.() ?? {}
          const res = yield* Effect.promise(() =>
            fetch(`${base}${path}`, { ...extra, method, headers: { ...(extra.headers as Record<string, string>), ...credentials } })
          )
          const body = yield* Effect.promise(() => res.json())
          expect({ method, path, status: res.status, body }).toEqual({ method, path, status: 401, body: unauthorizedBody(message) })
          expect(res.headers.get("x-request-id")).toMatch(/^req_/)
          expect(res.headers.get("access-control-allow-origin")).toBeNull()
        }
      }
    }))

  it.effect("the openai client with a wrong key: AuthenticationError with the envelope, on every method", () =>
    Effect.gen(function*() {
      const openai = client(yield* baseUrl, "sk-not-a-key")
      const calls: ReadonlyArray<readonly [string, () => Promise<unknown>]> = [
        ["files.list", () => openai.files.list()],
        ["files.create", async () => openai.files.create({ file: await toFile(Buffer.from("{}\n"), "a.jsonl"), purpose: "batch" })],
        ["files.retrieve", () => openai.files.retrieve("file-abc")],
        ["files.content", () => openai.files.content("file-abc")],
        ["files.delete", () => openai.files.delete("file-abc")],
        ["batches.create", () =>
          openai.batches.create({ input_file_id: "file-abc", endpoint: "/v1/chat/completions", completion_window: "24h" })],
        ["batches.list", () => openai.batches.list()],
        ["batches.retrieve", () => openai.batches.retrieve("batch_abc")],
        ["batches.cancel", () => openai.batches.cancel("batch_abc")],
        ["models.list", () => openai.models.list()]
      ]
      for (const [name, call] of calls) {
        const error = yield* Effect.promise(() => call().then(() => undefined, (e) => e))
        expect(error, name).toBeInstanceOf(OpenAI.AuthenticationError)
        expect({ name, status: error.status, error: error.error }).toEqual({ name, status: 401, error: UNAUTHORIZED.error })
      }
    }))

  it.effect("health, docs and the OpenAPI document need no key (and the document declares the bearer key)", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      // A probe written with a trailing slash too: the router serves it as the route without one.
      for (const path of ["/v1/health", "/v1/health/", "/docs", "/openapi.json"]) {
        const res = yield* Effect.promise(() => fetch(`${base}${path}`))
        expect({ path, status: res.status }).toEqual({ path, status: 200 })
        expect(res.headers.get("x-request-id")).toMatch(/^req_/)
        if (path === "/openapi.json") {
          const spec: any = yield* Effect.promise(() => res.json())
          expect(JSON.stringify(spec.components.securitySchemes)).toContain("bearer")
        } else yield* Effect.promise(() => res.arrayBuffer())
      }
      // Not built yet, but public: no 401 for a key it does not need.
      const ready = yield* Effect.promise(() => fetch(`${base}/v1/ready`))
      expect(ready.status).not.toBe(401)
      // A key sent where none is needed is not checked.
      const health = yield* Effect.promise(() => fetch(`${base}/v1/health`, { headers: { authorization: "Bearer nonsense" } }))
      expect(yield* Effect.promise(() => health.json())).toEqual({ status: "OK" })
    }))

  it.effect("each key works with the openai client; callers are audited by project and key hash, never by key", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      logged.length = 0
      const expected: Array<Record<string, unknown>> = []
      const owners = [
        [KEYS.alpha1, "projA", false],
        [KEYS.alpha2, "projA", false],
        [KEYS.beta, "projB", false],
        [KEYS.solo, `key-${sha256(KEYS.solo).slice(0, 12)}`, false],
        [KEYS.admin, `key-${sha256(KEYS.admin).slice(0, 12)}`, true]
      ] as const
      for (const [key, project, admin] of owners) {
        const openai = client(base, key)
        const file = yield* Effect.promise(async () =>
          openai.files.create({ file: await toFile(Buffer.from(`${chatLine("a", "[hang]")}\n`), "in.jsonl"), purpose: "batch" })
        )
        expect((yield* Effect.promise(() => openai.files.retrieve(file.id))).id).toBe(file.id)
        const batch = yield* Effect.promise(() =>
          openai.batches.create({ input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h" })
        )
        const cancelled = yield* Effect.promise(() => openai.batches.cancel(batch.id))
        expect(["cancelling", "cancelled"]).toContain(cancelled.status)
        const other = yield* Effect.promise(async () =>
          openai.files.create({ file: await toFile(Buffer.from("{}\n"), "other.jsonl"), purpose: "batch" })
        )
        expect((yield* Effect.promise(() => openai.files.delete(other.id))).deleted).toBe(true)
        const who = { project, key_hash: sha256(key).slice(0, 12), admin }
        expected.push(
          { action: "file.upload", object_id: file.id, ...who },
          { action: "batch.create", object_id: batch.id, ...who },
          { action: "batch.cancel", object_id: batch.id, ...who },
          { action: "file.upload", object_id: other.id, ...who },
          { action: "file.delete", object_id: other.id, ...who }
        )
      }
      expect(auditLines()).toEqual(expected)
      expect(logged.filter((r) => r.message === "audit").every((r) => r.level === "INFO")).toBe(true)
      expect(keyHash(KEYS.alpha1)).toBe(sha256(KEYS.alpha1).slice(0, 12))
      // No key in any log line, message or annotation (the request log lines included).
      const everything = JSON.stringify(logged)
      expect(logged.some((r) => r.annotations.event === "http.request")).toBe(true)
      for (const key of allKeys) expect(everything).not.toContain(key)
    }))
})

/** `ApiLive` served on its own (an app of one's own around the API, without `HttpLive`'s security middleware). */
const bareApi = HttpApiBuilder.serve().pipe(
  Layer.provide(ApiLive),
  Layer.provide(AuthTest({ apiKeys: [`${KEYS.beta}:projB`] })),
  Layer.provide(ServicesLive),
  Layer.provideMerge(TestHttpServer),
  Layer.provideMerge(configFor()),
  Layer.provideMerge(Layer.merge(TestDataDir.Default, TestDatabase.layer("sqlite"))),
  Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
)

layer(bareApi, { excludeTestServices: true })("ApiLive without the security middleware", (it) => {
  it.effect("the Files and Batches routes still need a key (checked by the Authenticated API middleware)", () =>
    Effect.gen(function*() {
      const base = yield* baseUrl
      for (const path of ["/v1/files", "/v1/batches"]) {
        const refused = yield* Effect.promise(() => fetch(`${base}${path}`, { headers: { authorization: "Bearer sk-nope" } }))
        expect({ status: refused.status, body: yield* Effect.promise(() => refused.json()) }).toEqual({ status: 401, body: UNAUTHORIZED })
        // No key: said as `secure` says it.
        const none = yield* Effect.promise(() => fetch(`${base}${path}`))
        expect({ status: none.status, body: yield* Effect.promise(() => none.json()) }).toEqual({ status: 401, body: unauthorizedBody(NO_KEY) })
        const served = yield* Effect.promise(() => fetch(`${base}${path}`, { headers: { authorization: `Bearer ${KEYS.beta}` } }))
        expect(served.status).toBe(200)
        yield* Effect.promise(() => served.arrayBuffer())
      }
      expect((yield* Effect.promise(() => fetch(`${base}/v1/health`))).status).toBe(200)
    }))
})

describe("the keys file", () => {
  const scratch = () => mkdtempSync(Path.join(tmpdir(), "auth-test-"))
  const withFile = (text: string) => {
    const dir = scratch()
    const path = Path.join(dir, "keys.txt")
    writeFileSync(path, text)
    return { dir, path }
  }
  const fileAuth = (path: string, extra: Parameters<typeof AppConfig.layerWith>[0] = {}) =>
    AuthLive.pipe(Layer.provide(AppConfig.layerWith({ apiKeysFile: Option.some(path), ...extra })))
  const callerOf = (key: string) => Effect.flatMap(Auth, (auth) => auth.authenticate(key))

  it.live("a SIGHUP's reload line counts every key added and removed, and lists the hashes of 20 each way at most", () =>
    Effect.gen(function*() {
      const keys = (from: number) => Array.from({ length: 25 }, (_, i) => `sk-many-${from + i}:projM`)
      const { dir, path } = withFile(keys(0).join("\n"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const lines: Array<{ message: string; annotations: Record<string, unknown> }> = []
      const recorder = Logger.make(({ annotations, message }) =>
        void lines.push({ message: String(message), annotations: Object.fromEntries(HashMap.toEntries(annotations)) }))
      yield* Layer.build(fileAuth(path).pipe(Layer.provide(Logger.replace(Logger.defaultLogger, recorder))))
      writeFileSync(path, keys(25).join("\n"))
      process.emit("SIGHUP") // what the signal does: the handler AuthLive put in place
      const reloaded = () => lines.find((l) => l.message.startsWith("API keys reloaded"))
      for (let i = 0; i < 100 && reloaded() === undefined; i++) yield* Effect.sleep("20 millis")
      expect(reloaded()!.message).toMatch(/^API keys reloaded: 25 added, 25 removed \(on this node; /)
      expect(reloaded()!.annotations.keys_added).toEqual(keys(25).slice(0, 20).map((k) => keyHash(k.split(":")[0]!)))
      expect(reloaded()!.annotations.keys_removed).toEqual(keys(0).slice(0, 20).map((k) => keyHash(k.split(":")[0]!)))
    }).pipe(Effect.scoped))

  it.live("a SIGHUP that leaves no key at all is a warning that every request is now refused (401), not an Info line", () =>
    Effect.gen(function*() {
      const { dir, path } = withFile(Array.from({ length: 5 }, (_, i) => `sk-gone-${i}:projG`).join("\n"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const lines: Array<{ level: string; message: string }> = []
      const recorder = Logger.make(({ logLevel, message }) => void lines.push({ level: logLevel.label, message: String(message) }))
      const built = yield* Layer.build(fileAuth(path).pipe(Layer.provide(Logger.replace(Logger.defaultLogger, recorder))))
      const auth = Context.get(built, Auth)
      writeFileSync(path, "# every key revoked\n")
      process.emit("SIGHUP")
      const reloaded = () => lines.find((l) => l.message.startsWith("API keys reloaded"))
      for (let i = 0; i < 100 && reloaded() === undefined; i++) yield* Effect.sleep("20 millis")
      expect(reloaded()!.level).toBe("WARN")
      expect(reloaded()!.message).toMatch(/^API keys reloaded: 0 added, 5 removed \(on this node; .*\); no key is in use: every request will now be refused \(401\) until keys are added$/)
      expect(yield* auth.authenticate("sk-gone-0")).toEqual(Option.none()) // still closed, not open
    }).pipe(Effect.scoped))

  it.scoped("sha256 entries, plain entries, comments and admin lines; reload switches keys; a bad file keeps them", () =>
    Effect.gen(function*() {
      const { dir, path } = withFile([
        "# team F (hashed: no secret on disk)",
        `sha256:${sha256("sk-file-f")}:projF`,
        "",
        "   # an indented comment",
        `sk-file-g:projG\r`,
        `sha256:${sha256("sk-file-solo")}`,
        `admin:sha256:${sha256("sk-file-admin")}`,
        "admin:sk-file-admin-2",
        ""
      ].join("\n"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const auth = yield* Effect.provide(Auth, fileAuth(path))
      const caller = (key: string) => Effect.provideService(callerOf(key), Auth, auth)
      expect(auth.required).toBe(true)
      expect(yield* caller("sk-file-f")).toEqual(Option.some({ project: "projF", admin: false, keyHash: sha256("sk-file-f").slice(0, 12) }))
      expect(yield* caller("sk-file-g")).toEqual(Option.some({ project: "projG", admin: false, keyHash: sha256("sk-file-g").slice(0, 12) }))
      expect(Option.map(yield* caller("sk-file-solo"), (c) => c.project)).toEqual(Option.some(`key-${sha256("sk-file-solo").slice(0, 12)}`))
      expect(Option.map(yield* caller("sk-file-admin"), (c) => c.admin)).toEqual(Option.some(true))
      expect(Option.map(yield* caller("sk-file-admin-2"), (c) => c.admin)).toEqual(Option.some(true))
      expect(yield* caller(`sha256:${sha256("sk-file-f")}`)).toEqual(Option.none())
      expect(yield* caller("")).toEqual(Option.none())
      expect(yield* auth.summary).toMatchObject({ keys: 5, admins: 2, projects: 3, webhooksWithoutKey: [] })

      // A new file is not used before the reload; after it, only its keys are. Its webhook line for a project no
      // key belongs to (misspelt) is told.
      const secret = `whsec_${Buffer.from("key").toString("base64")}`
      writeFileSync(path, `sk-file-h:projH\nwebhook:projH https://h.example.com/ ${secret}\nwebhook:projHH https://h.example.com/ ${secret}\n`)
      expect(Option.isSome(yield* caller("sk-file-f"))).toBe(true)
      expect(yield* auth.reload).toEqual({
        keys: 1,
        admins: 0,
        projects: 1,
        webhooksWithoutKey: ["projHH"],
        projectNames: ["projH"],
        keyHashes: [keyHash("sk-file-h")]
      })
      expect(yield* caller("sk-file-f")).toEqual(Option.none())
      expect(Option.map(yield* caller("sk-file-h"), (c) => c.project)).toEqual(Option.some("projH"))

      // A bad line: the reload fails naming the variable and the line (not the key), and the keys stay.
      writeFileSync(path, `sk-file-i:projI\n# fine\nsk-secret-in-bad-line:not a project\n`)
      const bad = yield* Effect.flip(auth.reload)
      expect(String(bad)).toContain("API_KEYS_FILE")
      expect(String(bad)).toContain("line 3")
      expect(String(bad)).not.toContain("sk-secret-in-bad-line")
      expect(Option.isSome(yield* caller("sk-file-h"))).toBe(true)
      expect(yield* caller("sk-file-i")).toEqual(Option.none())

      // A missing file too.
      rmSync(path)
      expect(String(yield* Effect.flip(auth.reload))).toContain("ENOENT")
      expect(Option.isSome(yield* caller("sk-file-h"))).toBe(true)
    }))

  it.effect("a named pipe, a device or a file over 16 MiB as the keys file stops the start at once, saying so", () =>
    Effect.gen(function*() {
      const dir = scratch()
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const fifo = Path.join(dir, "keys.fifo")
      execFileSync("mkfifo", [fifo]) // nothing writes to it: the start waited for ever, deaf to SIGTERM
      const large = Path.join(dir, "keys.txt")
      writeFileSync(large, `sk-big:projA\n${"#".repeat(16 * 1024 * 1024)}\n`)
      for (const [path, said] of [[fifo, "is not a regular file"], ["/dev/zero", "is not a regular file"], [large, "is larger than 16 MiB: not a keys file"]]) {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(fileAuth(path))))
        expect(Exit.isFailure(exit) ? String(exit.cause) : "started").toContain(`API_KEYS_FILE`)
        expect(Exit.isFailure(exit) ? String(exit.cause) : "started").toContain(`${path} ${said}`)
      }
    }).pipe(Effect.scoped))

  it.effect("a bad file at start fails the layer with a ConfigError naming API_KEYS_FILE and the line", () =>
    Effect.gen(function*() {
      const cases = [
        [`sk-ok:projA\n\nsha256:${sha256("x").toUpperCase()}:projB\n`, "line 3"],
        [`sk-ok:projA\nsk-secret-two:projA/b\n`, "line 2"],
        [`admin:\n`, "line 1"],
        [`sk-ok:projA\nsk-ok:projB\n`, "line 2 repeats the key of API_KEYS_FILE line 1"],
        [`sha256:${sha256("sk-env")}\n`, "line 1 repeats the key of API_KEYS entry 1"]
      ] as const
      for (const [text, where] of cases) {
        const { dir, path } = withFile(text)
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(fileAuth(path, { apiKeys: [Redacted.make("sk-env")] }))))
        rmSync(dir, { recursive: true, force: true })
        expect(Exit.isFailure(exit)).toBe(true)
        const message = Exit.isFailure(exit) ? String(exit.cause) : ""
        expect(message).toContain("API_KEYS_FILE")
        expect(message).toContain(where)
        expect(message).not.toContain("sk-secret-two")
        expect(message).not.toContain("sk-ok")
      }
    }))
})

describe("key configuration", () => {
  const fromEnv = (env: Record<string, string>) =>
    Effect.exit(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  const failure = (exit: Exit.Exit<unknown, unknown>) => (Exit.isFailure(exit) ? String(exit.cause) : "(succeeded)")

  it.effect("API_KEYS and ADMIN_API_KEYS: trimmed, secret (redacted), refused naming the variable but not the key", () =>
    Effect.gen(function*() {
      const ok = yield* fromEnv({ API_KEYS: " sk-1:projA , sk-2 ,, sk-3 : proj_B-2 ", ADMIN_API_KEYS: "sk-root" })
      expect(Exit.isSuccess(ok)).toBe(true)
      if (Exit.isSuccess(ok)) {
        expect(ok.value.apiKeys.map(Redacted.value)).toEqual(["sk-1:projA", "sk-2", "sk-3 : proj_B-2"])
        expect(JSON.stringify(ok.value)).not.toContain("sk-1")
        expect(String(ok.value.adminApiKeys)).not.toContain("sk-root")
      }
      for (const [env, variable] of [
        [{ API_KEYS: "sk-secret-1:proj A" }, "API_KEYS"],
        [{ API_KEYS: `sk-secret-1:${"p".repeat(65)}` }, "API_KEYS"],
        [{ API_KEYS: "sk-secret-1:" }, "API_KEYS"],
        [{ API_KEYS: "sha256:abc:projA" }, "API_KEYS"],
        [{ ADMIN_API_KEYS: "sk-secret-1 two" }, "ADMIN_API_KEYS"],
        [{ API_KEYS_FILE: " " }, "API_KEYS_FILE"],
        [{ CORS_ORIGINS: "https://app.example/" }, "CORS_ORIGINS"],
        [{ CORS_ORIGINS: "*" }, "CORS_ORIGINS"]
      ] as const) {
        const message = failure(yield* fromEnv(env))
        expect(message).toContain(variable)
        expect(message).not.toContain("sk-secret-1")
      }
    }))

  it.effect("a non-loopback HOST needs keys or ALLOW_UNAUTHENTICATED: the environment says so at once", () =>
    Effect.gen(function*() {
      for (const host of ["0.0.0.0", "10.1.2.3", "::", "example.com"]) {
        expect(failure(yield* fromEnv({ HOST: host }))).toContain("HOST")
        expect(Exit.isSuccess(yield* fromEnv({ HOST: host, API_KEYS: "sk-1" }))).toBe(true)
        expect(Exit.isSuccess(yield* fromEnv({ HOST: host, ADMIN_API_KEYS: "sk-1" }))).toBe(true)
        expect(Exit.isSuccess(yield* fromEnv({ HOST: host, API_KEYS_FILE: "/etc/keys" }))).toBe(true)
        expect(Exit.isSuccess(yield* fromEnv({ HOST: host, ALLOW_UNAUTHENTICATED: "true" }))).toBe(true)
      }
      for (const host of ["127.0.0.1", "localhost", "::1", "127.0.0.53"]) {
        expect(Exit.isSuccess(yield* fromEnv({ HOST: host }))).toBe(true)
      }
    }))

  it.scoped("a non-loopback HOST needs the keys of the Auth in use, an Auth swapped in by an app too, before anything starts", () =>
    Effect.gen(function*() {
      const check = (auth: Layer.Layer<Auth, unknown, AppConfig>, config: Parameters<typeof AppConfig.layerWith>[0]) =>
        Effect.exit(Layer.build(HostCheckLive.pipe(Layer.provide(auth), Layer.provide(AppConfig.layerWith(config)))))
      // The configuration's keys do not open the interface when the Auth in use has none (that served everyone).
      const swappedForNone = failure(yield* check(AuthTest(), { host: "0.0.0.0", apiKeys: [Redacted.make("sk-1")] }))
      expect(swappedForNone).toContain("Invalid data at HOST")
      expect(swappedForNone).toContain("the Auth in use asks for no key")
      expect(failure(yield* check(AuthLive, { host: "0.0.0.0" }))).toContain("ALLOW_UNAUTHENTICATED")
      // Keys of the app's own Auth do, as the configuration's do (the first was refused).
      expect(Exit.isSuccess(yield* check(AuthTest({ apiKeys: ["sk-1"] }), { host: "0.0.0.0" }))).toBe(true)
      expect(Exit.isSuccess(yield* check(AuthLive, { host: "0.0.0.0", apiKeys: [Redacted.make("sk-1")] }))).toBe(true)
      expect(Exit.isSuccess(yield* check(AuthLive, { host: "0.0.0.0", allowUnauthenticated: true }))).toBe(true)
      expect(Exit.isSuccess(yield* check(AuthTest(), { host: "127.0.0.1" }))).toBe(true)

      // The services check it first: no database is made, no batch work starts.
      const parent = mkdtempSync(Path.join(tmpdir(), "auth-host-"))
      const dataDir = Path.join(parent, "data")
      const services = ServicesLive.pipe(Layer.provide(AppConfig.layerWith({ host: "0.0.0.0", dataDir })))
      expect(failure(yield* Effect.exit(Layer.build(services)))).toContain("Invalid data at HOST")
      expect(existsSync(dataDir)).toBe(false)
      rmSync(parent, { recursive: true, force: true })
    }))

  it.scoped("an app's own server bound beyond loopback needs keys too, whatever HOST says: HttpLive does not start on it without them", () =>
    Effect.gen(function*() {
      const serve = (host: string | undefined, auth?: Layer.Layer<Auth, unknown, AppConfig>) =>
        Effect.exit(Layer.build(HttpLive.pipe(
          Layer.provide(makeServices(auth === undefined ? {} : { auth })),
          Layer.provide(makeNodeServer({ host, port: 0, shutdownTimeout: "1 second" })),
          // HOST left at its default, 127.0.0.1: a `Host: localhost` sent from afar would pass the Host check.
          Layer.provide(AppConfig.layerTest())
        )))
      const everywhere = failure(yield* serve("0.0.0.0"))
      expect(everywhere).toContain("Invalid data at HOST")
      expect(everywhere).toContain("The server listens on 0.0.0.0, not a loopback address")
      // Every interface; HOST is fine, the server given is not: said so, not as if HOST were wrong.
      expect(failure(yield* serve(undefined))).toContain(
        "The server listens on 0.0.0.0, not a loopback address (HOST is 127.0.0.1, but the server given to the app binds elsewhere: give makeNodeServer a host"
      )
      expect(Exit.isSuccess(yield* serve("0.0.0.0", AuthTest({ apiKeys: ["sk-1"] })))).toBe(true)
      expect(Exit.isSuccess(yield* serve("127.0.0.1"))).toBe(true)
    }))
})

describe("the server process", () => {
  const scratch = () => mkdtempSync(Path.join(tmpdir(), "auth-process-"))

  it.live("reloads its keys file on SIGHUP without a restart; a bad file keeps the keys and logs the line", () =>
    Effect.promise(async () => {
      const dir = scratch()
      const keysFile = Path.join(dir, "keys")
      writeFileSync(keysFile, `# first\nsha256:${sha256("sk-proc-one")}:projOne\n`)
      const server = await startServer({ DATA_DIR: Path.join(dir, "data"), API_KEYS_FILE: keysFile })
      const status = async (key: string) =>
        (await fetch(`${server.url}/v1/files`, { headers: { authorization: `Bearer ${key}` } })).status
      const eventually = async (check: () => Promise<boolean>) => {
        const deadline = Date.now() + 10_000
        while (!(await check())) {
          if (Date.now() > deadline) throw new Error(`timed out; server output:\n${server.output()}`)
          await new Promise((r) => setTimeout(r, 50))
        }
      }
      try {
        expect(await status("sk-proc-one")).toBe(200)
        expect(await status("sk-proc-two")).toBe(401)
        const pid = server.child.pid
        writeFileSync(keysFile, `sk-proc-two:projTwo\nwebhook:projTw0 https://hooks.example.com/x whsec_${Buffer.from("k").toString("base64")}\n`)
        server.child.kill("SIGHUP")
        await eventually(async () => (await status("sk-proc-two")) === 200)
        expect(await status("sk-proc-one")).toBe(401)
        await eventually(async () => server.output().includes("API keys reloaded")) // logged once the keys are in use
        // What changed, by hash: a rotation is told from a reload that changed nothing.
        const reloaded = JSON.parse(server.stdout().split("\n").find((l) => l.includes("API keys reloaded"))!)
        expect(reloaded.message).toMatch(/^API keys reloaded: 1 added, 1 removed \(on this node; /)
        expect([reloaded.keys_added, reloaded.keys_removed]).toEqual([[keyHash("sk-proc-two")], [keyHash("sk-proc-one")]])
        // A webhook line no key's project can use (misspelt), said: its events went nowhere without a word.
        await eventually(async () => server.output().includes("webhook line for 'projTw0', which no key belongs to"))

        writeFileSync(keysFile, `sk-proc-three:projThree\n\nsk-proc-secret:bad project\n`)
        server.child.kill("SIGHUP")
        await eventually(async () => server.output().includes("could not be reloaded"))
        expect(server.output()).toContain("line 3")
        expect(await status("sk-proc-two")).toBe(200)
        expect(await status("sk-proc-three")).toBe(401)
        expect(server.child.pid).toBe(pid)
        expect(server.child.exitCode).toBeNull()
        for (const key of ["sk-proc-one", "sk-proc-two", "sk-proc-three", "sk-proc-secret"]) {
          expect(server.output()).not.toContain(key)
        }
        expect(await server.stop()).toBe(0)
      } finally {
        await server.stop()
        rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.live("without a keys file, a SIGHUP is said and changes nothing (Node's default ended the server without a line)", () =>
    Effect.promise(async () => {
      const dir = scratch()
      const server = await startServer({ DATA_DIR: Path.join(dir, "data"), API_KEYS: "sk-hup:projA" })
      try {
        const pid = server.child.pid
        server.child.kill("SIGHUP")
        const deadline = Date.now() + 10_000
        while (!server.output().includes("SIGHUP: nothing to re-read") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
        expect(server.output()).toContain("UPSTREAMS_FILE and the other settings are read at start")
        expect((await fetch(`${server.url}/v1/files`, { headers: { authorization: "Bearer sk-hup" } })).status).toBe(200)
        expect([server.child.pid, server.child.exitCode]).toEqual([pid, null])
        expect(await server.stop()).toBe(0)
      } finally {
        await server.stop()
        rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.live("refuses to start on a non-loopback HOST without keys, or on a bad keys file, naming the variable", () =>
    Effect.promise(async () => {
      const dir = scratch()
      try {
        const open = await runServerToExit({ DATA_DIR: Path.join(dir, "a"), HOST: "0.0.0.0", PORT: "0" }, 20_000)
        expect(open.code).toBe(1)
        expect(open.output).toContain("Invalid configuration")
        expect(open.output).toContain("HOST")
        expect(open.output).toContain("ALLOW_UNAUTHENTICATED")

        const keysFile = Path.join(dir, "keys")
        writeFileSync(keysFile, `sk-ok:projA\n# comment\nsk-start-secret:no good\n`)
        const bad = await runServerToExit({ DATA_DIR: Path.join(dir, "b"), API_KEYS_FILE: keysFile, PORT: "0" }, 20_000)
        expect(bad.code).toBe(1)
        expect(bad.output).toContain("Invalid configuration")
        expect(bad.output).toContain("API_KEYS_FILE")
        expect(bad.output).toContain("line 3")
        expect(bad.output).not.toContain("sk-start-secret")
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    }))

  it.live("starts on every interface with keys", () =>
    Effect.promise(async () => {
      const dir = scratch()
      const server = await startServer({ DATA_DIR: dir, HOST: "0.0.0.0", API_KEYS: "sk-any-host:projA" })
      try {
        const res = await fetch(`${server.url}/v1/files`, { headers: { authorization: "Bearer sk-any-host" } })
        expect(res.status).toBe(200)
        expect((await fetch(`${server.url}/v1/files`)).status).toBe(401)
      } finally {
        await server.stop()
        rmSync(dir, { recursive: true, force: true })
      }
    }))
})
