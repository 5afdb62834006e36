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
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::sync::mpsc;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub md5: String,
    /// The multihash algorithm computed (the source's if we support it, else sha512).
    pub algo: String,
    pub value: String,
}

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
    #[error("the copy's status is '{status}' after upload, not 'active'")]
    NotActive { status: String },
    #[error("the copy's {field} is {got:?} after upload, expected {expected}")]
    CopyDiffers {
        field: &'static str,
        expected: String,
        got: Option<String>,
    },
}

/// Whether the bytes of `source` can be checked at all: it has an MD5 checksum, or a multihash in
/// an algorithm we compute. The planner skips the others instead of streaming them for nothing.
pub fn source_is_verifiable(source: &Image) -> bool {
    source.checksum.is_some()
        || (source.os_hash_value.is_some()
            && source
                .os_hash_algo
                .as_deref()
                .is_some_and(|a| SUPPORTED_ALGOS.contains(&a)))
}

/// Which multihash to compute while copying `source`.
pub fn algo_for(source: &Image) -> &'static str {
    source
        .os_hash_algo
        .as_deref()
        .and_then(|a| SUPPORTED_ALGOS.iter().find(|s| **s == a))
        .copied()
        .unwrap_or("sha512")
}

enum MultiHasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl MultiHasher {
    fn new(algo: &str) -> MultiHasher {
        match algo {
            "sha256" => MultiHasher::Sha256(Sha256::new()),
            "sha384" => MultiHasher::Sha384(Sha384::new()),
            _ => MultiHasher::Sha512(Sha512::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            MultiHasher::Sha256(h) => h.update(data),
            MultiHasher::Sha384(h) => h.update(data),
            MultiHasher::Sha512(h) => h.update(data),
        }
    }
    fn hex(self) -> String {
        match self {
            MultiHasher::Sha256(h) => hex(&h.finalize()),
            MultiHasher::Sha384(h) => hex(&h.finalize()),
            MultiHasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Digests of a byte stream, computed on two threads while the stream flows.
pub struct StreamHasher {
    md5_tx: mpsc::Sender<Batch>,
    multi_tx: mpsc::Sender<Batch>,
    md5_thread: std::thread::JoinHandle<String>,
    multi_thread: std::thread::JoinHandle<String>,
    algo: &'static str,
    size: u64,
    /// Chunks fed but not yet handed to the threads.
    pending: Vec<Bytes>,
    pending_bytes: usize,
}

impl StreamHasher {
    /// Starts the two hashing threads at nice value `nice` (0 = the process's own priority).
    pub fn start(algo: &'static str, nice: i32) -> StreamHasher {
        let (md5_tx, mut md5_rx) = mpsc::channel::<Batch>(HASH_QUEUE_BATCHES);
        let (multi_tx, mut multi_rx) = mpsc::channel::<Batch>(HASH_QUEUE_BATCHES);
        let md5_thread = std::thread::Builder::new()
            .name("hash-md5".into())
            .spawn(move || {
                lower_this_thread_priority(nice);
                let mut h = Md5::new();
                while let Some(batch) = md5_rx.blocking_recv() {
                    batch.iter().for_each(|chunk| h.update(chunk));
                }
                hex(&h.finalize())
            })
            .expect("spawn hashing thread");
        let multi_thread = std::thread::Builder::new()
            .name(format!("hash-{algo}"))
            .spawn(move || {
                lower_this_thread_priority(nice);
                let mut h = MultiHasher::new(algo);
                while let Some(batch) = multi_rx.blocking_recv() {
                    batch.iter().for_each(|chunk| h.update(chunk));
                }
                h.hex()
            })
            .expect("spawn hashing thread");
        StreamHasher {
            md5_tx,
            multi_tx,
            md5_thread,
            multi_thread,
            algo,
            size: 0,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Queues a chunk for both digests; waits only when a hashing thread is behind.
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
        let _ = self.md5_tx.send(batch.clone()).await;
        let _ = self.multi_tx.send(batch).await;
    }

    /// Waits for both threads to digest everything fed so far.
    pub async fn finish(mut self) -> Digests {
        self.hand_over().await;
        let StreamHasher {
            md5_tx,
            multi_tx,
            md5_thread,
            multi_thread,
            algo,
            size,
            ..
        } = self;
        drop(md5_tx);
        drop(multi_tx);
        let (md5, value) = tokio::task::spawn_blocking(move || {
            (
                md5_thread.join().expect("md5 thread"),
                multi_thread.join().expect("hash thread"),
            )
        })
        .await
        .expect("join hashing threads");
        Digests {
            size,
            md5,
            algo: algo.to_string(),
            value,
        }
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

/// Whether the bytes read are exactly the source image's. At least one recorded digest must match.
pub fn check_against_source(d: &Digests, source: &Image) -> Result<(), VerifyError> {
    let expected_size = source.size.unwrap_or(0);
    if d.size != expected_size {
        return Err(VerifyError::SizeMismatch {
            expected: expected_size,
            got: d.size,
        });
    }
    let mut compared = false;
    if let Some(sum) = &source.checksum {
        if !sum.eq_ignore_ascii_case(&d.md5) {
            return Err(VerifyError::Md5Mismatch {
                expected: sum.clone(),
                got: d.md5.clone(),
            });
        }
        compared = true;
    }
    if let (Some(algo), Some(value)) = (&source.os_hash_algo, &source.os_hash_value)
        && *algo == d.algo
    {
        if !value.eq_ignore_ascii_case(&d.value) {
            return Err(VerifyError::HashMismatch {
                algo: algo.clone(),
                expected: value.clone(),
                got: d.value.clone(),
            });
        }
        compared = true;
    }
    if compared {
        Ok(())
    } else {
        Err(VerifyError::Unverifiable {
            what: "the source image".into(),
            algo: d.algo.clone(),
        })
    }
}

/// Whether the target stored exactly the bytes we sent: active, same size, and the digests its
/// own server computed equal ours.
pub fn check_copy(d: &Digests, copy: &Image) -> Result<(), VerifyError> {
    if !copy.is_active() {
        return Err(VerifyError::NotActive {
            status: copy.status.clone(),
        });
    }
    if copy.size != Some(d.size) {
        return Err(VerifyError::CopyDiffers {
            field: "size",
            expected: d.size.to_string(),
            got: copy.size.map(|s| s.to_string()),
        });
    }
    let mut compared = false;
    if let Some(sum) = &copy.checksum {
        if !sum.eq_ignore_ascii_case(&d.md5) {
            return Err(VerifyError::CopyDiffers {
                field: "checksum",
                expected: d.md5.clone(),
                got: Some(sum.clone()),
            });
        }
        compared = true;
    }
    if copy.os_hash_algo.as_deref() == Some(d.algo.as_str()) {
        if !copy
            .os_hash_value
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case(&d.value))
        {
            return Err(VerifyError::CopyDiffers {
                field: "os_hash_value",
                expected: d.value.clone(),
                got: copy.os_hash_value.clone(),
            });
        }
        compared = true;
    }
    if compared {
        Ok(())
    } else {
        Err(VerifyError::Unverifiable {
            what: "the copy".into(),
            algo: d.algo.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::image;

    async fn digest(chunks: &[&[u8]], algo: &'static str) -> Digests {
        let mut h = StreamHasher::start(algo, 0);
        for c in chunks {
            h.feed(Bytes::copy_from_slice(c)).await;
        }
        h.finish().await
    }

    #[tokio::test]
    async fn digests_match_known_vectors_across_chunk_boundaries() {
        let d = digest(&[b"a", b"bc"], "sha512").await;
        assert_eq!(d.size, 3);
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(d.value.starts_with("ddaf35a193617aba"));
        let d = digest(&[b"abc"], "sha256").await;
        assert_eq!(
            d.value,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn digests_span_many_batches_and_a_partial_last_one() {
        let data: Vec<u8> = (0..(3 * HASH_BATCH_BYTES + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let pieces: Vec<&[u8]> = data.chunks(300_000).collect();
        let d = digest(&pieces, "sha512").await;
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.md5, hex(&Md5::digest(&data)));
        assert_eq!(d.value, hex(&Sha512::digest(&data)));
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
        let mut h = StreamHasher::start("sha384", 17);
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
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
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
                        let mut h = StreamHasher::start("sha512", 19);
                        h.feed(Bytes::from_static(b"abc")).await;
                        h.finish().await
                    });
                assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
                assert!(d.value.starts_with("ddaf35a193617aba"), "{}", d.value);
                assert!(
                    PRIORITY_WARNING.is_completed(),
                    "the failure was not logged"
                );
            })
            .join()
            .unwrap_or_else(|_| panic!("hashing under a filter denying {denied:?} panicked"));
        }
    }

    #[tokio::test]
    async fn corrupt_bytes_fail_the_source_check() {
        let d = digest(&[b"abd"], "sha512").await;
        let mut src = image("s", "x", "900150983cd24fb0d6963f7d28e17f72");
        src.size = Some(3);
        src.os_hash_value = None;
        assert!(matches!(
            check_against_source(&d, &src),
            Err(VerifyError::Md5Mismatch { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_stream_fails_on_size_before_digests() {
        let d = digest(&[b"ab"], "sha512").await;
        let mut src = image("s", "x", "900150983cd24fb0d6963f7d28e17f72");
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
        let d = digest(&[b"abc"], "sha512").await;
        let mut copy = image("t", "x", "900150983cd24fb0d6963f7d28e17f72");
        copy.size = Some(3);
        copy.os_hash_algo = Some("sha256".into());
        copy.os_hash_value = Some("whatever".into());
        assert_eq!(check_copy(&d, &copy), Ok(()));
        copy.checksum = None;
        assert!(matches!(
            check_copy(&d, &copy),
            Err(VerifyError::Unverifiable { .. })
        ));
    }
}
