"""The hospital side of a HoloLens call, for tests: a signalling service on MQTT 5 (mutual TLS)
that answers the gateway's rings and invites with a real WebRTC peer (aiortc).

It takes calls one after another. For each: accept the ring, answer the invite, echo data-channel
messages ("pong:" + text), count received video frames. With --hangup-after-frames N on call K it
hangs up itself once N frames arrived; otherwise it waits for the gateway's hangup. It prints one
line per event (RESULT ...) for the test to read, and never prints SDP.
"""

import argparse
import asyncio
import json
import ssl
import sys
import time
import uuid

import aioice.ice

# aioice leaves out 127.0.0.1 when gathering; the test runs on loopback only.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.sdp import candidate_from_sdp  # noqa: E402


def say(*parts):
    print("RESULT", *parts, flush=True)


class Hospital:
    def __init__(self, args, loop):
        self.args = args
        self.loop = loop
        self.up = f"heim/v1/{args.gateway}/sig/up"
        self.down = f"heim/v1/{args.gateway}/sig/down"
        self.inbox = asyncio.Queue()
        self.seq = {}
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"hospital-sig-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.check_hostname = False
        c.tls_set_context(ctx)
        c.will_set(args.presence, json.dumps({"state": "offline"}), qos=1, retain=True)
        c.on_connect = self.on_connect
        c.on_message = self.on_message
        self.client = c

    def on_connect(self, client, userdata, flags, reason, props):
        client.subscribe(self.up, qos=1)
        client.publish(self.args.presence, json.dumps({"state": "online"}), qos=1, retain=True)
        say("CONNECTED")

    def on_message(self, client, userdata, msg):
        if msg.retain:
            say("RETAINED_SIGNALLING_SEEN")
        expiry = getattr(msg.properties, "MessageExpiryInterval", None)
        ev = json.loads(msg.payload)
        ev["_expiry"] = expiry
        self.loop.call_soon_threadsafe(self.inbox.put_nowait, ev)

    def send(self, kind, call_id, lifetime_s=30, **fields):
        seq = self.seq.get(call_id, 0) + 1
        self.seq[call_id] = seq
        ev = {"v": 1, "type": kind, "call_id": call_id, "party_id": self.args.party, "seq": seq,
              "lifetime_ms": lifetime_s * 1000}
        ev.update(fields)
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = lifetime_s
        self.client.publish(self.down, json.dumps(ev), qos=1, retain=False, properties=props)

    async def next(self, kinds, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kinds} event")
            ev = await asyncio.wait_for(self.inbox.get(), left)
            if ev.get("_expiry") is None:
                say("NO_EXPIRY", ev["type"])
            if ev["type"] in kinds:
                return ev

    async def call(self, index):
        ring = await self.next({"ring"}, 60)
        cid = ring["call_id"]
        say("RING", index, f"to={ring.get('to')}", f"from={ring.get('from')}")
        self.send("accept", cid)
        invite = await self.next({"invite"}, 40)
        pc = RTCPeerConnection()
        frames = 0
        got_message = asyncio.Event()
        enough = asyncio.Event()

        @pc.on("datachannel")
        def on_dc(ch):
            @ch.on("message")
            def on_msg(m):
                say("DATA", index, f"len={len(m)}")
                ch.send("pong:" + m)
                got_message.set()

        @pc.on("track")
        def on_track(track):
            async def pull():
                nonlocal frames
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
                    frames += 1
                    if frames >= self.args.frames:
                        enough.set()
            asyncio.ensure_future(pull())

        @pc.on("connectionstatechange")
        async def on_state():
            say("STATE", index, pc.connectionState)

        await pc.setRemoteDescription(RTCSessionDescription(invite["offer"]["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.send("answer", cid, answer={"type": "answer", "sdp": pc.localDescription.sdp})
        # Candidates trickled by the headset (a PATCH) come as a "candidates" event.
        hangup = None
        ours = index == self.args.hangup_on_call
        try:
            while hangup is None:
                waits = [asyncio.ensure_future(self.next({"candidates", "hangup"}, 60))]
                if ours:
                    waits.append(asyncio.ensure_future(asyncio.wait_for(
                        asyncio.gather(enough.wait(), got_message.wait()), 60)))
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    p.cancel()
                first = done.pop()
                result = first.result()
                if ours and isinstance(result, list):
                    say("FRAMES", index, frames)
                    self.send("hangup", cid, 60, reason="user_hangup")
                    say("HUNG_UP", index)
                    break
                if result["type"] == "candidates":
                    for c in result.get("candidates", []):
                        if c.get("candidate"):
                            cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                            cand.sdpMid = c.get("sdpMid")
                            cand.sdpMLineIndex = c.get("sdpMLineIndex")
                            await pc.addIceCandidate(cand)
                    say("CANDIDATES", index, len(result.get("candidates", [])))
                else:
                    hangup = result
        finally:
            if hangup is not None:
                say("FRAMES", index, frames)
                say("GATEWAY_HANGUP", index, f"reason={hangup.get('reason')}")
            await pc.close()
        say("CALL_DONE", index, f"frames={frames}", f"data={got_message.is_set()}")

    async def run(self):
        self.client.connect_async(self.args.host, self.args.port, keepalive=10)
        self.client.loop_start()
        try:
            for i in range(1, self.args.calls + 1):
                await self.call(i)
        finally:
            self.client.publish(self.args.presence, json.dumps({"state": "offline"}), qos=1, retain=True).wait_for_publish(2)
            self.client.loop_stop()
        say("DONE")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--party", default="hosp.dr-test")
    p.add_argument("--presence", default="heim/v1/hospital/sig/presence")
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--hangup-on-call", type=int, default=2)
    args = p.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(asyncio.wait_for(Hospital(args, loop).run(), 150))
    except Exception as e:  # the test reads the exit code and the RESULT lines
        say("ERROR", type(e).__name__)
        sys.exit(1)


if __name__ == "__main__":
    main()
