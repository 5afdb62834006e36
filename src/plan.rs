//! The planner: a pure function from (source images, target images, what we own, the job) to the
//! list of actions that make every target hold every selected source image.
//!
//! No I/O, no clock, no randomness: ids for new copies come from the caller, so a plan can be
//! tested (and shown by `glance-sync plan`) without touching any cloud.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::{Job, PruneMode};
use crate::image::{
    self, Image, PatchOp, create_body, current_metadata, desired_metadata, metadata_patch,
    provably_different_content, same_content, same_identity,
};

/// What the state database knows, as far as planning needs it.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// (target cloud, source image id) → id of our current copy on that target.
    copies: HashMap<(String, String), String>,
    /// (target cloud, image id) of every image glance-sync created and has not deleted.
    owned: HashSet<(String, String)>,
}

impl Ledger {
    pub fn record_copy(&mut self, target: &str, source_id: &str, target_id: &str) {
        self.copies
            .insert((target.into(), source_id.into()), target_id.into());
    }

    pub fn record_owned(&mut self, target: &str, target_id: &str) {
        self.owned.insert((target.into(), target_id.into()));
    }

    pub fn copy_of(&self, target: &str, source_id: &str) -> Option<&str> {
        self.copies
            .get(&(target.to_string(), source_id.to_string()))
            .map(String::as_str)
    }

    pub fn owns(&self, target: &str, target_id: &str) -> bool {
        self.owned
            .contains(&(target.to_string(), target_id.to_string()))
    }
}

/// Everything the planner looks at.
pub struct PlanInput<'a> {
    pub job: &'a Job,
    pub source_images: &'a [Image],
    /// Per target cloud, every image listed there.
    pub target_images: &'a BTreeMap<String, Vec<Image>>,
    pub ledger: &'a Ledger,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub job: String,
    pub source: String,
    pub actions: Vec<Action>,
    /// Source images the job's filter did not select (not listed in `actions`).
    pub not_selected: usize,
}

/// One thing to do (or not) for one source image on one target.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub source_id: String,
    pub name: Option<String>,
    pub size: Option<u64>,
    pub target: String,
    #[serde(flatten)]
    pub kind: ActionKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionKind {
    /// Create `target_id` on the target and stream the source's bytes into it.
    Copy {
        target_id: String,
        /// `protected` is set only after the copy is verified.
        protect: bool,
        #[serde(skip)]
        create_body: Value,
    },
    /// Patch our copy's metadata to match the source, in one request.
    UpdateMetadata {
        target_id: String,
        changes: String,
        #[serde(skip)]
        patch: Vec<PatchOp>,
    },
    Deactivate {
        target_id: String,
    },
    Reactivate {
        target_id: String,
    },
    InSync {
        target_id: String,
        /// The image holding this identity on the target was not created by glance-sync for this
        /// source image; it is never modified.
        foreign: bool,
    },
    /// One of our images that can never become a good copy, deleted before copying: its upload
    /// never finished (queued or saving), or its data differs from its source image's (it failed
    /// the read-back check and could not be deleted then).
    DeleteFailedCopy {
        target_id: String,
        /// What is wrong with it, as a phrase: "unfinished copy (status saving)".
        why: String,
    },
    Skip {
        reason: String,
    },
    /// Our copy of a source image that no longer exists: hidden or deleted, as the job says.
    Prune {
        target_id: String,
        delete: bool,
        /// A protected copy, pruned because the job allows it: unprotected first.
        unprotect: bool,
    },
    /// A deletion the job's `max_deletes` guard refused; counts as a failure of the run.
    PruneRefused {
        target_id: String,
        reason: String,
    },
}

impl Action {
    /// The action as one short phrase, for tables and logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            ActionKind::Copy { protect, .. } => {
                if *protect {
                    "copy (then protect)".into()
                } else {
                    "copy".into()
                }
            }
            ActionKind::UpdateMetadata { changes, .. } => format!("update metadata: {changes}"),
            ActionKind::Deactivate { .. } => "deactivate (source is deactivated)".into(),
            ActionKind::Reactivate { .. } => "reactivate (source is active again)".into(),
            ActionKind::InSync { foreign: false, .. } => "in sync".into(),
            ActionKind::InSync { foreign: true, .. } => {
                "in sync (foreign image: not created by glance-sync for this image, left untouched)"
                    .into()
            }
            ActionKind::DeleteFailedCopy { why, .. } => format!("delete our {why}"),
            ActionKind::Skip { reason } => format!("skipped: {reason}"),
            ActionKind::Prune {
                delete, unprotect, ..
            } => format!(
                "prune: {} (source image gone){}",
                if *delete { "delete" } else { "hide" },
                if *unprotect {
                    ", unprotected first"
                } else {
                    ""
                }
            ),
            ActionKind::PruneRefused { reason, .. } => format!("prune refused: {reason}"),
        }
    }

    pub fn target_id(&self) -> Option<&str> {
        match &self.kind {
            ActionKind::Copy { target_id, .. }
            | ActionKind::UpdateMetadata { target_id, .. }
            | ActionKind::Deactivate { target_id }
            | ActionKind::Reactivate { target_id }
            | ActionKind::InSync { target_id, .. }
            | ActionKind::DeleteFailedCopy { target_id, .. }
            | ActionKind::Prune { target_id, .. }
            | ActionKind::PruneRefused { target_id, .. } => Some(target_id),
            ActionKind::Skip { .. } => None,
        }
    }

    /// Whether executing it writes to a cloud.
    pub fn writes(&self) -> bool {
        !matches!(
            self.kind,
            ActionKind::InSync { .. } | ActionKind::Skip { .. }
        )
    }
}

/// Why a source image is not replicated at all, or `None` if it is a candidate.
fn ineligibility(image: &Image) -> Option<String> {
    if image.is_deactivated() {
        return None; // its copies follow it; decided per target
    }
    if !image.is_active() {
        return Some(format!(
            "status is '{}': only active images are copied",
            image.status
        ));
    }
    if image.size.unwrap_or(0) == 0 {
        return Some("no data (size 0), e.g. a volume-backed snapshot".into());
    }
    if !crate::verify::source_is_verifiable(image) {
        return Some(format!(
            "no checksum, and no os_hash_value in an algorithm glance-sync computes ({}): \
             its bytes could not be verified",
            crate::verify::SUPPORTED_ALGOS.join(", ")
        ));
    }
    if image.disk_format.is_none() || image.container_format.is_none() {
        return Some("no disk_format or container_format".into());
    }
    None
}

/// What the planner decided about one (source, target) pair before building actions.
enum Decision<'a> {
    /// Our copy exists.
    Ours(&'a Image),
    /// Someone else's image already holds the identity.
    Foreign(&'a Image),
    Copy(String),
    Skip(String),
}

pub fn plan(input: &PlanInput, new_id: &mut dyn FnMut() -> String) -> Plan {
    let job = input.job;
    let mut sources: Vec<&Image> = input
        .source_images
        .iter()
        .filter(|i| job.filter.selects(i))
        .collect();
    let not_selected = input.source_images.len() - sources.len();
    // Active before deactivated, then oldest first: among duplicates, the original that can still
    // be read is the one replicated.
    sources.sort_by(|a, b| {
        (a.is_deactivated(), &a.created_at, &a.id).cmp(&(b.is_deactivated(), &b.created_at, &b.id))
    });

    // Source-level verdicts: ineligible, or duplicate of an earlier image with the same identity.
    let mut source_skip: HashMap<&str, String> = HashMap::new();
    let mut duplicate_of: HashMap<&str, &str> = HashMap::new();
    // Images are grouped by name so that comparing identities stays linear in the image count.
    let mut first_with_identity: HashMap<Option<&str>, Vec<&Image>> = HashMap::new();
    for s in &sources {
        let same_name = first_with_identity.entry(s.name.as_deref()).or_default();
        if let Some(reason) = ineligibility(s) {
            source_skip.insert(&s.id, reason);
        } else if let Some(orig) = same_name.iter().find(|o| same_identity(o, s)) {
            source_skip.insert(
                &s.id,
                format!("same name and data as source image {}", orig.id),
            );
            duplicate_of.insert(&s.id, &orig.id);
        } else {
            same_name.push(s);
        }
    }

    let source_by_id: HashMap<&str, &Image> = sources.iter().map(|s| (s.id.as_str(), *s)).collect();
    let empty = Vec::new();
    let mut decisions: HashMap<(&str, &str), Decision> = HashMap::new();
    let mut actions = Vec::new();
    for target in &job.targets {
        let images = input.target_images.get(target).unwrap_or(&empty);
        let by_id: HashMap<&str, &Image> = images.iter().map(|i| (i.id.as_str(), i)).collect();
        let mut by_name: HashMap<Option<&str>, Vec<&Image>> = HashMap::new();
        for i in images.iter().filter(|i| i.is_established()) {
            by_name.entry(i.name.as_deref()).or_default().push(i);
        }
        let owns = |i: &Image| input.ledger.owns(target, &i.id);

        // Our images that can never become good copies are deleted before anything is copied:
        // unfinished uploads, and copies whose data differs from their source image's. Image
        // data never changes in Glance, so such a copy is bad for good: it failed the read-back
        // check after upload and its deletion failed then. It is deleted even if the source is
        // now deactivated (and so not copied again); a copy whose source image is gone is left
        // to pruning.
        for img in images.iter().filter(|i| owns(i)) {
            let source = img
                .marker()
                .filter(|(cloud, _)| *cloud == job.source)
                .and_then(|(_, id)| source_by_id.get(id));
            let why = if !img.is_established() {
                format!("unfinished copy (status {})", img.status)
            } else if let Some(source) = source.filter(|s| provably_different_content(s, img)) {
                format!(
                    "copy whose data differs from the source image's (checksum {}, source {})",
                    img.checksum.as_deref().unwrap_or("none"),
                    source.checksum.as_deref().unwrap_or("none")
                )
            } else {
                continue;
            };
            actions.push(Action {
                source_id: img
                    .marker()
                    .map(|(_, id)| id.to_string())
                    .unwrap_or_default(),
                name: img.name.clone(),
                size: None,
                target: target.clone(),
                kind: ActionKind::DeleteFailedCopy {
                    target_id: img.id.clone(),
                    why,
                },
            });
        }

        for s in &sources {
            if let Some(reason) = source_skip.get(s.id.as_str()) {
                decisions.insert((target, &s.id), Decision::Skip(reason.clone()));
                continue;
            }
            let mapped = input
                .ledger
                .copy_of(target, &s.id)
                .and_then(|id| by_id.get(id).copied())
                .filter(|c| owns(c) && c.is_established() && same_content(s, c));
            let candidates: Vec<&Image> = by_name
                .get(&s.name.as_deref())
                .into_iter()
                .flatten()
                .copied()
                .filter(|c| same_identity(s, c))
                .collect();
            let ours_by_marker = || {
                candidates
                    .iter()
                    .copied()
                    .find(|c| owns(c) && c.marker() == Some((job.source.as_str(), s.id.as_str())))
            };
            // Any other image holding the identity, even one we made for another source image
            // or another job's source, is left untouched: patching it for this source image
            // would start a tug-of-war.
            let decision = if let Some(c) = mapped.or_else(ours_by_marker) {
                Decision::Ours(c)
            } else if let Some(c) = candidates.first() {
                Decision::Foreign(c)
            } else if s.is_deactivated() {
                Decision::Skip("deactivated on the source and never copied".into())
            } else {
                Decision::Copy(new_id())
            };
            decisions.insert((target, &s.id), decision);
        }
    }

    for s in &sources {
        for target in &job.targets {
            let copy_id_of = |source_ref: &str| -> Option<String> {
                let source_ref = duplicate_of.get(source_ref).copied().unwrap_or(source_ref);
                match decisions.get(&(target.as_str(), source_ref))? {
                    Decision::Ours(c) | Decision::Foreign(c) => Some(c.id.clone()),
                    Decision::Copy(id) => Some(id.clone()),
                    Decision::Skip(_) => None,
                }
            };
            let action = |kind| Action {
                source_id: s.id.clone(),
                name: s.name.clone(),
                size: s.size,
                target: target.clone(),
                kind,
            };
            match &decisions[&(target.as_str(), s.id.as_str())] {
                Decision::Skip(reason) => actions.push(action(ActionKind::Skip {
                    reason: reason.clone(),
                })),
                Decision::Foreign(c) => actions.push(action(ActionKind::InSync {
                    target_id: c.id.clone(),
                    foreign: true,
                })),
                Decision::Copy(id) => {
                    let meta = desired_metadata(s, &job.source, copy_id_of);
                    actions.push(action(ActionKind::Copy {
                        target_id: id.clone(),
                        protect: meta.protected,
                        create_body: create_body(id, s, &meta),
                    }));
                }
                Decision::Ours(c) => {
                    let desired = desired_metadata(s, &job.source, copy_id_of);
                    let patch = metadata_patch(&current_metadata(c), &desired);
                    let before = actions.len();
                    if !patch.is_empty() {
                        actions.push(action(ActionKind::UpdateMetadata {
                            target_id: c.id.clone(),
                            changes: image::describe_patch(&patch),
                            patch,
                        }));
                    }
                    if s.is_deactivated() && c.is_active() {
                        actions.push(action(ActionKind::Deactivate {
                            target_id: c.id.clone(),
                        }));
                    } else if s.is_active() && c.is_deactivated() {
                        actions.push(action(ActionKind::Reactivate {
                            target_id: c.id.clone(),
                        }));
                    }
                    if actions.len() == before {
                        actions.push(action(ActionKind::InSync {
                            target_id: c.id.clone(),
                            foreign: false,
                        }));
                    }
                }
            }
        }
    }

    actions.extend(prune(input));

    Plan {
        job: job.name.clone(),
        source: job.source.clone(),
        actions,
        not_selected,
    }
}

/// Our established copies, made from this job's source cloud, whose source image is not in the
/// source listing any more (selected or not: a filter change is no reason to remove a copy).
fn prune(input: &PlanInput) -> Vec<Action> {
    let job = input.job;
    let policy = &job.prune;
    if policy.mode == PruneMode::Off {
        return vec![];
    }
    let existing: HashSet<&str> = input.source_images.iter().map(|i| i.id.as_str()).collect();
    let mut actions = Vec::new();
    for target in &job.targets {
        let Some(images) = input.target_images.get(target) else {
            continue;
        };
        for img in images {
            let Some((cloud, source_id)) = img.marker() else {
                continue;
            };
            if cloud != job.source
                || existing.contains(source_id)
                || !input.ledger.owns(target, &img.id)
                || !img.is_established()
            {
                continue;
            }
            let delete = policy.mode == PruneMode::Delete;
            if !delete && img.os_hidden {
                continue; // already hidden
            }
            if delete && img.protected && !policy.protected {
                continue; // protected copies stay unless the job says otherwise
            }
            actions.push(Action {
                source_id: source_id.to_string(),
                name: img.name.clone(),
                size: img.size,
                target: target.clone(),
                kind: ActionKind::Prune {
                    target_id: img.id.clone(),
                    delete,
                    unprotect: delete && img.protected,
                },
            });
        }
    }
    let deletes = actions
        .iter()
        .filter(|a| matches!(a.kind, ActionKind::Prune { delete: true, .. }))
        .count();
    if deletes > policy.max_deletes {
        let reason = format!(
            "{deletes} copies would be deleted, more than max_deletes = {}; nothing is pruned. \
             Check that the source lists every image, then raise max_deletes for one run",
            policy.max_deletes
        );
        for a in &mut actions {
            if let ActionKind::Prune { target_id, .. } = &a.kind {
                a.kind = ActionKind::PruneRefused {
                    target_id: target_id.clone(),
                    reason: reason.clone(),
                };
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;
    use crate::image::tests::image;

    fn job(targets: &[&str]) -> Job {
        Job {
            name: "j".into(),
            source: "src".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            filter: Filter::everything(),
            schedule: None,
            run_on_start: true,
            prune: Default::default(),
        }
    }

    struct Ids(u32);
    impl Ids {
        fn next(&mut self) -> String {
            self.0 += 1;
            format!("new-{}", self.0)
        }
    }

    fn run(job: &Job, source: &[Image], targets: &[(&str, Vec<Image>)], ledger: &Ledger) -> Plan {
        let target_images = targets
            .iter()
            .map(|(t, imgs)| (t.to_string(), imgs.clone()))
            .collect();
        let mut ids = Ids(0);
        plan(
            &PlanInput {
                job,
                source_images: source,
                target_images: &target_images,
                ledger,
            },
            &mut || ids.next(),
        )
    }

    /// A copy of `src` on a target, as glance-sync makes it.
    fn copy_of(src: &Image, id: &str) -> Image {
        let mut c = src.clone();
        c.id = id.into();
        c.extra
            .insert("glance_sync_source_cloud".into(), "src".into());
        c.extra
            .insert("glance_sync_source_id".into(), src.id.clone().into());
        c
    }

    fn kinds(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| format!("{}@{}: {}", a.source_id, a.target, a.describe()))
            .collect()
    }

    #[test]
    fn missing_images_are_copied_to_every_target() {
        let s = image("s1", "ubuntu", "m1");
        let p = run(
            &job(&["a", "b"]),
            &[s],
            &[("a", vec![]), ("b", vec![])],
            &Ledger::default(),
        );
        assert_eq!(kinds(&p), vec!["s1@a: copy", "s1@b: copy"]);
        let ActionKind::Copy { create_body, .. } = &p.actions[0].kind else {
            panic!()
        };
        assert_eq!(create_body["id"], "new-1");
        assert_eq!(create_body["glance_sync_source_id"], "s1");
    }

    #[test]
    fn our_copy_with_same_metadata_is_in_sync() {
        let s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        let p = run(
            &job(&["a"]),
            std::slice::from_ref(&s),
            &[("a", vec![copy_of(&s, "t1")])],
            &ledger,
        );
        assert_eq!(kinds(&p), vec!["s1@a: in sync"]);
        assert!(p.actions.iter().all(|a| !a.writes()));
    }

    #[test]
    fn foreign_image_with_same_identity_counts_as_in_sync_and_is_never_patched() {
        let s = image("s1", "ubuntu", "m1");
        let mut foreign = s.clone();
        foreign.id = "f1".into();
        foreign.tags = vec!["someone-elses".into()];
        let p = run(
            &job(&["a"]),
            &[s],
            &[("a", vec![foreign])],
            &Ledger::default(),
        );
        assert_eq!(
            kinds(&p),
            vec![
                "s1@a: in sync (foreign image: not created by glance-sync for this image, left untouched)"
            ]
        );
    }

    #[test]
    fn same_name_with_different_data_is_a_different_image() {
        let s1 = image("s1", "ubuntu", "m1");
        let mut s2 = image("s2", "ubuntu", "m2");
        s2.created_at = Some("2026-02-01T00:00:00Z".into());
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        let p = run(
            &job(&["a"]),
            &[s1.clone(), s2],
            &[("a", vec![copy_of(&s1, "t1")])],
            &ledger,
        );
        assert_eq!(kinds(&p), vec!["s1@a: in sync", "s2@a: copy"]);
    }

    #[test]
    fn drift_on_the_source_becomes_one_patch_on_our_copy() {
        let mut s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        let mut c = copy_of(&s, "t1");
        c.extra.insert("gone".into(), "x".into());
        s.tags = vec!["new".into()];
        s.min_ram = 512;
        s.protected = true;
        s.extra.insert("os_distro".into(), "ubuntu".into());
        let p = run(&job(&["a"]), &[s], &[("a", vec![c])], &ledger);
        assert_eq!(
            kinds(&p),
            vec!["s1@a: update metadata: min_ram, tags, os_distro, -gone, protected"]
        );
    }

    #[test]
    fn deactivation_and_reactivation_follow_the_source() {
        let mut s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        let c = copy_of(&s, "t1");
        s.status = "deactivated".into();
        let p = run(
            &job(&["a"]),
            std::slice::from_ref(&s),
            &[("a", vec![c.clone()])],
            &ledger,
        );
        assert_eq!(kinds(&p), vec!["s1@a: deactivate (source is deactivated)"]);

        let mut c2 = c;
        c2.status = "deactivated".into();
        s.status = "active".into();
        let p = run(&job(&["a"]), &[s], &[("a", vec![c2])], &ledger);
        assert_eq!(kinds(&p), vec!["s1@a: reactivate (source is active again)"]);
    }

    #[test]
    fn ineligible_source_images_are_skipped_with_a_reason() {
        let mut queued = image("q", "q", "m1");
        queued.status = "queued".into();
        queued.checksum = None;
        let mut empty = image("e", "e", "m2");
        empty.size = Some(0);
        let mut deact = image("d", "d", "m3");
        deact.status = "deactivated".into();
        let mut nosum = image("n", "n", "m4");
        nosum.checksum = None;
        nosum.os_hash_value = None;
        let p = run(
            &job(&["a"]),
            &[queued, empty, deact, nosum],
            &[("a", vec![])],
            &Ledger::default(),
        );
        let k = kinds(&p);
        assert!(
            k.iter()
                .any(|s| s.starts_with("q@a: skipped: status is 'queued'")),
            "{k:?}"
        );
        assert!(
            k.iter().any(|s| s.starts_with("e@a: skipped: no data")),
            "{k:?}"
        );
        assert!(
            k.iter()
                .any(|s| s == "d@a: skipped: deactivated on the source and never copied"),
            "{k:?}"
        );
        assert!(
            k.iter().any(|s| s.starts_with("n@a: skipped: no checksum")),
            "{k:?}"
        );
        assert!(p.actions.iter().all(|a| !a.writes()));
    }

    #[test]
    fn our_half_made_copy_is_deleted_and_copied_again() {
        let s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        let mut half = copy_of(&s, "t1");
        half.status = "saving".into();
        half.checksum = None;
        half.os_hash_value = None;
        let p = run(&job(&["a"]), &[s], &[("a", vec![half])], &ledger);
        assert_eq!(
            kinds(&p),
            vec![
                "s1@a: delete our unfinished copy (status saving)",
                "s1@a: copy"
            ]
        );
    }

    #[test]
    fn our_active_copy_with_other_data_than_its_source_is_deleted_and_copied_again() {
        let s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        // Became active, failed the read-back check, and the delete failed then.
        let mut bad = copy_of(&s, "t1");
        bad.checksum = Some("m-corrupt".into());
        bad.os_hash_value = Some("h-corrupt".into());
        let p = run(&job(&["a"]), &[s], &[("a", vec![bad])], &ledger);
        assert_eq!(
            kinds(&p),
            vec![
                "s1@a: delete our copy whose data differs from the source image's (checksum m-corrupt, source m1)",
                "s1@a: copy"
            ]
        );
    }

    #[test]
    fn our_copy_is_not_deleted_when_nothing_can_be_compared_with_its_source() {
        let mut s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "t1");
        ledger.record_owned("a", "t1");
        let mut ours = copy_of(&s, "t1");
        ours.os_hash_algo = Some("sha256".into());
        ours.os_hash_value = Some("other-algorithm".into());
        ours.checksum = None;
        s.checksum = None;
        let p = run(&job(&["a"]), &[s], &[("a", vec![ours])], &ledger);
        assert!(
            kinds(&p).iter().all(|k| !k.contains("delete")),
            "{:?}",
            kinds(&p)
        );
    }

    #[test]
    fn our_copy_made_for_another_source_cloud_is_not_judged_against_this_one() {
        let s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_owned("a", "t1");
        // Another job copied an image with the same source id from cloud "elsewhere".
        let mut other = copy_of(&s, "t1");
        other
            .extra
            .insert("glance_sync_source_cloud".into(), "elsewhere".into());
        other.checksum = Some("m9".into());
        other.os_hash_value = Some("h9".into());
        let p = run(&job(&["a"]), &[s], &[("a", vec![other])], &ledger);
        assert_eq!(kinds(&p), vec!["s1@a: copy"]);
    }

    #[test]
    fn a_foreign_image_with_other_data_under_the_same_name_is_left_alone() {
        let s = image("s1", "ubuntu", "m1");
        // Not in the ledger: even with our marker, it is not ours to delete.
        let mut other = copy_of(&s, "x1");
        other.checksum = Some("m9".into());
        other.os_hash_value = Some("h9".into());
        let p = run(
            &job(&["a"]),
            &[s],
            &[("a", vec![other])],
            &Ledger::default(),
        );
        assert_eq!(kinds(&p), vec!["s1@a: copy"]);
    }

    #[test]
    fn a_queued_image_we_did_not_create_is_left_alone() {
        let s = image("s1", "ubuntu", "m1");
        let mut other = image("x", "other", "m9");
        other.status = "queued".into();
        let p = run(
            &job(&["a"]),
            &[s],
            &[("a", vec![other])],
            &Ledger::default(),
        );
        assert_eq!(kinds(&p), vec!["s1@a: copy"]);
    }

    #[test]
    fn kernel_reference_points_at_the_copy_on_the_target() {
        let kernel = image("k", "vmlinuz", "mk");
        let mut vm = image("v", "vm", "mv");
        vm.extra.insert("kernel_id".into(), "k".into());
        let p = run(
            &job(&["a"]),
            &[kernel, vm],
            &[("a", vec![])],
            &Ledger::default(),
        );
        let body = |id: &str| match &p.actions.iter().find(|a| a.source_id == id).unwrap().kind {
            ActionKind::Copy { create_body, .. } => create_body.clone(),
            _ => panic!(),
        };
        assert_eq!(body("v")["kernel_id"], body("k")["id"]);
    }

    #[test]
    fn duplicate_source_images_are_copied_once() {
        let a = image("a", "ubuntu", "m1");
        let mut b = image("b", "ubuntu", "m1");
        b.created_at = Some("2026-03-01T00:00:00Z".into());
        let p = run(&job(&["t"]), &[b, a], &[("t", vec![])], &Ledger::default());
        assert_eq!(
            kinds(&p),
            vec![
                "a@t: copy",
                "b@t: skipped: same name and data as source image a"
            ]
        );
    }

    #[test]
    fn copy_that_someone_deleted_on_the_target_is_copied_again() {
        let s = image("s1", "ubuntu", "m1");
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "gone");
        ledger.record_owned("a", "gone");
        let p = run(&job(&["a"]), &[s], &[("a", vec![])], &ledger);
        assert_eq!(kinds(&p), vec!["s1@a: copy"]);
    }

    #[test]
    fn a_state_mapping_to_an_image_we_do_not_own_never_leads_to_a_patch() {
        let s = image("s1", "ubuntu", "m1");
        let mut foreign = s.clone();
        foreign.id = "f1".into();
        foreign.tags = vec!["theirs".into()];
        let mut ledger = Ledger::default();
        ledger.record_copy("a", "s1", "f1"); // but never owned
        let p = run(&job(&["a"]), &[s], &[("a", vec![foreign])], &ledger);
        assert!(p.actions.iter().all(|a| !a.writes()), "{:?}", kinds(&p));
    }

    #[test]
    fn our_copy_made_for_another_source_image_is_left_untouched() {
        let s = image("s1", "ubuntu", "m1");
        let mut other_copy = copy_of(&s, "t9");
        other_copy
            .extra
            .insert("glance_sync_source_id".into(), "someone-else".into());
        other_copy.tags = vec!["drifted".into()];
        let mut ledger = Ledger::default();
        ledger.record_owned("a", "t9");
        let p = run(&job(&["a"]), &[s], &[("a", vec![other_copy])], &ledger);
        assert_eq!(p.actions.len(), 1);
        assert!(matches!(
            p.actions[0].kind,
            ActionKind::InSync { foreign: true, .. }
        ));
    }

    #[test]
    fn a_deactivated_duplicate_does_not_hide_the_active_original() {
        let mut old = image("old", "ubuntu", "m1");
        old.status = "deactivated".into();
        let mut new = image("new", "ubuntu", "m1");
        new.created_at = Some("2026-05-01T00:00:00Z".into());
        let p = run(
            &job(&["a"]),
            &[old, new],
            &[("a", vec![])],
            &Ledger::default(),
        );
        let k = kinds(&p);
        assert!(k.contains(&"new@a: copy".to_string()), "{k:?}");
    }

    #[test]
    fn an_image_hashed_with_an_algorithm_we_cannot_compute_and_no_md5_is_skipped() {
        let mut s = image("s1", "x", "m");
        s.checksum = None;
        s.os_hash_algo = Some("sha3_512".into());
        let p = run(&job(&["a"]), &[s], &[("a", vec![])], &Ledger::default());
        assert!(
            kinds(&p)[0].contains("skipped: no checksum"),
            "{:?}",
            kinds(&p)
        );
    }

    fn pruning(mode: PruneMode, protected: bool, max_deletes: usize) -> Job {
        let mut j = job(&["a"]);
        j.prune = crate::config::PrunePolicy {
            mode,
            protected,
            max_deletes,
        };
        j
    }

    /// Three copies on target "a" whose source images are gone; the second is protected; plus a
    /// foreign image with a forged marker.
    fn orphans() -> (Vec<Image>, Ledger) {
        let mut ledger = Ledger::default();
        let mut images = Vec::new();
        for (i, protected) in [(1, false), (2, true), (3, false)] {
            let mut c = copy_of(
                &image(&format!("gone{i}"), "old", &format!("m{i}")),
                &format!("t{i}"),
            );
            c.protected = protected;
            ledger.record_owned("a", &c.id);
            images.push(c);
        }
        let mut forged = copy_of(&image("gone9", "x", "m9"), "f9");
        forged.id = "f9".into();
        images.push(forged);
        (images, ledger)
    }

    #[test]
    fn prune_off_leaves_orphaned_copies_alone() {
        let (imgs, ledger) = orphans();
        let p = run(&job(&["a"]), &[], &[("a", imgs)], &ledger);
        assert!(p.actions.is_empty());
    }

    #[test]
    fn prune_delete_removes_only_our_unprotected_orphans() {
        let (imgs, ledger) = orphans();
        let p = run(
            &pruning(PruneMode::Delete, false, 10),
            &[],
            &[("a", imgs)],
            &ledger,
        );
        let ids: Vec<_> = p.actions.iter().filter_map(|a| a.target_id()).collect();
        assert_eq!(ids, ["t1", "t3"], "{:?}", kinds(&p));
        assert!(kinds(&p).iter().all(|k| k.contains("prune: delete")));
    }

    #[test]
    fn prune_protected_unprotects_before_deleting() {
        let (imgs, ledger) = orphans();
        let p = run(
            &pruning(PruneMode::Delete, true, 10),
            &[],
            &[("a", imgs)],
            &ledger,
        );
        assert_eq!(p.actions.len(), 3);
        assert!(
            kinds(&p)[1].contains("unprotected first"),
            "{:?}",
            kinds(&p)
        );
    }

    #[test]
    fn prune_hide_hides_protected_copies_too_and_skips_hidden_ones() {
        let (mut imgs, ledger) = orphans();
        imgs[0].os_hidden = true;
        let p = run(
            &pruning(PruneMode::Hide, false, 0),
            &[],
            &[("a", imgs)],
            &ledger,
        );
        let ids: Vec<_> = p.actions.iter().filter_map(|a| a.target_id()).collect();
        assert_eq!(ids, ["t2", "t3"], "max_deletes does not limit hiding");
    }

    #[test]
    fn more_deletions_than_max_deletes_prunes_nothing() {
        let (imgs, ledger) = orphans();
        let p = run(
            &pruning(PruneMode::Delete, false, 1),
            &[],
            &[("a", imgs)],
            &ledger,
        );
        assert_eq!(p.actions.len(), 2);
        assert!(
            p.actions
                .iter()
                .all(|a| matches!(a.kind, ActionKind::PruneRefused { .. }))
        );
        assert!(kinds(&p)[0].contains("2 copies would be deleted, more than max_deletes = 1"));
    }

    #[test]
    fn a_source_image_that_still_exists_is_not_pruned() {
        let (imgs, ledger) = orphans();
        // Still listed on the source, even if the job's filter no longer selects it.
        let mut still_there = image("gone1", "old", "m1");
        still_there.status = "queued".into();
        let p = run(
            &pruning(PruneMode::Delete, false, 10),
            &[still_there],
            &[("a", imgs)],
            &ledger,
        );
        assert!(
            !p.actions
                .iter()
                .any(|a| a.target_id() == Some("t1") && matches!(a.kind, ActionKind::Prune { .. })),
            "{:?}",
            kinds(&p)
        );
    }
}
