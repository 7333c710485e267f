#!/usr/bin/env python3
"""A flood of stream requests with bad tokens, for `tests/bench/run.sh flood`.

    flood.py PORT CONNECTIONS SECONDS PAD

CONNECTIONS connections to 127.0.0.1:PORT at once, each asking for /api/v1/streams/deals with an
HS256 token whose signature is all zero bytes (a claims part padded with PAD bytes), reading the
answer (401), closing, and again, for SECONDS. Prints the requests made and their rate.
Standard library only.
"""
import asyncio
import base64
import json
import os
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
    end = time.time() + secs
    await asyncio.gather(*(client(end) for _ in range(conns)))
    print(f"flood pid {os.getpid()}: {done} requests in {secs:.0f} s, {done / secs:.0f}/s, statuses {statuses}", flush=True)


asyncio.run(main())
