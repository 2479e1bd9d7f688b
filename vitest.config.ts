import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

export default defineConfig({
  // The examples import the package by name: here that is the source (scripts/check-package.sh runs them on the
  // packed tarball).
  resolve: { alias: { "effect-openai-batch": fileURLToPath(new URL("./src/index.ts", import.meta.url)) } },
  test: {
    include: ["test/**/*.test.ts", "examples/*/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Both cores: most suites wait on servers, PostgreSQL and child processes, not on the CPU (one fork, vitest's
    // default on two cores, took twice as long).
    poolOptions: { forks: { minForks: 1, maxForks: 2 } }
  }
})
