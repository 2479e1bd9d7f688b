/**
 * What `submit --watch`, `watch` and `retry --watch` do once a batch exists: watch it to its end, save its output
 * and error files, say how it went, and exit 0 only when every request succeeded (3 when some did not). Each command
 * checks first that `--out` can be written (`checkOut`), before it makes a batch or waits for one.
 */
import { Effect } from "effect"
import { allSucceeded, problemLine, summaryLine } from "./describe.js"
import { savedJson, savedLines, saveResults } from "./download.js"
import { CliFailure, EXIT_FAILED, EXIT_NOT_ALL_SUCCEEDED } from "./failure.js"
import { note, printJson, say, sayAll } from "./output.js"
import { watch, type WatchSettings } from "./watch.js"

export interface FollowSettings extends WatchSettings {
  /** Where the output and error files go. */
  readonly out: string
}

export const follow = (id: string, settings: FollowSettings) =>
  Effect.gen(function*() {
    const batch = yield* watch(id, settings)
    const saved = yield* saveResults(batch, settings.out, { retryFor: settings.retryFor, tell: note })
    if (settings.mode === "json") {
      yield* printJson({
        object: "batch.summary", // told apart from the batch objects before it
        id: batch.id,
        status: batch.status,
        request_counts: batch.request_counts ?? null,
        usage: batch.usage ?? null,
        errors: batch.errors?.data ?? [],
        ...savedJson(saved)
      })
    } else {
      yield* say(summaryLine(batch, Date.now() / 1000))
      yield* sayAll([...(batch.errors?.data ?? []).map(problemLine), ...savedLines(saved)])
    }
    // A file the server no longer has is results lost (1); requests that did not succeed are results to read (3).
    if (saved.gone.length > 0) return yield* new CliFailure({ exitCode: EXIT_FAILED })
    if (!allSucceeded(batch)) return yield* new CliFailure({ exitCode: EXIT_NOT_ALL_SUCCEEDED })
  })
