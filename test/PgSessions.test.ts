/**
 * A PostgreSQL whose sessions a pooler shares between transactions (PgBouncer's `pool_mode = transaction`) is refused
 * at start (`storage/pgSessions.ts`): told by two connections held at once. The pooler is played by connections
 * answering `pg_backend_pid()` as such a pooler does; the real server, where every session has its own process,
 * passes (every PostgreSQL test starts through the check).
 */
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { refuseSharedSessions, SessionPoolingRequired } from "../src/storage/pgSessions.js"

/** Connections whose statements are answered by the server processes `pids` gives, in the order asked. */
const pooled = (pids: (connection: number, statement: number) => number) => {
  let opened = 0
  return Effect.sync(() => {
    const connection = opened++
    let statements = 0
    return { execute: () => Effect.succeed([{ pid: pids(connection, statements++) }]) } as unknown as SqlConnection.Connection
  })
}

describe("sessions shared by a pooler", () => {
  it.effect("two connections, each with a session of its own: accepted", () =>
    Effect.gen(function*() {
      expect(Exit.isSuccess(yield* Effect.exit(refuseSharedSessions(pooled((c) => 100 + c))))).toBe(true)
    }))

  it.effect("one process for both (the session let go handed to the next statement): refused, saying what to do", () =>
    Effect.gen(function*() {
      const refused = yield* Effect.flip(refuseSharedSessions(pooled(() => 7)))
      expect(refused).toBeInstanceOf(SessionPoolingRequired)
      expect(refused.message).toMatch(/PgBouncer's pool_mode = transaction or statement/)
      expect(refused.message).toMatch(/pool_mode = session/)
    }))

  it.effect("another client took the session in between, and each connection's process changed: refused", () =>
    Effect.gen(function*() {
      // Neither shares a process with the other, but each moves from one to another.
      const moving = yield* Effect.flip(refuseSharedSessions(pooled((c, s) => 10 * c + s)))
      expect(moving).toBeInstanceOf(SessionPoolingRequired)
      // Crossing: the second's first process is the first's second.
      const crossing = yield* Effect.flip(refuseSharedSessions(pooled((c, s) => (c === 0 ? [1, 2][s]! : [2, 3][s]!))))
      expect(crossing).toBeInstanceOf(SessionPoolingRequired)
    }))
})
