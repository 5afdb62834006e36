//! The state database (SQLite, WAL): runs, the ledger of images we created, and the replication
//! status of every (source image, target) pair.
//!
//! The schema lives in `migrations/` and is applied on open. A lock file beside the database keeps
//! two runs from working on the same state at once. Calls are short and synchronous; the async
//! engine calls them between network operations.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use include_dir::{Dir, include_dir};
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, params};
use rusqlite_migration::Migrations;
use serde::Serialize;

use crate::image::Image;
use crate::plan::Ledger;

static MIGRATIONS: Dir = include_dir!("$CARGO_MANIFEST_DIR/migrations");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state database {path} is in use by another glance-sync run (lock {lock} is held); \
         wait for it to finish, or check for a stuck process"
    )]
    Busy { path: PathBuf, lock: PathBuf },
    #[error("state database {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("state database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {path}: schema migration failed: {message}")]
    Migration { path: PathBuf, message: String },
}

pub struct State {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Held for the life of a writable `State`; dropped (and so released) with it.
    _lock: Option<File>,
}

/// How one (source image, target) pair ended in a run.
pub enum Outcome<'a> {
    InSync {
        target_id: &'a str,
        foreign: bool,
        bytes: u64,
    },
    Failed {
        target_id: Option<&'a str>,
        error: &'a str,
    },
    Skipped {
        reason: &'a str,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub result: String,
    pub images_copied: u64,
    pub bytes_copied: u64,
    pub images_failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailingImage {
    pub job: String,
    pub source_cloud: String,
    pub source_id: String,
    pub name: Option<String>,
    pub target: String,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub result: &'static str,
    pub images_copied: u64,
    pub bytes_copied: u64,
    pub images_failed: u64,
    pub error: Option<String>,
}

impl RunSummary {
    /// A run stopped by `error` before it could do anything.
    pub fn failure(error: &dyn std::fmt::Display) -> RunSummary {
        RunSummary {
            result: "failure",
            images_copied: 0,
            bytes_copied: 0,
            images_failed: 0,
            error: Some(error.to_string()),
        }
    }
}

fn now() -> String {
    Timestamp::now().to_string()
}

impl State {
    /// Opens (creating and migrating if needed) the database for a run, taking the run lock.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let io = |message: String| StateError::Io {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| io(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let lock_path = lock_path(path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(format!("cannot open lock {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Busy {
                    path: path.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }
        let mut conn = Connection::open(path).map_err(|e| sql(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sql(path, e))?;
        // FULL: the ledger row written before a create must survive a power cut, or the image
        // it names would be orphaned. Writes are few; the cost does not matter.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| sql(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sql(path, e))?;
        let migrations =
            Migrations::from_directory(&MIGRATIONS).map_err(|e| StateError::Migration {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        migrations
            .to_latest(&mut conn)
            .map_err(|e| StateError::Migration {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        // We hold the lock, so any run still marked running died without finishing.
        conn.execute(
            "UPDATE runs SET result = 'interrupted', finished_at = ?1 WHERE result = 'running'",
            params![now()],
        )
        .map_err(|e| sql(path, e))?;
        Ok(State {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: Some(lock),
        })
    }

    /// Opens an existing database for reading (`plan`, `status`), without the run lock.
    /// `None` when there is no database yet.
    pub fn open_read_only(path: &Path) -> Result<Option<State>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sql(path, e))?;
        Ok(Some(State {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: None,
        }))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StateError> {
        let conn = self.conn.lock().expect("state connection lock poisoned");
        f(&conn).map_err(|e| sql(&self.path, e))
    }

    pub fn begin_run(&self, job: &str) -> Result<i64, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (job, started_at) VALUES (?1, ?2)",
                params![job, now()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn finish_run(&self, run: i64, s: &RunSummary) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished_at = ?2, result = ?3, images_copied = ?4, bytes_copied = ?5,
                 images_failed = ?6, error = ?7 WHERE id = ?1",
                params![
                    run,
                    now(),
                    s.result,
                    s.images_copied,
                    s.bytes_copied,
                    s.images_failed,
                    s.error
                ],
            )
            .map(drop)
        })
    }

    /// What the planner needs to know about copies of `source_cloud`'s images.
    pub fn ledger(&self, source_cloud: &str) -> Result<Ledger, StateError> {
        self.with(|c| {
            let mut ledger = Ledger::default();
            let mut owned = c.prepare(
                "SELECT target_cloud, target_id FROM owned_images WHERE deleted_at IS NULL",
            )?;
            for row in
                owned.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            {
                let (t, id) = row?;
                ledger.record_owned(&t, &id);
            }
            // A mapping counts only while the image it names is in the ownership ledger.
            let mut copies = c.prepare(
                "SELECT r.target_cloud, r.source_id, r.target_id FROM replicas r
                 JOIN owned_images o ON o.target_cloud = r.target_cloud AND o.target_id = r.target_id
                 WHERE r.source_cloud = ?1 AND r.foreign_image = 0 AND o.deleted_at IS NULL",
            )?;
            for row in copies.query_map([source_cloud], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })? {
                let (t, s, id) = row?;
                ledger.record_copy(&t, &s, &id);
            }
            Ok(ledger)
        })
    }

    /// Records a copy about to be created, before the create call: if we crash after it, the next
    /// run knows the image is ours and can clean it up.
    pub fn record_copy_started(
        &self,
        job: &str,
        source_cloud: &str,
        source: &Image,
        target: &str,
        target_id: &str,
    ) -> Result<(), StateError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO owned_images (target_cloud, target_id, source_cloud, source_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![target, target_id, source_cloud, source.id, t],
            )?;
            c.execute(
                "INSERT INTO replicas (source_cloud, source_id, target_cloud, job, name, identity,
                    target_id, foreign_image, state, attempts, first_seen_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 'pending', 1, ?8, ?8)
                 ON CONFLICT (source_cloud, source_id, target_cloud) DO UPDATE SET
                    job = excluded.job, name = excluded.name, identity = excluded.identity,
                    target_id = excluded.target_id, foreign_image = 0, state = 'pending',
                    attempts = replicas.attempts + 1, updated_at = excluded.updated_at",
                params![
                    source_cloud,
                    source.id,
                    target,
                    job,
                    source.name,
                    source.identity(),
                    target_id,
                    t
                ],
            )
            .map(drop)
        })
    }

    /// Records how a (source image, target) pair ended in this run.
    pub fn record_outcome(
        &self,
        job: &str,
        source_cloud: &str,
        source: &Image,
        target: &str,
        outcome: Outcome,
    ) -> Result<(), StateError> {
        let t = now();
        let (state, target_id, foreign, bytes, error) = match outcome {
            Outcome::InSync {
                target_id,
                foreign,
                bytes,
            } => ("in_sync", Some(target_id), foreign, bytes, None),
            Outcome::Failed { target_id, error } => ("failed", target_id, false, 0, Some(error)),
            Outcome::Skipped { reason } => ("skipped", None, false, 0, Some(reason)),
        };
        self.with(|c| {
            c.execute(
                "INSERT INTO replicas (source_cloud, source_id, target_cloud, job, name, identity,
                    target_id, foreign_image, state, bytes, attempts, last_error, first_seen_at,
                    updated_at, synced_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?12,
                    CASE WHEN ?9 = 'in_sync' THEN ?12 END)
                 ON CONFLICT (source_cloud, source_id, target_cloud) DO UPDATE SET
                    job = excluded.job, name = excluded.name, identity = excluded.identity,
                    target_id = COALESCE(excluded.target_id, replicas.target_id),
                    foreign_image = CASE WHEN excluded.target_id IS NULL THEN replicas.foreign_image
                                         ELSE excluded.foreign_image END,
                    state = excluded.state,
                    bytes = CASE WHEN excluded.bytes > 0 THEN excluded.bytes ELSE replicas.bytes END,
                    attempts = CASE WHEN excluded.state = 'failed' THEN replicas.attempts ELSE 0 END,
                    last_error = excluded.last_error, updated_at = excluded.updated_at,
                    synced_at = COALESCE(excluded.synced_at, replicas.synced_at)
                 -- An unchanged outcome writes nothing: a no-op run over thousands of images in
                 -- sync must not cost one fsync per image (synchronous = FULL).
                 WHERE replicas.state IS NOT excluded.state
                    OR replicas.target_id IS NOT COALESCE(excluded.target_id, replicas.target_id)
                    OR replicas.foreign_image IS NOT excluded.foreign_image
                    OR replicas.last_error IS NOT excluded.last_error
                    OR replicas.name IS NOT excluded.name
                    OR replicas.identity IS NOT excluded.identity
                    OR replicas.job IS NOT excluded.job
                    OR replicas.attempts != 0 AND excluded.state != 'failed'
                    OR excluded.state = 'failed'",
                params![
                    source_cloud,
                    source.id,
                    target,
                    job,
                    source.name,
                    source.identity(),
                    target_id,
                    foreign,
                    state,
                    bytes,
                    error,
                    t
                ],
            )
            .map(drop)
        })
    }

    /// `target_id` no longer stands for any source image (its source is gone and it was pruned).
    pub fn forget_replica(&self, target: &str, target_id: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM replicas WHERE target_cloud = ?1 AND target_id = ?2",
                params![target, target_id],
            )
            .map(drop)
        })
    }

    /// Our image `target_id` no longer exists on `target`.
    pub fn record_deleted(&self, target: &str, target_id: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE owned_images SET deleted_at = ?3 WHERE target_cloud = ?1 AND target_id = ?2",
                params![target, target_id, now()],
            )
            .map(drop)
        })
    }

    /// The newest run of each job.
    pub fn last_runs(&self) -> Result<Vec<RunRecord>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT id, job, started_at, finished_at, result, images_copied, bytes_copied,
                        images_failed
                 FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY job) ORDER BY job",
            )?;
            q.query_map([], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    result: r.get(4)?,
                    images_copied: r.get(5)?,
                    bytes_copied: r.get(6)?,
                    images_failed: r.get(7)?,
                })
            })?
            .collect()
        })
    }

    pub fn failing_images(&self) -> Result<Vec<FailingImage>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT job, source_cloud, source_id, name, target_cloud, attempts, last_error,
                        updated_at
                 FROM replicas WHERE state = 'failed' ORDER BY job, name, target_cloud",
            )?;
            q.query_map([], |r| {
                Ok(FailingImage {
                    job: r.get(0)?,
                    source_cloud: r.get(1)?,
                    source_id: r.get(2)?,
                    name: r.get(3)?,
                    target: r.get(4)?,
                    attempts: r.get(5)?,
                    last_error: r.get(6)?,
                    updated_at: r.get(7)?,
                })
            })?
            .collect()
        })
    }

    /// Count of replicas per (target, state) for a job: what the status report and metrics show.
    pub fn replica_counts(&self, job: &str) -> Result<Vec<(String, String, u64)>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT target_cloud, state, COUNT(*) FROM replicas WHERE job = ?1
                 GROUP BY target_cloud, state ORDER BY target_cloud, state",
            )?;
            q.query_map([job], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    #[cfg(test)]
    fn replica_state(&self, source_id: &str, target: &str) -> Option<(String, u64)> {
        self.with(|c| {
            use rusqlite::OptionalExtension;
            c.query_row(
                "SELECT state, attempts FROM replicas WHERE source_id = ?1 AND target_cloud = ?2",
                params![source_id, target],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .unwrap()
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    db.with_file_name(name)
}

fn sql(path: &Path, source: rusqlite::Error) -> StateError {
    StateError::Sql {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::image;

    #[test]
    fn migrations_are_valid() {
        Migrations::from_directory(&MIGRATIONS)
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = State::open(&db).unwrap();
        let err = State::open(&db).err().expect("second open must fail");
        assert!(matches!(err, StateError::Busy { .. }), "{err}");
        drop(first);
        State::open(&db).expect("lock released with the first State");
    }

    #[test]
    fn ledger_knows_copies_and_forgets_deleted_images() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let src = image("s1", "ubuntu", "m1");
        st.record_copy_started("j", "prod", &src, "dr", "t1")
            .unwrap();
        assert_eq!(st.replica_state("s1", "dr"), Some(("pending".into(), 1)));
        st.record_outcome(
            "j",
            "prod",
            &src,
            "dr",
            Outcome::InSync {
                target_id: "t1",
                foreign: false,
                bytes: 1024,
            },
        )
        .unwrap();
        let l = st.ledger("prod").unwrap();
        assert_eq!(l.copy_of("dr", "s1"), Some("t1"));
        assert!(l.owns("dr", "t1"));
        st.record_deleted("dr", "t1").unwrap();
        assert!(!st.ledger("prod").unwrap().owns("dr", "t1"));
    }

    #[test]
    fn failures_count_attempts_until_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let src = image("s1", "ubuntu", "m1");
        for id in ["a", "b"] {
            st.record_copy_started("j", "prod", &src, "dr", id).unwrap();
            st.record_outcome(
                "j",
                "prod",
                &src,
                "dr",
                Outcome::Failed {
                    target_id: Some(id),
                    error: "boom",
                },
            )
            .unwrap();
        }
        assert_eq!(st.replica_state("s1", "dr"), Some(("failed".into(), 2)));
        let failing = st.failing_images().unwrap();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn an_unchanged_outcome_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let src = image("s1", "ubuntu", "m1");
        let in_sync = || Outcome::InSync {
            target_id: "t1",
            foreign: false,
            bytes: 1024,
        };
        st.record_outcome("j", "prod", &src, "dr", in_sync())
            .unwrap();
        let changes = || st.with(|c| Ok(c.total_changes())).unwrap();
        let before = changes();
        st.record_outcome("j", "prod", &src, "dr", in_sync())
            .unwrap();
        assert_eq!(changes(), before, "same outcome again: no row written");
        st.record_outcome(
            "j",
            "prod",
            &src,
            "dr",
            Outcome::Failed {
                target_id: Some("t1"),
                error: "boom",
            },
        )
        .unwrap();
        assert_eq!(changes(), before + 1);
        assert_eq!(st.replica_state("s1", "dr"), Some(("failed".into(), 0)));
    }

    #[test]
    fn a_run_left_running_is_marked_interrupted_on_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let run = {
            let st = State::open(&db).unwrap();
            st.begin_run("j").unwrap()
        };
        let st = State::open(&db).unwrap();
        let runs = st.last_runs().unwrap();
        assert_eq!(runs[0].id, run);
        assert_eq!(runs[0].result, "interrupted");
    }
}
