/**
 * The bytes this node is receiving for each project's uploads (`POST /v1/files`), so that uploads that overlap count
 * each other against `MAX_FILE_BYTES_PER_PROJECT`: each checked its bytes against the room left when it began, and
 * 40 uploads of 85 KB sent together against a quota of 100 KB stored 32 of them. Other nodes' uploads in progress are
 * not seen here (each node counts its own); what they stored is, once committed.
 */
export class UploadsInFlight {
  private readonly byProject = new Map<string, number>()

  /** An upload of `project` begins: it counts what it has received (`received`) until `end`. */
  start(project: string): UploadInFlight {
    let mine = 0
    let ended = false
    const add = (delta: number) => {
      const total = (this.byProject.get(project) ?? 0) + delta
      if (total > 0) this.byProject.set(project, total)
      else this.byProject.delete(project)
    }
    return {
      received: (bytes) => {
        if (ended) return
        add(bytes - mine)
        mine = bytes
      },
      others: () => (this.byProject.get(project) ?? 0) - mine,
      end: () => {
        if (ended) return
        ended = true
        add(-mine)
      }
    }
  }
}

export interface UploadInFlight {
  /** It has received `bytes` in all so far. */
  readonly received: (bytes: number) => void
  /** What the project's other uploads on this node have received so far. */
  readonly others: () => number
  /** It was stored or failed: it no longer counts (stored, its bytes are the store's). */
  readonly end: () => void
}
