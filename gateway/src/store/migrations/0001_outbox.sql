-- The outbox and source cursors.
-- AUTOINCREMENT: ids must never be reused, even after the table empties, because the uplink
-- fetches "rows with id above the last one I sent".
CREATE TABLE outbox (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    lane  INTEGER NOT NULL,          -- 0 priority, 1 routine
    kind  INTEGER NOT NULL,          -- 0 = postcard-encoded Reading (format 1); 1 = event payload
    topic TEXT,                      -- for events: topic below heim/v1/{gateway_id}/
    body  BLOB NOT NULL
);
-- Only priority rows are indexed, so a routine insert costs no index write.
CREATE INDEX outbox_priority ON outbox (id) WHERE lane = 0;

CREATE TABLE cursor (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
