/**
 * Suites that run beside each other, each one's tests one after another: for suites on apps (and simulators,
 * databases, processes) of their own whose time goes mostly to waiting on timers, leases and other processes. A file
 * of such suites then takes about as long as its longest one instead of their sum (`npm test`'s time budget). Tests
 * that share an app, or anything else, stay in one suite.
 */
import { describe } from "@effect/vitest"

/**
 * A suite named `name` that vitest starts together with its sibling suites made the same way (a concurrent suite),
 * its own tests in order (a sequential one inside, unnamed: the tests' names read `name > test`).
 */
export const sideBySide = (name: string, suite: () => void) =>
  describe.concurrent(name, () => {
    describe.sequential("", suite)
  })
