#!/usr/bin/python3
"""A fake BlueZ (org.bluez) on a private D-Bus, for driving the real btleplug in tests.

Heim's own harness (design notes: design/ble-sim.md). It starts a private dbus-daemon, owns
`org.bluez` on it, and serves one adapter (hci0) and the devices described by a JSON scenario
file: Device1 objects that appear when discovery starts, GATT services/characteristics that appear
on Connect, measurements sent as PropertiesChanged(Value) after StartNotify, a glucose meter with
stored records answering Record Access Control Point requests, and the failure modes the gateway
must survive (link lost mid-transfer, a wedged scanner that only an adapter power-cycle clears).

Written on dbus-python alone (no dbusmock template), because dbus-python's introspection puts
interfaces before child nodes, which bluez-async's XML parser needs (pitfall P2), and every
property type is under our control (P3, P6).

Protocol with the test: the first stdout line is `DBUS_SYSTEM_BUS_ADDRESS=<addr>`; after that one
JSON object per line for each thing a client did (`{"ev": "connect", "dev": "AA:…"}`, …). SIGTERM
stops the daemon and removes the temporary directory (P9).

Usage: /usr/bin/python3 fake_bluez.py SCENARIO.json
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

PROPS = "org.freedesktop.DBus.Properties"
OM = "org.freedesktop.DBus.ObjectManager"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHAR = "org.bluez.GattCharacteristic1"
DESC = "org.bluez.GattDescriptor1"
BASE = "-0000-1000-8000-00805f9b34fb"


def uuid16(u):
    return "0000%04x%s" % (int(u, 16), BASE) if len(u) <= 4 else u.lower()


def emit(**ev):
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()


def ay(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature="y")


class Failed(dbus.exceptions.DBusException):
    def __init__(self, name, msg):
        super().__init__(msg, name="org.bluez.Error." + name)


OBJECTS = {}  # path -> PropObject, for GetManagedObjects


class PropObject(dbus.service.Object):
    """An exported object with org.freedesktop.DBus.Properties over `self.props`."""

    def __init__(self, bus, path, props):
        super().__init__(bus, path)
        self.path = path
        self.props = props  # {iface: {name: value}}
        OBJECTS[path] = self

    def unexport(self):
        OBJECTS.pop(self.path, None)
        self.remove_from_connection()

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        try:
            return self.props[iface][name]
        except KeyError:
            raise dbus.exceptions.DBusException(
                "no property %s.%s" % (iface, name),
                name="org.freedesktop.DBus.Error.InvalidArgs")

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        return self.props.get(iface, {})

    @dbus.service.method(PROPS, in_signature="ssv", out_signature="")
    def Set(self, iface, name, value):
        self.on_set(iface, name, value)

    def on_set(self, iface, name, value):
        self.update(iface, {name: value})

    @dbus.service.signal(PROPS, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass

    def update(self, iface, changed):
        self.props.setdefault(iface, {}).update(changed)
        self.PropertiesChanged(iface, changed, dbus.Array([], signature="s"))


class Root(dbus.service.Object):
    def __init__(self, bus):
        super().__init__(bus, "/")

    @dbus.service.method(OM, out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        return {dbus.ObjectPath(p): o.props for p, o in OBJECTS.items()}

    @dbus.service.signal(OM, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, ifaces):
        pass

    @dbus.service.signal(OM, signature="oas")
    def InterfacesRemoved(self, path, ifaces):
        pass


class Adapter(PropObject):
    def __init__(self, bus, sim):
        self.sim = sim
        super().__init__(bus, "/org/bluez/hci0", {
            ADAPTER: {
                "Address": "00:AA:01:02:03:04", "AddressType": "public", "Name": "heim-sim",
                "Alias": "heim-sim", "Modalias": "usb:v1D6Bp0246d0540",
                "Powered": dbus.Boolean(True), "Discovering": dbus.Boolean(False),
                "Discoverable": dbus.Boolean(False), "Pairable": dbus.Boolean(True),
                "Class": dbus.UInt32(0), "UUIDs": dbus.Array([], signature="s"),
            },
        })

    @dbus.service.method(ADAPTER, in_signature="a{sv}", out_signature="")
    def SetDiscoveryFilter(self, f):
        emit(ev="set_discovery_filter", uuids=[str(u) for u in f.get("UUIDs", [])])

    @dbus.service.method(ADAPTER, in_signature="", out_signature="")
    def StartDiscovery(self):
        self.sim.starts += 1
        if self.sim.wedged:
            emit(ev="start_discovery", result="in_progress")
            # What a wedged bluetoothd answers (the most reported home-gateway BLE failure).
            raise Failed("InProgress", "Operation already in progress")
        if not self.props[ADAPTER]["Powered"]:
            emit(ev="start_discovery", result="not_ready")
            raise Failed("NotReady", "Resource Not Ready")
        emit(ev="start_discovery", result="ok")
        self.update(ADAPTER, {"Discovering": dbus.Boolean(True)})
        dies = self.sim.scenario.get("discovery_dies_ms")
        if dies is not None and self.sim.starts == 1:
            # The controller stops scanning on its own; nothing tells the client but the property.
            GLib.timeout_add(dies, self.discovery_died)
        for d in self.sim.devices:
            d.on_discovery_started()

    def discovery_died(self):
        emit(ev="discovery_died")
        self.update(ADAPTER, {"Discovering": dbus.Boolean(False)})
        return False

    @dbus.service.method(ADAPTER, in_signature="", out_signature="")
    def StopDiscovery(self):
        emit(ev="stop_discovery")
        self.update(ADAPTER, {"Discovering": dbus.Boolean(False)})

    @dbus.service.method(ADAPTER, in_signature="o", out_signature="")
    def RemoveDevice(self, path):
        emit(ev="remove_device", path=str(path))

    def on_set(self, iface, name, value):
        if iface == ADAPTER and name == "Powered":
            emit(ev="powered", value=bool(value))
            if not value:
                # Power-cycling clears a wedged controller (unless the scenario says the
                # controller is beyond that); links and discovery stop.
                if not self.sim.scenario.get("wedge_permanent", False):
                    self.sim.wedged = False
                for d in self.sim.devices:
                    if d.connected:
                        d.drop_link("adapter powered off")
                self.update(ADAPTER, {"Discovering": dbus.Boolean(False)})
        self.update(iface, {name: value})


class Gatt(PropObject):
    pass


class Device(PropObject):
    """One simulated health device, described by a scenario entry."""

    def __init__(self, bus, sim, spec):
        self.sim, self.spec = sim, spec
        self.address = spec["address"]
        self.kind = spec["kind"]
        path = "/org/bluez/hci0/dev_" + self.address.replace(":", "_")
        self.repeating = False
        self.connected = False
        self.connections = 0
        self.gatt = []
        self.chars = {}  # uuid16 -> Gatt
        self.notifying = set()
        self.pending = []  # GLib source ids of scheduled sends
        self.stored = self.make_records()
        # Measurements not yet delivered: a device sends each once (the indication was
        # confirmed), and keeps the rest for its next connection.
        self.queue = [bytes.fromhex(h) for h in spec.get("measurements", [])]
        props = {
            "Address": self.address, "AddressType": "public", "Name": spec.get("name", "Sim"),
            "Alias": spec.get("name", "Sim"), "Paired": dbus.Boolean(False),
            "Connected": dbus.Boolean(False), "ServicesResolved": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False), "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False), "Bonded": dbus.Boolean(False),
            "RSSI": dbus.Int16(spec.get("rssi", -60)),
            "UUIDs": dbus.Array([uuid16(s) for s in spec["services"]], signature="s"),
            "ServiceData": dbus.Dictionary({}, signature="sv"),
            "ManufacturerData": dbus.Dictionary({}, signature="qv"),
            "Adapter": dbus.ObjectPath("/org/bluez/hci0"),
        }
        self.props_template = props
        self.bus = bus
        self.dev_path = path
        self.exported = False

    # --- advertising -------------------------------------------------------------------------
    def on_discovery_started(self):
        delay = self.spec.get("advertise_ms", 20)
        GLib.timeout_add(delay, self.advertise)

    def advertise(self):
        if not self.sim.adapter.props[ADAPTER]["Discovering"] or self.connected:
            return False
        if self.spec.get("away", False):
            return False
        if not self.exported:
            PropObject.__init__(self, self.bus, self.dev_path, {DEVICE: dict(self.props_template)})
            self.exported = True
            self.sim.root.InterfacesAdded(dbus.ObjectPath(self.dev_path), self.props)
        else:
            # An advertisement from a known device: BlueZ updates RSSI.
            rssi = int(self.props[DEVICE]["RSSI"])
            self.update(DEVICE, {"RSSI": dbus.Int16(rssi - 1 if rssi > -90 else -60)})
        emit(ev="advertise", dev=self.address)
        every = self.spec.get("advertise_every_ms")
        if every and not self.repeating:
            # Real devices advertise again and again until someone connects.
            self.repeating = True
            GLib.timeout_add(every, self.readvertise)
        return False

    def readvertise(self):
        done = (not self.spec.get("advertise_forever") and self.kind != "glucose"
                and not self.queue)
        if done or self.connected or not self.sim.adapter.props[ADAPTER]["Discovering"]:
            self.repeating = False
            return False
        self.advertise()
        return True

    # --- link ----------------------------------------------------------------------------------
    @dbus.service.method(DEVICE, in_signature="", out_signature="")
    def Connect(self):
        if not self.exported:
            raise Failed("DoesNotExist", "no such device")
        self.connections += 1
        self.connected = True
        emit(ev="connect", dev=self.address, n=self.connections,
             concurrent=sum(1 for d in self.sim.devices if d.connected))
        self.update(DEVICE, {"Connected": dbus.Boolean(True)})
        GLib.timeout_add(self.spec.get("resolve_ms", 5), self.resolve_services)

    @dbus.service.method(DEVICE, in_signature="", out_signature="")
    def Disconnect(self):
        emit(ev="disconnect", dev=self.address, by="central")
        self.drop_link(None)

    @dbus.service.method(DEVICE, in_signature="", out_signature="", async_callbacks=("ok", "err"))
    def Pair(self, ok, err):
        emit(ev="pair", dev=self.address)
        need = self.spec.get("passkey")
        if need is None:
            # Just Works: no agent involved.
            self.paired()
            ok()
            return
        # Passkey entry: the device shows a number, BlueZ asks the pairing client's agent.
        if self.sim.agent is None:
            err(Failed("AuthenticationFailed", "no agent to ask for the passkey"))
            return
        sender, path = self.sim.agent
        agent = self.bus.get_object(sender, path, introspect=False)

        def got(pk):
            emit(ev="passkey", dev=self.address, value=int(pk))
            if int(pk) == need:
                self.paired()
                ok()
            else:
                err(Failed("AuthenticationFailed", "wrong passkey"))

        agent.RequestPasskey(dbus.ObjectPath(self.dev_path), dbus_interface="org.bluez.Agent1",
                             reply_handler=got,
                             error_handler=lambda e: err(Failed("AuthenticationRejected", str(e))))

    def paired(self):
        self.update(DEVICE, {"Paired": dbus.Boolean(True), "Bonded": dbus.Boolean(True)})

    def drop_link(self, why):
        if why:
            emit(ev="link_lost", dev=self.address, why=why)
        for s in self.pending:
            GLib.source_remove(s)
        self.pending = []
        self.connected = False
        self.notifying.clear()
        for o in reversed(self.gatt):
            self.sim.root.InterfacesRemoved(dbus.ObjectPath(o.path), dbus.Array(list(o.props), signature="s"))
            o.unexport()
        self.gatt, self.chars = [], {}
        if self.exported:
            self.update(DEVICE, {"ServicesResolved": dbus.Boolean(False), "Connected": dbus.Boolean(False)})
        if self.spec.get("advertise_forever"):
            # A device that never sleeps goes back to advertising once the link is gone.
            GLib.timeout_add(self.spec.get("advertise_every_ms", 100), self.advertise)

    def resolve_services(self):
        if not self.connected:
            return False
        services = {
            "bpm": [("1810", [("2a35", ["indicate"]), ("2a49", ["read"])])],
            "glucose": [("1808", [("2a18", ["notify"]), ("2a34", ["notify"]),
                                  ("2a52", ["write", "indicate"]), ("2a51", ["read"])])],
            "thermometer": [("1809", [("2a1c", ["indicate"])])],
            "scale": [("181d", [("2a9d", ["indicate"])])],
            "plx": [("1822", [("2a5e", ["indicate"]), ("2a60", ["read"])])],
        }[self.kind]
        services = services + [("180f", [("2a19", ["read", "notify"])])]
        if self.spec.get("cts", False):
            services.append(("1805", [("2a2b", ["read", "write", "notify"])]))
        h = 0x10
        for su, chars in services:
            spath = "%s/service%04x" % (self.dev_path, h)
            h += 1
            s = Gatt(self.bus, spath, {SERVICE: {"UUID": uuid16(su), "Primary": dbus.Boolean(True),
                                                 "Device": dbus.ObjectPath(self.dev_path),
                                                 "Includes": dbus.Array([], signature="o")}})
            self.gatt.append(s)
            self.sim.root.InterfacesAdded(dbus.ObjectPath(spath), s.props)
            for cu, flags in chars:
                cpath = "%s/char%04x" % (spath, h)
                h += 2
                c = Characteristic(self.bus, cpath, self, cu, flags, spath)
                self.gatt.append(c)
                self.chars[cu] = c
                self.sim.root.InterfacesAdded(dbus.ObjectPath(cpath), c.props)
                if "notify" in flags or "indicate" in flags:
                    dpath = "%s/desc%04x" % (cpath, h - 1)
                    d = Gatt(self.bus, dpath, {DESC: {"UUID": uuid16("2902"),
                                                      "Characteristic": dbus.ObjectPath(cpath)}})
                    self.gatt.append(d)
        self.update(DEVICE, {"ServicesResolved": dbus.Boolean(True)})
        emit(ev="services_resolved", dev=self.address)
        return False

    # --- GATT behaviour --------------------------------------------------------------------------
    def read(self, cu):
        if cu == "2a19":
            return [self.spec.get("battery", 90)]
        if cu == "2a49":
            return [0x21, 0x00]
        if cu == "2a51":
            return [0x00, 0x02]
        if cu == "2a2b":
            return self.spec.get("current_time", [0xe0, 0x07, 1, 1, 0, 0, 0, 5, 0, 0])
        return []

    def write(self, cu, data):
        emit(ev="write", dev=self.address, char=cu, hex=bytes(data).hex())
        if cu == "2a52":
            if "2a52" not in self.notifying:
                # GLS: RACP write without its indication enabled fails with 0x81.
                raise Failed("Failed", "CCCD improperly configured")
            GLib.timeout_add(1, self.racp, bytes(data))

    def start_notify(self, cu):
        self.notifying.add(cu)
        emit(ev="start_notify", dev=self.address, char=cu)
        if cu in ("2a35", "2a1c", "2a9d", "2a5e"):
            delay = self.spec.get("notify_ms", 5)
            for i, data in enumerate(list(self.queue)):
                self.later(delay * (i + 1), self.send_queued, cu, data)

    def later(self, ms, fn, *args):
        def run():
            fn(*args)
            if sid in self.pending:
                self.pending.remove(sid)
            return False
        sid = GLib.timeout_add(ms, run)
        self.pending.append(sid)

    def send_queued(self, cu, data):
        if self.send(cu, data) and data in self.queue:
            self.queue.remove(data)

    def send(self, cu, data):
        c = self.chars.get(cu)
        if not self.connected or c is None or cu not in self.notifying:
            return False
        emit(ev="notify", dev=self.address, char=cu, hex=data.hex())
        c.update(CHAR, {"Value": ay(data)})
        return True

    def make_records(self):
        n = self.spec.get("stored_records", 0)
        out = []
        for seq in range(1, n + 1):
            mg = 90 + seq  # mg/dL, distinct per record: 10^-5 kg/L exponent
            sfloat = ((0xB & 0xF) << 12) | (mg & 0x0FFF)  # exponent -5
            minute = seq % 60
            hour = 8 + seq // 60
            rec = bytes([0x02]) + seq.to_bytes(2, "little") + bytes([0xE8, 0x07, 5, 1, hour, minute, 0]) \
                + sfloat.to_bytes(2, "little") + bytes([0x11])
            out.append((seq, rec))
        return out

    def racp(self, req):
        if req[:2] == b"\x01\x01":
            lo = 0
        elif req[:3] == b"\x01\x03\x01" and len(req) == 5:
            lo = int.from_bytes(req[3:5], "little")
        elif req[:2] == b"\x01\x06":
            # Most recent record only.
            if not self.stored:
                self.later(1, self.indicate_racp, bytes([6, 0, 1, 6]))
                return False
            emit(ev="racp_report", dev=self.address, from_seq="last", count=1)
            self.later(1, self.send, "2a18", self.stored[-1][1])
            self.later(2, self.indicate_racp, bytes([6, 0, 1, 1]))
            return False
        elif req[:2] == b"\x03\x00":
            self.indicate_racp(bytes([6, 0, 3, 1]))
            return False
        else:
            self.indicate_racp(bytes([6, 0, req[0], 2]))
            return False
        todo = [r for s, r in self.stored if s >= lo]
        emit(ev="racp_report", dev=self.address, from_seq=lo, count=len(todo))
        if not todo:
            self.later(1, self.indicate_racp, bytes([6, 0, 1, 6]))
            return False
        drop_after = self.spec.get("drop_after_records")
        step = self.spec.get("record_ms", 2)
        for i, rec in enumerate(todo):
            if drop_after is not None and self.connections == 1 and i == drop_after:
                self.later(step * (i + 1), self.go_away)
                return False
            self.later(step * (i + 1), self.send, "2a18", rec)
        self.later(step * (len(todo) + 1), self.indicate_racp, bytes([6, 0, 1, 1]))
        return False

    def go_away(self):
        # Out of range mid-transfer: the link drops, the device is silent for a while, then
        # advertises again.
        self.drop_link("out of range")
        self.spec["away"] = True
        GLib.timeout_add(self.spec.get("away_ms", 300), self.come_back)

    def come_back(self):
        self.spec["away"] = False
        emit(ev="back", dev=self.address)
        self.advertise()
        return False

    def indicate_racp(self, data):
        self.send("2a52", data)


class Characteristic(Gatt):
    def __init__(self, bus, path, dev, cu, flags, spath):
        self.dev, self.cu = dev, cu
        super().__init__(bus, path, {CHAR: {
            "UUID": uuid16(cu), "Service": dbus.ObjectPath(spath),
            "Flags": dbus.Array(flags, signature="s"), "Value": ay([]),
            "Notifying": dbus.Boolean(False), "MTU": dbus.UInt16(185),
        }})

    @dbus.service.method(CHAR, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options):
        emit(ev="read", dev=self.dev.address, char=self.cu)
        return ay(self.dev.read(self.cu))

    @dbus.service.method(CHAR, in_signature="aya{sv}", out_signature="")
    def WriteValue(self, value, options):
        self.dev.write(self.cu, [int(b) for b in value])

    @dbus.service.method(CHAR, in_signature="", out_signature="")
    def StartNotify(self):
        self.props[CHAR]["Notifying"] = dbus.Boolean(True)
        self.dev.start_notify(self.cu)

    @dbus.service.method(CHAR, in_signature="", out_signature="")
    def StopNotify(self):
        if self.cu not in self.dev.notifying:
            raise Failed("Failed", "No notify session started")
        self.dev.notifying.discard(self.cu)
        self.props[CHAR]["Notifying"] = dbus.Boolean(False)


class AgentManager(dbus.service.Object):
    """org.bluez.AgentManager1 on /org/bluez: remembers the pairing client's agent."""

    def __init__(self, bus, sim):
        super().__init__(bus, "/org/bluez")
        self.sim = sim

    @dbus.service.method("org.bluez.AgentManager1", in_signature="os", out_signature="",
                         sender_keyword="sender")
    def RegisterAgent(self, path, capability, sender=None):
        emit(ev="register_agent", capability=str(capability))
        self.sim.agent = (sender, str(path))

    @dbus.service.method("org.bluez.AgentManager1", in_signature="o", out_signature="")
    def UnregisterAgent(self, path):
        emit(ev="unregister_agent")
        self.sim.agent = None


class Sim:
    def __init__(self, bus, scenario):
        self.scenario = scenario
        self.starts = 0
        self.wedged = scenario.get("wedged", False)
        self.agent = None
        self.root = Root(bus)
        self.agents = AgentManager(bus, self)
        self.adapter = Adapter(bus, self)
        self.devices = [Device(bus, self, d) for d in scenario["devices"]]


def main():
    scenario = json.load(open(sys.argv[1]))
    tmp = tempfile.mkdtemp(prefix="heim-fake-bluez-")
    sock = os.path.join(tmp, "system_bus_socket")
    conf = os.path.join(tmp, "bus.conf")
    with open(conf, "w") as f:
        f.write("""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=%s</listen>
<auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_sender="*"/><allow eavesdrop="true"/></policy></busconfig>""" % sock)
    daemon = subprocess.Popen(["dbus-daemon", "--config-file=" + conf, "--nofork", "--print-address=1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = daemon.stdout.readline().strip()
    loop = GLib.MainLoop()

    def stop(*_):
        loop.quit()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop)
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    name = dbus.service.BusName("org.bluez", bus)
    Sim(bus, scenario)
    print("DBUS_SYSTEM_BUS_ADDRESS=" + address, flush=True)
    # Exit when the test goes away (stdin closes), so no orphan survives a crashed test.
    GLib.io_add_watch(sys.stdin, GLib.IO_HUP | GLib.IO_IN, lambda *a: (stop(), False)[1])
    try:
        loop.run()
    finally:
        del name
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
