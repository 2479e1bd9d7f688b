/** A hand-back (`inference/answers.ts`) that a test sets off itself, as a batch's turn end would. */
import { Deferred, Effect, FiberId } from "effect"
import type { HandBack } from "../../src/inference/answers.js"

export const manualHandBack = () => {
  let isWanted = false
  const wanted = Deferred.unsafeMake<void>(FiberId.none)
  const handBack: HandBack = { wanted: () => isWanted, await: Deferred.await(wanted) }
  /** Wants the requests back, at once (call it inside an `Effect.sync` to act in the same instant as other steps). */
  const want = () => {
    isWanted = true
    Deferred.unsafeDone(wanted, Effect.void)
  }
  return { handBack, want }
}
