/** The nesting check run before a request body or an input line is parsed (src/domain/Json.ts). */
import { describe, expect, it } from "@effect/vitest"
import { nestedDeeperThan } from "../src/domain/Json.js"

describe("nestedDeeperThan", () => {
  it("counts arrays and objects inside each other, not brackets inside strings", () => {
    expect(nestedDeeperThan(`${"[".repeat(3)}${"]".repeat(3)}`, 3)).toBe(false)
    expect(nestedDeeperThan(`${"[".repeat(4)}${"]".repeat(4)}`, 3)).toBe(true)
    expect(nestedDeeperThan(`{"a":{"b":[{"c":1}]}}`, 3)).toBe(true)
    expect(nestedDeeperThan(`["${"[".repeat(100)}"]`, 3)).toBe(false)
    // Escaped quotes stay inside their string; an escaped backslash ends before the closing quote.
    expect(nestedDeeperThan(`["a\\"${"[".repeat(100)}"]`, 3)).toBe(false)
    expect(nestedDeeperThan(`["a\\\\"${",[".repeat(4)}${"]".repeat(4)}]`, 3)).toBe(true)
    expect(nestedDeeperThan(`["a\\\\\\"${"[".repeat(100)}"]`, 3)).toBe(false)
  })

  it("sees the depth of text that is not JSON too, and ends on an unterminated string", () => {
    expect(nestedDeeperThan(`${"[".repeat(10)}`, 3)).toBe(true)
    expect(nestedDeeperThan(`[[ "never closed ${"[".repeat(10)}`, 3)).toBe(false) // JSON.parse refuses it at once
  })
})
