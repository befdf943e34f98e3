"""The baseline: a bare aiosmtpd server that accepts every message and keeps nothing.

It runs on the event loop ``mailgate serve`` picks (uvloop unless
``MAILGATE_EVENT_LOOP=asyncio``), so the ratio compares our work, not the loops.
"""

import asyncio
import os
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Sink(), hostname="sink.localhost"), "127.0.0.1", port
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def loop_factory():
    if os.environ.get("MAILGATE_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main(int(sys.argv[1])))
