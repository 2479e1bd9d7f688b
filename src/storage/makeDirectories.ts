/**
 * `mkdir -p`, one level at a time. Node's own (`recursive: true`) never returns where a directory's parent exists
 * and the directory still cannot be made for want of it (ENOENT, as under `/proc`): it makes the parent again and
 * again, at full CPU (`--out /proc/x`, `DATA_DIR=/proc/x` hung).
 */
import type { PlatformError } from "@effect/platform/Error"
import type * as FileSystem from "@effect/platform/FileSystem"
import { Effect, Option } from "effect"
import { mkdirSync, statSync } from "node:fs"
import { mkdir, stat } from "node:fs/promises"
import * as Path from "node:path"

/** `dir` and its ancestors, the root first: `/a/b` → `/`, `/a`, `/a/b`. */
const fromTheRoot = (dir: string): ReadonlyArray<string> => {
  const levels: Array<string> = []
  for (let at = Path.resolve(dir); ; at = Path.dirname(at)) {
    levels.unshift(at)
    if (Path.dirname(at) === at) return levels
  }
}

/**
 * What `mkdir` failing at `level` on the way to `dir` means: nothing when a directory is there already (EEXIST, or
 * a read-only parent's EROFS/EACCES); ENOTDIR when a file is, short of `dir` (as `mkdir -p` says); else its error.
 */
const failureAt = (level: string, dir: string, error: unknown, there: "directory" | "other" | "none") => {
  if (there === "directory") return undefined
  if (there === "other" && level !== Path.resolve(dir)) {
    return Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: "ENOTDIR", syscall: "mkdir", path: dir })
  }
  return error
}

/** Makes `dir` and its missing ancestors; fails as `mkdir` does (ENOENT, ENOTDIR, EACCES…) where one cannot be made. */
export const makeDirectories = async (dir: string): Promise<void> => {
  const failureMaking = async (level: string) => {
    try {
      await mkdir(level)
      return undefined
    } catch (error) {
      const there = await stat(level).then((s) => (s.isDirectory() ? "directory" : "other"), () => "none" as const)
      return failureAt(level, dir, error, there)
    }
  }
  // `dir` itself first: most often it or its parent is there already (a recording's directory).
  const first = await failureMaking(Path.resolve(dir))
  if (first === undefined) return
  if ((first as NodeJS.ErrnoException).code !== "ENOENT") throw first
  for (const level of fromTheRoot(dir)) {
    const failure = await failureMaking(level)
    if (failure !== undefined) throw failure
  }
}

/** `makeDirectories` on the `FileSystem` given (the platform's, or an app's own), failing as its `makeDirectory` does. */
export const makeDirectoriesIn = (fs: FileSystem.FileSystem, dir: string): Effect.Effect<void, PlatformError> =>
  Effect.forEach(
    fromTheRoot(dir),
    (level) =>
      fs.makeDirectory(level).pipe(Effect.catchAll((error) =>
        Effect.flatMap(Effect.option(fs.stat(level)), (info) =>
          Option.exists(info, (i) => i.type === "Directory") ? Effect.void : Effect.fail(error))
      )),
    { discard: true }
  )

/** `makeDirectories`, synchronously (at start, before anything else runs). */
export const makeDirectoriesSync = (dir: string): void => {
  for (const level of fromTheRoot(dir)) {
    try {
      mkdirSync(level)
    } catch (error) {
      const found = statSync(level, { throwIfNoEntry: false })
      const failure = failureAt(level, dir, error, found === undefined ? "none" : found.isDirectory() ? "directory" : "other")
      if (failure !== undefined) throw failure
    }
  }
}
