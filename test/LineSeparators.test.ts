/**
 * Output and error files read line by line as Python reads them (`str.splitlines()`, which also breaks at NEL,
 * U+2028 and U+2029): a `custom_id` or an answer holding those characters stays one line, the characters written as
 * JSON escapes and read back unchanged, on SQLite (lines joined in `resultLineBytes.ts`) and PostgreSQL (in SQL).
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { chatLine, createBatch, sdk, terminal, upload, waitFor } from "./support/Batches.js"
import { sideBySide } from "./support/SideBySide.js"
import { backends, baseUrl, testAppWithUpstream } from "./support/TestApp.js"

/** Python's `str.splitlines()` boundaries (`\r\n` counted once). */
const splitlines = (text: string) => text.split(/\r\n|[\n\r\u000b\u000c\u001c\u001d\u001e\u0085\u2028\u2029]/).filter((line) => line !== "")

const ODD = "a\u2028b\u2029c\u0085d"

for (const backend of backends) sideBySide(`line separators in result files (${backend})`, () => {
  layer(testAppWithUpstream({}, {}, backend), { excludeTestServices: true })((it) => {
    it.effect("a custom_id or an answer holding NEL, U+2028 or U+2029 stays one line, read back unchanged", () =>
      Effect.gen(function*() {
        const openai = sdk(yield* baseUrl)
        // The simulator's answer echoes the prompt as it is (JSON.stringify leaves the three characters raw).
        const file = yield* upload(openai, [chatLine(`id-${ODD}`, `say ${ODD}`), chatLine(`fail-${ODD}`, `[fail:400] ${ODD}`)])
        const done = yield* waitFor(openai, (yield* createBatch(openai, file.id)).id, terminal, 20_000)
        expect(done.request_counts).toEqual({ total: 2, completed: 1, failed: 1 })
        for (const [fileId, customId] of [[done.output_file_id, `id-${ODD}`], [done.error_file_id, `fail-${ODD}`]] as const) {
          const text = yield* Effect.promise(async () => (await openai.files.content(fileId!)).text())
          expect(text).not.toMatch(/[\u0085\u2028\u2029]/)
          const lines = splitlines(text).map((line) => JSON.parse(line))
          expect(lines.map((line) => line.custom_id)).toEqual([customId])
        }
        const [answered] = splitlines(yield* Effect.promise(async () => (await openai.files.content(done.output_file_id!)).text()))
        expect(JSON.parse(answered!).response.body.choices[0].message.content).toBe(`echo: say ${ODD}`)
      }))
  })
})
