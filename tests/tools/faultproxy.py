#!/usr/bin/env python3
"""faultproxy - a TCP proxy on loopback that injects network faults on command.

Sits between ackbox and a broker (or each broker of a Kafka mock cluster) for
the fault tests in tests/crash/. Python 3 standard library only.

  faultproxy.py serve [--log FILE] ROUTE...
      ROUTE is LISTEN_PORT=TARGET_PORT or LISTEN_HOST:LISTEN_PORT=TARGET_HOST:TARGET_PORT
      (hosts default to 127.0.0.1, only loopback addresses are accepted; a
      listen port of 0 picks a free one). Once everything listens, prints
      "ctl 127.0.0.1:PORT" (the control port), then one line per route,
      "HOST:PORT"; serves until SIGTERM.
  faultproxy.py ctl PORT COMMAND [ARG...]
      Sends one command line to the control port and prints the answer (a
      shell can do the same with bash's /dev/tcp: one line out, one line
      back). Each command puts the proxy in a state and is answered once
      the state is in effect:
        pass              forward normally (ends any fault)
        reset             every open connection is reset (RST, both sides) now;
                          new ones are forwarded
        blackhole         open connections go silent both ways: nothing is read
                          or written, the sockets stay open; new connections are
                          accepted and held silent too (their broker side is not
                          even opened). "pass" resumes everything held.
        latency MS        everything is delivered MS milliseconds late, in order
        trickle BYTES MS  at most BYTES bytes, then a pause of MS, each way
        refuse            listeners closed (connections refused), open
                          connections reset; "pass" listens again, same ports
        stats             "accepted=N open=N up=BYTES down=BYTES state=STATE"
"""
import asyncio
import ipaddress
import signal
import socket
import struct
import sys
import time

CHUNK = 65536


def loopback(host):
    return ipaddress.ip_address(host).is_loopback


def parse_route(text):
    listen, _, target = text.partition("=")
    if not target:
        raise ValueError(f"route {text!r}: want LISTEN=TARGET")

    def hp(s):
        host, _, port = s.rpartition(":")
        host = host or "127.0.0.1"
        if not loopback(host):
            raise ValueError(f"route {text!r}: {host} is not a loopback address")
        return host, int(port)

    return hp(listen), hp(target)


def rst(writer):
    """Closes with a RST: SO_LINGER 0, then close without flushing."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class Conn:
    def __init__(self, proxy, n, creader, cwriter, target):
        self.proxy, self.n, self.target = proxy, n, target
        self.creader, self.cwriter = creader, cwriter
        self.sreader = self.swriter = None
        self.tasks = []

    def writers(self):
        return [w for w in (self.cwriter, self.swriter) if w is not None]

    def reset(self):
        for w in self.writers():
            rst(w)
        for t in self.tasks:
            t.cancel()

    async def run(self):
        p = self.proxy
        try:
            # a blackhole holds a new connection before its broker side opens
            await p.flowing.wait()
            try:
                self.sreader, self.swriter = await asyncio.open_connection(*self.target)
            except OSError as e:
                p.log(f"conn {self.n}: target {self.target[0]}:{self.target[1]}: {e}")
                rst(self.cwriter)
                return
            p.log(f"conn {self.n}: open")
            self.tasks = [
                asyncio.ensure_future(self.pump(self.creader, self.swriter, "up")),
                asyncio.ensure_future(self.pump(self.sreader, self.cwriter, "down")),
            ]
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for w in self.writers():
                w.transport.abort()
            p.conns.discard(self)
            p.log(f"conn {self.n}: closed")

    async def pump(self, reader, writer, way):
        """Reads one direction into a bounded queue (TCP pushes back on the
        sender when the writer is slow) and writes it out by the fault."""
        p = self.proxy
        q = asyncio.Queue(maxsize=256)

        async def read():
            while True:
                await p.flowing.wait()
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = None  # reset: the other side is reset too
                await q.put((time.monotonic(), data))
                if not data:
                    return

        rt = asyncio.ensure_future(read())
        try:
            while True:
                t, data = await q.get()
                await p.flowing.wait()
                if data is None:
                    self.reset()
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    # the other way goes on until it ends too
                    return
                if p.latency > 0:
                    delay = t + p.latency - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                while data:
                    if p.trickle:
                        piece, data = data[: p.trickle[0]], data[p.trickle[0]:]
                    else:
                        piece, data = data, b""
                    await p.flowing.wait()
                    writer.write(piece)
                    await writer.drain()
                    setattr(p, way, getattr(p, way) + len(piece))
                    if p.trickle and data:
                        await asyncio.sleep(p.trickle[1])
        except (ConnectionError, OSError):
            self.reset()
        finally:
            rt.cancel()


class Proxy:
    def __init__(self, routes, logfile):
        self.routes = routes
        self.servers = []
        self.conns = set()
        self.accepted = 0
        self.up = self.down = 0
        self.state = "pass"
        self.latency = 0.0
        self.trickle = None
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.logf = open(logfile, "a", buffering=1) if logfile else None

    def log(self, text):
        if self.logf:
            self.logf.write(f"{time.time():.3f} {text}\n")

    async def listen(self):
        self.servers = []
        for i, ((lh, lp), target) in enumerate(self.routes):
            srv = await asyncio.start_server(
                lambda r, w, t=target: self.accept(r, w, t), lh, lp, reuse_address=True)
            if lp == 0:
                lp = srv.sockets[0].getsockname()[1]
                self.routes[i] = ((lh, lp), target)
            self.servers.append(srv)

    async def unlisten(self):
        for s in self.servers:
            s.close()
            await s.wait_closed()
        self.servers = []

    async def accept(self, reader, writer, target):
        if self.state == "refuse":
            rst(writer)
            return
        self.accepted += 1
        c = Conn(self, self.accepted, reader, writer, target)
        self.conns.add(c)
        await c.run()

    def reset_all(self):
        for c in list(self.conns):
            c.reset()

    async def command(self, words):
        cmd, args = words[0], words[1:]
        if cmd == "stats":
            return (f"accepted={self.accepted} open={len(self.conns)} up={self.up} "
                    f"down={self.down} state={self.state}")
        if cmd == "pass":
            if self.state == "refuse":
                await self.listen()
            self.latency, self.trickle = 0.0, None
            self.state = "pass"
            self.flowing.set()
        elif cmd == "reset":
            self.log(f"reset {len(self.conns)} connection(s)")
            self.reset_all()
            return "ok"
        elif cmd == "blackhole":
            self.flowing.clear()
            self.state = "blackhole"
        elif cmd == "latency" and len(args) == 1:
            self.latency = int(args[0]) / 1000.0
            self.state = f"latency {args[0]}"
        elif cmd == "trickle" and len(args) == 2:
            self.trickle = (int(args[0]), int(args[1]) / 1000.0)
            self.state = f"trickle {args[0]} {args[1]}"
        elif cmd == "refuse":
            self.state = "refuse"
            await self.unlisten()
            self.reset_all()
            self.flowing.set()
        else:
            return f"error: unknown command {' '.join(words)!r}"
        self.log(f"state {self.state}")
        return "ok"

    async def control(self, reader, writer):
        line = (await reader.readline()).decode().split()
        try:
            answer = await self.command(line) if line else "error: empty command"
        except (ValueError, OSError) as e:
            answer = f"error: {e}"
        writer.write((answer + "\n").encode())
        await writer.drain()
        writer.close()


async def serve(logfile, routes):
    p = Proxy(routes, logfile)
    await p.listen()
    ctl = await asyncio.start_server(p.control, "127.0.0.1", 0)
    print(f"ctl 127.0.0.1:{ctl.sockets[0].getsockname()[1]}", flush=True)
    for (lh, lp), _ in p.routes:
        print(f"{lh}:{lp}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    p.reset_all()


def ctl(port, words):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
    s.sendall((" ".join(words) + "\n").encode())
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    text = answer.decode().strip()
    print(text)
    return 0 if text and not text.startswith("error") else 1


def main(argv):
    usage = __doc__.split("\n\n")[1]
    if len(argv) >= 3 and argv[1] == "ctl":
        return ctl(argv[2], argv[3:])
    if len(argv) >= 2 and argv[1] == "serve":
        args, logfile, routes = argv[2:], None, []
        while args:
            a = args.pop(0)
            if a == "--log" and args:
                logfile = args.pop(0)
            else:
                try:
                    routes.append(parse_route(a))
                except ValueError as e:
                    print(f"faultproxy: {e}", file=sys.stderr)
                    return 2
        if routes:
            try:
                asyncio.run(serve(logfile, routes))
            except OSError as e:
                print(f"faultproxy: {e}", file=sys.stderr)
                return 1
            return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
