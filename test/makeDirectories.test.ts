/**
 * `mkdir -p` that fails where a directory cannot be made: Node's recursive mkdir never returned under `/proc`
 * (`--out /proc/x`, `DATA_DIR=/proc/x` spun at full CPU).
 */
import { describe, expect, it } from "@effect/vitest"
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as Path from "node:path"
import * as FileSystem from "@effect/platform/FileSystem"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import { Effect, Either } from "effect"
import { makeDirectories, makeDirectoriesIn, makeDirectoriesSync } from "../src/storage/makeDirectories.js"

const errorCode = (run: () => unknown) => {
  try {
    run()
    return undefined
  } catch (e) {
    return (e as NodeJS.ErrnoException).code
  }
}

describe("makeDirectories", () => {
  it("makes the missing levels, takes one already there, and fails where one cannot be made", async () => {
    const root = mkdtempSync(Path.join(tmpdir(), "make-dirs-"))
    try {
      await makeDirectories(Path.join(root, "a", "b", "c"))
      makeDirectoriesSync(Path.join(root, "x", "y"))
      expect(statSync(Path.join(root, "a", "b", "c")).isDirectory()).toBe(true)
      expect(statSync(Path.join(root, "x", "y")).isDirectory()).toBe(true)
      await makeDirectories(Path.join(root, "a", "b")) // there already
      makeDirectoriesSync(root)
      writeFileSync(Path.join(root, "file"), "")
      await expect(makeDirectories(Path.join(root, "file", "d"))).rejects.toMatchObject({ code: "ENOTDIR" })
      expect(errorCode(() => makeDirectoriesSync(Path.join(root, "file", "d")))).toBe("ENOTDIR")
      expect(errorCode(() => makeDirectoriesSync(Path.join(root, "file")))).toBe("EEXIST")
      // The parent exists and refuses it (ENOENT): an error at once, both ways.
      await expect(makeDirectories("/proc/make-dirs-test/a")).rejects.toMatchObject({ code: "ENOENT" })
      // (The synchronous one is tested with a server's DATA_DIR, in a process of its own: spinning, it would hang this one.)
      // On a FileSystem service (the blob store's): the same.
      const onFs = (dir: string) => Effect.runPromise(Effect.either(Effect.provide(
        Effect.flatMap(FileSystem.FileSystem, (fs) => makeDirectoriesIn(fs, dir)),
        NodeFileSystem.layer
      )))
      expect(Either.isRight(await onFs(Path.join(root, "p", "q")))).toBe(true)
      expect(statSync(Path.join(root, "p", "q")).isDirectory()).toBe(true)
      expect(Either.isLeft(await onFs("/proc/make-dirs-test/a"))).toBe(true)
    } finally {
      rmSync(root, { recursive: true, force: true })
    }
  })
})
