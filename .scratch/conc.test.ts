import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
let running = 0, max = 0
const t = () => Effect.gen(function*() { running++; max = Math.max(max, running); yield* Effect.sleep("300 millis"); running-- })
for (const b of ["a", "b"]) describe.concurrent(b, () => describe.sequential("", () => {
  it.live("one", t)
  it.live("two", t)
}))
describe("after", () => it("max", () => expect(max).toBe(2)))
