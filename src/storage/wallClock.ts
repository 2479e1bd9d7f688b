import { Clock } from "effect"

/**
 * The wall clock, for waits on other processes and a database's sessions (locks, their beats): in real time, whatever
 * clock the app runs on (a test's `TestClock` would stop them, or run them thousands of times at one adjustment).
 */
export const wallClock = Clock.make()
