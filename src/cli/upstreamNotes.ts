/**
 * What a watch says of the upstream its batch waits for: a batch whose upstream is down stays `in_progress` with
 * its counts still, and OpenAI's batch object says nothing of why. This server's `GET /v1/upstreams` (an extension;
 * another server has none, and nothing is said) tells. Pure.
 */
import { ago } from "./describe.js"

/** An upstream as `GET /v1/upstreams` gives it (the fields read here). */
export interface UpstreamSeen {
  readonly name: string
  readonly state: "up" | "paused" | "recovering" | "down"
  readonly down_since: number | null
  readonly down_reason: string | null
  readonly models: ReadonlyArray<string>
  readonly serves_any_model: boolean
}

/** The upstream serving `model`: the one listing it, else one serving any model (as the server routes). */
export const servingUpstream = (upstreams: ReadonlyArray<UpstreamSeen>, model: string): UpstreamSeen | undefined =>
  upstreams.find((u) => u.models.includes(model)) ?? upstreams.find((u) => u.serves_any_model)

/** What an upstream's `down_reason` means, in a note (the dashboard's `ui/format.js` says the same). */
export const DOWN_REASONS: Record<string, string> = {
  unreachable: "no connection",
  failing: "its calls fail",
  key: "its key is refused",
  path: "its base URL misses the version path",
  quota: "its quota is spent"
}

/**
 * The line to say now of `upstream` (the batch's), after the watch said it was down (`saidDown`) or not; undefined
 * when there is nothing new. `now` in Unix seconds; `ended` when the batch ended meanwhile (nothing goes on).
 */
export const upstreamNote = (upstream: UpstreamSeen | undefined, saidDown: boolean, now: number, ended = false): string | undefined => {
  const down = upstream?.state === "down"
  if (upstream === undefined || down === saidDown || (!down && upstream.state !== "up")) return undefined
  if (!down) return `Upstream ${upstream.name} is back${ended ? "." : ": the batch goes on."}`
  const since = upstream.down_since === null ? "" : ` since ${ago(upstream.down_since, now)}`
  const reason = upstream.down_reason === null ? "" : ` (${DOWN_REASONS[upstream.down_reason] ?? upstream.down_reason})`
  return `Upstream ${upstream.name} is down${since}${reason}: the batch waits for it, losing nothing, and goes on ` +
    (WAY_BACK[upstream.down_reason ?? ""] ?? "once it is back.")
}

/** When a batch goes on after an outage that is the configuration's, not the server's going away. */
const WAY_BACK: Record<string, string> = {
  path: "once this server is restarted with the upstream's base URL mended (…/v1).",
  key: "once the upstream takes its key again (or this server is restarted with another).",
  quota: "once the upstream's account may make calls again (credit added)."
}

/** How long a running batch's counts may stand still, its upstream up, before the watch says why that may be. */
export const STALL_NOTE_AFTER_S = 15

/**
 * The line for a batch `in_progress` whose counts stood still for `stalledFor` seconds while its upstream is up:
 * with one batch run at a time (the default), a batch behind another shows `0/10, 0.0/s` for as long as the other
 * runs, and looked stuck. Undefined before `after` seconds.
 */
export const stallNote = (stalledFor: number, after = STALL_NOTE_AFTER_S): string | undefined =>
  stalledFor < after
    ? undefined
    : `No request of the batch has finished for ${Math.round(stalledFor)}s, though its upstream is up: the server may ` +
      "be running other batches first (it runs MAX_CONCURRENT_BATCHES at a time), or its requests take that long."

