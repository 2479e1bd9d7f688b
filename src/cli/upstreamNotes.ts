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
  path: "its base URL misses the version path"
}

/**
 * The line to say now of `upstream` (the batch's), after the watch said it was down (`saidDown`) or not; undefined
 * when there is nothing new. `now` in Unix seconds.
 */
export const upstreamNote = (upstream: UpstreamSeen | undefined, saidDown: boolean, now: number): string | undefined => {
  const down = upstream?.state === "down"
  if (upstream === undefined || down === saidDown || (!down && upstream.state !== "up")) return undefined
  if (!down) return `Upstream ${upstream.name} is back: the batch goes on.`
  const since = upstream.down_since === null ? "" : ` since ${ago(upstream.down_since, now)}`
  const reason = upstream.down_reason === null ? "" : ` (${DOWN_REASONS[upstream.down_reason] ?? upstream.down_reason})`
  return `Upstream ${upstream.name} is down${since}${reason}: the batch waits for it, losing nothing, and goes on once it is back.`
}
