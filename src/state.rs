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
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use rusqlite_migration::Migrations;
use serde::Serialize;

use crate::image::Image;
use crate::plan::{InFlight, Ledger, OwnedImage};

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
    #[error(
        "state database {path}: disk full: free space on the filesystem that holds it; \
         nothing is lost (the ledger is written before every create), the next run goes on"
    )]
    DiskFull { path: PathBuf },
    /// The SQLite error is part of the message, not a `source`: an operator reads it once.
    #[error("state database {path}: {message}")]
    Sql { path: PathBuf, message: String },
    #[error(
        "state database {path} has schema version {found} and this glance-sync reads version \
         {wanted}: {advice}"
    )]
    Schema {
        path: PathBuf,
        found: i64,
        wanted: i64,
        advice: &'static str,
    },
    #[error("state database {path}: schema migration failed: {message}")]
    Migration { path: PathBuf, message: String },
}

pub struct State {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The run lock (on the lock file and on the database file), held for the life of a
    /// writable `State` and released with it. A `State` that holds it knows every run marked
    /// `running` is one of its own.
    lock: Option<(File, File)>,
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
    /// Why the whole run failed, when it did.
    pub error: Option<String>,
}

/// When a job's runs last finished, and last succeeded.
#[derive(Debug, Clone)]
pub struct RunTimes {
    pub job: String,
    pub last_finished: Option<String>,
    pub last_success: Option<String>,
}

/// Another job's copy of a source image that this job was about to copy too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenBy {
    pub job: String,
    pub target_id: String,
    /// The run copying it, while it is in flight.
    pub run_id: Option<i64>,
}

/// Images on a target that carry our marker for a job's source cloud but are not in the ledger,
/// as the job's last run counted them.
#[derive(Debug, Clone, Serialize)]
pub struct UnadoptedCount {
    pub job: String,
    pub target: String,
    pub images: u64,
    pub seen_at: String,
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
    /// When this streak of failures began (attempts since then, retries included).
    pub failing_since: String,
}

/// An in-sync copy of ours whose id is not its source image's: made before `preserve_ids`, or
/// with a new id because the target refused the source's (`preserve_ids = "prefer"`).
#[derive(Debug, Clone, Serialize)]
pub struct CopyUnderOtherId {
    pub job: String,
    pub name: Option<String>,
    pub target: String,
    pub source_id: String,
    pub target_id: String,
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
    /// A run stopped by a signal before it did anything.
    pub fn interrupted() -> RunSummary {
        RunSummary {
            result: "interrupted",
            images_copied: 0,
            bytes_copied: 0,
            images_failed: 0,
            error: None,
        }
    }

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
        let busy = || StateError::Busy {
            path: path.to_path_buf(),
            lock: lock_path.clone(),
        };
        if !try_lock_exclusive(&lock)
            .map_err(|e| io(format!("cannot lock {}: {e}", lock_path.display())))?
        {
            return Err(busy());
        }
        let mut conn = Connection::open(path).map_err(|e| sql(path, e))?;
        // The database file itself is locked too: a lock file deleted by hand (`rm state.db*`
        // leftovers, a clean-up script) must not let a second run in while this one holds copies
        // in flight.
        let db_lock = File::open(path).map_err(|e| io(format!("cannot open: {e}")))?;
        if !try_lock_exclusive(&db_lock).map_err(|e| io(format!("cannot lock: {e}")))? {
            return Err(busy());
        }
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
        migrations.to_latest(&mut conn).map_err(|e| match e {
            rusqlite_migration::Error::RusqliteError { err, .. } => sql(path, err),
            e => StateError::Migration {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })?;
        // We hold the lock, so any run still marked running died without finishing, and none
        // of its copies is in flight any more.
        conn.execute_batch(&format!(
            "UPDATE owned_images SET in_flight_run = NULL WHERE in_flight_run IS NOT NULL;
             UPDATE runs SET result = 'interrupted', finished_at = '{}' WHERE result = 'running';",
            now()
        ))
        .map_err(|e| sql(path, e))?;
        Ok(State {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            lock: Some((lock, db_lock)),
        })
    }

    /// Opens an existing database for reading (`plan`, `status`), without the run lock and
    /// without writing anything. `None` when there is no database yet.
    ///
    /// Works for a user who may read the database but not write it or its directory (a
    /// monitoring account). SQLite then cannot create the `-wal`/`-shm` files a WAL database is
    /// read through; when they do not exist (the last writer closed cleanly, or a restore left
    /// only the database file) there is nothing beyond the database file to read, and it is read
    /// as immutable.
    pub fn open_read_only(path: &Path) -> Result<Option<State>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let open = |target: &str, extra: OpenFlags| -> rusqlite::Result<Connection> {
            let conn = Connection::open_with_flags(
                target,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | extra,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            // Reading the schema is the first thing that needs the WAL files.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(conn)
        };
        let conn = match open(&path.to_string_lossy(), OpenFlags::empty()) {
            Ok(conn) => conn,
            Err(e) if is_read_only_error(&e) && !wal_has_content(path) => {
                let uri = immutable_uri(path).map_err(|message| StateError::Io {
                    path: path.to_path_buf(),
                    message,
                })?;
                open(&uri, OpenFlags::SQLITE_OPEN_URI).map_err(|e| sql(path, e))?
            }
            Err(e) if is_read_only_error(&e) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    message: format!(
                        "cannot be read by this user: {e}; its write-ahead log has data that \
                         only a user who may write the directory can read (run as the \
                         service's user, or wait until the running glance-sync finishes)"
                    ),
                });
            }
            Err(e) => return Err(sql(path, e)),
        };
        // A reader never migrates: an older or newer schema is said plainly, not met with
        // "no such column".
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sql(path, e))?;
        let wanted = MIGRATIONS.dirs().count() as i64;
        if found != wanted {
            return Err(StateError::Schema {
                path: path.to_path_buf(),
                found,
                wanted,
                advice: if found < wanted {
                    "it was written by an older glance-sync; run `glance-sync run` (or restart \
                     the daemon) once with this version to upgrade it"
                } else {
                    "it was written by a newer glance-sync; use that version"
                },
            });
        }
        Ok(Some(State {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            lock: None,
        }))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StateError> {
        let conn = self.conn.lock().expect("state connection lock poisoned");
        f(&conn).map_err(|e| sql(&self.path, e))
    }

    /// Whether the runs marked `running` are still going: ours when we hold the run lock, else
    /// those of whoever holds it. With nobody holding it, they died (killed, or the host went
    /// down) and are abandoned.
    fn runs_are_live(&self) -> bool {
        self.lock.is_some() || lock_is_held(&self.path) || lock_is_held(&lock_path(&self.path))
    }

    /// Records the start of a run of `job`. Runs of one job never overlap (the daemon's per-job
    /// lock, the run lock between processes), so an earlier run of `job` still marked running
    /// ended without saying so (a panic, a failed write): it is closed, and its copies are no
    /// longer in flight.
    pub fn begin_run(&self, job: &str) -> Result<i64, StateError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "UPDATE owned_images SET in_flight_run = NULL WHERE in_flight_run IN
                    (SELECT id FROM runs WHERE job = ?1 AND result = 'running')",
                params![job],
            )?;
            c.execute(
                "UPDATE runs SET result = 'interrupted', finished_at = ?2
                 WHERE job = ?1 AND result = 'running'",
                params![job, t],
            )?;
            c.execute(
                "INSERT INTO runs (job, started_at) VALUES (?1, ?2)",
                params![job, t],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn finish_run(&self, run: i64, s: &RunSummary) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE owned_images SET in_flight_run = NULL WHERE in_flight_run = ?1",
                params![run],
            )?;
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

    /// Every image glance-sync created (and has not deleted) on any target, with the job it
    /// belongs to, the source image it copies, and whether a run is copying it right now.
    pub fn ledger(&self) -> Result<Ledger, StateError> {
        let live = self.runs_are_live();
        self.with(|c| {
            let mut ledger = Ledger::default();
            let mut owned = c.prepare(
                "SELECT o.target_cloud, o.target_id, o.job, o.source_cloud, o.source_id, r.id, r.job
                 FROM owned_images o
                 LEFT JOIN runs r ON r.id = o.in_flight_run AND r.result = 'running'
                 WHERE o.deleted_at IS NULL",
            )?;
            let rows = owned.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    owned_image(r, 2, live)?,
                ))
            })?;
            for row in rows {
                let (target, id, owned) = row?;
                ledger.record(&target, &id, owned);
            }
            ledger.mark = c.query_row(
                "SELECT COALESCE(MAX(rowid), 0) FROM owned_images",
                [],
                |r| r.get(0),
            )?;
            Ok(ledger)
        })
    }

    /// How far the ledger has been written (its newest row's number): see
    /// [`record_copy_started`](Self::record_copy_started).
    pub fn ledger_mark(&self) -> Result<i64, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(rowid), 0) FROM owned_images",
                [],
                |r| r.get(0),
            )
        })
    }

    /// The part of the ledger that planning a batch of images needs: on `target`, the rows of
    /// images `target_ids`, and of every copy (any job's, in flight or not) of `source_ids` of
    /// `source_cloud`. Two indexed queries, whatever the ledger's size.
    pub fn ledger_slice(
        &self,
        target: &str,
        target_ids: &[&str],
        source_cloud: &str,
        source_ids: &[&str],
    ) -> Result<Vec<(String, OwnedImage)>, StateError> {
        let live = self.runs_are_live();
        let ids = |ids: &[&str]| serde_json::to_string(ids).expect("strings serialise");
        self.with(|c| {
            let mut rows = Vec::new();
            let columns = "o.target_id, o.job, o.source_cloud, o.source_id, r.id, r.job
                 FROM owned_images o
                 LEFT JOIN runs r ON r.id = o.in_flight_run AND r.result = 'running'";
            let mut by_target = c.prepare_cached(&format!(
                "SELECT {columns} WHERE o.target_cloud = ?1 AND o.deleted_at IS NULL
                   AND o.target_id IN (SELECT value FROM json_each(?2))"
            ))?;
            let mut by_source = c.prepare_cached(&format!(
                "SELECT {columns} WHERE o.target_cloud = ?1 AND o.deleted_at IS NULL
                   AND o.source_cloud = ?2 AND o.source_id IN (SELECT value FROM json_each(?3))"
            ))?;
            let row = |r: &rusqlite::Row| Ok((r.get::<_, String>(0)?, owned_image(r, 1, live)?));
            if !target_ids.is_empty() {
                for r in by_target.query_map(params![target, ids(target_ids)], row)? {
                    rows.push(r?);
                }
            }
            if !source_ids.is_empty() {
                for r in by_source.query_map(params![target, source_cloud, ids(source_ids)], row)? {
                    rows.push(r?);
                }
            }
            Ok(rows)
        })
    }

    /// Records a copy about to be created, before the create call: if we crash after it, the next
    /// run knows the image is ours and can clean it up. Until [`copy_settled`](Self::copy_settled)
    /// or the end of `run`, the image is in flight.
    ///
    /// Refused, with who got there first, when another job started a copy of the same source image
    /// on the same target since this job read the ledger (`ledger_mark`), or is copying it now:
    /// two jobs planning at the same moment must not both upload it.
    #[allow(clippy::too_many_arguments)]
    pub fn record_copy_started(
        &self,
        job: &str,
        run: i64,
        ledger_mark: i64,
        source_cloud: &str,
        source: &Image,
        target: &str,
        target_id: &str,
    ) -> Result<Option<TakenBy>, StateError> {
        let t = now();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let taken = tx
                .query_row(
                    "SELECT o.job, o.target_id, r.id FROM owned_images o
                     LEFT JOIN runs r ON r.id = o.in_flight_run AND r.result = 'running'
                     WHERE o.target_cloud = ?1 AND o.source_cloud = ?2 AND o.source_id = ?3
                       AND o.deleted_at IS NULL AND o.job IS NOT ?4
                       AND (o.rowid > ?5 OR r.id IS NOT NULL)
                     LIMIT 1",
                    params![target, source_cloud, source.id, job, ledger_mark],
                    |r| {
                        Ok(TakenBy {
                            job: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                            target_id: r.get(1)?,
                            run_id: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            if taken.is_some() {
                return Ok(taken);
            }
            // The id may be in the ledger already: our unfinished copy uploaded into again, or an
            // id the target refused earlier (deleted since). Anyone else's live row stays.
            let recorded = tx.execute(
                "INSERT INTO owned_images (target_cloud, target_id, source_cloud, source_id, created_at,
                    job, in_flight_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (target_cloud, target_id) DO UPDATE SET
                    source_cloud = excluded.source_cloud, source_id = excluded.source_id,
                    job = excluded.job, in_flight_run = excluded.in_flight_run, deleted_at = NULL
                 WHERE owned_images.deleted_at IS NOT NULL
                    OR (owned_images.job IS excluded.job
                        AND owned_images.source_cloud = excluded.source_cloud
                        AND owned_images.source_id = excluded.source_id)",
                params![target, target_id, source_cloud, source.id, t, job, run],
            )?;
            if recorded == 0 {
                return tx
                    .query_row(
                        "SELECT job, target_id FROM owned_images
                         WHERE target_cloud = ?1 AND target_id = ?2",
                        params![target, target_id],
                        |r| {
                            Ok(Some(TakenBy {
                                job: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                                target_id: r.get(1)?,
                                run_id: None,
                            }))
                        },
                    );
            }
            tx.execute(
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
            )?;
            tx.commit()?;
            Ok(None)
        })
    }

    /// The copy into `target_id` ended, however it ended: the image is no longer in flight.
    pub fn copy_settled(&self, target: &str, target_id: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE owned_images SET in_flight_run = NULL WHERE target_cloud = ?1 AND target_id = ?2",
                params![target, target_id],
            )
            .map(drop)
        })
    }

    /// Our copy `target_id` now stands for `source` (its own source image is gone or no longer
    /// replicated, and `source` has the same name and data): the ledger follows, and the old
    /// source image's replica record goes.
    pub fn relink(
        &self,
        job: &str,
        source_cloud: &str,
        source: &Image,
        target: &str,
        target_id: &str,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE owned_images SET job = ?1, source_cloud = ?2, source_id = ?3
                 WHERE target_cloud = ?4 AND target_id = ?5",
                params![job, source_cloud, source.id, target, target_id],
            )?;
            c.execute(
                "DELETE FROM replicas WHERE target_cloud = ?1 AND target_id = ?2
                 AND NOT (source_cloud = ?3 AND source_id = ?4)",
                params![target, target_id, source_cloud, source.id],
            )
            .map(drop)
        })
    }

    /// Records an image that carries our marker as ours, for `job` (`glance-sync adopt`).
    pub fn adopt(
        &self,
        job: &str,
        source_cloud: &str,
        source_id: &str,
        target: &str,
        target_id: &str,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO owned_images (target_cloud, target_id, source_cloud, source_id,
                    created_at, job)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (target_cloud, target_id) DO UPDATE SET
                    source_cloud = excluded.source_cloud, source_id = excluded.source_id,
                    job = excluded.job, deleted_at = NULL, in_flight_run = NULL",
                params![target, target_id, source_cloud, source_id, now(), job],
            )
            .map(drop)
        })
    }

    /// The jobs the ledger holds live copies for, with their source cloud and how many: a job
    /// missing from the config (renamed or removed) leaves copies that no job maintains.
    pub fn ledger_jobs(&self) -> Result<Vec<(String, String, u64)>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT job, source_cloud, COUNT(*) FROM owned_images
                 WHERE deleted_at IS NULL AND job IS NOT NULL
                 GROUP BY job, source_cloud ORDER BY job, source_cloud",
            )?;
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }

    /// Gives job `to` the live copies the ledger records for job `from` from `source_cloud` (a
    /// renamed job); returns how many.
    pub fn reassign_job(
        &self,
        from: &str,
        to: &str,
        source_cloud: &str,
    ) -> Result<usize, StateError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let moved = tx.execute(
                "UPDATE owned_images SET job = ?2
                 WHERE job = ?1 AND source_cloud = ?3 AND deleted_at IS NULL",
                params![from, to, source_cloud],
            )?;
            tx.execute(
                "UPDATE replicas SET job = ?2 WHERE job = ?1 AND source_cloud = ?3",
                params![from, to, source_cloud],
            )?;
            tx.commit()?;
            Ok(moved)
        })
    }

    /// How many images on `target` carry our marker for `job`'s source but are not ours in the
    /// ledger, as this run counted them.
    pub fn record_unadopted(&self, job: &str, target: &str, images: u64) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO unadopted (job, target_cloud, images, seen_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job, target_cloud) DO UPDATE SET
                    images = excluded.images, seen_at = excluded.seen_at
                 WHERE unadopted.images != excluded.images",
                params![job, target, images, now()],
            )
            .map(drop)
        })
    }

    /// Targets where the last run of a job saw images with our marker missing from the ledger.
    pub fn unadopted(&self) -> Result<Vec<UnadoptedCount>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT job, target_cloud, images, seen_at FROM unadopted WHERE images > 0
                 ORDER BY job, target_cloud",
            )?;
            q.query_map([], |r| {
                Ok(UnadoptedCount {
                    job: r.get(0)?,
                    target: r.get(1)?,
                    images: r.get(2)?,
                    seen_at: r.get(3)?,
                })
            })?
            .collect()
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
        self.with(|c| upsert_outcome(c, job, source_cloud, source, target, outcome, &now()))
    }

    /// Records many outcomes that need no call to any cloud (in sync, skipped) in one
    /// transaction: one fsync instead of one per row, for the first run over a large cloud.
    pub fn record_outcomes<'a>(
        &self,
        job: &str,
        source_cloud: &str,
        outcomes: impl IntoIterator<Item = (&'a Image, &'a str, Outcome<'a>)>,
    ) -> Result<(), StateError> {
        let t = now();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for (source, target, outcome) in outcomes {
                upsert_outcome(&tx, job, source_cloud, source, target, outcome, &t)?;
            }
            tx.commit()
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

    /// The newest run of each job. A run marked `running` whose process is gone (nobody holds
    /// the run lock) shows as `abandoned`.
    pub fn last_runs(&self) -> Result<Vec<RunRecord>, StateError> {
        self.runs_where(
            "id IN (SELECT MAX(id) FROM runs GROUP BY job) ORDER BY job",
            params![],
        )
    }

    /// Per job, when its newest finished run and its newest successful run finished.
    pub fn run_times(&self) -> Result<Vec<RunTimes>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT j.job,
                    (SELECT finished_at FROM runs WHERE id = (SELECT MAX(id) FROM runs
                        WHERE job = j.job AND finished_at IS NOT NULL)),
                    (SELECT finished_at FROM runs WHERE id = (SELECT MAX(id) FROM runs
                        WHERE job = j.job AND result = 'success'))
                 FROM (SELECT DISTINCT job FROM runs) j ORDER BY j.job",
            )?;
            q.query_map([], |r| {
                Ok(RunTimes {
                    job: r.get(0)?,
                    last_finished: r.get(1)?,
                    last_success: r.get(2)?,
                })
            })?
            .collect()
        })
    }

    /// The newest `limit` runs of `job`, newest first.
    pub fn job_runs(&self, job: &str, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        self.runs_where("job = ?1 ORDER BY id DESC LIMIT ?2", params![job, limit])
    }

    fn runs_where(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<RunRecord>, StateError> {
        let live = self.runs_are_live();
        self.with(|c| {
            let mut q = c.prepare(&format!(
                "SELECT id, job, started_at, finished_at, result, images_copied, bytes_copied,
                        images_failed, error
                 FROM runs WHERE {condition}"
            ))?;
            q.query_map(args, |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    result: match r.get::<_, String>(4)? {
                        running if running == "running" && !live => "abandoned".into(),
                        result => result,
                    },
                    images_copied: r.get(5)?,
                    bytes_copied: r.get(6)?,
                    images_failed: r.get(7)?,
                    error: r.get(8)?,
                })
            })?
            .collect()
        })
    }

    pub fn failing_images(&self) -> Result<Vec<FailingImage>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT job, source_cloud, source_id, name, target_cloud, attempts, last_error,
                        updated_at, COALESCE(failing_since, updated_at)
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
                    failing_since: r.get(8)?,
                })
            })?
            .collect()
        })
    }

    /// Every in-sync copy of ours whose id differs from its source image's.
    pub fn copies_under_other_ids(&self) -> Result<Vec<CopyUnderOtherId>, StateError> {
        self.with(|c| {
            let mut q = c.prepare(
                "SELECT job, name, target_cloud, source_id, target_id FROM replicas
                 WHERE state = 'in_sync' AND foreign_image = 0 AND target_id IS NOT NULL
                   AND target_id != source_id
                 ORDER BY job, name, target_cloud",
            )?;
            q.query_map([], |r| {
                Ok(CopyUnderOtherId {
                    job: r.get(0)?,
                    name: r.get(1)?,
                    target: r.get(2)?,
                    source_id: r.get(3)?,
                    target_id: r.get(4)?,
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

fn sql(path: &Path, e: rusqlite::Error) -> StateError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return StateError::DiskFull {
            path: path.to_path_buf(),
        };
    }
    StateError::Sql {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Takes the exclusive run lock on `file`: `Ok(false)` when another run holds it. A reader
/// probing the lock (`plan`, `status`) holds a shared one for an instant: retried briefly, so
/// that polling `status` never fails a run that starts at the same moment.
fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    for attempt in 0..10 {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if attempt < 9 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Whether a run holds the run lock on `file` (the database, or the lock file beside it that
/// older versions use alone). Opened for reading only: a monitoring user may read but not write.
/// A file that cannot be opened is locked by nobody who could matter to this reader.
fn lock_is_held(file: &Path) -> bool {
    let Ok(file) = File::open(file) else {
        return false;
    };
    // A shared lock is refused while a run holds the exclusive one; ours is released on drop.
    matches!(
        file.try_lock_shared(),
        Err(std::fs::TryLockError::WouldBlock)
    )
}

/// SQLite refused to read because it would have had to write (the `-wal`/`-shm` files).
fn is_read_only_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    )
}

/// Whether the database's write-ahead log holds pages not yet in the database file.
fn wal_has_content(db: &Path) -> bool {
    let mut wal = db.as_os_str().to_os_string();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).is_ok_and(|m| m.len() > 0)
}

/// `file:` URI opening `db` as immutable: no locks, no `-shm`, nothing written.
fn immutable_uri(db: &Path) -> Result<String, String> {
    let absolute = std::path::absolute(db).map_err(|e| format!("cannot resolve the path: {e}"))?;
    let mut url = url::Url::from_file_path(&absolute)
        .map_err(|()| format!("cannot turn {} into a file: URI", absolute.display()))?;
    url.set_query(Some("immutable=1"));
    Ok(url.to_string())
}

/// A ledger row read from the columns `o.job, o.source_cloud, o.source_id, r.id, r.job` (of
/// `owned_images o LEFT JOIN runs r` on a running run) from `first` on. The copy is in flight
/// only while that run is (`live`: someone holds the run lock).
fn owned_image(r: &rusqlite::Row, first: usize, live: bool) -> rusqlite::Result<OwnedImage> {
    let in_flight = match (
        r.get::<_, Option<i64>>(first + 3)?,
        r.get::<_, Option<String>>(first + 4)?,
    ) {
        (Some(run_id), Some(job)) if live => Some(InFlight { job, run_id }),
        _ => None,
    };
    Ok(OwnedImage {
        job: r.get(first)?,
        source_cloud: r.get(first + 1)?,
        source_id: r.get(first + 2)?,
        in_flight,
    })
}

/// The row of a (source image, target) pair after this run's `outcome`.
fn upsert_outcome(
    c: &Connection,
    job: &str,
    source_cloud: &str,
    source: &Image,
    target: &str,
    outcome: Outcome,
    t: &str,
) -> rusqlite::Result<()> {
    let (state, target_id, foreign, bytes, error) = match outcome {
        Outcome::InSync {
            target_id,
            foreign,
            bytes,
        } => ("in_sync", Some(target_id), foreign, bytes, None),
        Outcome::Failed { target_id, error } => ("failed", target_id, false, 0, Some(error)),
        Outcome::Skipped { reason } => ("skipped", None, false, 0, Some(reason)),
    };
    c.prepare_cached(
        "INSERT INTO replicas (source_cloud, source_id, target_cloud, job, name, identity,
                    target_id, foreign_image, state, bytes, attempts, last_error, first_seen_at,
                    updated_at, synced_at, failing_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?12,
                    CASE WHEN ?9 = 'in_sync' THEN ?12 END, CASE WHEN ?9 = 'failed' THEN ?12 END)
                 ON CONFLICT (source_cloud, source_id, target_cloud) DO UPDATE SET
                    job = excluded.job, name = excluded.name, identity = excluded.identity,
                    target_id = COALESCE(excluded.target_id, replicas.target_id),
                    foreign_image = CASE WHEN excluded.target_id IS NULL THEN replicas.foreign_image
                                         ELSE excluded.foreign_image END,
                    state = excluded.state,
                    bytes = CASE WHEN excluded.bytes > 0 THEN excluded.bytes ELSE replicas.bytes END,
                    attempts = CASE WHEN excluded.state = 'failed' THEN replicas.attempts ELSE 0 END,
                    last_error = excluded.last_error, updated_at = excluded.updated_at,
                    synced_at = COALESCE(excluded.synced_at, replicas.synced_at),
                    failing_since = CASE WHEN excluded.state = 'failed'
                        THEN COALESCE(replicas.failing_since, excluded.updated_at) END
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
    )?
    .execute(params![
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
    ])
    .map(drop)
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
        let run = st.begin_run("j").unwrap();
        st.record_copy_started("j", run, 0, "prod", &src, "dr", "t1")
            .unwrap();
        assert_eq!(st.replica_state("s1", "dr"), Some(("pending".into(), 1)));
        assert_eq!(
            st.ledger().unwrap().owned("dr", "t1").unwrap().in_flight,
            Some(InFlight {
                job: "j".into(),
                run_id: run
            }),
            "in flight while its run goes on"
        );
        st.copy_settled("dr", "t1").unwrap();
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
        let l = st.ledger().unwrap();
        assert_eq!(
            l.owned("dr", "t1"),
            Some(&OwnedImage {
                job: Some("j".into()),
                source_cloud: "prod".into(),
                source_id: "s1".into(),
                in_flight: None,
            })
        );
        st.record_deleted("dr", "t1").unwrap();
        assert!(st.ledger().unwrap().owned("dr", "t1").is_none());
    }

    #[test]
    fn failures_count_attempts_until_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let src = image("s1", "ubuntu", "m1");
        let run = st.begin_run("j").unwrap();
        for id in ["a", "b"] {
            st.record_copy_started("j", run, 0, "prod", &src, "dr", id)
                .unwrap();
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
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(
            t(&failing[0].failing_since) < t(&failing[0].updated_at),
            "{failing:?}"
        );
    }

    #[test]
    fn failing_since_is_when_the_streak_began_and_a_success_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let src = image("s1", "ubuntu", "m1");
        let run = st.begin_run("j").unwrap();
        let fail = |id| {
            st.record_copy_started("j", run, 0, "prod", &src, "dr", id)
                .unwrap();
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
            st.failing_images().unwrap()[0].clone()
        };
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let first = fail("a");
        assert_eq!(first.failing_since, first.updated_at);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = fail("b");
        assert_eq!(
            again.failing_since, first.failing_since,
            "a retry keeps the start"
        );
        assert!(t(&again.updated_at) > t(&first.updated_at));
        st.record_outcome(
            "j",
            "prod",
            &src,
            "dr",
            Outcome::InSync {
                target_id: "b",
                foreign: false,
                bytes: 1,
            },
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let later = fail("c");
        assert!(
            t(&later.failing_since) > t(&again.updated_at),
            "a new streak: {later:?}"
        );
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
    fn a_copy_whose_run_died_is_no_longer_in_flight_and_its_run_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let st = State::open(&db).unwrap();
        let run = st.begin_run("big").unwrap();
        st.record_copy_started("big", run, 0, "prod", &image("s1", "x", "m"), "dr", "t1")
            .unwrap();
        let reader = State::open_read_only(&db).unwrap().unwrap();
        assert!(
            reader
                .ledger()
                .unwrap()
                .owned("dr", "t1")
                .unwrap()
                .in_flight
                .is_some(),
            "the writer holds the lock: its run is live"
        );
        assert_eq!(reader.last_runs().unwrap()[0].result, "running");
        // The process dies: its lock goes with it, its row stays 'running'.
        drop(st);
        assert!(
            reader
                .ledger()
                .unwrap()
                .owned("dr", "t1")
                .unwrap()
                .in_flight
                .is_none()
        );
        assert_eq!(reader.last_runs().unwrap()[0].result, "abandoned");
    }

    #[test]
    fn a_copy_another_job_started_since_the_ledger_was_read_is_not_started_twice() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let src = image("s1", "shared", "m");
        // Both jobs planned with the same ledger (empty), then `a` recorded its copy first.
        let mark = st.ledger().unwrap().mark;
        let run_a = st.begin_run("a").unwrap();
        let run_b = st.begin_run("b").unwrap();
        assert_eq!(
            st.record_copy_started("a", run_a, mark, "prod", &src, "dr", "ta")
                .unwrap(),
            None
        );
        assert_eq!(
            st.record_copy_started("b", run_b, mark, "prod", &src, "dr", "tb")
                .unwrap(),
            Some(TakenBy {
                job: "a".into(),
                target_id: "ta".into(),
                run_id: Some(run_a)
            })
        );
        assert!(
            st.ledger().unwrap().owned("dr", "tb").is_none(),
            "not recorded"
        );
        // Settled and older than the next plan's ledger: another job's copy, no conflict.
        st.copy_settled("dr", "ta").unwrap();
        let mark = st.ledger().unwrap().mark;
        assert_eq!(
            st.record_copy_started("b", run_b, mark, "prod", &src, "dr", "tb")
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_new_run_of_a_job_closes_its_earlier_run_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let first = st.begin_run("j").unwrap();
        st.record_copy_started("j", first, 0, "prod", &image("s1", "x", "m"), "dr", "t1")
            .unwrap();
        let other = st.begin_run("other").unwrap();
        st.begin_run("j").unwrap();
        assert_eq!(
            st.ledger().unwrap().owned("dr", "t1").unwrap().in_flight,
            None
        );
        let result_of = |id: i64| {
            st.with(|c| {
                c.query_row("SELECT result FROM runs WHERE id = ?1", [id], |r| {
                    r.get::<_, String>(0)
                })
            })
            .unwrap()
        };
        assert_eq!(result_of(first), "interrupted");
        assert_eq!(
            result_of(other),
            "running",
            "another job's run is left alone"
        );
    }

    #[test]
    fn a_reader_says_plainly_that_the_schema_is_older() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        {
            let mut conn = Connection::open(&db).unwrap();
            let migrations = Migrations::from_directory(&MIGRATIONS).unwrap();
            migrations.to_version(&mut conn, 1).unwrap();
        }
        let err = State::open_read_only(&db).err().expect("older schema");
        assert!(
            err.to_string().contains("schema version 1")
                && err.to_string().contains("run `glance-sync run`"),
            "{err}"
        );
    }

    #[test]
    fn relinking_moves_the_copy_to_the_new_source_image() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let old = image("old", "reup", "m");
        let new = image("new", "reup", "m");
        let run = st.begin_run("j").unwrap();
        st.record_copy_started("j", run, 0, "prod", &old, "dr", "t1")
            .unwrap();
        st.relink("j", "prod", &new, "dr", "t1").unwrap();
        assert_eq!(
            st.ledger().unwrap().owned("dr", "t1").unwrap().source_id,
            "new"
        );
        assert_eq!(
            st.replica_state("old", "dr"),
            None,
            "old source's record gone"
        );
    }

    #[test]
    fn version_1_copies_are_given_the_job_that_recorded_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        {
            let mut conn = Connection::open(&db).unwrap();
            let migrations = Migrations::from_directory(&MIGRATIONS).unwrap();
            migrations.to_version(&mut conn, 1).unwrap();
            conn.execute_batch(
                "INSERT INTO owned_images VALUES ('dr', 't1', 'prod', 's1', 'now', NULL);
                 INSERT INTO owned_images VALUES ('dr', 't2', 'prod', 's2', 'now', NULL);
                 INSERT INTO replicas (source_cloud, source_id, target_cloud, job, identity,
                    target_id, state, first_seen_at, updated_at)
                 VALUES ('prod', 's1', 'dr', 'golden', 'x', 't1', 'in_sync', 'now', 'now');",
            )
            .unwrap();
        }
        let st = State::open(&db).unwrap();
        let l = st.ledger().unwrap();
        assert_eq!(l.owned("dr", "t1").unwrap().job.as_deref(), Some("golden"));
        assert_eq!(
            l.owned("dr", "t2").unwrap().job,
            None,
            "unknown: any job of its source"
        );
    }

    #[test]
    fn a_full_disk_is_reported_as_such_with_the_path() {
        let e = sql(
            Path::new("/var/lib/glance-sync/state.db"),
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        );
        assert_eq!(
            e.to_string().split(';').next().unwrap(),
            "state database /var/lib/glance-sync/state.db: disk full: free space on the filesystem that holds it"
        );
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
