#!/usr/bin/env python3
"""A region's way in from the other regions: TCP forwarders that add a one-way delay.

  wan_proxy.py --delay-ms 35 --link LISTEN_IP:PORT=TARGET_IP:PORT [--link ...]

Every link accepts connections on LISTEN and forwards them to TARGET, holding each chunk of
data for --delay-ms in each direction (order kept, bandwidth not limited). One process serves
every service of one region, so killing it along with the region's other processes takes the
host off the network at once: new connections are refused and open ones are closed.
Prints "ready" when every listener is bound.
"""
import argparse
import asyncio
import signal
import socket

# The loop keeps only weak references to tasks: hold the connections' own here.
CONNECTIONS = set()


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def pump(reader, writer, delay, other, done):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def feed():
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time() + delay, None))

    async def deliver():
        while True:
            at, data = await queue.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if data is None:
                    # The sender's side was reset: reset both sides.
                    writer.transport.abort()
                    other.transport.abort()
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                writer.transport.abort()
                other.transport.abort()
                return

    feeder = asyncio.ensure_future(feed())
    try:
        await deliver()
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        done.append(1)
        if len(done) == 2:
            writer.transport.close()
            other.transport.close()


async def handle(client_reader, client_writer, target, delay):
    task = asyncio.current_task()
    CONNECTIONS.add(task)
    try:
        await forward(client_reader, client_writer, target, delay)
    finally:
        CONNECTIONS.discard(task)


async def forward(client_reader, client_writer, target, delay):
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.transport.abort()
        return
    for w in (client_writer, server_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    done = []
    await asyncio.gather(
        pump(client_reader, server_writer, delay, client_writer, done),
        pump(server_reader, client_writer, delay, server_writer, done),
        return_exceptions=True,
    )


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--link", action="append", required=True, help="LISTEN_IP:PORT=TARGET_IP:PORT")
    args = p.parse_args()
    delay = args.delay_ms / 1000.0
    servers = []
    for link in args.link:
        listen, _, target = link.partition("=")
        target = parse_addr(target)
        host, port = parse_addr(listen)
        servers.append(await asyncio.start_server(
            lambda r, w, t=target: handle(r, w, t, delay), host, port, reuse_address=True))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
