/**
 * Text measured and cut in a terminal's columns rather than UTF-16 units: a CJK character or an emoji takes two, a
 * combining mark none (string-width's measure). By units, a CJK model name pushed the `list` columns after it out of
 * line, an upload's line with a CJK file name wrapped (each redraw left a row behind), and a cut could split an
 * emoji's surrogate pair (drawn as `�`).
 */
import stringWidth from "string-width"

/** How many columns `text` takes on a terminal. */
export const columnsOf = (text: string): number => stringWidth(text)

/** `text` with spaces after it up to `columns` columns. */
export const padToColumns = (text: string, columns: number): string =>
  text + " ".repeat(Math.max(0, columns - stringWidth(text)))

const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" })

/** `text` in at most `columns` columns: cut after whole characters, with `…` (counted in) where it was cut. */
export const cutToColumns = (text: string, columns: number): string => {
  if (stringWidth(text) <= columns) return text
  let kept = ""
  let used = 0
  for (const { segment } of graphemes.segment(text)) {
    const width = stringWidth(segment)
    if (used + width > columns - 1) break
    kept += segment
    used += width
  }
  return columns > 0 ? `${kept}…` : ""
}
