-- The care plan (issue 5; owned by gateway/src/careplan).
-- One row: the current plan. `seq` stays when the plan is cleared (an empty retained payload), so
-- an older signed plan replayed afterwards is still refused as a rollback.
CREATE TABLE careplan (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    digest     BLOB NOT NULL,      -- SHA-256 of the envelope (a redelivered retained plan is not a rollback)
    envelope   BLOB,               -- the verified envelope as received; NULL once cleared
    applied_at INTEGER NOT NULL    -- Unix ms; windows due before this are never judged
);
-- Every reading linked to the plan: counts windows (Resolved / Extra), feeds the missed-window
-- judge, and holds the Observation fields the uplink renders. Pruned after 60 days.
CREATE TABLE careplan_link (
    reading_id   BLOB PRIMARY KEY,
    request      TEXT NOT NULL,
    window_start INTEGER,          -- Unix ms; NULL for Adhoc / Unresolved
    status       TEXT NOT NULL,    -- Resolved | Unresolved | Adhoc | Extra
    alert        TEXT,             -- red | yellow | NULL
    linked       TEXT NOT NULL,    -- JSON of careplan::Linked
    linked_at    INTEGER NOT NULL  -- Unix ms
) WITHOUT ROWID;
CREATE INDEX careplan_link_window ON careplan_link (request, window_start) WHERE status = 'Resolved';
-- Ledger of judged windows (for status and audit). Exactly-once judging rests on the
-- `careplan:judged` cursor, committed in the same transaction as the DetectedIssue events.
CREATE TABLE careplan_window (
    request      TEXT NOT NULL,
    version      TEXT NOT NULL,
    window_start INTEGER NOT NULL, -- Unix ms
    received     INTEGER NOT NULL,
    expected     INTEGER NOT NULL,
    judged_at    INTEGER NOT NULL, -- Unix ms
    PRIMARY KEY (request, version, window_start)
) WITHOUT ROWID;
