/** Which upstream serves a model for a project: the routing rule, and the routes remembered. */
import { Option } from "effect"
import type { Upstream } from "../upstreams/Upstream.js"
import { admits, servesAnyModel, type UpstreamSpec } from "../upstreams/UpstreamSpec.js"

/** What routing reads of an upstream. */
export type Routable = Pick<Upstream, "spec" | "listed" | "modelsAnswered">

/**
 * Each list's ids as a set, made once a list: a list is looked up for every model it names (`GET /v1/models`), and
 * scanning it each time held the event loop for seconds (9 s for a list of 60,000, every 30 s).
 */
const listSets = new WeakMap<ReadonlyArray<string>, ReadonlySet<string>>()
const lists = (ids: ReadonlyArray<string>, model: string) => {
  let set = listSets.get(ids)
  if (set === undefined) listSets.set(ids, (set = new Set(ids)))
  return set.has(model)
}

/** Whether `upstream` is known to serve `model`: it names it, or serves `"*"` and its list has it. */
const knownToServe = (upstream: Routable, model: string) =>
  upstream.spec.models.includes(model) ||
  (servesAnyModel(upstream.spec) && Option.exists(upstream.listed(), (ids) => lists(ids, model)))

/** Whether `upstream` serves any model and gives no list to go by (not reached yet, or it answers without one). */
const servesUnlisted = (upstream: Routable) => servesAnyModel(upstream.spec) && Option.isNone(upstream.listed())

/** Whether `upstream` serves any model and has never answered its `GET /models` (down since start): it may serve any. */
export const notReachedYet = (upstream: Routable) => servesUnlisted(upstream) && !upstream.modelsAnswered()

/**
 * `route(model, project)`: the upstream serving `model` for `project`, among those open to it, in the file's order:
 * the first known to serve it, or serving any model and never reached yet (down since start: its batches wait for
 * it), else the first serving any model that answers without a list. Not the first known to serve it wherever it
 * is in the file: a model then went to a later upstream (a paid one, elsewhere) or not depending on which answered
 * at start. A request naming no model (a moderation may leave it out, for the upstream's default) goes to the first
 * serving any model, else to the first upstream.
 *
 * A route is remembered only when an upstream's list names its model (`forget` when a list changes), by project
 * only when some upstream is not open to every one: the routes kept are at most the listed models (per project),
 * whatever model names clients send.
 */
export const makeRouteTable = <U extends Routable>(upstreams: ReadonlyArray<U>, specs: ReadonlyArray<UpstreamSpec>) => {
  const routes = new Map<string, U>()
  const byProject = specs.some((spec) => spec.projects !== undefined)
  const route = (model: string | null | undefined, project?: string): U | undefined => {
    const open = (u: U) => admits(u.spec, project)
    if (model == null) return upstreams.find((u) => open(u) && servesAnyModel(u.spec)) ?? upstreams.find(open)
    const key = byProject ? `${project ?? ""}\u0000${model}` : model
    const known = routes.get(key)
    if (known !== undefined) return known
    const first = upstreams.find((u) => open(u) && (knownToServe(u, model) || notReachedYet(u))) ??
      upstreams.find((u) => open(u) && servesUnlisted(u))
    if (first !== undefined && knownToServe(first, model)) routes.set(key, first)
    return first
  }
  return { route, forget: () => routes.clear(), remembered: () => routes.size }
}
