/**
 * `src/` compiled to JavaScript once per `vitest run` (by `globalSetup.ts`), for the tests that start the server or
 * the CLI as child processes: plain `node dist/main.js` loads in a fraction of the time `node --import tsx
 * src/main.ts` spends compiling TypeScript on the fly at every start. Each file is transpiled on its own
 * (TypeScript's `transpileModule`, what `tsc -p tsconfig.build.json` emits, without its type check, which `npm test`
 * runs first), laid out as the package is (`dist/` beside `package.json`, `ui/` beside them) under
 * `node_modules/.cache`, so the project's packages resolve. The directory is named by a hash of what it is made from:
 * an unchanged checkout reuses it, and runs on different sources never share one.
 */
import { createHash } from "node:crypto"
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs"
import * as Path from "node:path"
import ts from "typescript"

const root = Path.resolve(import.meta.dirname, "../..")
const cache = Path.join(root, "node_modules", ".cache")
const prefix = "openai-batch-compiled-"

const sources = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sources(Path.join(dir, entry.name)) : entry.name.endsWith(".ts") ? [Path.join(dir, entry.name)] : []
  ).sort()

const options: ts.CompilerOptions = {
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ESNext,
  verbatimModuleSyntax: true
}

const hashOf = (files: ReadonlyArray<string>) => {
  const hash = createHash("sha256").update(ts.version).update(JSON.stringify(options))
  for (const file of [...files, Path.join(root, "package.json")]) hash.update(file).update(readFileSync(file))
  return hash.digest("hex").slice(0, 16)
}

const emit = (files: ReadonlyArray<string>, base: string) => {
  for (const file of files) {
    const out = Path.join(base, "dist", Path.relative(Path.join(root, "src"), file)).replace(/\.ts$/, ".js")
    mkdirSync(Path.dirname(out), { recursive: true })
    writeFileSync(out, ts.transpileModule(readFileSync(file, "utf8"), { compilerOptions: options, fileName: file }).outputText)
  }
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

/** Compiles `src/` unless an identical copy exists; gives the copy's directory (the package root of its `dist/`). */
export const compileSources = (): string => {
  const files = sources(Path.join(root, "src"))
  const base = Path.join(cache, prefix + hashOf(files))
  if (!existsSync(base)) {
    // Written aside, then renamed into place: a run started meanwhile never sees a half-written copy.
    const partial = `${base}.${process.pid}.partial`
    rmSync(partial, { recursive: true, force: true })
    emit(files, partial)
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
