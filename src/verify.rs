//! Verification: digests computed while bytes stream past, and the checks that decide whether a copy
//! may exist at all.
//!
//! MD5 and the multihash each run on a thread of their own, fed through bounded channels of
//! reference-counted chunks (no copies), so hashing runs beside the network I/O instead of after it.
//! Hashing is the ceiling of a verified copy (one core each for MD5 and SHA-512; see
//! docs/benchmarks.md).
//!
//! The hashing threads run at a lower CPU priority (`[transfer] hashing_nice`, default 19) than
//! the threads that move bytes. When the cores are busy, a hashing thread that held a core while
//! the socket of a slow target drained starved that target; at low priority the I/O threads run
//! the moment a socket is ready and hashing takes the slack, catching up through its queue. On
//! two cores next to real Glance this made copies 15-20% faster (docs/benchmarks.md). The nice
//! value of a thread only weighs against threads of the same scheduling group (with autogroup or
//! a systemd service's cgroup, glance-sync's own threads), so other programs do not starve it.
//! Their priority is never raised (a process already at a higher nice keeps its own), and it is
//! only set on Linux, where each thread has its own (elsewhere it would lower the whole process).

use std::sync::Arc;

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::VerifyDigests;
use crate::image::Image;

/// Chunks are handed to the hashing threads in batches of about this many bytes: one wake-up of
/// each thread (and of the I/O task when a queue was full) per batch instead of per chunk of a few
/// hundred KiB.
const HASH_BATCH_BYTES: usize = 1 << 20;
/// Batches queued per hashing thread. With the batch being filled and the one being hashed this
/// bounds what the I/O side may run ahead of hashing to about 6 MiB.
const HASH_QUEUE_BATCHES: usize = 4;

/// Chunks shared by both hashing threads (reference-counted, never copied).
type Batch = Arc<Vec<Bytes>>;

/// The algorithms we can compute for `os_hash_value`.
pub const SUPPORTED_ALGOS: &[&str] = &["sha512", "sha384", "sha256"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("received {got} bytes but the source image has size {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error(
        "MD5 of the bytes read is {got}, the source's checksum is {expected}: the data is corrupt"
    )]
    Md5Mismatch { expected: String, got: String },
    #[error(
        "{algo} of the bytes read is {got}, the source's os_hash_value is {expected}: the data is corrupt"
    )]
    HashMismatch {
        algo: String,
        expected: String,
        got: String,
    },
    #[error(
        "{what} has no digest we can compare (checksum or os_hash_value with algorithm {algo})"
    )]
    Unverifiable { what: String, algo: String },
    #[error(
        "the copy's {field} is {got:?}, computed by its server over the bytes that matched the \
         source's own digest, but the source image records {field} {recorded}: the source's \
         recorded digests disagree with each other. Fix the source image, or set [transfer] \
         verify_digests = \"all\" to refuse such images before anything is uploaded"
    )]
    SourceRecordDisagrees {
        field: &'static str,
        recorded: String,
        got: Option<String>,
    },
    #[error("the copy's status is '{status}' after upload, not 'active'")]
    NotActive { status: String },
    #[error("the copy's {field} is {got:?} after upload, expected {expected}")]
    CopyDiffers {
        field: &'static str,
        expected: String,
        got: Option<String>,
    },
}

/// A digest we can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Md5,
    Sha256,
    Sha384,
    Sha512,
}

impl Algo {
    /// The multihash algorithm named `name` (Glance's `os_hash_algo`), if we compute it.
    fn multihash(name: &str) -> Option<Algo> {
        match name {
            "sha256" => Some(Algo::Sha256),
            "sha384" => Some(Algo::Sha384),
            "sha512" => Some(Algo::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Sha256 => "sha256",
            Algo::Sha384 => "sha384",
            Algo::Sha512 => "sha512",
        }
    }
}

/// The source's multihash algorithm, when it recorded a value in one we compute.
fn source_multihash(source: &Image) -> Option<Algo> {
    source.os_hash_value.as_ref()?;
    Algo::multihash(source.os_hash_algo.as_deref()?)
}

/// Whether the bytes of `source` can be checked at all: it has an MD5 checksum, or a multihash in
/// an algorithm we compute. The planner skips the others instead of streaming them for nothing.
pub fn source_is_verifiable(source: &Image) -> bool {
    source.checksum.is_some() || source_multihash(source).is_some()
}

/// The digests to compute while copying `source`. With `strongest`, the source's multihash
/// alone: a match proves the bytes are the source's, and MD5 on top proves nothing more (the
/// target's server computes its own MD5, which the read-back compares with the source's). MD5
/// is computed when the source recorded no multihash we compute (an image older than Rocky), and
/// with `all`; `all` without a source multihash adds SHA-512, what a target Glance records by
/// default, so that the read-back compares two digests.
pub fn digests_to_compute(source: &Image, policy: VerifyDigests) -> Vec<Algo> {
    match (policy, source_multihash(source)) {
        // A source without MD5 (a FIPS cloud): MD5 too, for the read-back of a target that
        // records another multihash algorithm (it still records MD5 unless FIPS too).
        (VerifyDigests::Strongest, Some(algo)) if source.checksum.is_none() => {
            vec![Algo::Md5, algo]
        }
        (VerifyDigests::Strongest, Some(algo)) => vec![algo],
        (VerifyDigests::Strongest, None) => vec![Algo::Md5],
        (VerifyDigests::All, Some(algo)) => vec![Algo::Md5, algo],
        (VerifyDigests::All, None) => vec![Algo::Md5, Algo::Sha512],
    }
}

/// The fastest implementation of each digest on the machines we measured (benchmark row 1c):
/// aws-lc-rs's assembly for SHA-512 and SHA-384 (about 13 % ahead of sha2), sha2 for SHA-256
/// (both use the SHA-NI instructions), md-5 for MD5.
enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    AwsLc(aws_lc_rs::digest::Context),
}

impl Hasher {
    fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Md5 => Hasher::Md5(Md5::new()),
            Algo::Sha256 => Hasher::Sha256(Sha256::new()),
            Algo::Sha384 => {
                Hasher::AwsLc(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384))
            }
            Algo::Sha512 => {
                Hasher::AwsLc(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA512))
            }
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::AwsLc(h) => h.update(data),
        }
    }
    fn hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex(&h.finalize()),
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::AwsLc(h) => hex(h.finish().as_ref()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// What the hashing threads computed over a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    /// Each digest computed, in hex.
    pub values: Vec<(Algo, String)>,
}

impl Digests {
    pub fn get(&self, algo: Algo) -> Option<&str> {
        self.values
            .iter()
            .find(|(a, _)| *a == algo)
            .map(|(_, v)| v.as_str())
    }
}

/// Digests of a byte stream, computed on one thread per digest while the stream flows.
pub struct StreamHasher {
    lanes: Vec<(Algo, mpsc::Sender<Batch>, std::thread::JoinHandle<String>)>,
    size: u64,
    /// Chunks fed but not yet handed to the threads.
    pending: Vec<Bytes>,
    pending_bytes: usize,
}

impl StreamHasher {
    /// Starts a hashing thread per algorithm at nice value `nice` (0 = the process's own
    /// priority).
    pub fn start(algos: &[Algo], nice: i32) -> StreamHasher {
        let lanes = algos
            .iter()
            .map(|&algo| {
                let (tx, mut rx) = mpsc::channel::<Batch>(HASH_QUEUE_BATCHES);
                let thread = std::thread::Builder::new()
                    .name(format!("hash-{}", algo.name()))
                    .spawn(move || {
                        lower_this_thread_priority(nice);
                        let mut h = Hasher::new(algo);
                        while let Some(batch) = rx.blocking_recv() {
                            batch.iter().for_each(|chunk| h.update(chunk));
                        }
                        h.hex()
                    })
                    .expect("spawn hashing thread");
                (algo, tx, thread)
            })
            .collect();
        StreamHasher {
            lanes,
            size: 0,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Queues a chunk for every digest; waits only when a hashing thread is behind.
    pub async fn feed(&mut self, chunk: Bytes) {
        self.size += chunk.len() as u64;
        self.pending_bytes += chunk.len();
        self.pending.push(chunk);
        if self.pending_bytes >= HASH_BATCH_BYTES {
            self.hand_over().await;
        }
    }

    async fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch: Batch = Arc::new(std::mem::take(&mut self.pending));
        self.pending_bytes = 0;
        // The threads only stop when the senders are dropped, so these sends cannot fail.
        for (_, tx, _) in &self.lanes {
            let _ = tx.send(batch.clone()).await;
        }
    }

    /// Waits for the threads to digest everything fed so far.
    pub async fn finish(mut self) -> Digests {
        self.hand_over().await;
        let size = self.size;
        let threads: Vec<(Algo, std::thread::JoinHandle<String>)> = self
            .lanes
            .into_iter()
            .map(|(algo, tx, thread)| {
                drop(tx); // end of stream for that thread
                (algo, thread)
            })
            .collect();
        let values = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|(algo, thread)| (algo, thread.join().expect("hashing thread")))
                .collect()
        })
        .await
        .expect("join hashing threads");
        Digests { size, values }
    }
}

/// Lowers the calling thread's priority to nice value `nice`, never raising it: a process that
/// already runs at a higher nice (systemd `Nice=`) keeps its own. Linux keeps a nice value per
/// thread; elsewhere setpriority would lower the whole process, so this does nothing there.
/// A failure costs only speed, so hashing goes on at the thread's priority; the cause (a sandbox,
/// a missing permission) is the same for every thread, so it is logged once per process.
#[cfg(target_os = "linux")]
fn lower_this_thread_priority(nice: i32) {
    if let Err(e) = try_lower_this_thread_priority(nice) {
        PRIORITY_WARNING.call_once(|| {
            tracing::warn!(
                "could not lower the hashing threads' priority to nice {nice} ([transfer] \
                 hashing_nice): {e}; hashing runs at normal priority, which slows copies when the \
                 cores are busy. Under a systemd SystemCallFilter=, allow setpriority (as \
                 deploy/systemd does)"
            )
        });
    }
}

/// Done once a hashing thread failed to lower its priority and said so.
#[cfg(target_os = "linux")]
static PRIORITY_WARNING: std::sync::Once = std::sync::Once::new();

#[cfg(target_os = "linux")]
fn try_lower_this_thread_priority(nice: i32) -> std::io::Result<()> {
    // getpriority answers -1 both for nice -1 and for a failure: only errno tells them apart.
    // SAFETY: __errno_location points at this thread's errno; getpriority and setpriority only
    // read their arguments; `who` 0 is the calling thread on Linux.
    let current = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    if current == -1 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(0) {
            // Without the current value, setting one could raise the priority instead.
            return Err(err);
        }
    }
    if nice <= current {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread_priority(_nice: i32) {}

/// Digests known to describe the bytes read: the ones computed, and, once one of them matched
/// the source's record, the source's recorded ones too (they were computed by the source's server
/// over the same bytes). The read-back compares the copy's digests with these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub size: u64,
    pub md5: Option<ProvenDigest>,
    /// Keyed by os_hash_algo.
    pub multihashes: Vec<(String, ProvenDigest)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenDigest {
    pub value: String,
    /// Computed over the bytes read, or (false) taken from the source's record.
    pub computed: bool,
}

impl Proven {
    /// What a copy must equal when glance-sync did not read the bytes (the target's Glance
    /// pulled them): the source's recorded size and digests. The target computes its own over
    /// the bytes it stored, so a copy that matches holds exactly the bytes the source recorded.
    pub fn recorded_by(source: &Image) -> Proven {
        let digest = |value: &str| ProvenDigest {
            value: value.to_ascii_lowercase(),
            // A mismatch is the copy's fault as far as anyone can tell: it is deleted.
            computed: true,
        };
        Proven {
            size: source.size.unwrap_or(0),
            md5: source.checksum.as_deref().map(digest),
            multihashes: match (&source.os_hash_algo, &source.os_hash_value) {
                (Some(algo), Some(value)) => vec![(algo.clone(), digest(value))],
                _ => vec![],
            },
        }
    }
}

impl ProvenDigest {
    fn computed(value: &str) -> ProvenDigest {
        ProvenDigest {
            value: value.to_string(),
            computed: true,
        }
    }
    fn recorded(value: &str) -> ProvenDigest {
        ProvenDigest {
            value: value.to_ascii_lowercase(),
            computed: false,
        }
    }
}

/// Whether the bytes read are exactly the source image's: the size, and every digest computed
/// that the source recorded too (at least one).
pub fn check_against_source(d: &Digests, source: &Image) -> Result<Proven, VerifyError> {
    let expected_size = source.size.unwrap_or(0);
    if d.size != expected_size {
        return Err(VerifyError::SizeMismatch {
            expected: expected_size,
            got: d.size,
        });
    }
    let mut compared = false;
    if let (Some(sum), Some(md5)) = (&source.checksum, d.get(Algo::Md5)) {
        if !sum.eq_ignore_ascii_case(md5) {
            return Err(VerifyError::Md5Mismatch {
                expected: sum.clone(),
                got: md5.to_string(),
            });
        }
        compared = true;
    }
    if let (Some(algo), Some(value)) = (&source.os_hash_algo, &source.os_hash_value)
        && let Some(ours) = Algo::multihash(algo).and_then(|a| d.get(a))
    {
        if !value.eq_ignore_ascii_case(ours) {
            return Err(VerifyError::HashMismatch {
                algo: algo.clone(),
                expected: value.clone(),
                got: ours.to_string(),
            });
        }
        compared = true;
    }
    if !compared {
        return Err(VerifyError::Unverifiable {
            what: "the source image".into(),
            algo: d
                .values
                .iter()
                .map(|(a, _)| a.name())
                .collect::<Vec<_>>()
                .join("+"),
        });
    }
    let mut multihashes: Vec<(String, ProvenDigest)> = d
        .values
        .iter()
        .filter(|(a, _)| *a != Algo::Md5)
        .map(|(a, v)| (a.name().to_string(), ProvenDigest::computed(v)))
        .collect();
    if let (Some(algo), Some(value)) = (&source.os_hash_algo, &source.os_hash_value)
        && !multihashes.iter().any(|(a, _)| a == algo)
    {
        multihashes.push((algo.clone(), ProvenDigest::recorded(value)));
    }
    Ok(Proven {
        size: d.size,
        md5: d
            .get(Algo::Md5)
            .map(ProvenDigest::computed)
            .or_else(|| source.checksum.as_deref().map(ProvenDigest::recorded)),
        multihashes,
    })
}

/// Whether the target stored exactly the bytes we sent: active, same size, and every digest its
/// own server computed that we know for these bytes is equal (at least one).
pub fn check_copy(p: &Proven, copy: &Image) -> Result<(), VerifyError> {
    if !copy.is_active() {
        return Err(VerifyError::NotActive {
            status: copy.status.clone(),
        });
    }
    if copy.size != Some(p.size) {
        return Err(VerifyError::CopyDiffers {
            field: "size",
            expected: p.size.to_string(),
            got: copy.size.map(|s| s.to_string()),
        });
    }
    // A digest only recorded by the source that the copy contradicts, while the bytes matched
    // what we computed: the source's record is inconsistent, not the copy.
    let differs = |field: &'static str, want: &ProvenDigest, got: Option<&String>| {
        if want.computed {
            VerifyError::CopyDiffers {
                field,
                expected: want.value.clone(),
                got: got.cloned(),
            }
        } else {
            VerifyError::SourceRecordDisagrees {
                field,
                recorded: want.value.clone(),
                got: got.cloned(),
            }
        }
    };
    let mut compared = false;
    if let (Some(sum), Some(md5)) = (&copy.checksum, &p.md5) {
        if !sum.eq_ignore_ascii_case(&md5.value) {
            return Err(differs("checksum", md5, Some(sum)));
        }
        compared = true;
    }
    if let Some(algo) = &copy.os_hash_algo
        && let Some((_, value)) = p.multihashes.iter().find(|(a, _)| a == algo)
    {
        if !copy
            .os_hash_value
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case(&value.value))
        {
            return Err(differs("os_hash_value", value, copy.os_hash_value.as_ref()));
        }
        compared = true;
    }
    if compared {
        Ok(())
    } else {
        Err(VerifyError::Unverifiable {
            what: "the copy".into(),
            algo: copy.os_hash_algo.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulled_copy_must_equal_the_source_record_and_a_difference_blames_the_copy() {
        let mut source = crate::image::tests::image("s", "ubuntu", "m");
        source.size = Some(10);
        source.checksum = Some("AB".into());
        source.os_hash_algo = Some("sha512".into());
        source.os_hash_value = Some("CD".into());
        let proof = Proven::recorded_by(&source);
        let mut copy = source.clone();
        copy.checksum = Some("ab".into());
        copy.os_hash_value = Some("cd".into());
        assert!(check_copy(&proof, &copy).is_ok());
        copy.os_hash_value = Some("ce".into());
        assert!(matches!(
            check_copy(&proof, &copy),
            Err(VerifyError::CopyDiffers {
                field: "os_hash_value",
                ..
            })
        ));
        copy.os_hash_value = Some("cd".into());
        copy.size = Some(9);
        assert!(matches!(
            check_copy(&proof, &copy),
            Err(VerifyError::CopyDiffers { field: "size", .. })
        ));
    }
    // The other implementation, to check ours against.
    use crate::image::tests::image;
    use sha2::{Sha384, Sha512};

    async fn digest(chunks: &[&[u8]], algos: &[Algo]) -> Digests {
        let mut h = StreamHasher::start(algos, 0);
        for c in chunks {
            h.feed(Bytes::copy_from_slice(c)).await;
        }
        h.finish().await
    }

    #[tokio::test]
    async fn digests_match_known_vectors_across_chunk_boundaries() {
        let d = digest(&[b"a", b"bc"], &[Algo::Md5, Algo::Sha512]).await;
        assert_eq!(d.size, 3);
        assert_eq!(d.get(Algo::Md5), Some(ABC_MD5));
        assert!(d.get(Algo::Sha512).unwrap().starts_with("ddaf35a193617aba"));
        let d = digest(&[b"abc"], &[Algo::Sha256]).await;
        assert_eq!(d.get(Algo::Sha256), Some(ABC_SHA256));
        assert_eq!(d.get(Algo::Md5), None, "only what was asked for");
    }

    #[tokio::test]
    async fn digests_span_many_batches_and_a_partial_last_one() {
        let data: Vec<u8> = (0..(3 * HASH_BATCH_BYTES + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let pieces: Vec<&[u8]> = data.chunks(300_000).collect();
        let d = digest(&pieces, &[Algo::Md5, Algo::Sha512, Algo::Sha384]).await;
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.get(Algo::Md5), Some(hex(&Md5::digest(&data)).as_str()));
        assert_eq!(
            d.get(Algo::Sha512),
            Some(hex(&Sha512::digest(&data)).as_str())
        );
        assert_eq!(
            d.get(Algo::Sha384),
            Some(hex(&Sha384::digest(&data)).as_str())
        );
    }

    /// The nice values of this process's threads named `name`, read from /proc (other tests
    /// may run hashing threads of their own meanwhile).
    fn nice_of_threads(name: &str) -> Vec<i64> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // After "(comm)": state is field 3; nice is field 19.
            let nice = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(16))
                .and_then(|n| n.parse().ok());
            if let (true, Some(n)) = (comm.trim() == name, nice) {
                found.push(n);
            }
        }
        found
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_the_configured_nice_value() {
        // Never raised: under `nice -n 18` the threads keep 18.
        // SAFETY: getpriority only reads its arguments.
        let expected = i64::from(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }.max(17));
        let mut h = StreamHasher::start(&[Algo::Md5, Algo::Sha384], 17);
        h.feed(Bytes::from_static(b"abc")).await;
        // The threads are alive until finish(); they set their priority before the first chunk.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (mut md5, mut multi) = (vec![], vec![]);
        while std::time::Instant::now() < deadline {
            md5 = nice_of_threads("hash-md5");
            multi = nice_of_threads("hash-sha384");
            if md5.contains(&expected) && multi.contains(&expected) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            md5.contains(&expected) && multi.contains(&expected),
            "{md5:?} {multi:?}"
        );
        let d = h.finish().await;
        assert_eq!(d.get(Algo::Md5), Some(ABC_MD5));
    }

    /// What a systemd unit whose SystemCallFilter= denies the priority calls, with
    /// SystemCallErrorNumber=EPERM, does to the hashing threads: the calls fail with EPERM. That
    /// may cost speed, never the copy: no panic, right digests.
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        )
    ))]
    #[test]
    fn hashing_goes_on_when_a_sandbox_refuses_the_priority_calls_with_eperm() {
        use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

        let denials: [&[i64]; 2] = [
            &[libc::SYS_setpriority],
            &[libc::SYS_getpriority, libc::SYS_setpriority],
        ];
        for denied in denials {
            let filter = SeccompFilter::new(
                denied.iter().map(|&nr| (nr, vec![])).collect(),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EPERM as u32),
                std::env::consts::ARCH.try_into().unwrap(),
            )
            .unwrap();
            let program = BpfProgram::try_from(filter).unwrap();
            // A filter binds the thread that installs it and the threads it starts (the hashing
            // threads), not the rest of the test process.
            std::thread::spawn(move || {
                seccompiler::apply_filter(&program).expect("install the seccomp filter");
                let err = try_lower_this_thread_priority(19)
                    .expect_err("the filter must make lowering the priority fail");
                assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{denied:?}: {err}");
                let d = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let mut h = StreamHasher::start(&[Algo::Md5, Algo::Sha512], 19);
                        h.feed(Bytes::from_static(b"abc")).await;
                        h.finish().await
                    });
                assert_eq!(d.get(Algo::Md5), Some(ABC_MD5));
                assert!(
                    d.get(Algo::Sha512).unwrap().starts_with("ddaf35a193617aba"),
                    "{d:?}"
                );
                assert!(
                    PRIORITY_WARNING.is_completed(),
                    "the failure was not logged"
                );
            })
            .join()
            .unwrap_or_else(|_| panic!("hashing under a filter denying {denied:?} panicked"));
        }
    }

    const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// A source image of the bytes `abc` recording `algo` (and MD5 when `md5`).
    fn abc_source(algo: Option<Algo>, md5: bool) -> Image {
        let mut src = image("s", "x", ABC_MD5);
        src.size = Some(3);
        src.checksum = md5.then(|| ABC_MD5.to_string());
        src.os_hash_algo = algo.map(|a| a.name().to_string());
        src.os_hash_value = algo.map(|a| {
            let mut h = Hasher::new(a);
            h.update(b"abc");
            h.hex()
        });
        src
    }

    #[test]
    fn strongest_hashes_the_source_multihash_alone_and_md5_only_for_legacy_images() {
        use VerifyDigests::{All, Strongest};
        for algo in [Algo::Sha512, Algo::Sha384, Algo::Sha256] {
            let src = abc_source(Some(algo), true);
            assert_eq!(digests_to_compute(&src, Strongest), [algo]);
            assert_eq!(digests_to_compute(&src, All), [Algo::Md5, algo]);
        }
        let legacy = abc_source(None, true);
        assert_eq!(digests_to_compute(&legacy, Strongest), [Algo::Md5]);
        assert_eq!(digests_to_compute(&legacy, All), [Algo::Md5, Algo::Sha512]);
        // No MD5 recorded (FIPS): MD5 too, for the read-back on a target of another algorithm.
        let fips = abc_source(Some(Algo::Sha512), false);
        assert_eq!(
            digests_to_compute(&fips, Strongest),
            [Algo::Md5, Algo::Sha512]
        );
        let mut unknown_algo = abc_source(Some(Algo::Sha512), true);
        unknown_algo.os_hash_algo = Some("blake3".into());
        assert_eq!(digests_to_compute(&unknown_algo, Strongest), [Algo::Md5]);
    }

    #[tokio::test]
    async fn a_corrupt_byte_fails_the_source_check_with_every_policy_and_algorithm() {
        for policy in [VerifyDigests::Strongest, VerifyDigests::All] {
            for algo in [
                Some(Algo::Sha512),
                Some(Algo::Sha384),
                Some(Algo::Sha256),
                None,
            ] {
                let src = abc_source(algo, true);
                let algos = digests_to_compute(&src, policy);
                let good = digest(&[b"abc"], &algos).await;
                assert!(
                    check_against_source(&good, &src).is_ok(),
                    "{policy:?} {algo:?}"
                );
                let bad = digest(&[b"abd"], &algos).await;
                assert!(
                    matches!(
                        check_against_source(&bad, &src),
                        Err(VerifyError::HashMismatch { .. } | VerifyError::Md5Mismatch { .. })
                    ),
                    "{policy:?} {algo:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn with_strongest_the_read_back_compares_the_copy_with_the_sources_proven_digests() {
        let src = abc_source(Some(Algo::Sha512), true);
        let d = digest(&[b"abc"], &[Algo::Sha512]).await;
        let proven = check_against_source(&d, &src).unwrap();
        assert_eq!(
            proven.md5,
            Some(ProvenDigest::recorded(ABC_MD5)),
            "the source's, vouched for"
        );
        // A target that records sha256: its MD5 is what is compared.
        let mut copy = image("t", "x", ABC_MD5);
        copy.size = Some(3);
        copy.os_hash_algo = Some("sha256".into());
        copy.os_hash_value = Some("whatever".into());
        assert_eq!(check_copy(&proven, &copy), Ok(()));
        copy.checksum = Some("0".repeat(32));
        assert!(
            matches!(
                check_copy(&proven, &copy),
                Err(VerifyError::SourceRecordDisagrees {
                    field: "checksum",
                    ..
                })
            ),
            "the source's MD5 was never checked: its record is to blame"
        );
        // A target recording the same algorithm: its value must be ours.
        let mut copy = abc_source(Some(Algo::Sha512), true);
        copy.id = "t".into();
        assert_eq!(check_copy(&proven, &copy), Ok(()));
        copy.os_hash_value = Some("0".repeat(128));
        assert!(matches!(
            check_copy(&proven, &copy),
            Err(VerifyError::CopyDiffers {
                field: "os_hash_value",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn corrupt_bytes_fail_the_source_check() {
        let d = digest(&[b"abd"], &[Algo::Md5]).await;
        let mut src = image("s", "x", ABC_MD5);
        src.size = Some(3);
        src.os_hash_value = None;
        assert!(matches!(
            check_against_source(&d, &src),
            Err(VerifyError::Md5Mismatch { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_stream_fails_on_size_before_digests() {
        let d = digest(&[b"ab"], &[Algo::Md5, Algo::Sha512]).await;
        let mut src = image("s", "x", ABC_MD5);
        src.size = Some(3);
        assert_eq!(
            check_against_source(&d, &src),
            Err(VerifyError::SizeMismatch {
                expected: 3,
                got: 2
            })
        );
    }

    #[tokio::test]
    async fn copy_with_other_hash_algorithm_is_checked_by_md5() {
        let d = digest(&[b"abc"], &[Algo::Md5, Algo::Sha512]).await;
        let proven = check_against_source(&d, &abc_source(None, true)).unwrap();
        let mut copy = image("t", "x", ABC_MD5);
        copy.size = Some(3);
        copy.os_hash_algo = Some("sha256".into());
        copy.os_hash_value = Some("whatever".into());
        assert_eq!(check_copy(&proven, &copy), Ok(()));
        copy.checksum = None;
        assert!(matches!(
            check_copy(&proven, &copy),
            Err(VerifyError::Unverifiable { .. })
        ));
    }
}
