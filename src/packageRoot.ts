/**
 * The package's root folder (where `package.json` and `ui/` are), found upward from this module: it runs as
 * `src/*.ts` (tsx, vitest), as `dist/**\/*.js` (the library) and inside the bundled entry points `dist/main.js` and
 * `dist/cli/main.js` (`scripts/bundle.ts`), each at another depth below the root. With no `package.json` above (the
 * code copied out of its package, or bundled again into an app), two folders up, where it was before the bundles:
 * what is read from there is then missing, and its readers say so (a 500 for `/ui`), rather than failing at load.
 */
import { existsSync } from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

export const packageRoot = (): string => {
  const start = Path.dirname(fileURLToPath(import.meta.url))
  for (let dir = start; ; dir = Path.dirname(dir)) {
    if (existsSync(Path.join(dir, "package.json"))) return dir
    if (Path.dirname(dir) === dir) return Path.resolve(start, "../..")
  }
}
