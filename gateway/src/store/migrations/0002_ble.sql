-- BLE device registry: only devices listed here have their readings taken; every other device is
-- seen in scans and nothing more (a neighbour's scale must never reach this patient's record).
CREATE TABLE ble_device (
    -- Identity address, upper-case `AA:BB:CC:DD:EE:FF` (never a resolvable private address).
    address TEXT PRIMARY KEY NOT NULL,
    -- blood_pressure | glucose | thermometer | weight_scale | pulse_oximeter
    kind TEXT NOT NULL,
    -- Name shown to the nurse (the advertised name at pairing time).
    name TEXT,
    -- Whether BlueZ holds a bond (LTK) for it.
    bonded INTEGER NOT NULL DEFAULT 0,
    -- The care-plan measurement this device feeds (`Kind::name`), NULL = the kind's own.
    feeds TEXT,
    -- When it was registered, Unix milliseconds (gateway clock).
    added_unix_ms INTEGER NOT NULL
) STRICT;
