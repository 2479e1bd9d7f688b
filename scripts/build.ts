/**
 * `npm run build` (and so `npm start`): `tsc`'s output (the library) and the two bundled programs (`bundle.ts`) are
 * written to `dist.next/`, then put in the place of `dist/` in two renames. Built in place, `dist/` was gone or
 * half-written for the ~15 s of a build, and the checkout's CLI (`node dist/cli/main.js`), or a second node's
 * `npm start` beside a running one, failed meanwhile; a build that fails leaves the last one whole.
 */
import { execFileSync } from "node:child_process"
import { renameSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import * as Path from "node:path"
import { bundle } from "./bundle.js"

const root = Path.resolve(import.meta.dirname, "..")
const dist = Path.join(root, "dist")
const next = Path.join(root, "dist.next")
const old = Path.join(root, "dist.old")

rmSync(next, { recursive: true, force: true })
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc")
execFileSync(process.execPath, [tsc, "-p", "tsconfig.build.json", "--outDir", next], { cwd: root, stdio: "inherit" })
await bundle(root, next)
rmSync(old, { recursive: true, force: true })
try {
  renameSync(dist, old)
} catch (error) {
  if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error // no build before this one
}
renameSync(next, dist)
rmSync(old, { recursive: true, force: true })
