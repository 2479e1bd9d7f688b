/**
 * Once per `vitest run`, before any test file: Debian's Chromium for the browser tests when it is missing
 * (`Chromium.ts`), and the built copy of `src/` the process tests start (`CompiledCopy.ts`), its directory in an
 * environment variable, which the forks running the test files inherit.
 */
import { installChromium } from "./Chromium.js"
import { compileSources } from "./CompiledCopy.js"
import { COMPILED_COPY_ENV } from "./ServerProcess.js"

export default async () => {
  installChromium()
  process.env[COMPILED_COPY_ENV] = await compileSources()
}
