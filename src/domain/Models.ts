/** The wire shapes of `GET /v1/models` (OpenAI's) and `GET /v1/upstreams` (an extension). */
import { Schema } from "effect"

export const Model = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("model"),
  created: Schema.Int,
  owned_by: Schema.String
})

export const ModelList = Schema.Struct({ object: Schema.Literal("list"), data: Schema.Array(Model) })

/** An upstream as this node sees it now, for the caller's project: what a client polling a batch that waits can read. */
export const UpstreamObject = Schema.Struct({
  object: Schema.Literal("upstream"),
  name: Schema.String,
  /**
   * `up`; `paused` (up, but holding every call: a `Retry-After`, its server's queue at `max_waiting`); `down` (no
   * call goes out: the batches using it wait, losing nothing); `recovering` (back, its calls one at a time until one
   * succeeds).
   */
  state: Schema.Literal("up", "paused", "recovering", "down"),
  /** When the outage under way began (unix seconds); null when up or paused. */
  down_since: Schema.NullOr(Schema.Int),
  /** What kind of trouble: no connection, its calls failing (5xx, timeouts), its key refused, its base URL's path. */
  down_reason: Schema.NullOr(Schema.Literal("unreachable", "failing", "key", "path", "quota")),
  /** The models it serves for the caller (those of `GET /v1/models` it owns). */
  models: Schema.Array(Schema.String),
  /** Whether it also takes models it does not list (`"*"` in the upstreams file). */
  serves_any_model: Schema.Boolean,
  /**
   * Its concurrency limit on this node now (adaptive), its calls in flight, and calls waiting for a permit: every
   * project's, so told to an operator key only (null for a project's key: another project's traffic is not its own).
   */
  concurrency_limit: Schema.NullOr(Schema.Int),
  in_flight: Schema.NullOr(Schema.Int),
  waiting: Schema.NullOr(Schema.Int)
})

export const UpstreamList = Schema.Struct({ object: Schema.Literal("list"), data: Schema.Array(UpstreamObject) })
