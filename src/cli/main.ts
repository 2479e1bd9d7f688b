#!/usr/bin/env node
/**
 * `openai-batch`: the command line (`@effect/cli`) over any OpenAI-compatible Files + Batches API. This file wires
 * the commands to their modules and maps how a command ended to the exit code (`failure.ts`): 0 done (a watched
 * batch: every request succeeded), 1 a refusal or failure (of the server, or of writing the results), 2 nothing done
 * (the input file or the command line is wrong), 3 a watched batch whose requests did not all succeed, 130/143
 * stopped by Ctrl-C/SIGTERM, 141 the reader of stdout gone.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { readFileSync } from "node:fs"
import * as Path from "node:path"
import { Cause, Effect, Exit, Option, Redacted } from "effect"
import { BatchApi, DEFAULT_BASE_URL, layer as batchApiLayer, type RerunKind } from "./BatchApi.js"
import { describeBatch, listLines } from "./describe.js"
import { listFilter } from "./listFilter.js"
import { checkOut, download } from "./download.js"
import { CliFailure, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, STOP_SIGNAL_NAMES, STOP_SIGNALS, type StopSignal } from "./failure.js"
import { follow } from "./follow.js"
import { DEFAULT_MAX_REQUESTS } from "./localValidation.js"
import { colourWhereShown, modeOf, note, printJson, say, sayAll, visible } from "./output.js"
import { packageRoot } from "../packageRoot.js"
import { BatchStatus } from "../domain/Batches.js"
import { count } from "./progress.js"
import { inputPath, STDIN_PATH } from "./inputFile.js"
import { serve } from "./serve.js"
import { retry, submit } from "./submit.js"
import { proxyProblem } from "../inference/proxies.js"
import {
  afterCreate,
  afterCreateOptions,
  batchId,
  checkedBaseUrl,
  connection,
  type ConnectionFlags,
  fromEnv,
  interval,
  json,
  metadataOption,
  out,
  retryFor
} from "./flags.js"

const top = Command.make("openai-batch", connection, () =>
  Effect.fail(new CliFailure({ exitCode: EXIT_INVALID, message: "Give a command: submit, status, list, watch, cancel, download, retry or serve (--help says more)." })))

/** Provides the API named by the flags (the subcommand's, else the top command's), else the environment, else the default. */
const withApi = <A, E, R>(own: ConnectionFlags, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const parent = yield* top
    const flag = Option.orElse(own.baseUrl, () => parent.baseUrl)
    const env = { baseUrl: yield* fromEnv("OPENAI_BASE_URL"), apiKey: yield* fromEnv("OPENAI_API_KEY") }
    const baseUrl = Option.isSome(flag)
      ? Option.some(yield* checkedBaseUrl(flag.value, "--base-url"))
      : Option.isSome(env.baseUrl) ? Option.some(yield* checkedBaseUrl(env.baseUrl.value, "OPENAI_BASE_URL")) : Option.none()
    const flagKey = Option.map(Option.orElse(own.apiKey, () => parent.apiKey), Redacted.value)
    // Most often `--api-key "$KEY"` with KEY unset: the client threw its own error, with a stack trace.
    if (Option.exists(flagKey, (key) => key.trim() === "")) {
      return yield* new CliFailure({ exitCode: EXIT_INVALID, message: "--api-key is empty (if it was given a variable, is that variable set?); nothing was done." })
    }
    const apiKey = Option.orElse(flagKey, () => env.apiKey)
    // Calls go through the proxy variables (`streamingFetch.ts`): one undici cannot use threw on the first call.
    const proxy = proxyProblem(process.env)
    if (proxy !== undefined) return yield* new CliFailure({ exitCode: EXIT_INVALID, message: `${String(proxy).replace(/^\(|\)$/g, "")}; nothing was done.` })
    return yield* Effect.provide(
      effect,
      batchApiLayer({ baseUrl: Option.getOrElse(baseUrl, () => DEFAULT_BASE_URL), apiKey: Option.getOrUndefined(apiKey) })
    )
  })

/** The longest idempotency key the server takes, in characters. */
const MAX_IDEMPOTENCY_KEY = 256

/** `--idempotency-key`: `what` is made once for the key (a server extension). */
const idempotencyKeyOption = (what: string) =>
  Options.text("idempotency-key").pipe(
    Options.withPseudoName("KEY"),
    Options.withDescription(
      `Makes ${what} once for this key: the same command again (a CI job run twice) gives ${what} made before`
    ),
    // An unset variable's "" would make every run share one key: each would get the first one's batch.
    Options.filterMap(
      (key) => (key.trim() === "" ? Option.none() : Option.some(key)),
      "--idempotency-key is empty (if it was given a variable, is that variable set?)"
    ),
    // The server's bound, checked before the upload it would come after.
    Options.filterMap(
      (key) => ([...key].length > MAX_IDEMPOTENCY_KEY ? Option.none() : Option.some(key)),
      `--idempotency-key is longer than ${MAX_IDEMPOTENCY_KEY} characters`
    ),
    Options.optional
  )

const submitCommand = Command.make(
  "submit",
  {
    ...connection,
    // Text, not `Args.file`: `-` (the standard input) is no path (`inputFile.ts`).
    file: Args.text({ name: "FILE.jsonl" }).pipe(Args.withDescription("The requests, one JSON object a line; - reads them from the standard input")),
    endpoint: Options.text("endpoint").pipe(
      Options.withPseudoName("PATH"),
      Options.withDescription("The batch's endpoint (default: the url of the file's first request, else /v1/chat/completions)"),
      Options.optional
    ),
    metadata: metadataOption("A metadata pair key=value (repeatable)"),
    idempotencyKey: idempotencyKeyOption("the batch"),
    maxRequests: Options.integer("max-requests").pipe(
      Options.withPseudoName("N"),
      Options.withDescription(`The most requests the server takes in a batch: its MAX_REQUESTS_PER_BATCH (default ${DEFAULT_MAX_REQUESTS}, OpenAI's)`),
      Options.filterMap((n) => (n > 0 ? Option.some(n) : Option.none()), "--max-requests must be above 0"),
      Options.withDefault(DEFAULT_MAX_REQUESTS)
    ),
    ...afterCreateOptions
  },
  (o) =>
    Effect.scoped(Effect.flatMap(inputPath(o.file), (file) =>
      withApi(o, submit({
        file,
        shownAs: o.file === STDIN_PATH ? "the standard input" : o.file,
        endpoint: o.endpoint,
        metadata: o.metadata,
        maxRequests: o.maxRequests,
        idempotencyKey: Option.getOrUndefined(o.idempotencyKey),
        ...afterCreate(o)
      }))))
).pipe(Command.withDescription("Check a JSONL file of requests, upload it and create its batch; --watch follows it to its end"))

const statusCommand = Command.make("status", { ...connection, batchId, json }, (o) =>
  withApi(o, Effect.flatMap(BatchApi, (api) => api.retrieve(o.batchId)).pipe(
    Effect.flatMap((batch) => (o.json ? printJson(batch) : sayAll(describeBatch(batch, Date.now() / 1000))))
  ))).pipe(Command.withDescription("Show a batch: status, counts, tokens, phases, files, problems"))

/** The most batches `list` shows: a page of 100 at a time, as far as that goes. */
const MAX_LISTED = 10_000

const listCommand = Command.make(
  "list",
  {
    ...connection,
    limit: Options.integer("limit").pipe(
      Options.withPseudoName("N"),
      Options.withDescription(`How many batches, newest first (1–${count(MAX_LISTED)}; read 100 a page)`),
      Options.filterMap((n) => (n >= 1 && n <= MAX_LISTED ? Option.some(n) : Option.none()), `--limit must be from 1 to ${MAX_LISTED}`),
      Options.withDefault(20)
    ),
    after: Options.text("after").pipe(
      Options.withPseudoName("BATCH_ID"),
      Options.withDescription("Start after this batch (the last one listed: the next page)"),
      Options.optional
    ),
    status: Options.choice("status", BatchStatus.literals).pipe(
      Options.withDescription("Only batches of this status (repeatable)"),
      Options.repeated
    ),
    metadata: metadataOption("Only batches whose metadata has KEY set to VALUE (repeatable: every pair)"),
    json
  },
  (o) =>
    withApi(o, Effect.flatMap(BatchApi, (api) =>
      // One more than shown, to say whether more match: a list cut at 20 without a word read as the whole sweep.
      api.list(o.limit + 1, {
        after: Option.getOrUndefined(o.after),
        keep: listFilter(o.status, o.metadata)
      })).pipe(
      Effect.flatMap((read) => {
        const batches = read.slice(0, o.limit)
        const shown = o.json
          ? Effect.forEach(batches, printJson, { discard: true })
          : sayAll(batches.length === 0 ? ["No batches."] : listLines(batches, Date.now() / 1000))
        if (read.length <= o.limit) return shown
        const last = batches[batches.length - 1]!.id
        const further = o.limit < MAX_LISTED ? `--limit ${Math.min(o.limit * 5, MAX_LISTED)} shows more, ` : ""
        return Effect.zipRight(shown, note(`More batches${listFilter(o.status, o.metadata) === undefined ? "" : " match"}: ${further}--after ${last} the next ones.`))
      })
    ))
).pipe(Command.withDescription("List the newest batches"))

const watchCommand = Command.make("watch", { ...connection, batchId, out, json, interval, retryFor }, (o) =>
  withApi(o, Effect.zipRight(checkOut(o.out), follow(o.batchId, { mode: modeOf(o.json), interval: o.interval, out: o.out, retryFor: o.retryFor })))).pipe(
    Command.withDescription("Show a batch's progress until it ends, then write its output and error files to --out")
  )

const cancelCommand = Command.make("cancel", { ...connection, batchId, json }, (o) =>
  withApi(o, Effect.flatMap(BatchApi, (api) => api.cancel(o.batchId)).pipe(
    Effect.flatMap((batch) => (o.json ? printJson(batch) : say(`${batch.id}: ${batch.status}`)))
  ))).pipe(Command.withDescription("Cancel a batch: requests in flight are stopped, finished results kept"))

const downloadCommand = Command.make("download", { ...connection, batchId, out, json, retryFor }, (o) =>
  withApi(o, download(o.batchId, o.out, modeOf(o.json), { retryFor: o.retryFor }))).pipe(
    Command.withDescription("Write a finished batch's output and error files to --out")
  )

const retryCommand = Command.make(
  "retry",
  {
    ...connection,
    batchId,
    only: Options.choice("only", ["error", "expired", "cancelled"] as const).pipe(
      Options.withDescription("Which requests to rerun (repeatable; default all three): failed, expired, cancelled"),
      Options.repeated,
      Options.optional
    ),
    idempotencyKey: idempotencyKeyOption("the rerun"),
    ...afterCreateOptions
  },
  (o) =>
    withApi(o, retry(o.batchId, Option.getOrElse(o.only, () => []) as ReadonlyArray<RerunKind>, Option.getOrUndefined(o.idempotencyKey), afterCreate(o)))
).pipe(Command.withDescription("Rerun a finished batch's requests that failed, expired or were cancelled, as a new batch"))

const serveCommand = Command.make("serve", {}, () =>
  Effect.flatMap(serve, (code) => (code === 0 ? Effect.void : Effect.fail(new CliFailure({ exitCode: code }))))).pipe(
    Command.withDescription(
      "Start the server, as `npm start` does, configured by the same environment variables, among them: " +
        "PORT (8321), HOST (127.0.0.1), DATA_DIR (.data), DATABASE_URL (PostgreSQL; else SQLite in DATA_DIR), " +
        "INFERENCE_BASE_URL or UPSTREAMS_FILE (the upstreams), API_KEYS or API_KEYS_FILE, MAX_CONCURRENT_BATCHES (1), " +
        "LOG_FORMAT, LOG_LEVEL. Every one is in the README's Configuration table; `--base-url` and `--api-key` are the " +
        "client's, not the server's."
    )
  )

const command = top.pipe(
  Command.withDescription("Submit JSONL batches to an OpenAI-compatible Batch API, watch them run, fetch the results"),
  Command.withSubcommands([
    submitCommand,
    statusCommand,
    listCommand,
    watchCommand,
    cancelCommand,
    downloadCommand,
    retryCommand,
    serveCommand
  ])
)

const version: string = JSON.parse(readFileSync(Path.join(packageRoot(), "package.json"), "utf8")).version

const cli = Command.run(command, { name: "openai-batch", version })

/** The exit code of how the program ended; says why on stderr unless the command already did. */
const exitCode = (exit: Exit.Exit<void, unknown>): number => {
  if (Exit.isSuccess(exit)) return 0
  if (Cause.isInterruptedOnly(exit.cause)) return stoppedBy === undefined ? EXIT_INTERRUPTED : STOP_SIGNALS[stoppedBy]
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    if (error instanceof CliFailure) {
      if (error.message) console.error(visible(error.message))
      return error.exitCode
    }
    // @effect/cli has printed what was wrong with the command line.
    if (ValidationError.isValidationError(error)) return EXIT_INVALID
  }
  console.error(Cause.pretty(exit.cause))
  return EXIT_FAILED
}

// A reader that closed the pipe early (`openai-batch list | head -1`) ends the command quietly, with the code of a
// tool ended by SIGPIPE (128 + 13): never 0, which would say a watched batch succeeded in full.
// Any other failure to write it (a full disk, `> /dev/full`) is said on stderr in one line, exit 1: it threw, a stack
// trace after the batch was made (its id is on stderr too: `submit`'s note). Either way the command is interrupted,
// so that what it holds is let go (a spooled standard input, a half-written download), 5 s at most.
let stdoutLost: number | undefined
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (stdoutLost !== undefined) return
  stdoutLost = error.code === "EPIPE" ? 141 : EXIT_FAILED
  // The error comes a tick after the write: after the command's last one, it has ended already (with 0).
  process.exitCode = stdoutLost
  if (error.code !== "EPIPE") console.error(`openai-batch: cannot write to the standard output (${error.message}); what it was given is lost.`)
  fiber.unsafeInterruptAsFork(fiber.id())
  setTimeout(() => process.exit(stdoutLost), 5_000).unref()
})
// Notes that cannot be written (stderr on a full disk) are lost, and change nothing: a submit that made its batch
// exited 1 for them, and a script would make it again.
process.stderr.on("error", () => {})

// @effect/cli's `--wizard` asks its questions on a terminal: without one it waited for ever, drawing escape codes
// into a pipe (a cron job hung).
if (process.argv.includes("--wizard") && !(process.stdin.isTTY && process.stdout.isTTY)) {
  console.error("openai-batch: --wizard asks its questions on a terminal, and there is none here; nothing was done.")
  process.exit(EXIT_INVALID)
}

// Holds the process open while the program runs (a wait on a signal alone would not).
const keepAlive = setInterval(() => {}, 2 ** 31 - 1)
const fiber = Effect.runFork(Effect.suspend(() => cli(process.argv.map((arg) => (arg === "-" ? STDIN_PATH : arg)))).pipe(colourWhereShown, Effect.provide(NodeContext.layer)))
// Ctrl-C, or a SIGTERM (a CI runner's or `timeout`'s stop), where no command answers it itself (a watch stops, or
// asks on a terminal; `serve` passes it on) interrupts the command, so that what it holds is let go (a request
// aborted, a half-written file removed, an upload without its batch said); a second one ends the process at once.
// A SIGTERM ended the process silently, leaving those behind.
let stoppedBy: StopSignal | undefined
const onStop = (signal: StopSignal) => () => {
  if (process.listenerCount(signal) > 1) return
  if (stoppedBy !== undefined) process.exit(STOP_SIGNALS[signal])
  stoppedBy = signal
  fiber.unsafeInterruptAsFork(fiber.id())
}
const stopHandlers = STOP_SIGNAL_NAMES.map((signal) => [signal, onStop(signal)] as const)
for (const [signal, handler] of stopHandlers) process.on(signal, handler)
fiber.addObserver((exit) => {
  clearInterval(keepAlive)
  for (const [signal, handler] of stopHandlers) process.off(signal, handler)
  process.exitCode = stdoutLost ?? exitCode(exit)
})
