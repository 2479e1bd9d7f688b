/**
 * Which batch's failures are its own, for the judge (`judge.ts`): a batch whose every line makes the upstream fail
 * (a 5xx for each body) took the shared upstream down again and again, for every batch on it (a multi-tenant trial:
 * 20 outages a minute, other projects' batches 3–4× slower; with one batch permit, its turns held only its calls).
 *
 * The rule: the upstream went down by a run of failures all of one batch's requests (batch A), then a request of
 * another batch succeeded (the upstream serves: on trial, or a call that was out), and A's requests make such a run
 * again with no success of A's between: A fails on its own, a *suspect*. A suspect's first-attempt failures join no
 * run: its lines fail after their attempts, as a line failing alone does, while the other batches go on. A run of a
 * suspect's (as long as one that makes an outage, with no success between) asks `GET /models` instead, and takes the
 * upstream down when it answers 5xx or not at all: a server that fails everything, seen by a suspect alone.
 *
 * So a poison batch takes its upstream down once. A real outage that a batch's run noticed and that another batch's
 * success ended makes that batch no suspect: once it is back, its own requests succeed, and that clears the blame.
 * Suspicion ends with any outage (the upstream failing for everyone: its trial says the rest) and is kept for the
 * last `KEPT_SUSPECTS` batches only (an ended batch's id never comes again).
 *
 * A suspect's project is suspect too, while another project's requests are served: its batches that have had no
 * success yet join no run either. Else a project sending a failing batch a second took the shared upstream down
 * with each new one (its first run), each outage clearing the suspicion of the ones before: another project's batch
 * went 4× slower, with 10–14 s without progress (a penetration test). Its batches that succeeded are not suspect:
 * in a real outage their failures take the upstream down as before. A deployment of one project keeps the batch
 * rule alone.
 */
import type { Ticket } from "./Admission.js"

/** Suspects kept, the oldest forgotten first. */
const KEPT_SUSPECTS = 64
/**
 * How long after the last success of a request of another batch a suspect's failures are still its own: with no
 * other batch served lately (the suspect alone sending, its turn), an upstream that went on failing everything would
 * fail the suspect's lines, a batch made suspect by a flapping server too; its failures then make runs again.
 */
export const OTHERS_SERVED_WITHIN_MS = 30_000

export interface BatchBlame {
  /** Whether `ticket`'s batch fails on its own: its first-attempt failures join no run. */
  readonly isSuspect: (ticket: Ticket) => boolean
  /** A suspect's first-attempt failure: true when it ends a run long enough to ask `GET /models` (counted from there). */
  readonly suspectFailed: (runLength: number) => boolean
  /**
   * A run of failures long enough for an outage: true when it is its batch's own (the rule above), that batch a
   * suspect from now on.
   */
  readonly ownRun: (run: ReadonlySet<Ticket>) => boolean
  /** The one batch the run's requests are all of, if any: the blame when the run takes the upstream down. */
  readonly batchOf: (run: ReadonlySet<Ticket>) => string | undefined
  /** It went down, by a run of `batch`'s requests or for another reason (undefined). */
  readonly wentDown: (batch: string | undefined) => void
  /** `ticket`'s request succeeded. */
  readonly succeeded: (ticket: Ticket) => void
}

/** `key` added to `set` as its latest (re-added when there), the oldest forgotten beyond `max`. */
const addLatest = <K>(set: Set<K>, key: K, max: number) => {
  set.delete(key)
  set.add(key)
  if (set.size > max) set.delete(set.values().next().value!)
}

/** `now`: milliseconds, for `OTHERS_SERVED_WITHIN_MS`. */
export const makeBatchBlame = (now: () => number): BatchBlame => {
  /** The batch whose run took the upstream down last, until its own request succeeds or another outage comes. */
  let blamed: string | undefined
  /** Whether another batch's request succeeded since the blamed batch took it down. */
  let servedOthers = false
  const suspects = new Set<string>()
  /** Suspects' first-attempt failures since the last success or `GET /models` asked. */
  let suspectRun = 0
  /** When a request of a batch not suspect last succeeded. */
  let othersServedAt = Number.NEGATIVE_INFINITY
  /** The projects of the suspects. */
  const suspectProjects = new Set<string>()
  /** Batches a request of which succeeded (the `KEPT_SUSPECTS` × 4 served latest): no project's suspicion is theirs. */
  const servedBatches = new Set<string>()
  /** When each project's requests, of batches not suspect, last succeeded (the latest `KEPT_SUSPECTS` projects). */
  const projectServedAt = new Map<string, number>()
  /** Whether a request of a project other than `project` succeeded lately. */
  const servedAnotherThan = (project: string) => {
    const since = now() - OTHERS_SERVED_WITHIN_MS
    for (const [other, at] of projectServedAt) if (other !== project && at >= since) return true
    return false
  }

  const batchOf = (run: ReadonlySet<Ticket>) => {
    let batch: string | undefined
    for (const ticket of run) {
      if (ticket.batch === undefined || (batch !== undefined && ticket.batch !== batch)) return undefined
      batch = ticket.batch
    }
    return batch
  }

  return {
    isSuspect: (ticket) =>
      now() - othersServedAt <= OTHERS_SERVED_WITHIN_MS &&
      ((ticket.batch !== undefined && suspects.has(ticket.batch)) ||
        (suspectProjects.has(ticket.project) && !servedBatches.has(ticket.batch ?? "") && servedAnotherThan(ticket.project))),
    suspectFailed: (runLength) => {
      if (++suspectRun < runLength) return false
      suspectRun = 0
      return true
    },
    ownRun: (run) => {
      const batch = batchOf(run)
      if (batch === undefined || batch !== blamed || !servedOthers) return false
      addLatest(suspects, batch, KEPT_SUSPECTS)
      addLatest(suspectProjects, run.values().next().value!.project, KEPT_SUSPECTS)
      blamed = undefined
      return true
    },
    batchOf,
    wentDown: (batch) => {
      blamed = batch
      servedOthers = false
      suspects.clear()
      suspectProjects.clear()
      suspectRun = 0
    },
    succeeded: (ticket) => {
      suspectRun = 0
      if (ticket.batch !== undefined) addLatest(servedBatches, ticket.batch, KEPT_SUSPECTS * 4)
      if (ticket.batch === undefined || !suspects.has(ticket.batch)) {
        othersServedAt = now()
        projectServedAt.delete(ticket.project) // re-inserted last: the map keeps the latest projects
        projectServedAt.set(ticket.project, othersServedAt)
        if (projectServedAt.size > KEPT_SUSPECTS) projectServedAt.delete(projectServedAt.keys().next().value!)
      }
      if (blamed === undefined) return
      if (ticket.batch === blamed) blamed = undefined // its requests work: the outage was not its own
      else servedOthers = true
    }
  }
}
