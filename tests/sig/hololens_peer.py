"""The headset side of a HoloLens call, for tests: a WHIP-style client of the gateway's LAN API
(HTTPS, bearer token) with a real WebRTC peer (aiortc) that sends video and a data channel.

Call 1: ring, wait for accept, offer (POST .../whip), trickle an end-of-candidates PATCH, exchange
a data-channel message, send video for a while, hang up with DELETE.
Call 2: the same, but wait for the hospital to hang up, seen through the long-poll.
Prints RESULT lines for the test; never prints SDP.
"""

import argparse
import asyncio
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

import aioice.ice

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack  # noqa: E402


def say(*parts):
    print("RESULT", *parts, flush=True)


class Api:
    def __init__(self, base, token, ca):
        self.base = base.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=ca)

    def _do(self, method, path, body=None, ctype=None, headers=None, timeout=70):
        url = path if path.startswith("http") else self.base + path
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if ctype:
            req.add_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    async def do(self, *a, **kw):
        return await asyncio.to_thread(self._do, *a, **kw)


async def wait_state(api, loc, want, timeout=60):
    etag = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = {"If-None-Match": etag} if etag else {}
        status, headers, body = await api.do("GET", loc + "?wait=20", headers=h)
        if status == 304:
            continue
        if status != 200:
            raise RuntimeError(f"GET call: {status}")
        etag = headers.get("ETag")
        v = json.loads(body)
        if v["state"] in want:
            return v
    raise TimeoutError(f"call never reached {want}")


async def call(api, index, hold_s, we_hang_up):
    status, headers, body = await api.do("POST", "/v1/calls", json.dumps({"to": "team:test"}).encode(), "application/json")
    if status != 201:
        raise RuntimeError(f"POST /v1/calls: {status}")
    loc = headers["Location"]
    say("RINGING", index)
    await wait_state(api, loc, {"accepted"})
    say("ACCEPTED", index)

    pc = RTCPeerConnection()
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    dc = pc.createDataChannel("annotations")
    connected = asyncio.Event()
    pong = asyncio.Event()

    @pc.on("connectionstatechange")
    async def on_state():
        say("STATE", index, pc.connectionState)
        if pc.connectionState == "connected":
            connected.set()

    @dc.on("open")
    def on_open():
        dc.send("hello from the headset")

    @dc.on("message")
    def on_message(m):
        if m == "pong:hello from the headset":
            pong.set()

    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer = await api.do("POST", loc + "/whip", pc.localDescription.sdp.encode(), "application/sdp")
    if status != 201:
        raise RuntimeError(f"POST whip: {status}")
    session = headers["Location"]
    etag = headers.get("ETag")
    say("ANSWERED", index, f"ctype={headers.get('Content-Type')}", f"etag={bool(etag)}")
    await pc.setRemoteDescription(RTCSessionDescription(answer.decode(), "answer"))
    # RFC 9725 trickle: aiortc gathers before offering, so only the end-of-candidates marker.
    frag = "a=ice-ufrag:" + pc.localDescription.sdp.split("a=ice-ufrag:")[1].split("\r\n")[0] + "\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=end-of-candidates\r\n"
    status, _, _ = await api.do("PATCH", session, frag.encode(), "application/trickle-ice-sdpfrag", {"If-Match": etag})
    say("PATCH", index, status)

    await asyncio.wait_for(connected.wait(), 30)
    await asyncio.wait_for(pong.wait(), 20)
    say("DATA_ROUNDTRIP", index)
    if we_hang_up:
        await asyncio.sleep(hold_s)
        status, _, _ = await api.do("DELETE", session)
        say("DELETE", index, status)
        v = await wait_state(api, loc, {"ended"}, 10)
        say("ENDED", index, f"reason={v.get('reason')}")
    else:
        v = await wait_state(api, loc, {"ended"}, 60)
        say("REMOTE_HANGUP", index, f"reason={v.get('reason')}")
    await pc.close()


async def run(args):
    api = Api(args.api, args.token, args.ca)
    await call(api, 1, args.hold, True)
    await call(api, 2, args.hold, False)
    say("DONE")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--hold", type=float, default=3.0)
    args = p.parse_args()
    try:
        asyncio.run(asyncio.wait_for(run(args), 150))
    except Exception as e:
        say("ERROR", type(e).__name__, str(e)[:200])
        sys.exit(1)


if __name__ == "__main__":
    main()
