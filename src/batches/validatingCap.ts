/**
 * How many of a project's validating batches a node drives at once (waiting for a permit, or validating): each is a
 * fiber, ~40 KB with what it holds, and a key creating batches in a loop made thousands (16,000 in a minute took the
 * process past 1.8 GB). The others wait in the database: the heartbeat leaves them out of its pick-up while their
 * project has as many here (`crowded`), and as these go on the next are taken up at once, a project at a time, as
 * many as it has room for (`wanted`): the heartbeat a second took them up 16 one-line batches a second. A project's
 * share of the permits needs only one of its batches waiting.
 *
 * A batch is counted while its drive starts from `validating` (its validation, and the run of its first turn): one
 * that needs more turns waits for them uncounted, as every running batch does.
 */
import { Effect, Queue, type Scope } from "effect"
import type { BatchId } from "../domain/Ids.js"
import { inBackground } from "../Scheduler.js"

export interface ValidatingCap {
  /** Whether `project` has as many validating batches driven here as it may: the batch is left (`rooms` takes it up). */
  readonly full: (project: string) => boolean
  readonly enter: (project: string) => void
  /** A counted batch went on; true when its project had batches left, so that one of them may be taken up now. */
  readonly leave: (project: string) => boolean
  /** The projects whose validating batches the heartbeat leaves out. */
  readonly crowded: () => ReadonlyArray<string>
  /** Each project with batches left and room for some, with that room; one that has none left is forgotten (`none`). */
  readonly rooms: () => ReadonlyArray<{ readonly project: string; readonly room: number }>
  /** `project` has no batch left in the database (a take-up found fewer than its room). */
  readonly none: (project: string) => void
}

const makeValidatingCap = (cap: number): ValidatingCap => {
  const driven = new Map<string, number>()
  /** Projects that had batches left for the cap, and may still have. */
  const left = new Set<string>()
  const count = (project: string) => driven.get(project) ?? 0
  return {
    full: (project) => {
      if (count(project) < cap) return false
      left.add(project)
      return true
    },
    enter: (project) => void driven.set(project, count(project) + 1),
    leave: (project) => {
      const now = count(project) - 1
      if (now <= 0) driven.delete(project)
      else driven.set(project, now)
      return left.has(project)
    },
    crowded: () => Array.from(driven).filter(([, n]) => n >= cap).map(([project]) => project),
    rooms: () => Array.from(left, (project) => ({ project, room: cap - count(project) })).filter(({ room }) => room > 0),
    none: (project) => void left.delete(project)
  }
}

/** The cap as the runner uses it (`runValidatingCap`). */
export interface RunnerCap {
  readonly full: (project: string) => boolean
  readonly crowded: () => ReadonlyArray<string>
  /** `effect`, a validating batch's turn, counted among `project`'s while it runs. */
  readonly counted: <A>(project: string, effect: Effect.Effect<A>) => Effect.Effect<A>
}

/**
 * The cap at `limit` for a runner, with its take-up running in the scope: as a counted batch of a project that had
 * batches left goes on, `claim` finds at most its room of that project's (free, not driven here), and `start` drives
 * them (without a pick-up line: they are this node's own, created here or found by its heartbeat).
 */
export const runValidatingCap = (
  limit: number,
  claim: (project: string, room: number) => Effect.Effect<ReadonlyArray<BatchId>>,
  start: (id: BatchId) => Effect.Effect<void>
): Effect.Effect<RunnerCap, never, Scope.Scope> =>
  Effect.gen(function*() {
    const cap = makeValidatingCap(limit)
    // A wish to take up batches now rather than at the next heartbeat: many at once are one.
    const wanted = yield* Queue.sliding<void>(1)
    const takeUpLeft = Effect.suspend(() =>
      Effect.forEach(cap.rooms(), ({ project, room }) =>
        Effect.flatMap(claim(project, room), (left) => {
          if (left.length < room) cap.none(project)
          return Effect.forEach(left, start, { discard: true })
        }), { discard: true }))
    yield* Effect.forkScoped(inBackground(Effect.forever(Effect.zipRight(
      Queue.take(wanted),
      Effect.catchAllCause(takeUpLeft, (cause) => Effect.logWarning("Could not take up waiting batches; the next heartbeat will", cause))
    ))))
    return {
      full: cap.full,
      crowded: cap.crowded,
      counted: (project, effect) =>
        Effect.acquireUseRelease(
          Effect.sync(() => cap.enter(project)),
          () => effect,
          () => Effect.sync(() => cap.leave(project) && Queue.unsafeOffer(wanted, undefined))
        )
    }
  })
