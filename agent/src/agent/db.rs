//! The agent's durable state in SQLite: services (their `ServiceState`) and instance records,
//! each row written in its own transaction as soon as it changes, in WAL mode so a SIGKILL at
//! any moment leaves the last committed state. Rows hold JSON documents of the same serde
//! types the API uses, with the columns the agent queries by pulled out.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::types::InstanceEnd;
use crate::fleet::{EndReason, InstanceStatus, ServiceState, StartKind};

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the state database {0}")]
    Open(std::path::PathBuf, #[source] rusqlite::Error),
    #[error("state database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("state database row {0:?} is not valid")]
    Row(String, #[source] serde_json::Error),
}

/// What the agent remembers about an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub generation: u64,
    pub digest: String,
    pub status: InstanceStatus,
    /// herd-vmm's pid and start time, once started.
    pub pid: Option<u32>,
    pub start_ticks: Option<u64>,
    /// Unix ms.
    pub started_at_ms: u64,
    pub address: Option<String>,
    pub tap: Option<String>,
    /// The uid its herd-vmm is jailed as (absent in records of agents before jailing).
    #[serde(default)]
    pub jail_uid: Option<u32>,
    /// Why the agent asked it to stop, while it is stopping.
    pub stop_reason: Option<EndReason>,
    pub end: Option<InstanceEnd>,
    /// Booted, or restored from a snapshot (records before snapshots: booted).
    #[serde(default)]
    pub start: StartKind,
    /// The key of the snapshot it was restored from (`digest/<vcpus>x<MiB>-<hash>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// The open database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    ended_at_ms INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_ended ON instances (ended_at_ms);
";

impl Db {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            // WAL + NORMAL: a commit survives the process being killed (the WAL is in the
            // page cache); only a power loss can drop the newest commits.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        let conn = open().map_err(|e| DbError::Open(path.to_owned(), e))?;
        Ok(Self { conn })
    }

    /// Inserts or replaces a service.
    pub fn put_service(&self, state: &ServiceState) -> Result<(), DbError> {
        let json = serde_json::to_string(state).expect("service state serialises");
        self.conn.execute(
            "INSERT INTO services (name, state) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state",
            params![state.spec.name, json],
        )?;
        Ok(())
    }

    /// Removes a service (its instance records stay until pruned).
    pub fn delete_service(&self, name: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM services WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// Inserts or replaces an instance record.
    pub fn put_instance(&self, record: &InstanceRecord) -> Result<(), DbError> {
        let json = serde_json::to_string(record).expect("instance record serialises");
        let ended = record.end.as_ref().map(|e| e.at_ms as i64);
        self.conn.execute(
            "INSERT INTO instances (id, service, ended_at_ms, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET ended_at_ms = excluded.ended_at_ms,
                                            record = excluded.record",
            params![record.id, record.service, ended, json],
        )?;
        Ok(())
    }

    /// Every service.
    pub fn services(&self) -> Result<Vec<ServiceState>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, state FROM services ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (name, json) = row?;
            serde_json::from_str(&json).map_err(|e| DbError::Row(name, e))
        })
        .collect()
    }

    /// Every instance record (running and ended), oldest first.
    pub fn instances(&self) -> Result<Vec<InstanceRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, record FROM instances ORDER BY rowid")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (id, json) = row?;
            serde_json::from_str(&json).map_err(|e| DbError::Row(id, e))
        })
        .collect()
    }

    /// One instance record.
    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, DbError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT record FROM instances WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| DbError::Row(id.to_owned(), e)))
            .transpose()
    }

    /// Forgets instances that ended before `before_ms`; returns their ids.
    pub fn prune_instances(&self, before_ms: u64) -> Result<Vec<String>, DbError> {
        let tx = self.conn.unchecked_transaction()?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare("SELECT id FROM instances WHERE ended_at_ms < ?1")?;
            stmt.query_map(params![before_ms as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        tx.execute(
            "DELETE FROM instances WHERE ended_at_ms < ?1",
            params![before_ms as i64],
        )?;
        tx.commit()?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            service: "web".into(),
            generation: 1,
            digest: "sha256:ab".into(),
            status: InstanceStatus::Starting,
            pid: Some(42),
            start_ticks: Some(7),
            started_at_ms: 1000,
            address: Some("172.31.0.2/24".into()),
            tap: Some("hd01".into()),
            jail_uid: Some(3_000_000),
            stop_reason: None,
            end: None,
            start: StartKind::Snapshot,
            snapshot: Some("sha256:ab/1x128-0123456789abcdef".into()),
        }
    }

    #[test]
    fn services_and_instances_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let spec = serde_json::from_str(r#"{"name":"web","image":"a:1","replicas":2}"#).unwrap();
        let state = ServiceState::new(spec, "sha256:ab".into());
        {
            let db = Db::open(&path).unwrap();
            db.put_service(&state).unwrap();
            db.put_instance(&record("web-1")).unwrap();
            let mut r = record("web-2");
            db.put_instance(&r).unwrap();
            r.status = InstanceStatus::Exited;
            r.end = Some(InstanceEnd {
                reason: EndReason::Exited,
                exit_code: Some(1),
                at_ms: 5000,
            });
            db.put_instance(&r).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.services().unwrap(), [state]);
        let all = db.instances().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].end.as_ref().unwrap().exit_code, Some(1));
        assert_eq!(db.instance("web-1").unwrap().unwrap(), record("web-1"));
        assert_eq!(db.prune_instances(6000).unwrap(), ["web-2"]);
        assert_eq!(db.instances().unwrap().len(), 1);
        db.delete_service("web").unwrap();
        assert!(db.services().unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        db.conn
            .execute("INSERT INTO services VALUES ('bad', '{')", [])
            .unwrap();
        let err = db.services().unwrap_err();
        assert!(err.to_string().contains("\"bad\""), "{err}");
    }

    #[test]
    fn records_written_before_snapshot_starts_read_as_booted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let mut old = serde_json::to_value(record("web-1")).unwrap();
        let map = old.as_object_mut().unwrap();
        map.remove("start");
        map.remove("snapshot");
        db.conn
            .execute(
                "INSERT INTO instances (id, service, record) VALUES ('web-1', 'web', ?1)",
                params![old.to_string()],
            )
            .unwrap();
        let read = db.instance("web-1").unwrap().unwrap();
        assert_eq!((read.start, read.snapshot), (StartKind::Boot, None));
    }
}
