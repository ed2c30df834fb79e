//! Schema migrations, applied in order inside one transaction each; `PRAGMA user_version` records
//! how many have been applied. Add a file, append it here; never edit an applied one.

use rusqlite::Connection;

use super::Error;

/// Every migration, in order.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_outbox", include_str!("migrations/0001_outbox.sql")),
    ("0002_ble", include_str!("migrations/0002_ble.sql")),
    (
        "0003_careplan",
        include_str!("migrations/0003_careplan.sql"),
    ),
];

/// Brings the schema up to date.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(Error::SchemaTooNew { found, known });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(migration = name, "Applied a store migration.");
    }
    Ok(())
}
