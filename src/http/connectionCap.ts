/**
 * A bound on the connections a server holds open (`MAX_CONNECTIONS`): one beyond it is closed at once. Without it,
 * clients that open connections and never finish their headers took every file descriptor the process may open
 * (20,000 here, in 66 s of headers' timeout), and then nothing was served, to anyone, nor logged: the health check,
 * the upstreams' probes (taken for an outage) and the store's files all failed to open theirs. Each idle connection
 * also costs ~7 KB of memory.
 */
import { Effect, Layer, Runtime } from "effect"
import { readFileSync } from "node:fs"
import type { Server } from "node:http"
import { ONCE_A_MINUTE_MS, saidWithin } from "../observability/saidWithin.js"

/** The default's ceiling: ~70 MB of idle connections. */
const MOST_BY_DEFAULT = 10_000

/**
 * Half the open files `limits` (`/proc/self/limits`) allows the process (Node raises its soft limit to the hard
 * one at start), the other half left for the upstreams' sockets, the store's files and the database; at most
 * `MOST_BY_DEFAULT`, which is also the answer when the limit cannot be read.
 */
export const maxConnectionsFor = (limits: string | undefined): number => {
  const soft = Number(/^Max open files\s+(\d+)/m.exec(limits ?? "")?.[1])
  return Number.isSafeInteger(soft) && soft > 0 ? Math.max(1, Math.min(MOST_BY_DEFAULT, Math.floor(soft / 2))) : MOST_BY_DEFAULT
}

/** `MAX_CONNECTIONS`' default on this machine. */
export const defaultMaxConnections = (): number => {
  try {
    return maxConnectionsFor(readFileSync("/proc/self/limits", "utf8"))
  } catch {
    return maxConnectionsFor(undefined) // not Linux
  }
}

/** Caps `server`'s open connections at `max`; a connection closed for it is said, at most once a minute. */
export const capConnections = (server: Server, max: number) =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const due = saidWithin()
    const onDrop = () => {
      if (!due("drop", Date.now(), ONCE_A_MINUTE_MS)) return
      runFork(Effect.annotateLogs(
        Effect.logWarning(
          `${max} connections open, the most MAX_CONNECTIONS allows: new ones are closed at once (said at most once a minute)`
        ),
        "event",
        "server.connections_full"
      ))
    }
    server.maxConnections = max
    server.on("drop", onDrop)
    yield* Effect.addFinalizer(() => Effect.sync(() => server.off("drop", onDrop)))
  }))
