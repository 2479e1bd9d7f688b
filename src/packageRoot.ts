/**
 * The package's root folder (where `package.json` and `ui/` are), found upward from this module: it runs as
 * `src/*.ts` (tsx, vitest), as `dist/**\/*.js` (the library) and inside the bundled entry points `dist/main.js` and
 * `dist/cli/main.js` (`scripts/bundle.ts`), each at another depth below the root.
 */
import { existsSync } from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

export const packageRoot = (): string => {
  const start = Path.dirname(fileURLToPath(import.meta.url))
  for (let dir = start; ; dir = Path.dirname(dir)) {
    if (existsSync(Path.join(dir, "package.json"))) return dir
    if (Path.dirname(dir) === dir) throw new Error(`no package.json above ${start}`)
  }
}
