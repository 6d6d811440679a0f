//! What `hil cloud --state DIR` keeps across a restart, in one SQLite database
//! (`DIR/cloud.sqlite3`, rusqlite's bundled SQLite): products, their firmware (the binaries as
//! blobs), releases, groups, product device settings (development, lock, groups, forced
//! updates), the forced-updates setting of other devices, and single-device flashes not finished
//! yet. Every change is written in one transaction before the REST API answers it, so what was
//! acknowledged survives a crash.
//!
//! Device sessions are kept too (`sessions`: the DTLS association's keys, CID, counters and the
//! last Hello), written within a second of a handshake and whenever the cloud's record counter
//! crosses half of its reserve: the saved counter is [`SEQ_RESERVE`] ahead of the live one, so
//! a restarted cloud never sends two records with one sequence number (a CCM nonce), and its
//! devices resume their sessions without a handshake, as with Particle's cloud across its
//! deployments. Transfers and the event stream are not kept: a transfer that was running
//! starts again with a new UpdateStart (the device resumes it at its offset).
//!
//! The schema, for a lab that queries it with `sqlite3 DIR/cloud.sqlite3` (times are Unix
//! milliseconds, booleans 0/1, device ids 24 lowercase hex digits):
//!
//! ```sql
//! meta(key TEXT PRIMARY KEY, value TEXT)                 -- 'schema_version' = '1'
//! products(id INTEGER PRIMARY KEY, name TEXT, platform_id INTEGER)
//! product_groups(product_id INTEGER, name TEXT)          -- groups known to a product
//! firmware(product_id INTEGER, version INTEGER, title TEXT, description TEXT, size INTEGER,
//!          sha256 TEXT, uploaded_at_ms INTEGER, product_default INTEGER, intelligent INTEGER,
//!          released_at_ms INTEGER NULL, binary BLOB)     -- PRIMARY KEY (product_id, version)
//! firmware_groups(product_id INTEGER, version INTEGER, group_name TEXT)  -- released to
//! product_devices(device_id TEXT PRIMARY KEY, product_id INTEGER, development INTEGER,
//!          desired_firmware_version INTEGER NULL, firmware_updates_forced INTEGER)
//! device_groups(device_id TEXT, group_name TEXT)         -- a product device's groups
//! device_settings(device_id TEXT PRIMARY KEY, firmware_updates_forced INTEGER)  -- others
//! flash_jobs(id INTEGER PRIMARY KEY, device_id TEXT, file BLOB, requested_at_ms INTEGER)
//! sessions(device_id TEXT PRIMARY KEY, client_random TEXT, dtls BLOB, peer_cid BLOB NULL,
//!          peer TEXT, device_key BLOB, hello BLOB NULL, saved_at_ms INTEGER)
//!          -- dtls: `protocol::dtls::SessionState` bytes, its counter the reserved one
//! rollouts(product_id INTEGER, id INTEGER, version INTEGER, state TEXT, stage INTEGER,
//!          reason TEXT NULL, doc TEXT)                   -- PRIMARY KEY (product_id, id)
//!          -- doc: `rollout::SavedRollout` as JSON (plan, devices admitted and their
//!          -- outcomes, state changes; times Unix ms)
//! ```
//!
//! Staged rollouts (`rollouts`, added to schema version 1: an older file gets the table when
//! opened) are written with every API change and whenever a rollout's state or counts change
//! on their own (a stage starts, an abort rule fires, a device succeeds).
//!
//! For example `sqlite3 state/cloud.sqlite3 'SELECT product_id, version, title,
//! product_default FROM firmware'`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::fleet::{DeviceChange, Fleet, Release};
use super::rollout::SavedRollout;
use super::DeviceId;

const SCHEMA_VERSION: &str = "1";
/// The database file in the state directory.
pub const DB_FILE: &str = "cloud.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, platform_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS product_groups (
    product_id INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY (product_id, name));
CREATE TABLE IF NOT EXISTS firmware (
    product_id INTEGER NOT NULL, version INTEGER NOT NULL, title TEXT NOT NULL,
    description TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    uploaded_at_ms INTEGER NOT NULL, product_default INTEGER NOT NULL,
    intelligent INTEGER NOT NULL, released_at_ms INTEGER, binary BLOB NOT NULL,
    PRIMARY KEY (product_id, version));
CREATE TABLE IF NOT EXISTS firmware_groups (
    product_id INTEGER NOT NULL, version INTEGER NOT NULL, group_name TEXT NOT NULL,
    PRIMARY KEY (product_id, version, group_name));
CREATE TABLE IF NOT EXISTS product_devices (
    device_id TEXT PRIMARY KEY, product_id INTEGER NOT NULL, development INTEGER NOT NULL,
    desired_firmware_version INTEGER, firmware_updates_forced INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS device_groups (
    device_id TEXT NOT NULL, group_name TEXT NOT NULL, PRIMARY KEY (device_id, group_name));
CREATE TABLE IF NOT EXISTS device_settings (
    device_id TEXT PRIMARY KEY, firmware_updates_forced INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    device_id TEXT PRIMARY KEY, client_random TEXT NOT NULL, dtls BLOB NOT NULL,
    peer_cid BLOB, peer TEXT NOT NULL, device_key BLOB NOT NULL, hello BLOB,
    saved_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (
    product_id INTEGER NOT NULL, id INTEGER NOT NULL, version INTEGER NOT NULL,
    state TEXT NOT NULL, stage INTEGER NOT NULL, reason TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (product_id, id));
CREATE TABLE IF NOT EXISTS flash_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, file BLOB NOT NULL,
    requested_at_ms INTEGER NOT NULL);
";

/// Why the state could not be read or written; the message names the file and what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state {path}: {what}")]
    Content { path: PathBuf, what: String },
}

/// A single-device flash saved until it finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFlash {
    pub row: i64,
    pub device: DeviceId,
    pub file: Vec<u8>,
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Saved {
    pub fleet: Fleet,
    /// The forced-updates setting of devices that are in no product.
    pub forced: Vec<DeviceId>,
    pub flashes: Vec<SavedFlash>,
}

/// How far ahead of the cloud's live record counter a saved session's counter is; a session
/// is saved again once half of it is used.
pub const SEQ_RESERVE: u64 = 1 << 32;

/// What was last written for each device's session: (client random, reserved counter, Hello).
pub type SavedSessions = BTreeMap<DeviceId, ([u8; 32], u64, Option<Vec<u8>>)>;

/// The open database. See the [module documentation](self).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: Connection,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn from_ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

impl Store {
    /// Opens (creating it if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let db = Connection::open(&path).map_err(sql)?;
        // WAL: a reader (a lab's sqlite3) never blocks the cloud; FULL: a commit is on disk
        // before the API answers.
        db.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        db.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        db.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        db.execute_batch(SCHEMA).map_err(sql)?;
        let version: Option<String> = db
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        match version.as_deref() {
            None => {
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(sql)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Content {
                    path,
                    what: format!(
                        "schema version {other}, this hil reads version {SCHEMA_VERSION}"
                    ),
                })
            }
        }
        Ok(Store { path, db })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn content(&self, what: String) -> StoreError {
        StoreError::Content {
            path: self.path.clone(),
            what,
        }
    }

    /// Writes the fleet as it is now, in one transaction (firmware binaries are written once,
    /// when their row is new).
    pub fn save_fleet(&mut self, fleet: &Fleet) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.db.transaction().map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        write_fleet(&tx, fleet).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        tx.commit()
            .map_err(|source| StoreError::Sqlite { path, source })
    }

    /// Writes every staged rollout as it is now (one transaction; the table holds exactly
    /// these afterwards).
    pub fn save_rollouts(&mut self, rollouts: &[SavedRollout]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.db.transaction().map_err(sql)?;
        tx.execute("DELETE FROM rollouts", []).map_err(sql)?;
        for r in rollouts {
            let doc = serde_json::to_string(r).map_err(|e| StoreError::Content {
                path: path.clone(),
                what: format!("rollout {} of product {}: {e}", r.id, r.product),
            })?;
            tx.execute(
                "INSERT INTO rollouts (product_id, id, version, state, stage, reason, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    r.product,
                    r.id,
                    r.version,
                    r.state,
                    r.stage as i64,
                    r.reason,
                    doc
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// The rollouts [`Store::save_rollouts`] wrote, by product and id. A document that does
    /// not read is an error naming its row.
    pub fn load_rollouts(&self) -> Result<Vec<SavedRollout>, StoreError> {
        let sql = |e| self.sql(e);
        let mut stmt = self
            .db
            .prepare("SELECT product_id, id, doc FROM rollouts ORDER BY product_id, id")
            .map_err(sql)?;
        let rows: Vec<(u32, u32, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        rows.into_iter()
            .map(|(p, id, doc)| {
                serde_json::from_str(&doc).map_err(|e| {
                    self.content(format!("rollouts row (product {p}, id {id}): doc: {e}"))
                })
            })
            .collect()
    }

    /// Saves the forced-updates setting of a device in no product.
    pub fn save_forced(&mut self, device: DeviceId, forced: bool) -> Result<(), StoreError> {
        let r = if forced {
            self.db.execute(
                "INSERT INTO device_settings (device_id, firmware_updates_forced) VALUES (?1, 1)
                 ON CONFLICT (device_id) DO UPDATE SET firmware_updates_forced = 1",
                [device.to_hex()],
            )
        } else {
            self.db.execute(
                "DELETE FROM device_settings WHERE device_id = ?1",
                [device.to_hex()],
            )
        };
        r.map(|_| ()).map_err(|e| self.sql(e))
    }

    /// Saves a single-device flash; the row id names it for [`Store::finish_flash`].
    pub fn add_flash(
        &mut self,
        device: DeviceId,
        file: &[u8],
        requested_at: Duration,
    ) -> Result<i64, StoreError> {
        self.db
            .execute(
                "INSERT INTO flash_jobs (device_id, file, requested_at_ms) VALUES (?1, ?2, ?3)",
                params![device.to_hex(), file, ms(requested_at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.db.last_insert_rowid())
    }

    /// Forgets a flash that finished (succeeded or failed).
    pub fn finish_flash(&mut self, row: i64) -> Result<(), StoreError> {
        self.db
            .execute("DELETE FROM flash_jobs WHERE id = ?1", [row])
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Brings the `sessions` table in line with the cloud's sessions now: a new session, a
    /// counter past half its reserve or a new Hello is written (its counter
    /// [`SEQ_RESERVE`] ahead), a session that ended deleted; one transaction, and only when
    /// something changed. `written` is what was last written (from [`Store::load_sessions`]).
    pub fn sync_sessions(
        &mut self,
        now_unix_ms: i64,
        sessions: &[super::SavedSession],
        written: &mut SavedSessions,
    ) -> Result<usize, StoreError> {
        let mut upserts = Vec::new();
        for s in sessions {
            let random = s.dtls.state.client_random;
            let hello = s.hello.as_ref().map(|h| h.emit_payload().to_vec());
            let due = match written.get(&s.device_id) {
                Some((r, reserved, h)) => {
                    *r != random
                        || s.dtls.state.write_seq.saturating_add(SEQ_RESERVE / 2) > *reserved
                        || *h != hello
                }
                None => true,
            };
            if due {
                let reserved = s.dtls.state.write_seq.saturating_add(SEQ_RESERVE);
                upserts.push((s, reserved, hello));
            }
        }
        let live: BTreeSet<DeviceId> = sessions.iter().map(|s| s.device_id).collect();
        let gone: Vec<DeviceId> = written
            .keys()
            .filter(|d| !live.contains(d))
            .copied()
            .collect();
        if upserts.is_empty() && gone.is_empty() {
            return Ok(0);
        }
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.db.transaction().map_err(sql)?;
        for (s, reserved, hello) in &upserts {
            let mut state = s.dtls.state.clone();
            state.write_seq = *reserved;
            tx.execute(
                "INSERT INTO sessions (device_id, client_random, dtls, peer_cid, peer, device_key,
                     hello, saved_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (device_id) DO UPDATE SET client_random = ?2, dtls = ?3,
                     peer_cid = ?4, peer = ?5, device_key = ?6, hello = ?7, saved_at_ms = ?8",
                params![
                    s.device_id.to_hex(),
                    hex::encode(state.client_random),
                    state.to_bytes(),
                    s.dtls.peer_cid,
                    s.dtls.peer.to_string(),
                    s.dtls.device_key.to_encoded_point(true).as_bytes(),
                    hello,
                    now_unix_ms
                ],
            )
            .map_err(sql)?;
        }
        for d in &gone {
            tx.execute("DELETE FROM sessions WHERE device_id = ?1", [d.to_hex()])
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        for (s, reserved, hello) in upserts {
            written.insert(s.device_id, (s.dtls.state.client_random, reserved, hello));
        }
        for d in gone {
            written.remove(&d);
        }
        Ok(written.len())
    }

    /// The sessions saved by [`Store::sync_sessions`], their counters at the reserve (never
    /// used), and what was written. A row that does not parse is an error naming it.
    pub fn load_sessions(&self) -> Result<(Vec<super::SavedSession>, SavedSessions), StoreError> {
        let sql = |e| self.sql(e);
        let mut stmt = self
            .db
            .prepare(
                "SELECT device_id, dtls, peer_cid, peer, device_key, hello FROM sessions
                 ORDER BY device_id",
            )
            .map_err(sql)?;
        type Row = (
            String,
            Vec<u8>,
            Option<Vec<u8>>,
            String,
            Vec<u8>,
            Option<Vec<u8>>,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let mut sessions = Vec::new();
        let mut written = SavedSessions::new();
        for (id, dtls, peer_cid, peer, key, hello) in rows {
            let bad = |what: String| self.content(format!("sessions row {id}: {what}"));
            let device_id: DeviceId = id.parse().map_err(|e| bad(format!("device_id: {e}")))?;
            let state = protocol::dtls::SessionState::from_bytes(&dtls)
                .map_err(|e| bad(format!("dtls: {e}")))?;
            let peer = peer
                .parse()
                .map_err(|e| bad(format!("peer {peer:?}: {e}")))?;
            let device_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key)
                .map_err(|e| bad(format!("device_key: {e}")))?;
            let hello_parsed = match &hello {
                Some(h) => Some(
                    protocol::message::Hello::parse_payload(h)
                        .map_err(|e| bad(format!("hello: {e}")))?,
                ),
                None => None,
            };
            written.insert(device_id, (state.client_random, state.write_seq, hello));
            sessions.push(super::SavedSession {
                device_id,
                dtls: protocol::dtls::ExportedSession {
                    state,
                    peer_cid,
                    peer,
                    device_key,
                },
                hello: hello_parsed,
            });
        }
        Ok((sessions, written))
    }

    /// Reads everything back. Firmware goes through the upload checks again (a binary that
    /// no longer passes them is an error naming the row).
    pub fn load(&self) -> Result<Saved, StoreError> {
        let sql = |e| self.sql(e);
        let mut fleet = Fleet::new();
        let mut stmt = self
            .db
            .prepare("SELECT id, name, platform_id FROM products ORDER BY id")
            .map_err(sql)?;
        let products: Vec<(u32, String, u16)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (id, name, platform) in &products {
            fleet
                .create_product(*id, name, *platform)
                .map_err(|e| self.content(format!("products row {id}: {e}")))?;
        }
        let mut stmt = self
            .db
            .prepare("SELECT product_id, name FROM product_groups")
            .map_err(sql)?;
        let rows: Vec<(u32, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (product, name) in rows {
            fleet
                .add_groups(product, &BTreeSet::from([name.clone()]))
                .map_err(|e| {
                    self.content(format!("product_groups row ({product}, {name}): {e}"))
                })?;
        }
        let mut groups: BTreeMap<(u32, u16), BTreeSet<String>> = BTreeMap::new();
        let mut stmt = self
            .db
            .prepare("SELECT product_id, version, group_name FROM firmware_groups")
            .map_err(sql)?;
        let rows: Vec<(u32, u16, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (p, v, g) in rows {
            groups.entry((p, v)).or_default().insert(g);
        }
        let mut stmt = self
            .db
            .prepare(
                "SELECT product_id, version, title, description, uploaded_at_ms, product_default,
                        intelligent, released_at_ms, binary
                 FROM firmware ORDER BY product_id, version",
            )
            .map_err(sql)?;
        type Row = (
            u32,
            u16,
            String,
            String,
            i64,
            bool,
            bool,
            Option<i64>,
            Vec<u8>,
        );
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (p, v, title, description, uploaded, default, intelligent, released, binary) in rows {
            let at = |e: super::fleet::FleetError| {
                self.content(format!("firmware row (product {p}, version {v}): {e}"))
            };
            fleet
                .upload(p, v, &title, &description, binary, from_ms(uploaded))
                .map_err(at)?;
            let release = Release {
                product_default: default,
                groups: groups.remove(&(p, v)).unwrap_or_default(),
                intelligent,
            };
            fleet
                .restore_release(p, v, &release, released.map(from_ms))
                .map_err(at)?;
        }
        let mut device_groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stmt = self
            .db
            .prepare("SELECT device_id, group_name FROM device_groups")
            .map_err(sql)?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (d, g) in rows {
            device_groups.entry(d).or_default().insert(g);
        }
        let mut stmt = self
            .db
            .prepare(
                "SELECT device_id, product_id, development, desired_firmware_version,
                        firmware_updates_forced FROM product_devices ORDER BY device_id",
            )
            .map_err(sql)?;
        let rows: Vec<(String, u32, bool, Option<u16>, bool)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        for (text, product, development, locked, forced) in rows {
            let device: DeviceId = text
                .parse()
                .map_err(|e| self.content(format!("product_devices row: {e}")))?;
            let at = |e: super::fleet::FleetError| {
                self.content(format!("product_devices row {text}: {e}"))
            };
            fleet.add_device(product, device).map_err(at)?;
            let change = DeviceChange {
                development: Some(development),
                locked: Some(locked),
                groups: Some(device_groups.remove(&text).unwrap_or_default()),
                updates_forced: Some(forced),
            };
            fleet.change_device(product, device, &change).map_err(at)?;
        }
        let mut stmt = self
            .db
            .prepare("SELECT device_id FROM device_settings WHERE firmware_updates_forced = 1")
            .map_err(sql)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let forced = rows
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|e| self.content(format!("device_settings row: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut stmt = self
            .db
            .prepare("SELECT id, device_id, file FROM flash_jobs ORDER BY id")
            .map_err(sql)?;
        let rows: Vec<(i64, String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        let flashes = rows
            .into_iter()
            .map(|(row, d, file)| {
                let device = d
                    .parse()
                    .map_err(|e| self.content(format!("flash_jobs row {row}: {e}")))?;
                Ok(SavedFlash { row, device, file })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Saved {
            fleet,
            forced,
            flashes,
        })
    }
}

fn write_fleet(tx: &Transaction<'_>, fleet: &Fleet) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DELETE FROM products; DELETE FROM product_groups; DELETE FROM firmware_groups;
         DELETE FROM product_devices; DELETE FROM device_groups;",
    )?;
    let mut kept: BTreeSet<(u32, u16)> = BTreeSet::new();
    for p in fleet.products() {
        tx.execute(
            "INSERT INTO products (id, name, platform_id) VALUES (?1, ?2, ?3)",
            params![p.id, p.name, p.platform_id],
        )?;
        for g in &p.groups {
            tx.execute(
                "INSERT INTO product_groups (product_id, name) VALUES (?1, ?2)",
                params![p.id, g],
            )?;
        }
        for f in p.firmware.values() {
            kept.insert((p.id, f.version));
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM firmware WHERE product_id = ?1 AND version = ?2 AND sha256 = ?3",
                    params![p.id, f.version, hex::encode(f.sha256)],
                    |r| r.get(0),
                )
                .optional()?;
            let released = f.released_at.map(ms);
            if exists.is_some() {
                tx.execute(
                    "UPDATE firmware SET title = ?3, description = ?4, product_default = ?5,
                            intelligent = ?6, released_at_ms = ?7
                     WHERE product_id = ?1 AND version = ?2",
                    params![
                        p.id,
                        f.version,
                        f.title,
                        f.description,
                        f.product_default,
                        f.intelligent,
                        released
                    ],
                )?;
            } else {
                tx.execute(
                    "INSERT OR REPLACE INTO firmware (product_id, version, title, description,
                        size, sha256, uploaded_at_ms, product_default, intelligent,
                        released_at_ms, binary)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        p.id,
                        f.version,
                        f.title,
                        f.description,
                        f.file.len() as i64,
                        hex::encode(f.sha256),
                        ms(f.uploaded_at),
                        f.product_default,
                        f.intelligent,
                        released,
                        f.file.as_slice()
                    ],
                )?;
            }
            for g in &f.groups {
                tx.execute(
                    "INSERT INTO firmware_groups (product_id, version, group_name)
                     VALUES (?1, ?2, ?3)",
                    params![p.id, f.version, g],
                )?;
            }
        }
        for (id, d) in &p.devices {
            tx.execute(
                "INSERT INTO product_devices (device_id, product_id, development,
                    desired_firmware_version, firmware_updates_forced)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.to_hex(), p.id, d.development, d.locked, d.updates_forced],
            )?;
            for g in &d.groups {
                tx.execute(
                    "INSERT INTO device_groups (device_id, group_name) VALUES (?1, ?2)",
                    params![id.to_hex(), g],
                )?;
            }
        }
    }
    // Firmware deleted since the last save.
    let mut stmt = tx.prepare("SELECT product_id, version FROM firmware")?;
    let rows: Vec<(u32, u16)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    for (p, v) in rows {
        if !kept.contains(&(p, v)) {
            tx.execute(
                "DELETE FROM firmware WHERE product_id = ?1 AND version = ?2",
                params![p, v],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::module::{ModuleBuilder, ModuleFunction};

    fn app(version: u16) -> Vec<u8> {
        ModuleBuilder::new(ModuleFunction::UserPart, 13)
            .index(2)
            .version(6)
            .start_address(0xB4000)
            .product(13, version)
            .body(vec![version as u8; 64])
            .build()
            .unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hil-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn sample() -> Fleet {
        let mut f = Fleet::new();
        f.create_product(1000, "trackers", 13).unwrap();
        for v in 1..=3 {
            f.upload(
                1000,
                v,
                &format!("v{v}"),
                "",
                app(v),
                Duration::from_secs(v.into()),
            )
            .unwrap();
        }
        let d1 = DeviceId([1; 12]);
        let d2 = DeviceId([2; 12]);
        f.add_device(1000, d1).unwrap();
        f.add_device(1000, d2).unwrap();
        let release = Release {
            product_default: true,
            ..Release::default()
        };
        f.release(1000, 2, &release, Duration::from_secs(9))
            .unwrap();
        let beta = Release {
            groups: BTreeSet::from(["beta".to_string()]),
            intelligent: true,
            ..Release::default()
        };
        f.release(1000, 3, &beta, Duration::from_secs(10)).unwrap();
        let change = DeviceChange {
            locked: Some(Some(1)),
            groups: Some(BTreeSet::from(["beta".to_string(), "eu".to_string()])),
            updates_forced: Some(true),
            ..DeviceChange::default()
        };
        f.change_device(1000, d1, &change).unwrap();
        let dev = DeviceChange {
            development: Some(true),
            ..DeviceChange::default()
        };
        f.change_device(1000, d2, &dev).unwrap();
        f
    }

    #[test]
    fn the_fleet_reads_back_as_it_was_written() {
        let dir = temp_dir("roundtrip");
        let fleet = sample();
        {
            let mut store = Store::open(&dir).unwrap();
            store.save_fleet(&fleet).unwrap();
            store.save_forced(DeviceId([7; 12]), true).unwrap();
            let row = store
                .add_flash(DeviceId([7; 12]), &[1, 2, 3], Duration::ZERO)
                .unwrap();
            store
                .add_flash(DeviceId([8; 12]), &[4], Duration::ZERO)
                .unwrap();
            store.finish_flash(row).unwrap();
        }
        let saved = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(saved.fleet, fleet);
        assert_eq!(saved.forced, vec![DeviceId([7; 12])]);
        assert_eq!(saved.flashes.len(), 1);
        assert_eq!(saved.flashes[0].device, DeviceId([8; 12]));
        assert_eq!(saved.flashes[0].file, vec![4]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deleted_firmware_and_changed_settings_are_saved() {
        let dir = temp_dir("changes");
        let mut fleet = sample();
        let mut store = Store::open(&dir).unwrap();
        store.save_fleet(&fleet).unwrap();
        fleet.delete_firmware(1000, 1).unwrap_err(); // locked-to, but never released: allowed?
        let unlock = DeviceChange {
            locked: Some(None),
            ..DeviceChange::default()
        };
        fleet
            .change_device(1000, DeviceId([1; 12]), &unlock)
            .unwrap();
        fleet.delete_firmware(1000, 1).unwrap();
        store.save_fleet(&fleet).unwrap();
        let saved = store.load().unwrap();
        assert_eq!(saved.fleet, fleet);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rollouts_read_back_as_they_were_written() {
        use crate::cloud::rollout::{Control, Rollout, RolloutPlan};
        let dir = temp_dir("rollouts");
        let plan = RolloutPlan {
            version: 3,
            intelligent: true,
            stages: vec![50.0, 100.0],
            soak: Duration::from_secs(3600),
            success_threshold: 90.0,
            in_progress_timeout: Duration::from_secs(1800),
            abort: Vec::new(),
        };
        let devices = [DeviceId([1; 12]), DeviceId([2; 12]), DeviceId([3; 12])];
        let (mut first, _) = Rollout::start(Duration::from_secs(1), 1000, plan.clone(), devices);
        first
            .control(Duration::from_secs(9), Control::Abort, "stop")
            .unwrap();
        let (mut second, _) = Rollout::start(Duration::from_secs(10), 1000, plan, devices);
        second.id = 2;
        let unix = |t: Duration| t + Duration::from_secs(1_700_000_000);
        let saved = vec![first.to_saved(unix), second.to_saved(unix)];
        {
            let mut store = Store::open(&dir).unwrap();
            store.save_rollouts(&saved).unwrap();
        }
        let mut store = Store::open(&dir).unwrap();
        assert_eq!(store.load_rollouts().unwrap(), saved);
        // The table holds what was written last.
        store.save_rollouts(&saved[1..]).unwrap();
        assert_eq!(store.load_rollouts().unwrap(), saved[1..].to_vec());
        // A document that does not read names its row.
        store
            .db
            .execute("UPDATE rollouts SET doc = '{' WHERE id = 2", [])
            .unwrap();
        let e = store.load_rollouts().unwrap_err().to_string();
        assert!(e.contains("rollouts row (product 1000, id 2)"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
