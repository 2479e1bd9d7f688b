/**
 * On PostgreSQL, nodes on several machines write and judge shared times: leases (of batches, slices, upload
 * completions, webhook deliveries), a file's or a batch's `created_at` and `expires_at`. Read from each machine's own
 * clock, a node 60 s ahead took every slice the others held (their requests sent twice), one behind lost its own
 * slices, and one that died an hour ahead left its work for that hour. So a node reads Effect's `Clock` from
 * PostgreSQL's: it measures the server's clock at the start and every minute and reads the time as the last
 * measurement plus the monotonic time since, which a step of the machine's clock (NTP's, an operator's) does not
 * move; it measures again within a second when the machine's clock and the monotonic one part (a step, or a machine
 * suspended: its monotonic clock stood still) or the monotonic clock itself leaps (libfaketime steps both: until then
 * the time is off by the step). A new measurement moves the time at once, forward or back (by more than 50 ms only).
 * Its log lines' timestamps follow (Effect's logger reads the fiber's clock; but for a start's lines before the
 * migrations' end, and those of fibers on real time, `wallClock.ts`): the nodes' lines interleave by one time. It
 * says when its own clock is more than a second from the server's (the machine's other programs and its files' times
 * on disk go by it). On SQLite every node runs on the file's machine, on one clock: nothing changes.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Clock, Duration, Effect, Layer } from "effect"

/** PostgreSQL's time in epoch milliseconds, as SQL: the clock leases are written and judged by. */
export const PG_NOW_MS = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::float8"

/** How often a node measures PostgreSQL's clock. */
const MEASURE_EVERY = Duration.minutes(1)
/** How often it looks whether the machine's clock and the monotonic one parted or leapt (no query: two clock reads). */
const WATCH_EVERY = Duration.seconds(1)
/**
 * The machine's clock moved this far against the monotonic one since the last measurement (stepped, or suspended), or
 * the monotonic one this far more or less than a look's interval between two looks (stepped, or the process stalled).
 */
const PARTED_MS = 1_000
/**
 * A measurement replaces the one in use only when this much farther from it than half its round trip (the
 * server read its clock somewhere in it): within that, a new one would only make the time wobble.
 */
const REANCHOR_MS = 50
/** A measurement that failed is tried again this long after. */
const RETRY_AFTER_MS = 5_000
/** The machine's clock this far from the server's is said (a warning), and said again once within half of it. */
const APART_MS = 1_000

/**
 * Effect's clock this far from the machine's is a test's (`TestClock` starts at 0), not the machine's: it is left
 * alone (an app embedded in a test on PostgreSQL had warned of a node 56 years behind at each start).
 */
const TEST_CLOCK_AWAY_MS = 86_400_000

/**
 * A test's clock: Effect's `TestClock` (which its `adjust` and `setTime` tell, wherever it was set: a test that set it
 * to now found `TestClock.adjust` failing, the shared clock in its place), or one a day or more from the machine's.
 */
const isTestClock = (clock: Clock.Clock): boolean =>
  typeof (clock as { readonly adjust?: unknown }).adjust === "function" ||
  typeof (clock as { readonly setTime?: unknown }).setTime === "function" ||
  Math.abs(clock.unsafeCurrentTimeMillis() - Date.now()) > TEST_CLOCK_AWAY_MS

const seconds = (ms: number) => `${(Math.abs(ms) / 1000).toFixed(1)} s`

/** The warning of a machine's clock `aheadMs` ahead of the database's (behind when negative). */
const apartLine = (aheadMs: number) =>
  `This node's clock is ${seconds(aheadMs)} ${aheadMs > 0 ? "ahead of" : "behind"} PostgreSQL's. The node reads ` +
  "PostgreSQL's time (measured every minute) for its leases, the times it stores and its log lines; the machine's " +
  "other programs and its files' times on disk go by its own: keep every node's clock in sync (NTP)."

/**
 * For as long as the scope lasts, Effect's `Clock.currentTimeMillis` reads PostgreSQL's time on the fibers of what
 * is built after it (its nanoseconds, for durations and spans, and its sleeps stay the machine's); the machine's
 * clock compared with it, and said when apart. Nothing on SQLite, nor under a test's clock.
 */
export const shareDatabaseClock = (measureEvery: Duration.Duration = MEASURE_EVERY, watchEvery: Duration.Duration = WATCH_EVERY) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    if (!sql.onDialectOrElse({ pg: () => true, orElse: () => false })) return
    const machine = yield* Effect.clock
    if (isTestClock(machine)) return
    const monotonicMs = () => Number(machine.unsafeCurrentTimeNanos() / 1_000_000n)
    const wallLessMonotonic = () => machine.unsafeCurrentTimeMillis() - monotonicMs()

    // The time is the monotonic time plus `offsetMs`: the machine's clock's until the first measurement.
    let offsetMs = wallLessMonotonic()
    let partedFrom = offsetMs
    // How far ahead the machine's clock was said to be, while it is said to be apart.
    let saidAheadMs: number | undefined
    const now = () => Math.floor(monotonicMs() + offsetMs)

    const measure = Effect.gen(function*() {
      const before = monotonicMs()
      const [row] = yield* sql<{ ms: number }>`SELECT ${sql.literal(PG_NOW_MS)} AS ms`
      const after = monotonicMs()
      const halfTripMs = (after - before) / 2
      const measured = Number(row!.ms) - (before + after) / 2
      if (Math.abs(measured - offsetMs) > halfTripMs + REANCHOR_MS) offsetMs = measured
      partedFrom = wallLessMonotonic()
      const aheadMs = partedFrom - measured
      // Said when apart, and again when apart by another second (a clock stepped again: the line said showed the old).
      const away = (from: number) => Math.abs(aheadMs - from) - halfTripMs > APART_MS
      if (saidAheadMs === undefined ? away(0) : away(saidAheadMs) && away(0)) {
        saidAheadMs = aheadMs
        yield* Effect.logWarning(apartLine(aheadMs)).pipe(
          Effect.annotateLogs({ event: "node.clock_skew", ahead_ms: Math.round(aheadMs) })
        )
      } else if (saidAheadMs !== undefined && Math.abs(aheadMs) + halfTripMs <= APART_MS / 2) { // well within: no line at each wobble
        saidAheadMs = undefined
        yield* Effect.logInfo(`This node's clock agrees with PostgreSQL's again (${seconds(aheadMs)} apart).`).pipe(
          Effect.annotateLogs({ event: "node.clock_in_sync", ahead_ms: Math.round(aheadMs) })
        )
      }
    })

    // When the next measurement is due, and none before `notBefore` (a failed one is tried again a few seconds on:
    // the heartbeat says when the database does not answer, and the time goes on from the last measurement meanwhile).
    const measureEveryMs = Duration.toMillis(measureEvery)
    const watchEveryMs = Duration.toMillis(watchEvery)
    let dueAt = 0
    let notBefore = 0
    const measureNow = (at: number) =>
      Effect.matchEffect(measure, {
        onFailure: () => Effect.sync(() => void (notBefore = at + RETRY_AFTER_MS)),
        onSuccess: () => Effect.sync(() => void (dueAt = at + measureEveryMs))
      })
    // When the last look ended: the next one's sleep alone lies between (a slow measurement is not a leap).
    let lastLook = monotonicMs()
    const look = Effect.suspend(() => {
      const at = monotonicMs()
      // The machine's clock moved against the monotonic one (a step, a suspended machine), or the monotonic clock
      // itself leapt or went back over a look's sleep (libfaketime steps both): measure at once.
      const stepped = Math.abs(wallLessMonotonic() - partedFrom) > PARTED_MS || Math.abs(at - lastLook - watchEveryMs) > PARTED_MS
      if (stepped) dueAt = Math.min(dueAt, at)
      return at >= dueAt && at >= notBefore ? measureNow(at) : Effect.void
    }).pipe(Effect.ensuring(Effect.sync(() => void (lastLook = monotonicMs()))))
    yield* Effect.withClockScoped<Clock.Clock>({
      [Clock.ClockTypeId]: Clock.ClockTypeId,
      unsafeCurrentTimeMillis: now,
      currentTimeMillis: Effect.sync(now),
      unsafeCurrentTimeNanos: () => machine.unsafeCurrentTimeNanos(),
      currentTimeNanos: machine.currentTimeNanos,
      sleep: (duration) => machine.sleep(duration)
    })
    // Measured under the shared clock (the time read till then is the machine's): its lines carry PostgreSQL's time
    // as the others do, the first warning too.
    yield* measureNow(monotonicMs())
    lastLook = monotonicMs()
    yield* Effect.delay(look, watchEvery).pipe(Effect.forever, Effect.forkScoped)
  })

/** `shareDatabaseClock`, for the services built after it. */
export const DatabaseClockLive = Layer.scopedDiscard(shareDatabaseClock())
