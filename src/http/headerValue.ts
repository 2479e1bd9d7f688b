/**
 * What an outgoing HTTP header value may hold: tab and the printable Latin-1 characters, as Node's and undici's
 * clients check them. A value they refuse fails every call (an upstream would seem down for good, an exporter would
 * drop every span), so configuration is checked against it at start.
 */
const NOT_A_HEADER_CHARACTER = /[^\t\x20-\x7e\x80-\xff]/

/** Whether `value` holds a character no header value may carry (a line break, a control character, "…", an emoji). */
export const hasNonHeaderCharacter = (value: string): boolean => NOT_A_HEADER_CHARACTER.test(value)
