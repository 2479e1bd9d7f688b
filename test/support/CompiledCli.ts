/**
 * The CLI as the package's `bin` runs it: `dist/cli/main.js` of this run's compiled copy of `src/` (`CompiledCopy.ts`,
 * compiled once per `vitest run` by `globalSetup.ts`, laid out as the package is). Started this way a command loads
 * without tsx's loader hooks: about 2 s instead of 5 s a run on a busy machine.
 */
import * as Path from "node:path"
import { compiledCopy } from "./ServerProcess.js"

export interface CompiledCli {
  /** `dist/cli/main.js` of the compiled copy. */
  readonly main: string
  /** Nothing to do: the copy is shared by the run's test files, and kept for the next run on the same sources. */
  readonly remove: () => void
}

export const compileCli = (): CompiledCli => {
  const copy = compiledCopy()
  if (copy === undefined) throw new Error("no compiled copy of src/: vitest's globalSetup makes it")
  return { main: Path.join(copy, "dist", "cli", "main.js"), remove: () => {} }
}
