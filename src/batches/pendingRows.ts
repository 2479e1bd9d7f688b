/**
 * The pending requests of a running batch that this node runs: the slices it claims, one after the other (a slice
 * a dead node let lapse before the rest of the one in hand), read a page at a time, each row handed out once to the
 * workers that share the source. A slice is marked done once every
 * row handed out from it has its outcome stored (`stored`); when the scope closes, the slices left unfinished are
 * released for any node to resume. A source may end, to give its permit back, after a slice or at once (`TurnEnd`).
 */
import { Effect, Option, type Scope } from "effect"
import { AppConfig } from "../Config.js"
import type { BatchId } from "../domain/Ids.js"
import { BatchStore, type PageLimit, type RequestOutcome, type RequestRow } from "./BatchStore.js"
import type { LocalWork } from "./heartbeat.js"
import { nodeLease, type Slice, WorkLeases } from "./WorkLeases.js"

/**
 * Requests read from the store at a time: at most a slice's, and no more once their bodies hold 8 MiB (500 long lines
 * held 76 MB of a 160 MB heap, as well as what the run's calls hold).
 */
const PAGE: PageLimit = { rows: 1000, bytes: 8 * 1024 * 1024 }

export interface PendingRows {
  /** A row of the page in hand, handed out synchronously; undefined when the page is used up. */
  readonly takeNow: () => RequestRow | undefined
  /**
   * The next row, reading the next page or claiming the next slice when needed (one caller at a time); `None`
   * once no slice is left to claim.
   */
  readonly next: Effect.Effect<Option.Option<RequestRow>>
  /** Counts outcomes as stored; completes the slices they finish. */
  readonly stored: (outcomes: ReadonlyArray<RequestOutcome>) => Effect.Effect<void>
  /** Whether any slice was claimed. */
  readonly claimed: () => boolean
}

/** When a source ends to give its run's permit back (another project waits for it). */
export interface TurnEnd {
  /** Asked when a slice is used up: true ends the source there. */
  readonly afterSlice: () => boolean
  /** Asked before each row: true ends the source at once, its slice left unfinished (a turn too long for a slice). */
  readonly now: () => boolean
}

const endless: TurnEnd = { afterSlice: () => false, now: () => false }

/** A claimed slice: done once all its rows were handed out and each has its outcome stored. */
interface SliceProgress {
  readonly slice: Slice
  handedOut: boolean
  outstanding: number
}

export const makePendingRows = (
  id: BatchId,
  local: LocalWork,
  turnEnd: TurnEnd = endless
): Effect.Effect<PendingRows, never, BatchStore | WorkLeases | AppConfig | Scope.Scope> =>
  Effect.gen(function*() {
    const store = yield* BatchStore
    const leases = yield* WorkLeases
    const config = yield* AppConfig
    const clock = yield* Effect.clock
    const mutex = yield* Effect.makeSemaphore(1)
    // Released when the run ends, after its last outcomes are stored (the outcome writer, built later, is closed
    // first): the slices left unfinished go back for any node to resume.
    yield* Effect.addFinalizer(() =>
      Effect.zipRight(
        Effect.sync(() => local.dropSlices(id)),
        leases.releaseLeases({ owner: config.nodeId, batchId: id })
      )
    )

    /** Slices claimed and not yet completed: the one being read, and earlier ones with outcomes outstanding. */
    let open: Array<SliceProgress> = []
    let current: SliceProgress | undefined
    let page: ReadonlyArray<RequestRow> = []
    let index = 0
    let afterLine = 0
    let morePages = false
    let exhausted = false
    let claimed = false
    /** Slices set aside, part read, for a lapsed one taken up first: read again once it is used up (last first). */
    const setAside: Array<{ current: SliceProgress; page: ReadonlyArray<RequestRow>; index: number; afterLine: number; morePages: boolean }> = []

    /**
     * Marks the slices that are done as such, once (they leave `open` at once), forgetting them here before the
     * store does, so that the heartbeat never takes them for lost.
     */
    const completeDone = Effect.suspend(() => {
      const done = open.filter((p) => p.handedOut && p.outstanding === 0)
      if (done.length === 0) return Effect.void
      open = open.filter((p) => !done.includes(p))
      return Effect.forEach(done, (p) => {
        local.dropSlice(id, p.slice.slice)
        return store.completeSlice(id, p.slice.slice)
      }, { discard: true })
    })

    /** Reads `slice` from its first line on. */
    const startReading = (slice: Slice) => {
      claimed = true
      local.holdSlice(id, slice.slice)
      current = { slice, handedOut: false, outstanding: 0 }
      open.push(current)
      page = []
      index = 0
      afterLine = slice.firstLine - 1
      morePages = true
    }

    /** Says that `slice`, another node's whose lease ran out (it died or froze), is this node's now. */
    const tookOver = ({ firstLine, lastLine }: Slice) =>
      Effect.annotateLogs(Effect.logInfo(`Batch ${id}: took up lines ${firstLine}–${lastLine}, whose node's lease ran out`), {
        event: "batch.took_over",
        first_line: firstLine,
        last_line: lastLine
      })

    /**
     * The next slice to read: one another node let lapse first, its take-over said (taken as a free one, a dead
     * node's slice went unsaid, and an operator could not tell from the logs who ran its lines), else a free one.
     */
    const claimNext = Effect.flatMap(nodeLease(config), (lease) =>
      Effect.tap(leases.claimNextSlice(id, lease), (next) =>
        Option.isSome(next) && next.value.tookOver ? tookOver(next.value) : Effect.void))

    const nextSlice = Effect.gen(function*() {
      if (current !== undefined) {
        current.handedOut = true
        yield* completeDone
      }
      const ending = current !== undefined && turnEnd.afterSlice()
      const resumed = ending ? undefined : setAside.pop()
      if (resumed !== undefined) {
        ;({ afterLine, current, index, morePages, page } = resumed)
        return
      }
      const slice = ending ? Option.none() : yield* claimNext
      if (Option.isNone(slice)) {
        exhausted = true
        current = undefined
        return
      }
      startReading(slice.value)
    })

    /**
     * A slice another node let lapse (it died), noted by the heartbeat, is taken up before the rest of the one in
     * hand, which is set aside: its requests would otherwise wait for this slice's end (up to minutes with long
     * generations), whatever `LEASE_TTL`.
     */
    const takeUpLapsed = Effect.suspend(() => {
      // With no slice in hand, the next claim takes a free slice (the lapsed one among them) anyway.
      if (!local.takeLapsed(id) || current === undefined) return Effect.void
      return Effect.flatMap(Effect.flatMap(nodeLease(config), (lease) => leases.claimSlice(id, lease, true)), (slice) => {
        if (Option.isNone(slice)) return Effect.void // another node took it
        setAside.push({ current: current!, page, index, afterLine, morePages })
        startReading(slice.value)
        return tookOver(slice.value)
      })
    })
    const fetchPage = Effect.suspend(() =>
      Effect.map(store.pendingRequests(id, afterLine, current!.slice.lastLine, PAGE), ({ more, rows }) => {
        page = rows
        index = 0
        afterLine = rows.at(-1)?.line ?? afterLine
        morePages = more
      })
    )
    const takeNow = (): RequestRow | undefined => {
      if (index >= page.length || local.hasLapsed(id) || local.leasesMayHaveLapsed(clock.unsafeCurrentTimeMillis())) return undefined
      if (turnEnd.now()) {
        exhausted = true
        page = []
        return undefined
      }
      current!.outstanding++
      return page[index++]!
    }
    const take = Effect.suspend((): Effect.Effect<Option.Option<RequestRow>> => {
      const taken = takeNow()
      if (taken !== undefined) return Effect.succeed(Option.some(taken))
      if (exhausted) return Effect.succeed(Option.none())
      if (local.leasesMayHaveLapsed(clock.unsafeCurrentTimeMillis())) return Effect.zipRight(local.nextRenewal, take)
      if (local.hasLapsed(id)) return Effect.zipRight(takeUpLapsed, take)
      return Effect.zipRight(current !== undefined && morePages ? fetchPage : nextSlice, take)
    })

    const stored = (outcomes: ReadonlyArray<RequestOutcome>) =>
      Effect.suspend(() => {
        for (const o of outcomes) {
          const progress = open.find((p) => o.line >= p.slice.firstLine && o.line <= p.slice.lastLine)
          if (progress !== undefined) progress.outstanding--
        }
        return completeDone
      })

    return {
      takeNow,
      // Only reading the next page or slice is serialized.
      next: mutex.withPermits(1)(take),
      stored,
      claimed: () => claimed
    }
  })
