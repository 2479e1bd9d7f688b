/**
 * A plain TCP forwarder in front of a server (e.g. the machine's PostgreSQL), that a test can cut and restore: the
 * server "goes away" for whoever connects through it, without stopping the server everyone else uses.
 */
import * as net from "node:net"

export interface TcpForwarder {
  /** The local port to connect to instead of the target's. */
  readonly port: number
  /** Ends every open connection, and ends new ones as soon as they are accepted (as a lost server would). */
  readonly cut: () => void
  /** Ends every open connection, and keeps new ones open without forwarding a byte (a server that hangs). */
  readonly stall: () => void
  /**
   * Keeps every open connection open, and new ones too, without forwarding another byte: a network that stops
   * carrying them while each end's packets are still acknowledged (only a time limit of the client ends its wait).
   */
  readonly freeze: () => void
  /** Freezes the one open connection whose socket to the target has this local port (the target sees it as the client's port). */
  readonly freezeConnection: (targetSidePort: number) => void
  /** Forwards again. */
  readonly restore: () => void
  readonly close: () => Promise<void>
}

const frozen = new WeakSet<readonly [net.Socket, net.Socket]>()

/** Stops carrying a connection's bytes either way, its sockets left open. */
const freezePair = (pair: readonly [net.Socket, net.Socket]) => {
  frozen.add(pair)
  const [client, upstream] = pair
  client.unpipe(upstream)
  upstream.unpipe(client)
  client.pause()
  upstream.pause()
}

/** Listens on a random local port and forwards each connection to `host:port`. */
export const startForwarder = (target: { readonly host: string; readonly port: number }): Promise<TcpForwarder> => {
  const open = new Set<net.Socket>()
  /** Each forwarded connection's two sockets. */
  const pairs = new Set<readonly [net.Socket, net.Socket]>()
  let mode: "forward" | "cut" | "stall" = "forward"
  const track = (socket: net.Socket) => {
    open.add(socket)
    socket.on("close", () => open.delete(socket))
    socket.on("error", () => socket.destroy())
  }
  const server = net.createServer((client) => {
    track(client)
    if (mode === "cut") return void client.destroy()
    if (mode === "stall") return
    const upstream = net.connect(target.port, target.host)
    track(upstream)
    client.pipe(upstream).pipe(client)
    const pair = [client, upstream] as const
    pairs.add(pair)
    // A frozen connection's far end never hears of its client going away, as across a network that stopped.
    client.on("close", () => (pairs.delete(pair), frozen.has(pair) || upstream.destroy()))
    upstream.on("close", () => client.destroy())
  })
  return new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      resolve({
        port: typeof address === "object" && address !== null ? address.port : 0,
        cut: () => {
          mode = "cut"
          for (const socket of open) socket.destroy()
        },
        stall: () => {
          mode = "stall"
          for (const socket of open) socket.destroy()
        },
        freeze: () => {
          mode = "stall"
          for (const pair of pairs) freezePair(pair)
        },
        freezeConnection: (targetSidePort) => {
          for (const pair of pairs) if (pair[1].localPort === targetSidePort) freezePair(pair)
        },
        restore: () => {
          mode = "forward"
        },
        close: () =>
          new Promise((done) => {
            for (const socket of open) socket.destroy()
            server.close(() => done())
          })
      })
    })
  })
}
