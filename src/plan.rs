//! The planner: a pure function from (source images, target images, the ledger, the job) to the
//! list of actions that make every target hold every selected source image.
//!
//! No I/O, no clock, no randomness: ids for new copies come from the caller, so a plan can be
//! tested (and shown by `glance-sync plan`) without touching any cloud.
//!
//! Ownership is the ledger's alone. A job cleans up, patches, re-links, prunes or replaces only
//! the images the ledger records for that job and its source cloud, and never one that a run is
//! still copying. Provenance markers on images are informational: anyone may set a property.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::{Job, MetadataRules, PreserveIds, PruneMode};
use crate::image::{Image, Member, provably_different_content, same_content, same_identity};
use crate::metadata::{
    Metadata, PatchOp, create_body, current_metadata, describe_patch, desired_metadata,
    metadata_patch,
};

/// What the state database knows about the images glance-sync created, as planning needs it.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// (target cloud, image id) of every image glance-sync created (or adopted) and has not
    /// deleted.
    owned: HashMap<(String, String), OwnedImage>,
    /// How far the ledger had been written when it was read (the newest row's number): a copy
    /// recorded after it was started by someone who planned at the same time.
    pub mark: i64,
}

/// One image glance-sync created on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedImage {
    /// The job it belongs to. `None` for images recorded before jobs were: they belong to
    /// every job copying from their source cloud.
    pub job: Option<String>,
    pub source_cloud: String,
    /// The source image it is a copy of.
    pub source_id: String,
    /// Set while a run is copying it: no one else may touch it.
    pub in_flight: Option<InFlight>,
}

/// A copy a run is making right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlight {
    pub job: String,
    pub run_id: i64,
}

impl OwnedImage {
    /// Whether `job` may clean it up, patch, re-link, prune or replace it.
    pub fn belongs_to(&self, job: &Job) -> bool {
        self.source_cloud == job.source && self.job.as_deref().is_none_or(|j| j == job.name)
    }
}

impl Ledger {
    pub fn record(&mut self, target: &str, target_id: &str, owned: OwnedImage) {
        self.owned
            .insert((target.to_string(), target_id.to_string()), owned);
    }

    /// What the ledger says about image `target_id` on `target`, if glance-sync created it.
    pub fn owned(&self, target: &str, target_id: &str) -> Option<&OwnedImage> {
        self.owned.get(&(target.to_string(), target_id.to_string()))
    }
}

/// Everything the planner looks at.
pub struct PlanInput<'a> {
    pub job: &'a Job,
    pub source_images: &'a [Image],
    /// Per target cloud, every image listed there.
    pub target_images: &'a BTreeMap<String, Vec<Image>>,
    pub ledger: &'a Ledger,
    /// The project glance-sync works as, per cloud name; a cloud missing here has no known
    /// project (no Keystone and no `project_id`), and every image listed there counts as its own.
    pub projects: &'a BTreeMap<String, String>,
    /// Image members, fetched only for targets whose rules copy them.
    pub members: &'a Members,
    /// The image names this call plans for (everything in the plan that follows from an image
    /// of another name is left out of it). The images of other names given are context: the
    /// copies, sources and references of the planned ones, planned in a call of their own.
    pub scope: &'a (dyn Fn(Option<&str>) -> bool + Sync),
}

/// A [`PlanInput::scope`] that plans for every image given.
pub fn every_name(_: Option<&str>) -> bool {
    true
}

/// The members of images, as far as the plan needs them. An image missing here has members
/// nobody could list this run: they are left alone, never guessed.
#[derive(Debug, Default, Clone)]
pub struct Members {
    /// Source image id → its members (none for an image that is not shared).
    pub source: HashMap<String, Vec<Member>>,
    /// (target cloud, image id) → the members of our copy there.
    pub target: HashMap<(String, String), Vec<Member>>,
    /// Target clouds whose token is known to carry no admin role: by default Glance lets only an
    /// admin (or the member's own project) set a member's status, so there members are added
    /// pending and the source's statuses are not asked for.
    pub status_needs_admin: BTreeSet<String>,
}

/// The members a copy must have, through the project map, and the source's members that have no
/// project on the target.
fn desired_members(source: &[Member], rules: &MetadataRules) -> (Vec<Member>, Vec<String>) {
    let mut desired = Vec::new();
    let mut unmapped = Vec::new();
    for m in source {
        match rules.project_map.map(&m.project) {
            Some(project) => desired.push(Member {
                project,
                status: m.status.clone(),
            }),
            None => unmapped.push(m.project.clone()),
        }
    }
    desired.sort_by(|a, b| a.project.cmp(&b.project));
    (desired, unmapped)
}

/// What a copy's members need: added (with the status to set), removed, status changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberChanges {
    pub add: Vec<Member>,
    pub remove: Vec<String>,
    pub set_status: Vec<Member>,
    /// Source members without a project on the target: skipped.
    pub unmapped: Vec<String>,
    /// Why the source's members cannot be given to the copy at all, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Statuses the source's members have that the target's credentials may not set (no admin
    /// role): those members keep the status they have on the copy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub status_needs_admin: Vec<Member>,
}

impl MemberChanges {
    pub fn writes(&self) -> bool {
        !(self.add.is_empty() && self.remove.is_empty() && self.set_status.is_empty())
    }

    /// Whether `plan` shows these changes: they write, or something is left undone.
    fn worth_saying(&self) -> bool {
        self.writes()
            || !self.unmapped.is_empty()
            || self.blocked.is_some()
            || !self.status_needs_admin.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(
            self.add
                .iter()
                .map(|m| format!("+{} {}", m.project, m.status)),
        );
        parts.extend(self.remove.iter().map(|p| format!("-{p}")));
        parts.extend(
            self.set_status
                .iter()
                .map(|m| format!("{} {}", m.project, m.status)),
        );
        if !self.unmapped.is_empty() {
            parts.push(format!(
                "not in project_map (skipped): {}",
                self.unmapped.join(" ")
            ));
        }
        if let Some(why) = &self.blocked {
            parts.push(why.clone());
        }
        if !self.status_needs_admin.is_empty() {
            let statuses: Vec<String> = self
                .status_needs_admin
                .iter()
                .map(|m| format!("{} {}", m.project, m.status))
                .collect();
            parts.push(format!(
                "status not replicated, it needs the admin role on the target: {}",
                statuses.join(" ")
            ));
        }
        parts.join(", ")
    }
}

/// The changes that give a copy (with visibility `copy_visibility`) its source image's members.
fn member_changes(
    source: &[Member],
    current: &[Member],
    copy_visibility: &str,
    rules: &MetadataRules,
    may_set_status: bool,
) -> MemberChanges {
    let (desired, unmapped) = desired_members(source, rules);
    if copy_visibility != "shared" {
        return MemberChanges {
            unmapped,
            blocked: (!desired.is_empty()).then(|| {
                format!(
                    "members not copied: the copy is {copy_visibility} and only shared images \
                     have members (a visibility rule?)"
                )
            }),
            ..Default::default()
        };
    }
    let mut changes = MemberChanges {
        unmapped,
        ..Default::default()
    };
    for want in &desired {
        let have = current.iter().find(|c| c.project == want.project);
        // A new member starts pending.
        let status = have.map_or("pending", |h| h.status.as_str());
        if status != want.status && !may_set_status {
            changes.status_needs_admin.push(want.clone());
        }
        match have {
            None if may_set_status => changes.add.push(want.clone()),
            None => changes.add.push(Member {
                project: want.project.clone(),
                status: "pending".into(),
            }),
            Some(_) if status != want.status && may_set_status => {
                changes.set_status.push(want.clone())
            }
            Some(_) => {}
        }
    }
    changes.remove = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.project == c.project))
        .map(|c| c.project.clone())
        .collect();
    changes
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub job: String,
    pub source: String,
    /// The targets planned for (the job's targets that could be listed).
    pub targets: Vec<String>,
    pub actions: Vec<Action>,
    /// Source images the job's filter did not select (not listed in `actions`).
    pub not_selected: usize,
    /// Private and shared source images of other projects, left out because the job's
    /// `filter.owners` does not name their project (not listed in `actions`).
    pub left_out: Vec<LeftOut>,
    /// This job's copies of source images that the tenant rule now leaves out (made before the
    /// rule, or before their project left `filter.owners`): kept, but no longer maintained, and
    /// possibly visible to people the source image's owner never shared it with.
    pub copies_left_out: Vec<CopyLeftOut>,
    /// Images on the targets owned by glance-sync's project that carry its provenance marker for
    /// this job's source cloud but are not in the ledger: a lost or restored state database.
    /// They are treated as anyone else's image until `glance-sync adopt` records them.
    pub unadopted: Vec<Unadopted>,
}

impl Plan {
    /// How many unadopted images each planned target holds (0 included, to clear old counts).
    pub fn unadopted_per_target(&self) -> BTreeMap<&str, u64> {
        let mut counts: BTreeMap<&str, u64> =
            self.targets.iter().map(|t| (t.as_str(), 0)).collect();
        for u in &self.unadopted {
            *counts.entry(&u.target).or_default() += 1;
        }
        counts
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub source_id: String,
    pub name: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyLeftOut {
    pub target: String,
    pub target_id: String,
    pub source_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unadopted {
    pub target: String,
    pub target_id: String,
    pub name: Option<String>,
    /// The source image id its marker names.
    pub marker_source_id: String,
    /// Whether `glance-sync adopt --yes` records it as this job's copy.
    pub adoptable: bool,
    /// What it is, and what adopting it means.
    pub verdict: String,
}

/// Whether an image with our marker naming `source` may be adopted as its copy, and why. Only on
/// evidence: its data is the source image's, or the source image is gone (then the job's prune
/// policy applies). An unfinished upload is left alone: it may be another glance-sync's copy in
/// flight, and adopting it would have the next run delete it.
fn adoption(image: &Image, marker_source_id: &str, source: Option<&Image>) -> (bool, String) {
    if !image.is_established() {
        return (
            false,
            format!(
                "unfinished upload (status {}): it may be another glance-sync's copy in flight; \
                 delete it by hand if it is stale",
                image.status
            ),
        );
    }
    let Some(source) = source else {
        return (
            true,
            format!(
                "copy of source image {marker_source_id}, which is gone: once adopted, the job's \
                 prune policy applies to it"
            ),
        );
    };
    if same_content(source, image) {
        (true, format!("copy of source image {marker_source_id}"))
    } else if provably_different_content(source, image) {
        (
            false,
            format!("its data differs from source image {marker_source_id}'s"),
        )
    } else {
        (
            false,
            format!("no digest in common with source image {marker_source_id} to compare"),
        )
    }
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
        /// How `target_id` was chosen (`preserve_ids`).
        id: NewCopyId,
        /// The create body under the fallback id, when the source's id may be refused.
        #[serde(skip)]
        fallback_body: Option<Value>,
        /// The members to give the copy once it is made (`members = true`).
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<MemberChanges>,
        /// What the copy must carry: a copy the target's Glance imports gets it with one patch
        /// once verified, since Glance sets some of it itself.
        #[serde(skip)]
        metadata: Box<Metadata>,
    },
    /// Our copy is missing from stores the job wants it in (`stores`): the target's Glance
    /// copies it there from a store it is in (copy-image).
    CopyToStores {
        target_id: String,
        stores: Vec<String>,
    },
    /// Give our copy its source image's members (`members = true`).
    SyncMembers {
        target_id: String,
        #[serde(flatten)]
        changes: MemberChanges,
    },
    /// Patch our copy's metadata to match the source, in one request.
    UpdateMetadata {
        target_id: String,
        changes: String,
        #[serde(skip)]
        patch: Vec<PatchOp>,
    },
    /// Our copy, made for a source image that is gone (or no longer replicated), holds the same
    /// name and data as this one: the ledger links it to this source image, then its metadata is
    /// patched like any drift (the marker included).
    Relink {
        target_id: String,
        previous_source_id: String,
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
        /// The image holding this identity on the target is not this job's copy; it is never
        /// modified.
        foreign: bool,
    },
    /// A run (of this job or another, in this process or another) is copying this image right
    /// now: nothing is done to it.
    InFlight {
        target_id: String,
        job: String,
        run_id: i64,
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
    /// The job's rules cannot be followed for this image: nothing is done; counts as a failure
    /// of the run.
    Refused {
        reason: String,
    },
    /// A prune the job's `max_deletes` guard refused; counts as a failure of the run.
    PruneRefused {
        target_id: String,
        reason: String,
    },
}

impl Action {
    /// The action as one short phrase, for tables and logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            ActionKind::SyncMembers { changes, .. } => format!("members: {}", changes.describe()),
            ActionKind::Copy {
                protect,
                id,
                members,
                ..
            } => {
                let how = match id {
                    NewCopyId::New { .. } => String::new(),
                    NewCopyId::Source { .. } => " with the source's id".into(),
                    NewCopyId::Reuse { .. } => {
                        " into our unfinished copy that has the source's id (queued)".into()
                    }
                    NewCopyId::NewBecauseTaken { held_by, .. } => format!(
                        " with a new id: the source's is held by {held_by} (preserve_ids = prefer)"
                    ),
                };
                let members = members
                    .as_ref()
                    .map(|m| format!("; members: {}", m.describe()))
                    .unwrap_or_default();
                format!(
                    "copy{how}{}{members}",
                    if *protect { " (then protect)" } else { "" }
                )
            }
            ActionKind::UpdateMetadata { changes, .. } => format!("update metadata: {changes}"),
            ActionKind::CopyToStores { stores, .. } => {
                format!("copy into store {} (copy-image)", stores.join(", "))
            }
            ActionKind::Relink {
                previous_source_id,
                changes,
                ..
            } => format!(
                "take over our copy of source image {previous_source_id} (gone or no longer \
                 replicated; same name and data){}",
                if changes.is_empty() {
                    String::new()
                } else {
                    format!(", update metadata: {changes}")
                }
            ),
            ActionKind::Deactivate { .. } => "deactivate (source is deactivated)".into(),
            ActionKind::Reactivate { .. } => {
                "reactivate (our copy is deactivated, the source image is active)".into()
            }
            ActionKind::InSync { foreign: false, .. } => "in sync".into(),
            ActionKind::InSync { foreign: true, .. } => {
                "in sync (foreign image: not created by this job, left untouched)".into()
            }
            ActionKind::InFlight { job, run_id, .. } => {
                format!("in flight: being copied by run {run_id} of job '{job}', left untouched")
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
            ActionKind::Refused { reason } => format!("not copied: {reason}"),
        }
    }

    pub fn target_id(&self) -> Option<&str> {
        match &self.kind {
            ActionKind::Copy { target_id, .. }
            | ActionKind::UpdateMetadata { target_id, .. }
            | ActionKind::Relink { target_id, .. }
            | ActionKind::SyncMembers { target_id, .. }
            | ActionKind::CopyToStores { target_id, .. }
            | ActionKind::Deactivate { target_id }
            | ActionKind::Reactivate { target_id }
            | ActionKind::InSync { target_id, .. }
            | ActionKind::InFlight { target_id, .. }
            | ActionKind::DeleteFailedCopy { target_id, .. }
            | ActionKind::Prune { target_id, .. }
            | ActionKind::PruneRefused { target_id, .. } => Some(target_id),
            ActionKind::Skip { .. } | ActionKind::Refused { .. } => None,
        }
    }

    /// Whether executing it writes to a cloud.
    pub fn writes(&self) -> bool {
        if let ActionKind::SyncMembers { changes, .. } = &self.kind {
            return changes.writes();
        }
        !matches!(
            self.kind,
            ActionKind::InSync { .. }
                | ActionKind::InFlight { .. }
                | ActionKind::Skip { .. }
                | ActionKind::PruneRefused { .. }
                | ActionKind::Refused { .. }
        )
    }
}

/// The stores of `wanted` that `copy` is not in (Glance lists an image's stores comma-separated;
/// a single-store Glance lists none, and then no store is wanted either).
pub fn missing_stores(copy: &Image, wanted: &[String]) -> Vec<String> {
    let Some(have) = copy.property("stores") else {
        return vec![];
    };
    let have: BTreeSet<&str> = have.split(',').map(str::trim).collect();
    wanted
        .iter()
        .filter(|s| !have.contains(s.as_str()))
        .cloned()
        .collect()
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

/// Why a source image is left out for belonging to another project, or `None` if the job may
/// copy it. Public and community images are anyone's to copy; private and shared ones only the
/// owning project's, unless `filter.owners` names their project. With no known project (`none`
/// auth without `project_id`) every image counts as the cloud's own.
fn other_project(image: &Image, job: &Job, own_project: Option<&str>) -> Option<String> {
    if matches!(image.visibility.as_str(), "public" | "community") {
        return None;
    }
    let own = own_project?;
    let owner = image.owner.as_deref();
    if owner == Some(own) || job.filter.allows_owner(owner) {
        return None;
    }
    Some(format!(
        "{} image of project {}, not of {own} (the project glance-sync works as on '{}'): \
         add its project to [jobs.filter] owners to copy it",
        image.visibility,
        owner.unwrap_or("(none)"),
        job.source
    ))
}

/// How many people can see an image of this visibility, as an order: a `shared` image without
/// members is seen by its project alone, like a private one.
fn audience(visibility: &str) -> u8 {
    match visibility {
        "public" => 3,
        "community" => 2,
        "shared" => 1,
        _ => 0,
    }
}

/// Whether someone else's image with the same name and data may stand in for our copy: only when
/// everyone who could see the copy can see and use it. It must be active, and not hidden unless
/// the copy would be. Then it does when it is public; when it is community and the copy would not
/// be public; or when glance-sync's own project owns it and it is seen at least as widely as the
/// copy would be. Otherwise any tenant could block replication by uploading a private image with
/// the same bytes, and a hidden or deactivated image would pass for a usable copy.
fn stands_in(
    image: &Image,
    copy_visibility: &str,
    copy_hidden: bool,
    target_project: Option<&str>,
) -> bool {
    if !image.is_active() || (image.os_hidden && !copy_hidden) {
        return false;
    }
    let Some(project) = target_project else {
        return true; // no known project: every image counts as the cloud's own
    };
    if image.owner.as_deref() == Some(project) {
        return audience(&image.visibility) >= audience(copy_visibility);
    }
    match image.visibility.as_str() {
        "public" => true,
        "community" => copy_visibility != "public",
        _ => false,
    }
}

/// What the planner decided about one (source, target) pair before building actions.
enum Decision<'a> {
    /// Our copy exists.
    Ours(&'a Image),
    /// Our copy made for another source image (gone, or no longer replicated) takes this one.
    Relink(&'a Image, &'a str),
    /// Someone else's image already holds the identity.
    Foreign(&'a Image),
    InFlight(&'a Image, &'a InFlight),
    Copy(NewCopyId),
    Skip(String),
    /// The job's rules cannot be followed for this image (it is not copied, and that counts as
    /// a failure).
    Refused(String),
}

/// The id a new copy gets, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "id_choice", rename_all = "snake_case")]
pub enum NewCopyId {
    /// A new id of ours (`preserve_ids = off`).
    New { id: String },
    /// The source image's id. With `prefer`, `fallback` is used if the target refuses it (an
    /// invisible or deleted image held it).
    Source {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        fallback: Option<String>,
    },
    /// Our unfinished copy that already has the source's id: uploaded into, not created.
    Reuse { id: String },
    /// A new id because the source's is held on the target (`prefer`).
    NewBecauseTaken { id: String, held_by: String },
}

impl NewCopyId {
    pub fn id(&self) -> &str {
        match self {
            NewCopyId::New { id }
            | NewCopyId::Source { id, .. }
            | NewCopyId::Reuse { id }
            | NewCopyId::NewBecauseTaken { id, .. } => id,
        }
    }
}

/// The id for a new copy of `source` under `preserve`, given the image (if any) the target holds
/// under the source's id.
/// Why a copy gets no id this run.
enum IdVerdict {
    /// The rules cannot be followed: a failure.
    Refused(String),
    /// Not yet: a skip.
    Wait(String),
}

fn copy_id(
    source: &Image,
    preserve: PreserveIds,
    holder: Option<(&Image, Option<&OwnedImage>)>,
    new_id: &mut dyn FnMut() -> String,
) -> Result<NewCopyId, IdVerdict> {
    if preserve == PreserveIds::Off {
        return Ok(NewCopyId::New { id: new_id() });
    }
    let Some((holder, holder_ledger)) = holder else {
        return Ok(NewCopyId::Source {
            id: source.id.clone(),
            fallback: (preserve == PreserveIds::Prefer).then(&mut *new_id),
        });
    };
    let ours = holder_ledger.is_some_and(|o| o.source_id == source.id && o.in_flight.is_none());
    if ours && holder.status == "queued" {
        return Ok(NewCopyId::Reuse {
            id: holder.id.clone(),
        });
    }
    if ours && holder.status == "saving" {
        return Err(IdVerdict::Wait(
            "our unfinished copy with the source's id is still saving: Glance puts an upload that \
             broke back to queued, and the next run uploads into it. If it stays saving, its \
             Glance worker died: delete it by hand (its id is then lost for good; preserve_ids = \
             \"prefer\" copies under a new id)"
                .into(),
        ));
    }
    if ours && holder.status == "importing" {
        return Err(IdVerdict::Wait(
            "our copy with the source's id is being imported by the target's Glance (an earlier \
             run's glance-download): the next run verifies it once active, or imports into it \
             again if the import failed. If it stays importing, the target's import worker \
             died: delete it by hand (its id is then lost for good; preserve_ids = \"prefer\" \
             copies under a new id)"
                .into(),
        ));
    }
    let held_by = format!(
        "image '{}' ({}, owner {})",
        holder.name.as_deref().unwrap_or(""),
        holder.status,
        holder.owner.as_deref().unwrap_or("none")
    );
    match preserve {
        PreserveIds::Require => Err(IdVerdict::Refused(format!(
            "the source's id {} is held on the target by {held_by} (preserve_ids = require)",
            source.id
        ))),
        _ => Ok(NewCopyId::NewBecauseTaken {
            id: new_id(),
            held_by,
        }),
    }
}

/// `new_id(target, source id)` names a new copy: it must give the same id for the same pair
/// throughout a run, so that plans of different names (a scope each) agree on the id of a copy
/// that another image refers to (`kernel_id`, `ramdisk_id`).
pub fn plan(input: &PlanInput, new_id: &mut dyn FnMut(&str, &str) -> String) -> Plan {
    let job = input.job;
    let scope = input.scope;
    let own_project = input.projects.get(&job.source).map(String::as_str);
    let mut left_out = Vec::new();
    let mut sources: Vec<&Image> = Vec::new();
    let mut not_selected = 0;
    for image in input.source_images {
        if !job.filter.selects(image) {
            if scope(image.name.as_deref()) {
                not_selected += 1;
            }
        } else if let Some(reason) = other_project(image, job, own_project) {
            left_out.push(LeftOut {
                source_id: image.id.clone(),
                name: image.name.clone(),
                reason,
            });
        } else {
            sources.push(image);
        }
    }
    // Among duplicates (same name and data) the first one is replicated: active before
    // deactivated (it can still be read), then the job's own project's before others' and the
    // widely seen before the narrowly seen (a tenant's early upload must not decide what the
    // copy's metadata and visibility are), then the oldest.
    let rank = |i: &Image| {
        (
            i.is_deactivated(),
            own_project.is_some_and(|p| i.owner.as_deref() != Some(p)),
            std::cmp::Reverse(audience(&i.visibility)),
        )
    };
    sources.sort_by(|a, b| (rank(a), &a.created_at, &a.id).cmp(&(rank(b), &b.created_at, &b.id)));

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
    // The source images that get copies of their own; a copy made for any other source image
    // (gone, filtered out, a duplicate) may be taken over by one of these with the same identity.
    let originals: HashMap<&str, &Image> = sources
        .iter()
        .filter(|s| !source_skip.contains_key(s.id.as_str()))
        .map(|s| (s.id.as_str(), *s))
        .collect();
    let listed: HashMap<&str, &Image> = input
        .source_images
        .iter()
        .map(|i| (i.id.as_str(), i))
        .collect();

    let empty = Vec::new();
    let mut decisions: HashMap<(&str, &str), Decision> = HashMap::new();
    let mut actions = Vec::new();
    let mut unadopted = Vec::new();
    let mut copies_left_out = Vec::new();
    let left_out_ids: HashSet<&str> = left_out.iter().map(|l| l.source_id.as_str()).collect();
    let mut taken_over: HashSet<(&str, &str)> = HashSet::new();
    for target in &job.targets {
        let images = input.target_images.get(target).unwrap_or(&empty);
        let target_project = input.projects.get(target).map(String::as_str);
        let policy = job.policy(target);
        let owned = |i: &Image| input.ledger.owned(target, &i.id);
        let by_id: HashMap<&str, &Image> = images.iter().map(|i| (i.id.as_str(), i)).collect();
        // This job's images on the target, as the ledger records them, and the copies in
        // flight of any job (another job may be copying the same source image right now).
        let mut ours: Vec<(&Image, &OwnedImage)> = Vec::new();
        let mut in_flight: HashMap<(&str, &str), (&Image, &InFlight)> = HashMap::new();
        for img in images {
            let Some(o) = owned(img) else {
                // Markers alone grant nothing, but our project's images with our marker and no
                // ledger entry mean the state database was lost or restored: say so. Only those
                // this job would have made (its filter selects them), so that two jobs sharing a
                // source and a target do not claim each other's copies.
                if target_project.is_none_or(|p| img.owner.as_deref() == Some(p))
                    && let Some((cloud, source_id)) = img.marker()
                    && cloud == job.source
                    && job.filter.selects(img)
                {
                    let (adoptable, verdict) =
                        adoption(img, source_id, listed.get(source_id).copied());
                    unadopted.push(Unadopted {
                        target: target.clone(),
                        target_id: img.id.clone(),
                        name: img.name.clone(),
                        marker_source_id: source_id.to_string(),
                        adoptable,
                        verdict,
                    });
                }
                continue;
            };
            if let Some(f) = &o.in_flight {
                in_flight.insert((&o.source_cloud, &o.source_id), (img, f));
            } else if o.belongs_to(job) {
                if left_out_ids.contains(o.source_id.as_str()) && scope(img.name.as_deref()) {
                    copies_left_out.push(CopyLeftOut {
                        target: target.clone(),
                        target_id: img.id.clone(),
                        source_id: o.source_id.clone(),
                    });
                }
                ours.push((img, o));
            }
        }

        // Our images that can never become good copies are deleted before anything is copied:
        // unfinished uploads, and copies whose data differs from their source image's. Image
        // data never changes in Glance, so such a copy is bad for good: it failed the read-back
        // check after upload and its deletion failed then. It is deleted even if the source is
        // now deactivated (and so not copied again); a copy whose source image is gone is left
        // to pruning.
        let mut usable: Vec<(&Image, &OwnedImage)> = Vec::new();
        for (img, o) in ours {
            // A source image's id lost to a delete is lost for good (Glance never reuses ids): a
            // half-made copy that still has it is uploaded into again, not deleted.
            // One still `saving` after its upload broke goes back to `queued` by itself.
            let reusable = policy.preserve_ids != PreserveIds::Off
                && matches!(img.status.as_str(), "queued" | "saving" | "importing")
                && img.id == o.source_id
                && originals.contains_key(o.source_id.as_str());
            if reusable {
                continue;
            }
            let why = if !img.is_established() {
                format!("unfinished copy (status {})", img.status)
            } else if let Some(source) = originals
                .get(o.source_id.as_str())
                .filter(|s| provably_different_content(s, img))
            {
                format!(
                    "copy whose data differs from the source image's (checksum {}, source {})",
                    img.checksum.as_deref().unwrap_or("none"),
                    source.checksum.as_deref().unwrap_or("none")
                )
            } else {
                usable.push((img, o));
                continue;
            };
            actions.push(Action {
                source_id: o.source_id.clone(),
                name: img.name.clone(),
                size: None,
                target: target.clone(),
                kind: ActionKind::DeleteFailedCopy {
                    target_id: img.id.clone(),
                    why,
                },
            });
        }
        let mut ours_by_source: HashMap<&str, Vec<&Image>> = HashMap::new();
        // By name: our copies whose source image has no copy of its own any more.
        let mut orphans_by_name: HashMap<Option<&str>, Vec<&Image>> = HashMap::new();
        for (img, o) in &usable {
            ours_by_source.entry(&o.source_id).or_default().push(img);
            if !originals.contains_key(o.source_id.as_str()) {
                orphans_by_name
                    .entry(img.name.as_deref())
                    .or_default()
                    .push(img);
            }
        }
        let ours_ids: HashSet<&str> = usable.iter().map(|(i, _)| i.id.as_str()).collect();
        let mut others_by_name: HashMap<Option<&str>, Vec<&Image>> = HashMap::new();
        for i in images
            .iter()
            .filter(|i| i.is_established() && !ours_ids.contains(i.id.as_str()))
        {
            others_by_name.entry(i.name.as_deref()).or_default().push(i);
        }

        for s in &sources {
            if let Some(reason) = source_skip.get(s.id.as_str()) {
                decisions.insert((target, &s.id), Decision::Skip(reason.clone()));
                continue;
            }
            let copy_visibility = policy
                .metadata
                .visibility
                .as_deref()
                .unwrap_or(&s.visibility);
            let mine = ours_by_source
                .get(s.id.as_str())
                .into_iter()
                .flatten()
                .copied()
                .find(|c| same_content(s, c));
            let orphan = || {
                orphans_by_name
                    .get(&s.name.as_deref())
                    .into_iter()
                    .flatten()
                    .copied()
                    .find(|c| {
                        same_identity(s, c) && !taken_over.contains(&(target.as_str(), &c.id))
                    })
            };
            let foreign = || {
                others_by_name
                    .get(&s.name.as_deref())
                    .into_iter()
                    .flatten()
                    .copied()
                    .find(|c| {
                        same_identity(s, c)
                            && stands_in(c, copy_visibility, s.os_hidden, target_project)
                    })
            };
            let decision = if let Some(c) = mine {
                Decision::Ours(c)
            } else if let Some((c, f)) = in_flight.get(&(job.source.as_str(), s.id.as_str())) {
                Decision::InFlight(c, f)
            } else if let Some(c) = orphan() {
                taken_over.insert((target, &c.id));
                let previous = usable
                    .iter()
                    .find(|(i, _)| i.id == c.id)
                    .map(|(_, o)| o.source_id.as_str())
                    .expect("orphans are among our usable copies");
                Decision::Relink(c, previous)
            } else if let Some(c) = foreign() {
                Decision::Foreign(c)
            } else if s.is_deactivated() {
                Decision::Skip("deactivated on the source and never copied".into())
            } else {
                let holder = by_id
                    .get(s.id.as_str())
                    .map(|h| (*h, input.ledger.owned(target, &h.id)));
                match copy_id(s, policy.preserve_ids, holder, &mut || {
                    new_id(target, &s.id)
                }) {
                    Ok(id) => Decision::Copy(id),
                    Err(IdVerdict::Refused(reason)) => Decision::Refused(reason),
                    Err(IdVerdict::Wait(reason)) => Decision::Skip(reason),
                }
            };
            decisions.insert((target, &s.id), decision);
        }
    }

    for s in &sources {
        for target in &job.targets {
            let copy_id_of = |source_ref: &str| -> Option<String> {
                let source_ref = duplicate_of.get(source_ref).copied().unwrap_or(source_ref);
                match decisions.get(&(target.as_str(), source_ref))? {
                    Decision::Ours(c)
                    | Decision::Relink(c, _)
                    | Decision::Foreign(c)
                    | Decision::InFlight(c, _) => Some(c.id.clone()),
                    Decision::Copy(id) => Some(id.id().to_string()),
                    Decision::Skip(_) | Decision::Refused(_) => None,
                }
            };
            let action = |kind| Action {
                source_id: s.id.clone(),
                name: s.name.clone(),
                size: s.size,
                target: target.clone(),
                kind,
            };
            let decision = &decisions[&(target.as_str(), s.id.as_str())];
            match decision {
                Decision::Skip(reason) => actions.push(action(ActionKind::Skip {
                    reason: reason.clone(),
                })),
                Decision::Foreign(c) => actions.push(action(ActionKind::InSync {
                    target_id: c.id.clone(),
                    foreign: true,
                })),
                Decision::InFlight(c, f) => actions.push(action(ActionKind::InFlight {
                    target_id: c.id.clone(),
                    job: f.job.clone(),
                    run_id: f.run_id,
                })),
                Decision::Refused(reason) => actions.push(action(ActionKind::Refused {
                    reason: reason.clone(),
                })),
                Decision::Copy(id) => {
                    let rules = &job.policy(target).metadata;
                    let meta = match desired_metadata(s, &job.source, copy_id_of, rules) {
                        Ok(meta) => meta,
                        Err(reason) => {
                            actions.push(action(ActionKind::Refused { reason }));
                            continue;
                        }
                    };
                    let fallback_body = match id {
                        NewCopyId::Source {
                            fallback: Some(other),
                            ..
                        } => Some(create_body(other, s, &meta)),
                        _ => None,
                    };
                    // Members whose listing failed are left for the next run, never guessed.
                    let members = rules
                        .members
                        .then(|| input.members.source.get(&s.id))
                        .flatten()
                        .map(|source| {
                            member_changes(
                                source,
                                &[],
                                &meta.visibility,
                                rules,
                                !input.members.status_needs_admin.contains(target),
                            )
                        });
                    actions.push(action(ActionKind::Copy {
                        target_id: id.id().to_string(),
                        protect: meta.protected,
                        create_body: create_body(id.id(), s, &meta),
                        id: id.clone(),
                        fallback_body,
                        members: members.filter(MemberChanges::worth_saying),
                        metadata: Box::new(meta),
                    }));
                }
                Decision::Ours(c) | Decision::Relink(c, _) => {
                    let rules = &job.policy(target).metadata;
                    let desired = match desired_metadata(s, &job.source, copy_id_of, rules) {
                        Ok(desired) => desired,
                        Err(reason) => {
                            actions.push(action(ActionKind::Refused { reason }));
                            continue;
                        }
                    };
                    let patch = metadata_patch(&current_metadata(c), &desired, rules);
                    let changes = describe_patch(&patch, &desired.by_rule);
                    let before = actions.len();
                    if let Decision::Relink(_, previous) = decision {
                        actions.push(action(ActionKind::Relink {
                            target_id: c.id.clone(),
                            previous_source_id: previous.to_string(),
                            changes,
                            patch,
                        }));
                    } else if !patch.is_empty() {
                        actions.push(action(ActionKind::UpdateMetadata {
                            target_id: c.id.clone(),
                            changes,
                            patch,
                        }));
                    }
                    let known = rules
                        .members
                        .then(|| {
                            Some((
                                input.members.source.get(&s.id)?,
                                input.members.target.get(&(target.clone(), c.id.clone()))?,
                            ))
                        })
                        .flatten();
                    if let Some((source_members, copy_members)) = known {
                        let changes = member_changes(
                            source_members,
                            copy_members,
                            &desired.visibility,
                            rules,
                            !input.members.status_needs_admin.contains(target),
                        );
                        if changes.worth_saying() {
                            actions.push(action(ActionKind::SyncMembers {
                                target_id: c.id.clone(),
                                changes,
                            }));
                        }
                    }
                    let missing = missing_stores(c, &job.policy(target).stores);
                    if !missing.is_empty() && c.is_active() {
                        actions.push(action(ActionKind::CopyToStores {
                            target_id: c.id.clone(),
                            stores: missing,
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

    // Everything above follows from one image's name (the source's, or the target image's for
    // cleanup and pruning), which `Action::name` carries.
    actions.retain(|a| scope(a.name.as_deref()));
    unadopted.retain(|u| scope(u.name.as_deref()));
    left_out.retain(|l| scope(l.name.as_deref()));
    actions.extend(prune(input, &listed, &taken_over));

    Plan {
        job: job.name.clone(),
        source: job.source.clone(),
        targets: job.targets.clone(),
        actions,
        not_selected,
        left_out,
        copies_left_out,
        unadopted,
    }
}

/// This job's established copies whose source image is not in the source listing any more
/// (selected or not: a filter change is no reason to remove a copy), as the ledger says, not the
/// marker: anyone may edit a property. Copies taken over by another source image in this plan,
/// and copies in flight, are not pruned.
fn prune(
    input: &PlanInput,
    existing: &HashMap<&str, &Image>,
    taken_over: &HashSet<(&str, &str)>,
) -> Vec<Action> {
    let job = input.job;
    let policy = &job.prune;
    if policy.mode == PruneMode::Off {
        return vec![];
    }
    // A source image being uploaded again (deleted, then re-created under the same name, its data
    // not in yet) takes over the copy once it is active: until then the copy stays.
    let arriving: HashSet<Option<&str>> = input
        .source_images
        .iter()
        .filter(|i| {
            matches!(
                i.status.as_str(),
                "queued" | "saving" | "uploading" | "importing"
            )
        })
        .map(|i| i.name.as_deref())
        .collect();
    let mut actions = Vec::new();
    for target in &job.targets {
        let Some(images) = input.target_images.get(target) else {
            continue;
        };
        for img in images {
            if !(input.scope)(img.name.as_deref()) {
                continue;
            }
            let Some(owned) = input.ledger.owned(target, &img.id) else {
                continue;
            };
            // A copy recorded before jobs were (`job` unknown) may be another job's with another
            // prune policy: never pruned.
            if !owned.belongs_to(job)
                || owned.job.is_none()
                || owned.in_flight.is_some()
                || existing.contains_key(owned.source_id.as_str())
                || taken_over.contains(&(target.as_str(), img.id.as_str()))
                || arriving.contains(&img.name.as_deref())
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
                source_id: owned.source_id.clone(),
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
    refuse_prunes_over_max(job, &mut actions);
    actions
}

/// A source that suddenly lists nothing (a wrong project, a broken endpoint) must not hide or
/// delete every copy: hiding is as visible to users as deleting. When more than `max_deletes`
/// copies would be pruned, none is. Applied to each plan, and again to the prunes of all plans
/// of a job's run when it was planned a range of names at a time.
pub fn refuse_prunes_over_max(job: &Job, actions: &mut [Action]) {
    let policy = &job.prune;
    let prunes = actions
        .iter()
        .filter(|a| {
            matches!(
                a.kind,
                ActionKind::Prune { .. } | ActionKind::PruneRefused { .. }
            )
        })
        .count();
    if prunes > policy.max_deletes {
        let verb = if policy.mode == PruneMode::Delete {
            "deleted"
        } else {
            "hidden"
        };
        let reason = format!(
            "{prunes} copies would be {verb}, more than max_deletes = {}; nothing is pruned. \
             Check that the source lists every image, then raise max_deletes for one run",
            policy.max_deletes
        );
        for a in actions.iter_mut() {
            if let ActionKind::Prune { target_id, .. }
            | ActionKind::PruneRefused { target_id, .. } = &a.kind
            {
                a.kind = ActionKind::PruneRefused {
                    target_id: target_id.clone(),
                    reason: reason.clone(),
                };
            }
        }
    }
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
            max_bandwidth: crate::bandwidth::Limit::NONE,
            prune: Default::default(),
            policies: Default::default(),
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
                projects: &BTreeMap::new(),
                members: &Members::default(),
                scope: &every_name,
            },
            &mut |_, _| ids.next(),
        )
    }

    /// Records in the ledger that job "j" copied source image `source_id` of cloud "src" into
    /// `target_id` on `target`.
    fn ours(ledger: &mut Ledger, target: &str, target_id: &str, source_id: &str) {
        ledger.record(
            target,
            target_id,
            OwnedImage {
                job: Some("j".into()),
                source_cloud: "src".into(),
                source_id: source_id.into(),
                in_flight: None,
            },
        );
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
    fn our_copy_missing_from_a_wanted_store_is_copied_there_and_nothing_else_is() {
        let s = image("s1", "ubuntu", "m1");
        let mut j = job(&["a"]);
        j.policies.insert(
            "a".into(),
            crate::config::TargetPolicy {
                stores: vec!["fast".into(), "slow".into()],
                ..Default::default()
            },
        );
        let mut in_fast = copy_of(&s, "t1");
        in_fast.extra.insert("stores".into(), "fast".into());
        // Glance's import bookkeeping on the copy is no drift.
        in_fast
            .extra
            .insert("os_glance_import_task".into(), "task-1".into());
        in_fast
            .extra
            .insert("os_glance_failed_import".into(), "".into());
        let mut foreign = image("s2", "debian", "m2");
        foreign.extra.insert("stores".into(), "fast".into());
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "s1");
        let p = run(
            &j,
            &[s.clone(), image("s2", "debian", "m2")],
            &[("a", vec![in_fast.clone(), foreign])],
            &ledger,
        );
        assert_eq!(
            kinds(&p),
            vec![
                "s1@a: copy into store slow (copy-image)",
                "s2@a: in sync (foreign image: not created by this job, left untouched)"
            ]
        );
        in_fast.extra.insert("stores".into(), "slow,fast".into());
        let p = run(&j, &[s], &[("a", vec![in_fast])], &ledger);
        assert_eq!(kinds(&p), vec!["s1@a: in sync"]);
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
        ours(&mut ledger, "a", "t1", "s1");
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
            vec!["s1@a: in sync (foreign image: not created by this job, left untouched)"]
        );
    }

    #[test]
    fn same_name_with_different_data_is_a_different_image() {
        let s1 = image("s1", "ubuntu", "m1");
        let mut s2 = image("s2", "ubuntu", "m2");
        s2.created_at = Some("2026-02-01T00:00:00Z".into());
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "s1");
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
        ours(&mut ledger, "a", "t1", "s1");
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
        ours(&mut ledger, "a", "t1", "s1");
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
        assert_eq!(
            kinds(&p),
            vec!["s1@a: reactivate (our copy is deactivated, the source image is active)"]
        );
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
        ours(&mut ledger, "a", "t1", "s1");
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
        ours(&mut ledger, "a", "t1", "s1");
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
        ours(&mut ledger, "a", "t1", "s1");
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
        ledger.record(
            "a",
            "t1",
            OwnedImage {
                job: Some("other".into()),
                source_cloud: "elsewhere".into(),
                source_id: "s1".into(),
                in_flight: None,
            },
        );
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
        ours(&mut ledger, "a", "gone", "s1");
        let p = run(&job(&["a"]), &[s], &[("a", vec![])], &ledger);
        assert_eq!(kinds(&p), vec!["s1@a: copy"]);
    }

    #[test]
    fn another_jobs_copy_is_left_untouched() {
        let s = image("s1", "ubuntu", "m1");
        let mut other_copy = copy_of(&s, "t9");
        other_copy.tags = vec!["drifted".into()];
        let mut ledger = Ledger::default();
        ledger.record(
            "a",
            "t9",
            OwnedImage {
                job: Some("other-job".into()),
                source_cloud: "src".into(),
                source_id: "s1".into(),
                in_flight: None,
            },
        );
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
            ours(&mut ledger, "a", &c.id, &format!("gone{i}"));
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
            &pruning(PruneMode::Hide, false, 2),
            &[],
            &[("a", imgs)],
            &ledger,
        );
        let ids: Vec<_> = p.actions.iter().filter_map(|a| a.target_id()).collect();
        assert_eq!(ids, ["t2", "t3"]);
        assert!(kinds(&p).iter().all(|k| k.contains("prune: hide")));
    }

    #[test]
    fn more_hides_than_max_deletes_prunes_nothing() {
        let (imgs, ledger) = orphans();
        let p = run(
            &pruning(PruneMode::Hide, false, 2),
            &[],
            &[("a", imgs)],
            &ledger,
        );
        assert_eq!(p.actions.len(), 3);
        assert!(
            p.actions.iter().all(
                |a| matches!(&a.kind, ActionKind::PruneRefused { reason, .. }
                    if reason.starts_with("3 copies would be hidden, more than max_deletes = 2"))
            ),
            "{:?}",
            p.actions
        );
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
        assert!(
            matches!(&p.actions[0].kind, ActionKind::PruneRefused { reason, .. }
                if reason.starts_with("2 copies would be deleted, more than max_deletes = 1")),
            "{:?}",
            p.actions
        );
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

    fn in_flight(ledger: &mut Ledger, target_id: &str, job: &str, source_id: &str) {
        ledger.record(
            "a",
            target_id,
            OwnedImage {
                job: Some(job.into()),
                source_cloud: "src".into(),
                source_id: source_id.into(),
                in_flight: Some(InFlight {
                    job: job.into(),
                    run_id: 7,
                }),
            },
        );
    }

    #[test]
    fn another_jobs_unfinished_copy_is_never_deleted() {
        let small = image("small", "small", "m1");
        let big = image("big", "big", "m2");
        let mut uploading = copy_of(&big, "t-big");
        uploading.status = "saving".into();
        let mut ledger = Ledger::default();
        ledger.record(
            "a",
            "t-big",
            OwnedImage {
                job: Some("big-job".into()),
                source_cloud: "src".into(),
                source_id: "big".into(),
                in_flight: None, // even when its run died: it is big-job's to clean up
            },
        );
        let p = run(&job(&["a"]), &[small], &[("a", vec![uploading])], &ledger);
        assert_eq!(kinds(&p), vec!["small@a: copy"]);
    }

    #[test]
    fn a_copy_in_flight_is_shown_as_such_and_neither_deleted_nor_copied_again() {
        let s = image("s1", "big", "m1");
        let mut uploading = copy_of(&s, "t1");
        uploading.status = "saving".into();
        uploading.checksum = None;
        let mut ledger = Ledger::default();
        in_flight(&mut ledger, "t1", "j", "s1");
        let p = run(
            &pruning(PruneMode::Delete, false, 10),
            &[s],
            &[("a", vec![uploading])],
            &ledger,
        );
        assert_eq!(
            kinds(&p),
            vec!["s1@a: in flight: being copied by run 7 of job 'j', left untouched"]
        );
    }

    #[test]
    fn a_copy_another_job_is_making_of_the_same_source_image_is_not_duplicated() {
        let s = image("s1", "shared", "m1");
        let mut uploading = copy_of(&s, "t1");
        uploading.status = "saving".into();
        let mut ledger = Ledger::default();
        in_flight(&mut ledger, "t1", "other-job", "s1");
        let p = run(&job(&["a"]), &[s], &[("a", vec![uploading])], &ledger);
        assert!(
            matches!(
                p.actions[..],
                [Action {
                    kind: ActionKind::InFlight { .. },
                    ..
                }]
            ),
            "{:?}",
            kinds(&p)
        );
    }

    #[test]
    fn our_copy_of_a_deleted_and_recreated_source_image_is_relinked_not_pruned() {
        let old = image("old", "reup", "m1");
        let mut new = image("new", "reup", "m1");
        new.created_at = Some("2026-06-01T00:00:00Z".into());
        let copy = copy_of(&old, "t1");
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "old");
        for mode in [PruneMode::Hide, PruneMode::Delete] {
            let p = run(
                &pruning(mode, false, 10),
                std::slice::from_ref(&new),
                &[("a", vec![copy.clone()])],
                &ledger,
            );
            assert_eq!(
                kinds(&p),
                vec![
                    "new@a: take over our copy of source image old (gone or no longer replicated; \
                     same name and data), update metadata: glance_sync_source_id"
                ]
            );
        }
    }

    #[test]
    fn a_tampered_marker_is_restored_and_the_copy_is_not_pruned() {
        let s = image("s1", "ubuntu", "m1");
        let mut copy = copy_of(&s, "t1");
        copy.extra
            .insert("glance_sync_source_id".into(), "gone-forever".into());
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "s1");
        let p = run(
            &pruning(PruneMode::Delete, false, 10),
            &[s],
            &[("a", vec![copy])],
            &ledger,
        );
        assert_eq!(
            kinds(&p),
            vec!["s1@a: update metadata: glance_sync_source_id"]
        );
    }

    fn tenants(owners: crate::config::Owners) -> Job {
        let mut j = job(&["a"]);
        j.filter = crate::config::Filter::everything().with_owners(owners);
        j
    }

    fn owned_by(id: &str, owner: &str, visibility: &str) -> Image {
        let mut i = image(id, id, &format!("m-{id}"));
        i.owner = Some(owner.into());
        i.visibility = visibility.into();
        i
    }

    fn run_as(job: &Job, source: &[Image], target: Vec<Image>, ledger: &Ledger) -> Plan {
        let target_images = BTreeMap::from([("a".to_string(), target)]);
        let projects = BTreeMap::from([
            ("src".to_string(), "sync".to_string()),
            ("a".to_string(), "sync-t".to_string()),
        ]);
        plan(
            &PlanInput {
                job,
                source_images: source,
                target_images: &target_images,
                ledger,
                projects: &projects,
                members: &Members::default(),
                scope: &every_name,
            },
            &mut |_, _| "new".to_string(),
        )
    }

    #[test]
    fn other_projects_private_and_shared_images_are_left_out_unless_owners_names_them() {
        use crate::config::Owners;
        let source = [
            owned_by("mine", "sync", "private"),
            owned_by("pub", "tenant", "public"),
            owned_by("comm", "tenant", "community"),
            owned_by("priv", "tenant", "private"),
            owned_by("shr", "other", "shared"),
        ];
        let copied = |p: &Plan| -> Vec<String> {
            let mut ids: Vec<String> = p.actions.iter().map(|a| a.source_id.clone()).collect();
            ids.sort();
            ids
        };
        let p = run_as(&tenants(Owners::Own), &source, vec![], &Ledger::default());
        assert_eq!(copied(&p), ["comm", "mine", "pub"]);
        let left: Vec<_> = p.left_out.iter().map(|l| l.source_id.as_str()).collect();
        assert_eq!(left, ["priv", "shr"]);
        assert!(
            p.left_out[0]
                .reason
                .contains("private image of project tenant")
        );

        let p = run_as(
            &tenants(Owners::Listed(vec!["tenant".into()])),
            &source,
            vec![],
            &Ledger::default(),
        );
        assert_eq!(copied(&p), ["comm", "mine", "priv", "pub"]);
        let p = run_as(&tenants(Owners::All), &source, vec![], &Ledger::default());
        assert_eq!(p.actions.len(), 5);
        assert!(p.left_out.is_empty());
    }

    #[test]
    fn a_foreign_image_stands_in_only_when_everyone_who_could_see_the_copy_sees_it() {
        use crate::config::Owners;
        let s = owned_by("s1", "sync", "public");
        let stand_in = |owner: &str, visibility: &str, source_visibility: &str| {
            let mut s = s.clone();
            s.visibility = source_visibility.into();
            let mut theirs = s.clone();
            theirs.id = "theirs".into();
            theirs.owner = Some(owner.into());
            theirs.visibility = visibility.into();
            let p = run_as(
                &tenants(Owners::Own),
                &[s],
                vec![theirs],
                &Ledger::default(),
            );
            match &p.actions[0].kind {
                ActionKind::InSync { foreign: true, .. } => true,
                ActionKind::Copy { .. } => false,
                other => panic!("{other:?}"),
            }
        };
        assert!(
            !stand_in("tenant", "private", "public"),
            "a tenant's private image"
        );
        assert!(!stand_in("tenant", "shared", "public"));
        assert!(!stand_in("tenant", "community", "public"));
        assert!(stand_in("tenant", "community", "community"));
        assert!(stand_in("tenant", "public", "public"));
        assert!(
            stand_in("sync-t", "public", "public"),
            "our own project's image"
        );
        assert!(stand_in("sync-t", "private", "private"));
        assert!(
            !stand_in("sync-t", "private", "public"),
            "our own private image hides from those who would see the public copy"
        );
    }

    #[test]
    fn a_hidden_or_deactivated_foreign_image_does_not_stand_in() {
        let s = owned_by("s1", "sync", "public");
        for (status, hidden) in [("deactivated", false), ("active", true)] {
            let mut theirs = s.clone();
            theirs.id = "theirs".into();
            theirs.owner = Some("sync-t".into());
            theirs.status = status.into();
            theirs.os_hidden = hidden;
            let p = run_as(
                &tenants(crate::config::Owners::Own),
                std::slice::from_ref(&s),
                vec![theirs],
                &Ledger::default(),
            );
            assert_eq!(kinds(&p), vec!["s1@a: copy"], "{status}, hidden {hidden}");
        }
    }

    #[test]
    fn the_own_projects_image_is_replicated_before_a_tenants_earlier_duplicate() {
        let mut early = owned_by("early", "tenant", "community");
        early.name = Some("ubuntu".into());
        early.created_at = Some("2025-01-01T00:00:00Z".into());
        early.tags = vec!["tenant-says".into()];
        let mut ours = early.clone();
        ours.id = "ours".into();
        ours.owner = Some("sync".into());
        ours.visibility = "public".into();
        ours.tags = vec![];
        ours.created_at = Some("2026-01-01T00:00:00Z".into());
        let p = run_as(
            &tenants(crate::config::Owners::Own),
            &[early, ours],
            vec![],
            &Ledger::default(),
        );
        assert_eq!(
            kinds(&p),
            vec![
                "ours@a: copy",
                "early@a: skipped: same name and data as source image ours"
            ]
        );
    }

    #[test]
    fn a_copy_is_not_pruned_while_its_source_is_uploaded_again() {
        let old = image("old", "reup", "m1");
        let mut again = image("again", "reup", "m1");
        again.status = "saving".into();
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "old");
        let p = run(
            &pruning(PruneMode::Delete, false, 10),
            &[again],
            &[("a", vec![copy_of(&old, "t1")])],
            &ledger,
        );
        assert!(
            p.actions
                .iter()
                .all(|a| !matches!(a.kind, ActionKind::Prune { .. })),
            "{:?}",
            kinds(&p)
        );
    }

    #[test]
    fn copies_recorded_before_jobs_were_are_never_pruned() {
        let old = image("old", "x", "m1");
        let mut ledger = Ledger::default();
        ledger.record(
            "a",
            "t1",
            OwnedImage {
                job: None,
                source_cloud: "src".into(),
                source_id: "old".into(),
                in_flight: None,
            },
        );
        let p = run(
            &pruning(PruneMode::Delete, false, 10),
            &[],
            &[("a", vec![copy_of(&old, "t1")])],
            &ledger,
        );
        assert!(p.actions.is_empty(), "{:?}", kinds(&p));
    }

    #[test]
    fn our_copies_of_images_the_tenant_rule_now_leaves_out_are_reported() {
        let private = owned_by("priv", "tenant", "private");
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "priv");
        let p = run_as(
            &tenants(crate::config::Owners::Own),
            std::slice::from_ref(&private),
            vec![copy_of(&private, "t1")],
            &ledger,
        );
        assert_eq!(p.copies_left_out.len(), 1);
        assert_eq!(p.copies_left_out[0].target_id, "t1");
        assert!(p.actions.iter().all(|a| !a.writes()), "{:?}", kinds(&p));
    }

    #[test]
    fn our_projects_images_with_our_marker_but_no_ledger_entry_are_reported_not_owned() {
        let s = image("s1", "ubuntu", "m1");
        let mut lost = copy_of(&s, "t1");
        lost.owner = Some("sync-t".into());
        let mut forged = copy_of(&s, "t2");
        forged.owner = Some("tenant".into());
        forged.tags = vec!["forged".into()];
        let p = run_as(
            &pruning(PruneMode::Delete, false, 10),
            &[s],
            vec![lost, forged],
            &Ledger::default(),
        );
        let unadopted: Vec<_> = p.unadopted.iter().map(|u| u.target_id.as_str()).collect();
        assert_eq!(
            unadopted,
            ["t1"],
            "a tenant's forged marker is not ours to adopt"
        );
        assert!(p.unadopted[0].adoptable, "{}", p.unadopted[0].verdict);
        assert!(p.actions.iter().all(|a| !a.writes()), "{:?}", kinds(&p));
    }

    #[test]
    fn an_unfinished_upload_with_our_marker_is_not_adoptable() {
        let s = image("s1", "ubuntu", "m1");
        let mut uploading = copy_of(&s, "t1");
        uploading.owner = Some("sync-t".into());
        uploading.status = "saving".into();
        let p = run_as(&job(&["a"]), &[s], vec![uploading], &Ledger::default());
        assert_eq!(p.unadopted.len(), 1);
        assert!(!p.unadopted[0].adoptable);
        assert!(
            p.unadopted[0]
                .verdict
                .contains("another glance-sync's copy in flight")
        );
    }

    fn preserving(mode: PreserveIds) -> Job {
        let mut j = job(&["a"]);
        j.policies.insert(
            "a".into(),
            crate::config::TargetPolicy {
                preserve_ids: mode,
                ..Default::default()
            },
        );
        j
    }

    fn copy_id_of(p: &Plan) -> NewCopyId {
        match &p.actions[0].kind {
            ActionKind::Copy {
                id, create_body, ..
            } => {
                assert_eq!(create_body["id"], id.id(), "the body carries the chosen id");
                id.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn preserve_ids_copies_under_the_source_id_with_a_fallback_when_preferred() {
        let s = image("src-id", "ubuntu", "m1");
        let p = run(
            &preserving(PreserveIds::Prefer),
            std::slice::from_ref(&s),
            &[("a", vec![])],
            &Ledger::default(),
        );
        assert!(matches!(
            copy_id_of(&p),
            NewCopyId::Source { id, fallback: Some(_) } if id == "src-id"
        ));
        let p = run(
            &preserving(PreserveIds::Require),
            &[s],
            &[("a", vec![])],
            &Ledger::default(),
        );
        assert!(matches!(
            copy_id_of(&p),
            NewCopyId::Source { fallback: None, .. }
        ));
    }

    #[test]
    fn an_id_held_on_the_target_gives_a_new_id_or_refuses() {
        let s = image("src-id", "ubuntu", "m1");
        let mut squatter = image("src-id", "other-name", "m9");
        squatter.owner = Some("tenant".into());
        let p = run(
            &preserving(PreserveIds::Prefer),
            std::slice::from_ref(&s),
            &[("a", vec![squatter.clone()])],
            &Ledger::default(),
        );
        assert!(matches!(copy_id_of(&p), NewCopyId::NewBecauseTaken { .. }));
        assert!(kinds(&p)[0].contains("with a new id: the source's is held by image 'other-name'"));
        let p = run(
            &preserving(PreserveIds::Require),
            &[s],
            &[("a", vec![squatter])],
            &Ledger::default(),
        );
        assert!(
            matches!(&p.actions[0].kind, ActionKind::Refused { reason } if reason.contains("preserve_ids = require")),
            "{:?}",
            kinds(&p)
        );
    }

    #[test]
    fn our_queued_copy_with_the_source_id_is_uploaded_into_not_deleted() {
        let s = image("src-id", "ubuntu", "m1");
        let mut queued = copy_of(&s, "src-id");
        queued.status = "queued".into();
        queued.checksum = None;
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "src-id", "src-id");
        let p = run(
            &preserving(PreserveIds::Require),
            &[s],
            &[("a", vec![queued])],
            &ledger,
        );
        assert_eq!(p.actions.len(), 1, "{:?}", kinds(&p));
        assert!(matches!(copy_id_of(&p), NewCopyId::Reuse { id } if id == "src-id"));
    }

    #[test]
    fn metadata_rules_apply_per_target() {
        let s = image("s1", "ubuntu", "m1");
        let mut j = job(&["a", "b"]);
        j.policies.insert(
            "b".into(),
            crate::config::TargetPolicy {
                preserve_ids: PreserveIds::Off,
                metadata: crate::config::tests::metadata_rules(
                    "visibility = \"private\"\nadd_tags = [\"edge\"]",
                ),
                ..Default::default()
            },
        );
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "ta", "s1");
        ours(&mut ledger, "b", "tb", "s1");
        let p = run(
            &j,
            std::slice::from_ref(&s),
            &[
                ("a", vec![copy_of(&s, "ta")]),
                ("b", vec![copy_of(&s, "tb")]),
            ],
            &ledger,
        );
        assert_eq!(
            kinds(&p),
            vec![
                "s1@a: in sync",
                "s1@b: update metadata: visibility private (rule), tags edge (rule)"
            ]
        );
    }

    fn member(project: &str, status: &str) -> Member {
        Member {
            project: project.into(),
            status: status.into(),
        }
    }

    fn with_members(source: Vec<Member>, copy: Option<Vec<Member>>, rules: &str) -> Plan {
        with_members_as(source, copy, rules, true)
    }

    fn with_members_as(
        source: Vec<Member>,
        copy: Option<Vec<Member>>,
        rules: &str,
        admin: bool,
    ) -> Plan {
        let mut s = image("s1", "shared-img", "m1");
        s.visibility = "shared".into();
        let mut j = job(&["a"]);
        j.policies.insert(
            "a".into(),
            crate::config::TargetPolicy {
                preserve_ids: PreserveIds::Off,
                metadata: crate::config::tests::metadata_rules(rules),
                ..Default::default()
            },
        );
        let mut ledger = Ledger::default();
        ours(&mut ledger, "a", "t1", "s1");
        let mut members = Members::default();
        members.source.insert("s1".into(), source);
        if let Some(copy) = copy {
            members.target.insert(("a".into(), "t1".into()), copy);
        }
        if !admin {
            members.status_needs_admin.insert("a".into());
        }
        let target_images = BTreeMap::from([("a".to_string(), vec![copy_of(&s, "t1")])]);
        plan(
            &PlanInput {
                job: &j,
                source_images: std::slice::from_ref(&s),
                target_images: &target_images,
                ledger: &ledger,
                projects: &BTreeMap::new(),
                members: &members,
                scope: &every_name,
            },
            &mut |_, _| "new".to_string(),
        )
    }

    #[test]
    fn members_are_mapped_added_removed_and_their_status_follows() {
        let p = with_members(
            vec![
                member("p1", "accepted"),
                member("p2", "pending"),
                member("p9", "accepted"),
            ],
            Some(vec![member("q2", "accepted"), member("old", "pending")]),
            "members = true\nproject_map = { p1 = \"q1\", p2 = \"q2\" }",
        );
        assert_eq!(
            kinds(&p),
            vec!["s1@a: members: +q1 accepted, -old, q2 pending, not in project_map (skipped): p9"]
        );
    }

    #[test]
    fn without_the_admin_role_members_are_added_pending_and_the_plan_says_why() {
        let p = with_members_as(
            vec![member("p1", "accepted"), member("p2", "rejected")],
            Some(vec![member("p2", "pending")]),
            "members = true\nproject_map = { \"*\" = \"*\" }",
            false,
        );
        assert_eq!(
            kinds(&p),
            vec![
                "s1@a: members: +p1 pending, status not replicated, it needs the admin role on \
                 the target: p1 accepted p2 rejected"
            ]
        );
    }

    #[test]
    fn members_unknown_this_run_are_left_alone() {
        let p = with_members(
            vec![member("p1", "accepted")],
            None,
            "members = true\nproject_map = { \"*\" = \"*\" }",
        );
        assert_eq!(kinds(&p), vec!["s1@a: in sync"]);
    }

    #[test]
    fn members_cannot_be_given_to_a_copy_that_a_rule_makes_private() {
        let p = with_members(
            vec![member("p1", "accepted")],
            Some(vec![]),
            "members = true\nvisibility = \"private\"\nproject_map = { \"*\" = \"*\" }",
        );
        let k = kinds(&p);
        assert!(
            k.iter()
                .any(|x| x.contains("members not copied: the copy is private")),
            "{k:?}"
        );
        assert!(p.actions.iter().all(
            |a| !matches!(&a.kind, ActionKind::SyncMembers { changes, .. } if changes.writes())
        ));
    }
}
