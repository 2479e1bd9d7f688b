/**
 * Names a client likely misspelt: `output_expire_after` for `output_expires_after`, `expires_after.seconds` for the
 * form field `expires_after[seconds]`, `MAX_CONCURENT_BATCHES` for the setting. Other unknown names are let through
 * (clients and gateways add their own, as LiteLLM's `custom_llm_provider`), but a near miss ignored silently leaves
 * what was meant undone (an output that never expires, a default setting).
 */
import { ParseResult, Schema } from "effect"
import * as AST from "effect/SchemaAST"
import { isJsonObject } from "./Json.js"

/** Edits (insertions, deletions, substitutions) from `a` to `b`: a dozen lines, not worth a dependency. */
export const editDistance = (a: string, b: string): number => {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = row
  }
  return previous[b.length]!
}

/** A name's letters and digits, lower-case: `expires_after[seconds]`, `expiresAfter.seconds` read alike. */
const letters = (name: string) => name.toLowerCase().replace(/[^a-z0-9]/g, "")

/** `letters` of the names known (the code's own: a bounded set), worked out once each. */
const knownLetters = new Map<string, string>()
const lettersOfKnown = (name: string) => {
  let theirs = knownLetters.get(name)
  if (theirs === undefined) knownLetters.set(name, theirs = letters(name))
  return theirs
}

/**
 * The name of `known` that `given` (not one of them) likely means: the same letters, or (6 letters or more) at most
 * two edits from them, the closest; undefined when none is.
 */
export const meantName = (given: string, known: ReadonlyArray<string>): string | undefined => {
  if (known.includes(given)) return undefined
  const mine = letters(given)
  let meant: string | undefined
  let closest = mine.length >= 6 ? 3 : 1
  for (const name of known) {
    const theirs = lettersOfKnown(name)
    // Why: a name whose length alone puts it `closest` edits away costs no comparison (a body's 1 MiB key took 0.6 s).
    if (Math.abs(theirs.length - mine.length) >= closest) continue
    const edits = editDistance(mine, theirs)
    if (edits < closest) [closest, meant] = [edits, name]
  }
  return meant
}

/**
 * Any value, but an object with a member whose name misspells one of `known`: an `Unexpected` issue at that name,
 * which `decodeErrors.ts` words as OpenAI's `unknown_parameter`.
 */
export const noMisspeltMembers = (known: ReadonlyArray<string>) =>
  Schema.Unknown.pipe(Schema.filter((body) => {
    if (!isJsonObject(body)) return true
    for (const given of Object.keys(body)) {
      const meant = meantName(given, known)
      if (meant !== undefined) return new ParseResult.Pointer(given, body, new ParseResult.Unexpected(body[given], `Did you mean '${meant}'?`))
    }
    return true
  }))

/** `struct`, refusing a member whose name misspells one of its fields. Its JSON schema (the OpenAPI document's) is the struct's. */
export const refusingMisspeltMembers = <Fields extends Schema.Struct.Fields>(struct: Schema.Struct<Fields>) =>
  Schema.compose(noMisspeltMembers(Object.keys(struct.fields)), struct, { strict: false })
    .annotations({ [AST.SurrogateAnnotationId]: struct.ast })
