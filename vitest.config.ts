import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

export default defineConfig({
  // The examples import the package by name: here that is the source (scripts/check-package.sh runs them on the
  // packed tarball).
  resolve: { alias: { "effect-openai-batch": fileURLToPath(new URL("./src/index.ts", import.meta.url)) } },
  test: {
    include: ["test/**/*.test.ts", "examples/*/*.test.ts"],
    // Compiles `src/` once for the tests that start the server as a child process (test/support/CompiledCopy.ts).
    globalSetup: ["test/support/globalSetup.ts"],
    // Before each file: @effect/vitest's `it.effect` back (an earlier file's `layer(...)` replaces it; see below).
    setupFiles: ["test/support/freshIt.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Three forks on two cores: most suites wait on servers, PostgreSQL, child processes and timers part of the time
    // (one fork, vitest's default on two cores, took twice as long). Each fork runs its files one after another
    // without a fresh process per file (`isolate: false`): loading Effect, the SQL clients and the app again for
    // every file cost about 2 s of CPU each. Every test builds its own app: the modules loaded are shared, and
    // vitest's `it` (`freshIt.ts`).
    // As many forks at least as at most: with isolation off, a fork stopped for being idle could be handed a file as
    // it went ("Terminating worker thread", the run lost, forks left running).
    poolOptions: { forks: { minForks: 3, maxForks: 3, isolate: false } }
  }
})
