/**
 * The near-miss check on every member name of a JSON body (`domain/misspeltNames.ts`): a body's names are the
 * client's, so the check must cost about what parsing them does. A 1 MiB unknown name took 0.6 s of the event loop
 * (a fuzzing trial: 4 clients sending such bodies held `/v1/health` 1.2 s), as did 80,000 short ones.
 */
import { describe, expect, it } from "@effect/vitest"
import { meantName } from "../src/domain/misspeltNames.js"

/** A batch create's parameters. */
const known = ["input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after", "requests", "idempotency_key"]

describe("names a client likely misspelt", () => {
  it("finds the near misses, and lets other names through", () => {
    expect(meantName("output_expire_after", known)).toBe("output_expires_after")
    expect(meantName("completionWindow", known)).toBe("completion_window")
    expect(meantName("custom_llm_provider", known)).toBeUndefined()
    expect(meantName("endpoint", known)).toBeUndefined()
  })

  it("costs next to nothing for names far longer than any known one, or very many of them", () => {
    const started = performance.now()
    expect(meantName("k".repeat(1_040_000), known)).toBeUndefined()
    for (let i = 0; i < 80_000; i++) meantName(`k${i.toString(36)}`, known)
    // About 20 ms here; 1.3 s before (an edit distance worked out against every known name, whatever their lengths).
    expect(performance.now() - started).toBeLessThan(500)
  })
})
