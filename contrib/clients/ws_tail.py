#!/usr/bin/python3
"""ws_tail.py - connect to Parley's WebSocket as a user and print every event it pushes.

Usage: PARLEY_WS=ws://127.0.0.1:8080/ws TOKEN_BOB=<jwt> ws_tail.py [--count N] [--until TEXT] [--timeout S]
(or --url and --token). Uses the Debian package python3-websockets.
"""
import argparse
import asyncio
import json
import os
import sys

import websockets


async def tail(url, token, count, until, timeout):
    async with websockets.connect(url, subprotocols=["parley.v1"]) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        print("ready:", json.dumps(ready), flush=True)
        await ws.send(json.dumps({"type": "sync", "after": ready.get("last_seq", 0)}))
        seen = 0
        while count == 0 or seen < count:
            ev = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            print("event:", json.dumps(ev), flush=True)
            if ev.get("type") == "new_message":
                seen += 1
                if until is not None and until in ev["message"]["content"]:
                    return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=os.environ.get("PARLEY_WS", "ws://127.0.0.1:8080/ws"))
    ap.add_argument("--token", default=os.environ.get("TOKEN_BOB"))
    ap.add_argument("--count", type=int, default=0, help="stop after N new messages (0: never)")
    ap.add_argument("--until", help="stop after a new message whose content contains TEXT")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    if not a.token:
        sys.exit("no token: --token or TOKEN_BOB")
    try:
        asyncio.run(tail(a.url, a.token, a.count, a.until, a.timeout))
    except asyncio.TimeoutError:
        sys.exit("timed out waiting for an event")


if __name__ == "__main__":
    main()
