/**
 * A setup file, run before each test file: `it.effect`, `it.scoped`… as @effect/vitest defines them. Its `layer(...)`
 * assigns its own (run on that layer's runtime) to vitest's `it`, which all files of a fork share when they run one
 * after another in one process (`isolate: false`): the next file's tests would run on an earlier file's closed app.
 */
import { it, makeMethods } from "@effect/vitest"

makeMethods(it)
