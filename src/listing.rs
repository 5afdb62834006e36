//! A run's listings of one job's clouds, spilled to a private temporary SQLite file and read back
//! a range of names at a time, with the images of other names that those depend on.
//!
//! Planning a cloud of a million images then holds one batch, not the cloud. The order is our
//! own (SQLite's binary collation, the same as Rust's `str` order), so nothing depends on how a
//! Glance database collates names or whether it sorts at all: Glance is listed exactly as before,
//! and sorting happens here.
//!
//! A batch is complete for planning: besides every image whose name lies in its range, on every
//! side, it holds the whole name group of every image the planner may look at for them (a
//! copy the ledger links to its source under another name, the source of a copy, an image
//! holding a source's id, a `kernel_id` / `ramdisk_id` reference, the source a marker names), and
//! again for those, until nothing new is needed. The planner plans only the names in range
//! ([`crate::plan::PlanInput::scope`]); the others are planned in their own batch.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::config::{Job, PreserveIds};
use crate::image::Image;
use crate::metadata::IMAGE_REFERENCE_KEYS;
use crate::plan::{Ledger, OwnedImage};

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error(
        "cannot keep the image listing in a temporary file: {0} (it goes to the directory named \
         by SQLITE_TMPDIR or TMPDIR, else /var/tmp or /tmp, which must be writable and have room \
         for about 1 KB per image listed)"
    )]
    Spill(#[from] rusqlite::Error),
    #[error("an image kept in the temporary listing cannot be read back: {0}")]
    Decode(#[from] serde_json::Error),
}

/// An image as kept in the listing file: [`Image`]'s fields with its other properties as a plain
/// map. `Image` reads them from Glance's flat JSON through `serde(flatten)`, which buffers every
/// key; this form reads back several times faster, and a listing is read back once per image.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    id: String,
    name: Option<String>,
    status: String,
    visibility: String,
    protected: bool,
    os_hidden: bool,
    disk_format: Option<String>,
    container_format: Option<String>,
    size: Option<u64>,
    checksum: Option<String>,
    os_hash_algo: Option<String>,
    os_hash_value: Option<String>,
    min_disk: u64,
    min_ram: u64,
    tags: Vec<String>,
    owner: Option<String>,
    created_at: Option<String>,
    extra: BTreeMap<String, serde_json::Value>,
}

impl From<Image> for Stored {
    fn from(i: Image) -> Stored {
        let Image {
            id,
            name,
            status,
            visibility,
            protected,
            os_hidden,
            disk_format,
            container_format,
            size,
            checksum,
            os_hash_algo,
            os_hash_value,
            min_disk,
            min_ram,
            tags,
            owner,
            created_at,
            extra,
        } = i;
        Stored {
            id,
            name,
            status,
            visibility,
            protected,
            os_hidden,
            disk_format,
            container_format,
            size,
            checksum,
            os_hash_algo,
            os_hash_value,
            min_disk,
            min_ram,
            tags,
            owner,
            created_at,
            extra,
        }
    }
}

impl From<Stored> for Image {
    fn from(s: Stored) -> Image {
        Image {
            id: s.id,
            name: s.name,
            status: s.status,
            visibility: s.visibility,
            protected: s.protected,
            os_hidden: s.os_hidden,
            disk_format: s.disk_format,
            container_format: s.container_format,
            size: s.size,
            checksum: s.checksum,
            os_hash_algo: s.os_hash_algo,
            os_hash_value: s.os_hash_value,
            min_disk: s.min_disk,
            min_ram: s.min_ram,
            tags: s.tags,
            owner: s.owner,
            created_at: s.created_at,
            extra: s.extra,
        }
    }
}

/// A range of image names: the nameless images, or the names after `after` (all names when
/// `None`) up to `upto` included (to the last when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRange {
    Nameless,
    Names {
        after: Option<String>,
        upto: Option<String>,
    },
}

impl NameRange {
    pub fn contains(&self, name: Option<&str>) -> bool {
        match (self, name) {
            (NameRange::Nameless, n) => n.is_none(),
            (NameRange::Names { .. }, None) => false,
            (NameRange::Names { after, upto }, Some(n)) => {
                after.as_deref().is_none_or(|a| n > a) && upto.as_deref().is_none_or(|u| n <= u)
            }
        }
    }
}

/// The images of one job's clouds. Side 0 is the source, side `i` the job's target `i - 1`.
pub struct Listing {
    conn: Mutex<Connection>,
    clouds: Vec<String>,
}

/// Everything planning one range of names needs.
#[derive(Debug, Default)]
pub struct Batch {
    pub source: Vec<Image>,
    pub targets: BTreeMap<String, Vec<Image>>,
    pub ledger: Ledger,
}

/// Reads the ledger's rows for a batch: `(target, target ids, source ids)` as in
/// [`crate::state::State::ledger_slice`].
pub type LedgerSlice<'a, E> =
    dyn FnMut(&str, &[&str], &[&str]) -> Result<Vec<(String, OwnedImage)>, E> + 'a;

impl Listing {
    /// An empty listing for a job reading `source` and writing `targets`.
    pub fn new(source: &str, targets: &[String]) -> Result<Listing, ListingError> {
        // An empty file name gives a private database on disk that SQLite deletes when the
        // connection closes, even if we crash: nothing to clean up, nothing for others to read.
        let conn = Connection::open("")?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA cache_size = -8192;
             CREATE TABLE images (
                 side INTEGER NOT NULL,
                 id   TEXT    NOT NULL,
                 name TEXT,
                 data BLOB    NOT NULL
             );",
        )?;
        let mut clouds = vec![source.to_string()];
        clouds.extend(targets.iter().cloned());
        Ok(Listing {
            conn: Mutex::new(conn),
            clouds,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ListingError>,
    ) -> Result<T, ListingError> {
        f(&self.conn.lock().expect("listing connection lock poisoned"))
    }

    /// Adds a page of images listed on `side`. An image seen before on that side (its
    /// `os_hidden` flipped between the two listing passes) keeps its first listing.
    pub fn add(&self, side: usize, images: Vec<Image>) -> Result<(), ListingError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO images (side, id, name, data) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for image in images {
                    let (id, name) = (image.id.clone(), image.name.clone());
                    let data = serde_json::to_vec(&Stored::from(image))?;
                    insert.execute(params![side as i64, id, name, data])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// How many images were listed, on all sides.
    pub fn images_listed(&self) -> Result<u64, ListingError> {
        self.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?))
    }

    /// Ends the listing: indexes it for reading back, and keeps the first listing of an image
    /// listed twice on one side (its `os_hidden` flipped between the two listing passes).
    pub fn finish(&self) -> Result<(), ListingError> {
        self.with(|c| {
            // Indexed once, at the end: a sort, much cheaper than keeping an index of random
            // ids up to date through every insert.
            c.execute_batch(
                "CREATE INDEX images_by_id ON images (side, id);
                 CREATE INDEX images_by_name ON images (name);",
            )?;
            // One pass over the id index in order: a duplicate sits next to its first listing.
            let mut later = Vec::new();
            {
                let mut q =
                    c.prepare("SELECT side, id, rowid FROM images ORDER BY side, id, rowid")?;
                let mut rows = q.query([])?;
                let mut previous: Option<(i64, String)> = None;
                while let Some(r) = rows.next()? {
                    let key = (r.get::<_, i64>(0)?, r.get::<_, String>(1)?);
                    if previous.as_ref() == Some(&key) {
                        later.push(r.get::<_, i64>(2)?);
                    }
                    previous = Some(key);
                }
            }
            let mut delete = c.prepare("DELETE FROM images WHERE rowid = ?1")?;
            for rowid in later {
                delete.execute(params![rowid])?;
            }
            Ok(())
        })
    }

    /// The ranges of names to plan, in order, each holding about `rows` images (more when one
    /// name has more): the nameless images first, then the named ones.
    pub fn ranges(&self, rows: usize) -> Result<Vec<NameRange>, ListingError> {
        self.with(|c| {
            let mut ranges = Vec::new();
            let nameless: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM images WHERE name IS NULL)",
                [],
                |r| r.get(0),
            )?;
            if nameless {
                ranges.push(NameRange::Nameless);
            }
            // The `n`-th name after `after` (counting from 0), if there are that many. Bounds are
            // spelled out, never `?1 IS NULL OR name > ?1`: SQLite could not use the index then.
            let nth_after = |after: Option<&str>, n: i64| -> rusqlite::Result<Option<String>> {
                match after {
                    None => c
                        .prepare_cached(
                            "SELECT name FROM images WHERE name IS NOT NULL
                             ORDER BY name LIMIT 1 OFFSET ?1",
                        )?
                        .query_row(params![n], |r| r.get(0))
                        .optional(),
                    Some(a) => c
                        .prepare_cached(
                            "SELECT name FROM images WHERE name > ?1
                             ORDER BY name LIMIT 1 OFFSET ?2",
                        )?
                        .query_row(params![a, n], |r| r.get(0))
                        .optional(),
                }
            };
            let mut after: Option<String> = None;
            while nth_after(after.as_deref(), 0)?.is_some() {
                let upto = nth_after(after.as_deref(), rows.max(1) as i64 - 1)?;
                ranges.push(NameRange::Names {
                    after: after.clone(),
                    upto: upto.clone(),
                });
                match upto {
                    Some(u) => after = Some(u),
                    None => break,
                }
            }
            Ok(ranges)
        })
    }

    fn images(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<(usize, Image)>, ListingError> {
        self.with(|c| {
            let mut q = c.prepare_cached(sql)?;
            let rows = q.query_map(params, |r| {
                Ok((r.get::<_, i64>(0)? as usize, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut images = Vec::new();
            for row in rows {
                let (side, data) = row?;
                images.push((side, serde_json::from_slice::<Stored>(&data)?.into()));
            }
            Ok(images)
        })
    }

    /// The images whose name lies in `range`, on every side: the first part of its
    /// [`batch`](Self::batch), which may be read ahead on another thread.
    pub fn in_range(&self, range: &NameRange) -> Result<Vec<(usize, Image)>, ListingError> {
        match range {
            NameRange::Nameless => self.named(None),
            // Each bound spelled out, so that SQLite reads the range from the index.
            NameRange::Names { after, upto } => match (after, upto) {
                (None, None) => {
                    self.images("SELECT side, data FROM images WHERE name IS NOT NULL", [])
                }
                (Some(a), None) => {
                    self.images("SELECT side, data FROM images WHERE name > ?1", params![a])
                }
                (None, Some(u)) => {
                    self.images("SELECT side, data FROM images WHERE name <= ?1", params![u])
                }
                (Some(a), Some(u)) => self.images(
                    "SELECT side, data FROM images WHERE name > ?1 AND name <= ?2",
                    params![a, u],
                ),
            },
        }
    }

    fn named(&self, name: Option<&str>) -> Result<Vec<(usize, Image)>, ListingError> {
        self.images(
            "SELECT side, data FROM images WHERE name IS ?1",
            params![name],
        )
    }

    /// The name of image `id` on `side`, if it was listed there.
    fn name_of(&self, side: usize, id: &str) -> Result<Option<Option<String>>, ListingError> {
        self.with(|c| {
            Ok(
                c.prepare_cached("SELECT name FROM images WHERE side = ?1 AND id = ?2")?
                    .query_row(params![side as i64, id], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// The images of `range` (`in_range`, as [`in_range`](Self::in_range) read them) and
    /// those they depend on (see the module's documentation), with the ledger's rows for all of
    /// them, read through `ledger_slice`.
    pub fn batch<E: From<ListingError>>(
        &self,
        range: &NameRange,
        in_range: Vec<(usize, Image)>,
        job: &Job,
        ledger_slice: &mut LedgerSlice<'_, E>,
    ) -> Result<Batch, E> {
        let mut batch = Batch::default();
        for t in &job.targets {
            batch.targets.insert(t.clone(), Vec::new());
        }
        let mut loaded: HashSet<(usize, String)> = HashSet::new();
        let mut groups: HashSet<Option<String>> = HashSet::new();
        let mut fresh = in_range;
        while !fresh.is_empty() {
            for (side, image) in &fresh {
                loaded.insert((*side, image.id.clone()));
            }
            let related = self.related(&fresh, job, &mut batch.ledger, ledger_slice)?;
            for (side, image) in fresh.drain(..) {
                match side {
                    0 => batch.source.push(image),
                    s => {
                        let cloud = &self.clouds[s];
                        if let Some(images) = batch.targets.get_mut(cloud) {
                            images.push(image);
                        }
                    }
                }
            }
            for (side, id) in related {
                if loaded.contains(&(side, id.clone())) {
                    continue;
                }
                let Some(name) = self.name_of(side, &id)? else {
                    continue; // not listed (deleted, or never there)
                };
                if range.contains(name.as_deref()) || !groups.insert(name.clone()) {
                    continue;
                }
                for (side, image) in self.named(name.as_deref())? {
                    if !loaded.contains(&(side, image.id.clone())) {
                        loaded.insert((side, image.id.clone()));
                        fresh.push((side, image));
                    }
                }
            }
        }
        Ok(batch)
    }

    /// Reads the ledger's rows for `images` into `ledger`, and returns the images (side, id) the
    /// planner may look at for them.
    fn related<E: From<ListingError>>(
        &self,
        images: &[(usize, Image)],
        job: &Job,
        ledger: &mut Ledger,
        ledger_slice: &mut LedgerSlice<'_, E>,
    ) -> Result<Vec<(usize, String)>, E> {
        let mut related = Vec::new();
        let sources: Vec<&Image> = images
            .iter()
            .filter(|(s, _)| *s == 0)
            .map(|(_, i)| i)
            .collect();
        let source_ids: Vec<&str> = sources.iter().map(|i| i.id.as_str()).collect();
        for s in &sources {
            for key in IMAGE_REFERENCE_KEYS {
                if let Some(id) = s.extra.get(*key).and_then(|v| v.as_str()) {
                    related.push((0, id.to_string()));
                }
            }
        }
        for (side, target) in self.clouds.iter().enumerate().skip(1) {
            if !job.targets.contains(target) {
                continue;
            }
            let on_target: Vec<&Image> = images
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, i)| i)
                .collect();
            let target_ids: Vec<&str> = on_target.iter().map(|i| i.id.as_str()).collect();
            for (target_id, owned) in ledger_slice(target, &target_ids, &source_ids)? {
                if owned.source_cloud == job.source {
                    related.push((0, owned.source_id.clone()));
                }
                related.push((side, target_id.clone()));
                ledger.record(target, &target_id, owned);
            }
            // The image holding a source's id, when copies are to keep it.
            if job.policy(target).preserve_ids != PreserveIds::Off {
                related.extend(source_ids.iter().map(|id| (side, id.to_string())));
            }
            // The source image a marker names, for images missing from the ledger.
            for i in on_target {
                if ledger.owned(target, &i.id).is_none()
                    && let Some((cloud, source_id)) = i.marker()
                    && cloud == job.source
                {
                    related.push((0, source_id.to_string()));
                }
            }
        }
        Ok(related)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::image;

    fn names(images: &[Image]) -> Vec<String> {
        let mut n: Vec<String> = images
            .iter()
            .map(|i| i.name.clone().unwrap_or_default())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn ranges_cover_every_name_once_in_byte_order() {
        let l = Listing::new("src", &["a".to_string()]).unwrap();
        let mut imgs = Vec::new();
        for (i, n) in ["b", "B", "a", "ä", "a ", "", "z", "b"].iter().enumerate() {
            imgs.push(image(&format!("s{i}"), n, "m"));
        }
        let mut nameless = image("s-none", "x", "m");
        nameless.name = None;
        imgs.push(nameless);
        l.add(0, imgs).unwrap();
        l.finish().unwrap();
        let ranges = l.ranges(2).unwrap();
        assert_eq!(ranges[0], NameRange::Nameless);
        let mut seen = Vec::new();
        for r in &ranges {
            for (_, i) in l.in_range(r).unwrap() {
                seen.push(i.name.clone());
                assert!(r.contains(i.name.as_deref()));
                assert_eq!(
                    ranges
                        .iter()
                        .filter(|o| o.contains(i.name.as_deref()))
                        .count(),
                    1,
                    "{:?} is in exactly one range",
                    i.name
                );
            }
        }
        assert_eq!(seen.len(), 9);
        // Both images named "b" land in one range, whatever the batch size.
        let with_b: Vec<&NameRange> = ranges.iter().filter(|r| r.contains(Some("b"))).collect();
        assert_eq!(with_b.len(), 1);
    }

    #[test]
    fn an_image_listed_twice_on_one_side_keeps_its_first_listing() {
        let l = Listing::new("src", &[]).unwrap();
        let first = image("s1", "ubuntu", "m1");
        let mut again = first.clone();
        again.os_hidden = true;
        l.add(0, vec![first]).unwrap();
        l.add(0, vec![again]).unwrap();
        l.finish().unwrap();
        let all = l.in_range(&l.ranges(10).unwrap()[0]).unwrap();
        assert_eq!(all.len(), 1);
        assert!(!all[0].1.os_hidden);
    }

    #[test]
    fn a_batch_brings_the_copies_and_sources_of_other_names_it_depends_on() {
        let targets = vec!["a".to_string()];
        let l = Listing::new("src", &targets).unwrap();

        let renamed = image("s1", "new-name", "m1");
        let unrelated = image("s2", "zzz", "m2");
        let mut copy = image("t1", "old-name", "m1");
        copy.extra
            .insert("glance_sync_source_id".into(), "s1".into());
        let kernel = image("k1", "kernel", "mk");
        let mut ami = image("s3", "ami", "m3");
        ami.extra.insert("kernel_id".into(), "k1".into());
        l.add(0, vec![renamed, unrelated, kernel, ami]).unwrap();
        l.add(1, vec![copy]).unwrap();
        l.finish().unwrap();
        let job = Job {
            name: "j".into(),
            source: "src".into(),
            targets,
            filter: crate::config::Filter::everything(),
            schedule: None,
            run_on_start: true,
            max_bandwidth: crate::bandwidth::Limit::NONE,
            prune: Default::default(),
            policies: Default::default(),
        };
        let mut slice = |_: &str, targets: &[&str], sources: &[&str]| {
            Ok::<_, ListingError>(if sources.contains(&"s1") || targets.contains(&"t1") {
                vec![(
                    "t1".to_string(),
                    OwnedImage {
                        job: Some("j".into()),
                        source_cloud: "src".into(),
                        source_id: "s1".into(),
                        in_flight: None,
                    },
                )]
            } else {
                vec![]
            })
        };
        let only = |name: &str| NameRange::Names {
            after: Some(format!("{}\u{0}", &name[..name.len() - 1])),
            upto: Some(name.to_string()),
        };
        // The source "new-name" brings its copy "old-name" (the ledger links them).
        let b = l
            .batch(
                &only("new-name"),
                l.in_range(&only("new-name")).unwrap(),
                &job,
                &mut slice,
            )
            .unwrap();
        assert_eq!(names(&b.source), vec!["new-name"]);
        assert_eq!(names(&b.targets["a"]), vec!["old-name"]);
        assert!(b.ledger.owned("a", "t1").is_some());
        // The copy "old-name" brings its source "new-name".
        let b = l
            .batch(
                &only("old-name"),
                l.in_range(&only("old-name")).unwrap(),
                &job,
                &mut slice,
            )
            .unwrap();
        assert_eq!(names(&b.source), vec!["new-name"]);
        // An image referring to a kernel brings the kernel.
        let b = l
            .batch(
                &only("ami"),
                l.in_range(&only("ami")).unwrap(),
                &job,
                &mut slice,
            )
            .unwrap();
        assert_eq!(names(&b.source), vec!["ami", "kernel"]);
        // Nothing else comes along.
        let b = l
            .batch(
                &only("zzz"),
                l.in_range(&only("zzz")).unwrap(),
                &job,
                &mut slice,
            )
            .unwrap();
        assert_eq!(names(&b.source), vec!["zzz"]);
        assert!(b.targets["a"].is_empty());
    }

    /// Plans `source` and `targets` whole, then range by range through a listing (as the engine
    /// does), and returns both: every action as text, the create bodies of copies, unadopted ids.
    fn whole_and_by_ranges(
        job: &Job,
        source: &[Image],
        targets: &[(&str, Vec<Image>)],
        ledger_rows: &[(&str, &str, &str, Option<&str>)],
        rows: usize,
    ) -> (Vec<String>, Vec<String>) {
        use crate::plan::{InFlight, Members, PlanInput, every_name, plan, refuse_prunes_over_max};
        // A row of this job's, or of another job's copy in flight.
        let owned = |source_id: &str, in_flight: Option<&str>| OwnedImage {
            job: Some(in_flight.unwrap_or(&job.name).to_string()),
            source_cloud: job.source.clone(),
            source_id: source_id.into(),
            in_flight: in_flight.map(|j| InFlight {
                job: j.to_string(),
                run_id: 7,
            }),
        };
        let mut ledger = Ledger::default();
        for (t, id, sid, f) in ledger_rows {
            ledger.record(t, id, owned(sid, *f));
        }
        let target_images: BTreeMap<String, Vec<Image>> = targets
            .iter()
            .map(|(t, i)| (t.to_string(), i.clone()))
            .collect();
        let projects = BTreeMap::new();
        let members = Members::default();
        let mut new_id = |t: &str, s: &str| format!("new-{t}-{s}");
        let describe = |p: &crate::plan::Plan| {
            let mut out: Vec<String> = p
                .actions
                .iter()
                .map(|a| {
                    let body = match &a.kind {
                        crate::plan::ActionKind::Copy { create_body, .. } => {
                            serde_json::to_string(create_body).unwrap()
                        }
                        _ => String::new(),
                    };
                    format!("{}@{}: {} {body}", a.source_id, a.target, a.describe())
                })
                .collect();
            out.extend(
                p.unadopted
                    .iter()
                    .map(|u| format!("unadopted {} {}", u.target_id, u.verdict)),
            );
            out.extend(
                p.left_out
                    .iter()
                    .map(|l| format!("left out {}", l.source_id)),
            );
            out.push(format!("not selected {}", p.not_selected));
            out.sort();
            out
        };
        let whole = plan(
            &PlanInput {
                job,
                source_images: source,
                target_images: &target_images,
                ledger: &ledger,
                projects: &projects,
                members: &members,
                scope: &every_name,
            },
            &mut new_id,
        );

        let listing = Listing::new(&job.source, &job.targets).unwrap();
        listing.add(0, source.to_vec()).unwrap();
        for (i, t) in job.targets.iter().enumerate() {
            listing.add(i + 1, target_images[t].clone()).unwrap();
        }
        listing.finish().unwrap();
        let mut slice = |t: &str, target_ids: &[&str], source_ids: &[&str]| {
            Ok::<_, ListingError>(
                ledger_rows
                    .iter()
                    .filter(|(lt, id, sid, _)| {
                        *lt == t && (target_ids.contains(id) || source_ids.contains(sid))
                    })
                    .map(|(_, id, sid, f)| (id.to_string(), owned(sid, *f)))
                    .collect(),
            )
        };
        let mut merged = crate::plan::Plan {
            job: job.name.clone(),
            source: job.source.clone(),
            targets: job.targets.clone(),
            actions: vec![],
            not_selected: 0,
            left_out: vec![],
            copies_left_out: vec![],
            unadopted: vec![],
        };
        for range in listing.ranges(rows).unwrap() {
            let first = listing.in_range(&range).unwrap();
            let b = listing.batch(&range, first, job, &mut slice).unwrap();
            let part = plan(
                &PlanInput {
                    job,
                    source_images: &b.source,
                    target_images: &b.targets,
                    ledger: &b.ledger,
                    projects: &projects,
                    members: &members,
                    scope: &|n| range.contains(n),
                },
                &mut new_id,
            );
            merged.actions.extend(part.actions);
            merged.unadopted.extend(part.unadopted);
            merged.left_out.extend(part.left_out);
            merged.not_selected += part.not_selected;
        }
        refuse_prunes_over_max(job, &mut merged.actions);
        (describe(&whole), describe(&merged))
    }

    fn two_target_job(max_deletes: usize) -> Job {
        let mut job = Job {
            name: "j".into(),
            source: "src".into(),
            targets: vec!["a".into(), "b".into()],
            filter: crate::config::Filter::everything(),
            schedule: None,
            run_on_start: true,
            max_bandwidth: crate::bandwidth::Limit::NONE,
            prune: Default::default(),
            policies: Default::default(),
        };
        job.prune = crate::config::PrunePolicy {
            mode: crate::config::PruneMode::Delete,
            protected: false,
            max_deletes,
        };
        job
    }

    fn marked(mut i: Image, source_id: &str) -> Image {
        i.extra
            .insert("glance_sync_source_cloud".into(), "src".into());
        i.extra
            .insert("glance_sync_source_id".into(), source_id.into());
        i
    }

    #[test]
    fn planning_range_by_range_gives_the_whole_plan() {
        let s1 = image("s1", "ubuntu", "m1");
        let s2 = image("s2", "renamed-new", "m2");
        let s3 = image("s3", "dup", "m3");
        let mut s4 = image("s4", "dup", "m3");
        s4.created_at = Some("2026-02-01T00:00:00Z".into());
        let s5 = image("s5", "orphan-name", "m5");
        let k1 = image("k1", "kernel", "mk");
        let mut s7 = image("s7", "ami", "m7");
        s7.extra.insert("kernel_id".into(), "k1".into());
        let s8 = image("s8", "foreign-img", "m8");
        let s9 = image("s9", "ubuntu-9", "m9");
        let s10 = image("s10", "bad", "m10");
        let mut s11 = image("s11", "zz-not-selected", "m11");
        s11.status = "deactivated".into();
        let mut nameless = image("s12", "x", "m12");
        nameless.name = None;
        let s13 = image("s13", "in-flight-source", "m13");
        let s14 = image("s14", "wants-its-id", "m14");
        let source = vec![
            s1.clone(),
            s2.clone(),
            s3,
            s4,
            s5,
            k1,
            s7,
            s8,
            s9.clone(),
            s10.clone(),
            s11,
            nameless,
            s13,
            s14,
        ];
        let a = vec![
            marked(image("t1", "ubuntu", "m1"), "s1"),
            marked(image("t2", "renamed-old", "m2"), "s2"),
            marked(image("t5", "orphan-name", "m5"), "gone"),
            marked(image("t6", "pruned", "m6"), "gone2"),
            marked(image("u9", "ubuntu-9-renamed", "m9"), "s9"),
            marked(image("t13", "another-jobs-copy", "m13"), "s13"),
        ];
        let mut foreign = image("f8", "foreign-img", "m8");
        foreign.owner = Some("someone".into());
        let mut holder = image("s14", "holds-the-id", "other");
        holder.owner = Some("someone".into());
        let b = vec![
            foreign,
            holder,
            marked(image("t10", "bad", "other-data"), "s10"),
            marked(image("t12", "pruned-too", "m12"), "gone3"),
        ];
        let ledger = [
            ("a", "t1", "s1", None),
            ("a", "t2", "s2", None),
            ("a", "t5", "gone", None),
            ("a", "t6", "gone2", None),
            ("b", "t10", "s10", None),
            ("b", "t12", "gone3", None),
            ("a", "t13", "s13", Some("other-job")),
        ];
        for max_deletes in [1, 10] {
            let mut job = two_target_job(max_deletes);
            job.policies.insert(
                "b".into(),
                crate::config::TargetPolicy {
                    preserve_ids: crate::config::PreserveIds::Prefer,
                    ..Default::default()
                },
            );
            let targets = [("a", a.clone()), ("b", b.clone())];
            for rows in [1, 2, 3, 5, 1000] {
                let (whole, ranged) = whole_and_by_ranges(&job, &source, &targets, &ledger, rows);
                assert_eq!(
                    whole, ranged,
                    "max_deletes {max_deletes}, {rows} rows per range"
                );
            }
            let (whole, _) = whole_and_by_ranges(&job, &source, &targets, &ledger, 1);
            // The scenario covers what it means to.
            for expected in [
                "s2@a: update metadata",
                "s4@a: skip",
                "s5@a: take over",
                "prune",
                "s8@b: in sync",
                "unadopted u9",
                "s10@b: delete",
                "new-a-k1",
                "s12@a: copy",
                "s13@a: in flight",
                "new-b-s14",
            ] {
                assert!(
                    whole.iter().any(|w| w.contains(expected)),
                    "{expected} in {whole:#?}"
                );
            }
        }
    }
}
