/**
 * `src/` built once per `vitest run` (by `globalSetup.ts`) as `npm run build` builds the programs: the server
 * (`dist/main.js`) and the CLI (`dist/cli/main.js`) bundled by `scripts/bundle.ts`, for the tests that start them as
 * child processes, which so run what `npm start` and the package's bin run (and start in ~0.7 s, where
 * `node --import tsx src/main.ts` compiles TypeScript on the fly at every start). Laid out as the package is (`dist/`
 * beside `package.json`, `ui/` beside them) under `node_modules/.cache`, so the packages left outside the bundles
 * resolve. The directory is named by a hash of what it is made from: an unchanged checkout reuses it, and runs on
 * different sources never share one.
 */
import { version as esbuildVersion } from "esbuild"
import { createHash } from "node:crypto"
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync } from "node:fs"
import * as Path from "node:path"
import { bundle } from "../../scripts/bundle.js"

const root = Path.resolve(import.meta.dirname, "../..")
const cache = Path.join(root, "node_modules", ".cache")
const prefix = "openai-batch-compiled-"

const sources = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sources(Path.join(dir, entry.name)) : entry.name.endsWith(".ts") ? [Path.join(dir, entry.name)] : []
  ).sort()

const hashOf = (files: ReadonlyArray<string>) => {
  const hash = createHash("sha256").update(esbuildVersion)
  // The bundles hold the packages' code too: the lock file says which versions are installed.
  const inputs = ["scripts/bundle.ts", "package.json", "package-lock.json", "tsconfig.json"].map((f) => Path.join(root, f))
  for (const file of [...files, ...inputs]) {
    hash.update(file).update(readFileSync(file))
  }
  return hash.digest("hex").slice(0, 16)
}

const emit = async (base: string) => {
  mkdirSync(base, { recursive: true })
  await bundle(root, Path.join(base, "dist"))
  copyFileSync(Path.join(root, "package.json"), Path.join(base, "package.json"))
  // The dashboard's static files, read from `<package>/ui` at run time.
  if (existsSync(Path.join(root, "ui"))) symlinkSync(Path.join(root, "ui"), Path.join(base, "ui"), "dir")
}

/**
 * Copies of other sources unused for an hour are removed (a run takes minutes, and one going on may use its copy
 * still); a copy is touched by every run that uses it.
 */
const prune = (keep: string) => {
  const hourAgo = Date.now() - 3600_000
  for (const name of readdirSync(cache)) {
    const dir = Path.join(cache, name)
    if (name.startsWith(prefix) && dir !== keep && statSync(dir).mtimeMs < hourAgo) rmSync(dir, { recursive: true, force: true })
  }
}

/** Builds `src/` unless an identical copy exists; gives the copy's directory (the package root of its `dist/`). */
export const compileSources = async (): Promise<string> => {
  const base = Path.join(cache, prefix + hashOf(sources(Path.join(root, "src"))))
  if (!existsSync(base)) {
    // Written aside, then renamed into place: a run started meanwhile never sees a half-written copy.
    const partial = `${base}.${process.pid}.partial`
    rmSync(partial, { recursive: true, force: true })
    await emit(partial)
    try {
      renameSync(partial, base)
    } catch {
      rmSync(partial, { recursive: true, force: true }) // another run renamed the same copy first
    }
  }
  const now = new Date()
  utimesSync(base, now, now)
  prune(base)
  return base
}
