#!/usr/bin/env python3
"""A flood of stream requests with bad tokens, for `tests/bench/run.sh flood`.

    flood.py PORT CONNECTIONS SECONDS PAD

CONNECTIONS connections to 127.0.0.1:PORT at once, each asking for /api/v1/streams/deals with an
HS256 token whose signature is all zero bytes (a claims part padded with PAD bytes), reading the
answer (401), closing, and again, for SECONDS, or with SECONDS 0 until stopped (SIGTERM or
SIGINT): run.sh stops it once the measurement is over, so the flood covers all of it however long
the publishing takes. Prints the requests made, their rate, when it started and ended (Unix
seconds) and whether it was stopped or ran its SECONDS out. Standard library only.
"""
import asyncio
import base64
import json
import math
import os
import signal
import sys
import time

port, conns, secs, pad = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


claims = {"sub": "flood", "exp": 9999999999, "pad": "p" * pad}
token = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode()) + "." + b64(b"\0" * 32)
request = f"GET /api/v1/streams/deals HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
done = 0
statuses = {}
stopped = False


async def client(end: float) -> None:
    global done
    while time.time() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            head = await reader.read(1024)
            writer.close()
            status = head[9:12].decode(errors="replace")
            statuses[status] = statuses.get(status, 0) + 1
            done += 1
        except OSError:
            await asyncio.sleep(0.01)


async def main() -> None:
    start = time.time()
    end = start + secs if secs > 0 else math.inf
    # A client that fails otherwise than with OSError ends the process (with its traceback), so
    # run.sh sees the flood gone before the measurement ended.
    flood = asyncio.gather(*(client(end) for _ in range(conns)))

    def stop() -> None:
        # Cancelled, not asked to finish: a client may be waiting on a connection or an answer.
        global stopped
        stopped = True
        flood.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await flood
    except asyncio.CancelledError:
        if not stopped:
            raise
    ended = time.time()
    took = max(ended - start, 1e-9)
    how = "stopped" if stopped else f"ran its {secs:g} s out"
    print(f"flood pid {os.getpid()}: {done} requests in {took:.1f} s, {done / took:.0f}/s, statuses {statuses}, "
          f"from {start:.3f} to {ended:.3f} (unix s), {how}", flush=True)


asyncio.run(main())
