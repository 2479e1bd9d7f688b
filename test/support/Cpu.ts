/** Keeps the event loop's thread busy for `ms` milliseconds: CPU work such as parsing and storing an answer. */
export const busyFor = (ms: number) => {
  const until = performance.now() + ms
  while (performance.now() < until) {
    // nothing but time
  }
}
