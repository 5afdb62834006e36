//! In-process fake of the OpenStack Glance v2 image API, modelled on Glance 33
//! behind the "fakeauth" filter of `shared/reference/real-glance` (every caller
//! is admin of project `admin`).
//!
//! Tests use it where a real Glance is too slow to start or cannot be made to
//! misbehave. Its contract: whatever it implements answers like real Glance
//! (status codes, JSON shapes, headers, lifecycle, quirks such as the 409 on a
//! deleted id or the stale hashes after a format-mismatch 415), as checked
//! against `transcript.md` and Glance's source. The only invented behaviour is
//! the opt-in [`Faults`].
//!
//! Image data is never buffered whole on the way out: downloads are streamed in
//! 1 MiB chunks, and [`ImageData::Synthetic`] images are a pseudo-random stream
//! from a seed, periodic after 1 MiB, served from one cached period so
//! multi-GiB transfers cost neither memory nor CPU.

// Each test binary uses a different subset of this helper.
#![allow(dead_code)]

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

/// Size of the pieces a download is cut into; also the synthetic generator's unit.
const CHUNK: usize = 1 << 20;
/// How many leading upload bytes are kept for format inspection (ISO needs 32 KiB + a bit).
const INSPECT_BYTES: usize = 64 * 1024;
/// Glance's default `image_property_quota` and `image_tag_quota`.
const PROPERTY_QUOTA: usize = 128;
const TAG_QUOTA: usize = 128;
/// Glance's defaults `limit_param_default` and `api_limit_max`.
const DEFAULT_LIMIT: u64 = 25;
const MAX_LIMIT: u64 = 1000;
/// fakeauth's project: owner of created images and the "own" project for listing rules.
const ADMIN_PROJECT: &str = "admin";

const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];
const VISIBILITIES: &[&str] = &["community", "public", "private", "shared"];
const STATUSES: &[&str] = &[
    "queued",
    "saving",
    "active",
    "killed",
    "deleted",
    "uploading",
    "importing",
    "pending_delete",
    "deactivated",
];
/// Formats oslo's format_inspector recognises; a declared format from this list must match the bytes.
const INSPECTABLE: &[&str] = &[
    "raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "qed", "iso", "gpt", "luks",
];
const PATCH_V20: &str = "application/openstack-images-v2.0-json-patch";
const PATCH_V21: &str = "application/openstack-images-v2.1-json-patch";

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Server-wide settings that a real cloud fixes in `glance-api.conf`.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// `[DEFAULT] hashing_algorithm`: "sha512" (Glance default), "sha256" or "sha384".
    pub hash_algo: String,
    /// false: uploads are hashed and counted but the bytes are dropped, so multi-GiB
    /// uploads cost no memory. Such images answer GET /file with 204, like a store
    /// that lost the data.
    pub store_data: bool,
    /// false (benchmarks): an upload whose size was announced with
    /// [`FakeGlance::declare_upload`] is not hashed; the image records the declared digests
    /// instead, so the fake receives faster than a client can send. The bytes are then not
    /// checked at all. Uploads of an undeclared size are hashed as usual.
    pub hash_uploads: bool,
    /// true (benchmarks of 100,000s of images): a listing's order is computed once and kept
    /// until the next write request or added image, so that a page costs O(page), not a sort
    /// of the whole cloud, as Glance's indexed query does. Answers stay the same.
    pub cache_listings: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            hash_algo: "sha512".to_owned(),
            store_data: true,
            hash_uploads: true,
            cache_listings: false,
        }
    }
}

/// Payload of an image created with [`FakeGlance::add_image`].
#[derive(Clone, Debug)]
pub enum ImageData {
    Bytes(Bytes),
    /// Deterministic pseudo-random bytes produced from `seed` whenever they are read,
    /// so a multi-GiB image needs no memory.
    Synthetic {
        size: u64,
        seed: u64,
    },
}

impl ImageData {
    pub fn synthetic(size: u64, seed: u64) -> Self {
        ImageData::Synthetic { size, seed }
    }

    pub fn len(&self) -> u64 {
        match self {
            ImageData::Bytes(b) => b.len() as u64,
            ImageData::Synthetic { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole payload in memory; meant for small images in assertions.
    pub fn materialize(&self) -> Bytes {
        match self {
            ImageData::Bytes(b) => b.clone(),
            ImageData::Synthetic { size, seed } => synthetic_bytes(*seed, 0, *size as usize),
        }
    }

    /// `(md5 hex, <algo> hex)` of the payload, as Glance would record them.
    pub fn digests(&self, algo: &str) -> (String, String) {
        let algo =
            HashAlgo::parse(algo).unwrap_or_else(|| panic!("unsupported hash algorithm {algo}"));
        Stored::from(self.clone()).digests(algo)
    }
}

/// Everything needed to put an image straight into the fake's store, bypassing the API.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// None: a fresh uuid4.
    pub id: Option<String>,
    pub name: Option<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub visibility: String,
    pub protected: bool,
    pub os_hidden: bool,
    pub min_disk: u64,
    pub min_ram: u64,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub data: ImageData,
    /// None means "active". Statuses without data ("queued", "saving", "killed", ...)
    /// ignore `data`; "active" and "deactivated" keep it.
    pub status: Option<String>,
    /// Overrides the server's algorithm for this image (clouds change it over time).
    pub hash_algo: Option<String>,
    /// false: `checksum` is null and downloads carry no Content-MD5 (e.g. FIPS builds).
    pub with_checksum: bool,
    /// false: `os_hash_algo`/`os_hash_value` are null (images uploaded before Rocky).
    pub with_multihash: bool,
}

impl ImageSpec {
    pub fn new(name: impl Into<String>, data: ImageData) -> Self {
        ImageSpec {
            id: None,
            name: Some(name.into()),
            disk_format: Some("raw".to_owned()),
            container_format: Some("bare".to_owned()),
            visibility: "shared".to_owned(),
            protected: false,
            os_hidden: false,
            min_disk: 0,
            min_ram: 0,
            owner: Some(ADMIN_PROJECT.to_owned()),
            tags: Vec::new(),
            properties: BTreeMap::new(),
            data,
            status: None,
            hash_algo: None,
            with_checksum: true,
            with_multihash: true,
        }
    }
}

/// Misbehaviour real Glance cannot be told to produce. Data faults apply per GET /file
/// response; offsets count bytes of that response's body.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Flip one byte at the image's middle offset (size / 2) when a response covers it;
    /// headers and the recorded checksum stay unchanged.
    pub corrupt_data: bool,
    /// Abort the connection after this many body bytes.
    pub truncate_at: Option<u64>,
    /// Stop sending after this many body bytes but keep the connection open (for timeouts).
    pub stall_at: Option<u64>,
    /// Apply the data faults above only to the first N GET /file responses after
    /// `set_faults` (None: to all), so a retry or resume can succeed.
    pub data_fault_limit: Option<u32>,
    /// PUT /file reads the whole body, then answers this status; the image returns to queued.
    pub fail_uploads_with: Option<u16>,
    /// PUT /file stores the data and makes the image active as usual, then answers this status
    /// instead of 204: what a client sees when a proxy retried an upload whose first attempt got
    /// through (Glance answers the retry 409, the image being active already).
    pub answer_uploads_with: Option<u16>,
    /// The store keeps the first byte of an upload flipped (a bad disk or NIC): the image becomes
    /// active with the digests of the corrupt bytes, as Glance computes them on what it stores.
    pub corrupt_uploads: bool,
    /// POST /v2/images answers this status without creating anything.
    pub fail_creates_with: Option<u16>,
    /// The next `times` requests whose method and path start with `request_prefix` (e.g.
    /// "GET /v2/images", "POST /v2/images") are answered `status`, with `Retry-After` when set,
    /// before reaching the API: a proxy or an overloaded API worker.
    pub transient: Option<Transient>,
    /// Uploads announcing more bytes than this are refused with 413, as Glance's
    /// `image_size_cap` or a storage quota refuses them.
    pub size_cap: Option<u64>,
    /// GET /v2/images answers 200 with this body verbatim (malformed or surprising pages).
    pub list_body: Option<String>,
    /// GET /file ignores `Range` and sends the whole image with 200, as some proxies and stores
    /// do.
    pub ignore_range: bool,
}

#[derive(Clone, Debug)]
pub struct Transient {
    pub request_prefix: String,
    pub status: u16,
    pub times: u32,
    pub retry_after: Option<u64>,
}

/// A running fake Glance on 127.0.0.1; stops when dropped.
pub struct FakeGlance {
    /// Service root, e.g. `http://127.0.0.1:40123` (no `/v2`), as a catalog would list it.
    pub url: String,
    state: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGlance {
    pub async fn start() -> FakeGlance {
        Self::start_with(FakeOptions::default()).await
    }

    pub async fn start_with(opts: FakeOptions) -> FakeGlance {
        let algo = HashAlgo::parse(&opts.hash_algo)
            .unwrap_or_else(|| panic!("unsupported hash_algo {:?}", opts.hash_algo));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake glance");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Shared {
            algo,
            store_data: opts.store_data,
            hash_uploads: opts.hash_uploads,
            cache_listings: opts.cache_listings,
            addr: addr.to_string(),
            inner: Mutex::new(Inner::default()),
            bytes_served: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
        });
        let app = router(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        FakeGlance {
            url: format!("http://{addr}"),
            state,
            shutdown: Some(tx),
            task,
        }
    }

    /// Creates an image directly (no HTTP, not recorded in `requests`). Returns its id.
    /// Hashing a synthetic image generates it once; results are cached per (size, seed, algo).
    pub fn add_image(&self, spec: ImageSpec) -> String {
        let status = spec.status.clone().unwrap_or_else(|| "active".to_owned());
        assert!(
            STATUSES.contains(&status.as_str())
                && status != "deleted"
                && status != "pending_delete",
            "add_image: unsupported status {status:?}"
        );
        let algo = match &spec.hash_algo {
            Some(a) => {
                HashAlgo::parse(a).unwrap_or_else(|| panic!("unsupported hash algorithm {a}"))
            }
            None => self.state.algo,
        };
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        assert!(is_uuid(&id), "add_image: Glance ids are UUIDs, got {id:?}");
        let has_data = status == "active" || status == "deactivated";
        let stored = has_data.then(|| Stored::from(spec.data.clone()));
        let mut img = Image {
            id: id.clone(),
            name: spec.name,
            disk_format: spec.disk_format,
            container_format: spec.container_format,
            visibility: spec.visibility,
            size: None,
            virtual_size: None,
            status,
            checksum: None,
            protected: spec.protected,
            min_ram: spec.min_ram as i64,
            min_disk: spec.min_disk as i64,
            owner: spec.owner,
            os_hidden: spec.os_hidden,
            os_hash_algo: None,
            os_hash_value: None,
            created: 0,
            updated: 0,
            tags: Vec::new(),
            props: spec
                .properties
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
            data: None,
            stale_store_file: false,
            upload_token: 0,
        };
        for t in spec.tags {
            add_tag_to(&mut img.tags, t);
        }
        if let Some(stored) = stored {
            // Skipping digests lets tests add huge images without generating them once.
            let (md5, multi) = if spec.with_checksum || spec.with_multihash {
                stored.digests(algo)
            } else {
                (String::new(), String::new())
            };
            let size = stored.len();
            let head = stored.read(0, size.min(INSPECT_BYTES as u64) as usize);
            img.size = Some(size);
            img.virtual_size = img.disk_format.as_deref().and_then(|f| {
                inspect(f, img.container_format.as_deref(), &head, size)
                    .ok()
                    .flatten()
            });
            if spec.with_checksum {
                img.checksum = Some(md5);
            }
            if spec.with_multihash {
                img.os_hash_algo = Some(algo.name().to_owned());
                img.os_hash_value = Some(multi);
            }
            img.data = Some(stored);
        }
        let mut inner = self.state.lock();
        assert!(
            !inner.images.contains_key(&id) && !inner.deleted.contains(&id),
            "add_image: id {id} already used"
        );
        let t = inner.tick();
        img.created = t;
        img.updated = t;
        inner.images.insert(id.clone(), img);
        id
    }

    /// The image as GET /v2/images/{id} would return it (None if absent or deleted).
    pub fn image(&self, id: &str) -> Option<Value> {
        self.state.lock().images.get(id).map(Image::to_json)
    }

    /// Every non-deleted image (hidden, community and killed ones too), newest first.
    pub fn images(&self) -> Vec<Value> {
        let inner = self.state.lock();
        let mut all: Vec<&Image> = inner.images.values().collect();
        all.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        all.into_iter().map(Image::to_json).collect()
    }

    pub fn set_faults(&self, f: Faults) {
        let mut inner = self.state.lock();
        inner.faults = f;
        inner.faulted_downloads = 0;
    }

    /// Every request received, in arrival order: (method, path with query).
    pub fn requests(&self) -> Vec<(String, String)> {
        let inner = self.state.lock();
        inner
            .requests
            .iter()
            .map(|r| (r.method.clone(), r.target.clone()))
            .collect()
    }

    /// Answered requests as `"METHOD /path?query (status)"`, the format of the real-Glance
    /// harness's `RealGlance::requests`, so assertions can be shared between both.
    pub fn request_log(&self) -> Vec<String> {
        let inner = self.state.lock();
        inner
            .requests
            .iter()
            .filter_map(|r| Some(format!("{} {} ({})", r.method, r.target, r.status?)))
            .collect()
    }

    /// `request_log` minus GET and HEAD, like `RealGlance::write_requests`.
    pub fn write_request_log(&self) -> Vec<String> {
        self.request_log()
            .into_iter()
            .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
            .collect()
    }

    pub fn clear_requests(&self) {
        let mut inner = self.state.lock();
        inner.requests.clear();
        inner.write_requests = 0;
    }

    /// Count of requests other than GET and HEAD (i.e. anything that may change state).
    pub fn write_requests(&self) -> usize {
        self.state.lock().write_requests
    }

    /// Image data bytes handed to the connection by GET /file responses so far.
    pub fn bytes_served(&self) -> u64 {
        self.state.bytes_served.load(Ordering::Relaxed)
    }

    /// Image data bytes read from PUT /file request bodies so far.
    pub fn bytes_received(&self) -> u64 {
        self.state.bytes_received.load(Ordering::Relaxed)
    }

    /// Stored bytes of an image with data; None for synthetic, discarded or absent data.
    pub fn image_data(&self, id: &str) -> Option<Bytes> {
        match self.state.lock().images.get(id)?.data.as_ref()? {
            Stored::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// Forces a status without any transition checks, e.g. "saving" to mimic a
    /// glance-api worker that died mid-upload (real Glance then answers 409 forever).
    pub fn set_status(&self, id: &str, status: &str) {
        assert!(
            STATUSES.contains(&status) && status != "deleted" && status != "pending_delete",
            "set_status: unsupported status {status:?} (deleted images vanish from the API)"
        );
        let mut inner = self.state.lock();
        let t = inner.tick();
        let img = inner
            .images
            .get_mut(id)
            .unwrap_or_else(|| panic!("set_status: no image {id}"));
        img.set_status(status);
        img.updated = t;
    }

    /// Drops the stored data of an image but leaves its metadata, like a backend that
    /// lost the file: real Glance then answers GET /file with 204 even for active images.
    pub fn lose_data(&self, id: &str) {
        let mut inner = self.state.lock();
        let img = inner
            .images
            .get_mut(id)
            .unwrap_or_else(|| panic!("lose_data: no image {id}"));
        if img.data.is_some() {
            img.data = Some(Stored::Discarded);
        }
    }

    /// With `hash_uploads: false`: an upload of `data.len()` bytes records `data`'s digests
    /// (in the server's algorithm) without hashing what it receives. Benchmarks only.
    pub fn declare_upload(&self, data: &ImageData) {
        let algo = self.state.algo;
        let digests = Stored::from(data.clone()).digests(algo);
        self.state
            .lock()
            .declared_uploads
            .insert((data.len(), algo), digests);
    }

    /// Ids deleted through the API; they can never be reused (409), as in real Glance.
    pub fn deleted_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state.lock().deleted.iter().cloned().collect();
        ids.sort();
        ids
    }
}

impl Drop for FakeGlance {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Stop accepting at once; connections still streaming die with the runtime.
        self.task.abort();
    }
}

/// The synthetic stream repeats after this many 8-byte words: a prime a little above 1 MiB,
/// so the repeats fall at a different place in every 1 MiB chunk. (A resume that spliced in data
/// from an offset off by exactly a multiple of the period would go unnoticed; no fault does that.)
const SYNTHETIC_PERIOD_WORDS: u64 = 131_101;
const SYNTHETIC_PERIOD: u64 = SYNTHETIC_PERIOD_WORDS * 8;

/// One period of the synthetic stream for `seed`, followed by the first CHUNK bytes again, so
/// that any piece of up to CHUNK bytes is one contiguous slice of it. Generated once per seed
/// (2 MiB each): serving a download then costs no CPU for the bytes themselves, which keeps the
/// fake out of the way of the benchmark's measurements on a small machine.
fn synthetic_block(seed: u64) -> Bytes {
    static BLOCKS: OnceLock<Mutex<HashMap<u64, Bytes>>> = OnceLock::new();
    let blocks = BLOCKS.get_or_init(Default::default);
    if let Some(b) = blocks.lock().unwrap_or_else(|e| e.into_inner()).get(&seed) {
        return b.clone();
    }
    let len = SYNTHETIC_PERIOD as usize + CHUNK;
    let mut buf = Vec::with_capacity(len);
    let mut idx = 0u64;
    while buf.len() < len {
        let w = synthetic_word(seed, idx % SYNTHETIC_PERIOD_WORDS).to_le_bytes();
        let n = (len - buf.len()).min(8);
        buf.extend_from_slice(&w[..n]);
        idx += 1;
    }
    let block = Bytes::from(buf);
    blocks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(seed, block.clone());
    block
}

/// `len` bytes of the synthetic stream for `seed`, starting at `offset`. Pieces of up to
/// CHUNK bytes share the per-seed block (no copy).
pub fn synthetic_bytes(seed: u64, offset: u64, len: usize) -> Bytes {
    if len <= CHUNK {
        let start = (offset % SYNTHETIC_PERIOD) as usize;
        return synthetic_block(seed).slice(start..start + len);
    }
    let mut buf = vec![0u8; len];
    synthetic_fill(seed, offset, &mut buf);
    Bytes::from(buf)
}

/// Fills `buf` with the synthetic stream for `seed` from `offset`: word `i` of the stream is
/// SplitMix64 of `i` modulo the period, so any range can be produced without generating what
/// precedes it.
pub fn synthetic_fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let block = synthetic_block(seed);
    let mut pos = offset;
    let mut done = 0;
    while done < buf.len() {
        let start = (pos % SYNTHETIC_PERIOD) as usize;
        let n = (buf.len() - done).min(block.len() - start);
        buf[done..done + n].copy_from_slice(&block[start..start + n]);
        done += n;
        pos += n as u64;
    }
}

fn synthetic_word(seed: u64, idx: u64) -> u64 {
    let mut z = seed.wrapping_add(idx.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Shared {
    algo: HashAlgo,
    store_data: bool,
    hash_uploads: bool,
    cache_listings: bool,
    addr: String,
    inner: Mutex<Inner>,
    bytes_served: AtomicU64,
    bytes_received: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not take every later request down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Inner {
    images: HashMap<String, Image>,
    /// Soft-deleted ids: Glance keeps the rows, so they stay taken.
    deleted: HashSet<String>,
    /// Last timestamp handed out (µs since epoch); strictly increasing so that images
    /// made within one second still sort by creation, as microsecond DB columns do.
    last_micros: u64,
    faults: Faults,
    faulted_downloads: u32,
    requests: Vec<RequestRecord>,
    request_seq: u64,
    write_requests: usize,
    upload_seq: u64,
    /// `declare_upload`: (size, algorithm) → (md5, multihash) recorded for such uploads.
    declared_uploads: HashMap<(u64, HashAlgo), (String, String)>,
    list_cache: Option<ListCache>,
}

/// One listing's order (`FakeOptions::cache_listings`): the ids matching its filters, sorted,
/// valid while `stamp` holds.
struct ListCache {
    query: String,
    stamp: (usize, usize, u64),
    ids: Vec<String>,
    position: HashMap<String, usize>,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last_micros = now.max(self.last_micros + 1);
        self.last_micros
    }
}

struct RequestRecord {
    seq: u64,
    method: String,
    target: String,
    /// Set once the handler has produced the response head.
    status: Option<u16>,
}

#[derive(Clone, Debug)]
enum Stored {
    Bytes(Bytes),
    Synthetic {
        size: u64,
        seed: u64,
    },
    /// Uploaded with `store_data: false`, or lost via `lose_data`.
    Discarded,
}

impl From<ImageData> for Stored {
    fn from(d: ImageData) -> Self {
        match d {
            ImageData::Bytes(b) => Stored::Bytes(b),
            ImageData::Synthetic { size, seed } => Stored::Synthetic { size, seed },
        }
    }
}

impl Stored {
    fn len(&self) -> u64 {
        match self {
            Stored::Bytes(b) => b.len() as u64,
            Stored::Synthetic { size, .. } => *size,
            Stored::Discarded => 0,
        }
    }

    fn read(&self, offset: u64, len: usize) -> Bytes {
        match self {
            Stored::Bytes(b) => b.slice(offset as usize..offset as usize + len),
            Stored::Synthetic { seed, .. } => synthetic_bytes(*seed, offset, len),
            Stored::Discarded => Bytes::new(),
        }
    }

    fn digests(&self, algo: HashAlgo) -> (String, String) {
        match self {
            Stored::Bytes(b) => {
                let mut h = Hashers::new(algo);
                h.update(b);
                h.finish()
            }
            Stored::Synthetic { size, seed } => synthetic_digests(*size, *seed, algo),
            Stored::Discarded => Hashers::new(algo).finish(),
        }
    }
}

type DigestCache = Mutex<HashMap<(u64, u64, HashAlgo), (String, String)>>;

/// Hashing a multi-GiB synthetic image takes seconds; tests often create the same one again.
fn synthetic_digests(size: u64, seed: u64, algo: HashAlgo) -> (String, String) {
    static CACHE: OnceLock<DigestCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(size, seed, algo))
    {
        return hit.clone();
    }
    let mut h = Hashers::new(algo);
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let n = ((size - pos) as usize).min(CHUNK);
        synthetic_fill(seed, pos, &mut buf[..n]);
        h.update(&buf[..n]);
        pos += n as u64;
    }
    let out = h.finish();
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((size, seed, algo), out.clone());
    out
}

#[derive(Clone, Debug)]
struct Image {
    id: String,
    name: Option<String>,
    disk_format: Option<String>,
    container_format: Option<String>,
    visibility: String,
    size: Option<u64>,
    virtual_size: Option<u64>,
    status: String,
    checksum: Option<String>,
    protected: bool,
    min_ram: i64,
    min_disk: i64,
    owner: Option<String>,
    os_hidden: bool,
    os_hash_algo: Option<String>,
    os_hash_value: Option<String>,
    created: u64,
    updated: u64,
    /// A set in Glance; kept in insertion order here.
    tags: Vec<String>,
    /// Custom properties (string values).
    props: BTreeMap<String, Value>,
    /// None: no location (never uploaded).
    data: Option<Stored>,
    /// A 415'd upload leaves its file in the store; the next upload then fails with 500
    /// (glance_store Duplicate) until the image is deleted.
    stale_store_file: bool,
    upload_token: u64,
}

impl Image {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.props {
            m.insert(k.clone(), v.clone());
        }
        m.insert("name".into(), opt_str(&self.name));
        m.insert("disk_format".into(), opt_str(&self.disk_format));
        m.insert("container_format".into(), opt_str(&self.container_format));
        m.insert("visibility".into(), json!(self.visibility));
        m.insert("size".into(), json!(self.size));
        m.insert("virtual_size".into(), json!(self.virtual_size));
        m.insert("status".into(), json!(self.status));
        m.insert("checksum".into(), opt_str(&self.checksum));
        m.insert("protected".into(), json!(self.protected));
        m.insert("min_ram".into(), json!(self.min_ram));
        m.insert("min_disk".into(), json!(self.min_disk));
        m.insert("owner".into(), opt_str(&self.owner));
        m.insert("os_hidden".into(), json!(self.os_hidden));
        m.insert("os_hash_algo".into(), opt_str(&self.os_hash_algo));
        m.insert("os_hash_value".into(), opt_str(&self.os_hash_value));
        m.insert("id".into(), json!(self.id));
        m.insert("created_at".into(), json!(isotime(self.created)));
        m.insert("updated_at".into(), json!(isotime(self.updated)));
        m.insert("tags".into(), json!(self.tags));
        m.insert("self".into(), json!(format!("/v2/images/{}", self.id)));
        m.insert("file".into(), json!(format!("/v2/images/{}/file", self.id)));
        m.insert("schema".into(), json!("/v2/schemas/image"));
        Value::Object(m)
    }

    /// Glance's status setter side effect: entering queued forgets size and virtual_size.
    fn set_status(&mut self, status: &str) {
        if status == "queued" {
            self.size = None;
            self.virtual_size = None;
        }
        self.status = status.to_owned();
    }

    fn has_servable_data(&self) -> bool {
        matches!(self.status.as_str(), "active" | "deactivated")
            && matches!(self.data, Some(Stored::Bytes(_) | Stored::Synthetic { .. }))
    }
}

fn opt_str(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

fn add_tag_to(tags: &mut Vec<String>, tag: String) {
    if !tags.contains(&tag) {
        tags.push(tag);
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HashAlgo {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgo {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(HashAlgo::Sha256),
            "sha384" => Some(HashAlgo::Sha384),
            "sha512" => Some(HashAlgo::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha384 => "sha384",
            HashAlgo::Sha512 => "sha512",
        }
    }
}

enum MultiHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// MD5 (`checksum`) and the multihash, computed in one pass like glance_store does.
struct Hashers {
    md5: Md5,
    multi: MultiHasher,
}

impl Hashers {
    fn new(algo: HashAlgo) -> Self {
        let multi = match algo {
            HashAlgo::Sha256 => MultiHasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha384 => MultiHasher::Sha384(sha2::Sha384::new()),
            HashAlgo::Sha512 => MultiHasher::Sha512(sha2::Sha512::new()),
        };
        Hashers {
            md5: Md5::new(),
            multi,
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        match &mut self.multi {
            MultiHasher::Sha256(h) => h.update(data),
            MultiHasher::Sha384(h) => h.update(data),
            MultiHasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> (String, String) {
        let md5 = base16ct::lower::encode_string(&self.md5.finalize());
        let multi = match self.multi {
            MultiHasher::Sha256(h) => base16ct::lower::encode_string(&h.finalize()),
            MultiHasher::Sha384(h) => base16ct::lower::encode_string(&h.finalize()),
            MultiHasher::Sha512(h) => base16ct::lower::encode_string(&h.finalize()),
        };
        (md5, multi)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors (WebOb-shaped)
// ---------------------------------------------------------------------------------------------

/// An HTTP error as Glance raises it: `explanation` replaces WebOb's per-status default
/// when Glance passes `explanation=`, `detail` is the positional argument. The body is
/// rendered by the middleware, which knows the request's Accept header.
#[derive(Clone, Debug)]
struct GErr {
    status: StatusCode,
    explanation: String,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl GErr {
    /// `webob.exc.HTTPXxx(explanation=msg)`.
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        GErr {
            status,
            explanation: msg.into(),
            detail: String::new(),
            headers: Vec::new(),
        }
    }

    /// `webob.exc.HTTPXxx(msg)`: default explanation plus `msg` as detail.
    fn detail(status: StatusCode, msg: impl Into<String>) -> Self {
        GErr {
            status,
            explanation: default_explanation(status).to_owned(),
            detail: msg.into(),
            headers: Vec::new(),
        }
    }

    fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, msg)
    }

    fn no_image(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("No image found with ID {id}"),
        )
    }

    fn unsupported_media(content_type: &str, detail: impl Into<String>) -> Self {
        GErr {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            explanation: format!(
                "The request media type {content_type} is not supported by this server."
            ),
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        let status_line = format!("{} {}", self.status.as_u16(), webob_title(self.status));
        let body = format!("{}<br /><br />\n{}\n\n", self.explanation, self.detail);
        match negotiate_error_type(accept) {
            ErrorType::Json => {
                let v = json!({"message": body, "code": status_line, "title": webob_title(self.status)});
                ("application/json", v.to_string())
            }
            ErrorType::Html => (
                "text/html; charset=UTF-8",
                format!(
                    "<html>\n <head>\n  <title>{status_line}</title>\n </head>\n <body>\n  <h1>{status_line}</h1>\n  {}\n </body>\n</html>",
                    html_escape(&self.explanation)
                        + "<br /><br />\n"
                        + &html_escape(&self.detail)
                        + "\n\n"
                ),
            ),
            ErrorType::Plain => (
                "text/plain; charset=UTF-8",
                format!(
                    "{status_line}\n\n{}\n\n{}\n\n",
                    self.explanation, self.detail
                ),
            ),
        }
    }
}

impl IntoResponse for GErr {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = self.status;
        for (k, v) in &self.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

fn webob_title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        413 => "Request Entity Too Large",
        416 => "Requested Range Not Satisfiable",
        s => StatusCode::from_u16(s)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("Unknown"),
    }
}

fn default_explanation(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => {
            "The server could not comply with the request since it is either malformed or otherwise incorrect."
        }
        401 => {
            "This server could not verify that you are authorized to access the document you requested."
        }
        403 => "Access was denied to this resource.",
        404 => "The resource could not be found.",
        409 => "There was a conflict when trying to complete your request.",
        410 => "This resource is no longer available.  No forwarding address is given.",
        413 => "The request is larger than the server is willing or able to process.",
        416 => "The Range requested is not available.",
        500 => "The server has either erred or is incapable of performing the requested operation.",
        503 => "The server is currently unavailable. Please try again at a later time.",
        _ => "",
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#x27;")
        .replace('"', "&quot;")
}

enum ErrorType {
    Json,
    Html,
    Plain,
}

/// WebOb offers text/html then application/json and falls back to text/plain when
/// neither is acceptable; no Accept header at all also gives plain text (observed).
/// So reqwest's default `Accept: */*` gets HTML; ask for application/json to get JSON.
fn negotiate_error_type(accept: Option<&str>) -> ErrorType {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return ErrorType::Plain;
    };
    let quality = |offer: &str| -> f32 {
        let (otype, _) = offer.split_once('/').unwrap_or((offer, ""));
        let mut best: Option<(u8, f32)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let specificity = if media == offer {
                3
            } else if media == format!("{otype}/*") {
                2
            } else if media == "*/*" {
                1
            } else {
                continue;
            };
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, q));
            }
        }
        best.map_or(0.0, |(_, q)| q)
    };
    let html = quality("text/html");
    let json = quality("application/json");
    if html <= 0.0 && json <= 0.0 {
        ErrorType::Plain
    } else if json > html {
        ErrorType::Json
    } else {
        ErrorType::Html
    }
}

// ---------------------------------------------------------------------------------------------
// Router and middleware
// ---------------------------------------------------------------------------------------------

fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(versions_root))
        .route("/versions", get(versions_list))
        .route("/healthcheck", get(healthcheck))
        .route("/v2/images", get(list_images).post(create_image))
        .route(
            "/v2/images/{id}",
            get(show_image).patch(update_image).delete(delete_image),
        )
        .route("/v2/images/{id}/file", get(download).put(upload))
        .route("/v2/images/{id}/actions/{action}", post(image_action))
        .route(
            "/v2/images/{id}/tags/{tag}",
            put(add_tag).delete(remove_tag),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Records the request, renders error bodies for the client's Accept header and stamps
/// the request id every Glance response carries.
async fn observe(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let seq = {
        let mut inner = s.lock();
        inner.request_seq += 1;
        let seq = inner.request_seq;
        inner.requests.push(RequestRecord {
            seq,
            method: method.to_string(),
            target,
            status: None,
        });
        if method != Method::GET && method != Method::HEAD {
            inner.write_requests += 1;
        }
        seq
    };
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let injected_error = {
        let mut inner = s.lock();
        let line = format!("{} {}", method, req.uri().path());
        match inner.faults.transient.as_mut() {
            Some(t) if t.times > 0 && line.starts_with(&t.request_prefix) => {
                t.times -= 1;
                let mut e = injected(t.status, "Injected transient failure");
                if let Some(secs) = t.retry_after {
                    e.headers.push((
                        header::RETRY_AFTER,
                        HeaderValue::from_str(&secs.to_string()).unwrap(),
                    ));
                }
                Some(e)
            }
            _ => None,
        }
    };
    let mut resp = match injected_error {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    };
    let err = resp.extensions_mut().remove::<GErr>().or_else(|| {
        (resp.status() == StatusCode::METHOD_NOT_ALLOWED).then(|| {
            GErr::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("The method {method} is not allowed for this resource."),
            )
        })
    });
    if let Some(err) = err {
        let (content_type, body) = err.render(accept.as_deref());
        let (mut parts, _) = resp.into_parts();
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        parts.headers.remove(header::CONTENT_LENGTH);
        resp = Response::from_parts(parts, Body::from(body));
    }
    if let Some(r) = s.lock().requests.iter_mut().rev().find(|r| r.seq == seq) {
        r.status = Some(resp.status().as_u16());
    }
    let rid = format!("req-{}", uuid::Uuid::new_v4());
    resp.headers_mut().insert(
        "x-openstack-request-id",
        HeaderValue::from_str(&rid).expect("ascii request id"),
    );
    resp
}

async fn not_found() -> GErr {
    GErr::new(StatusCode::NOT_FOUND, "The resource could not be found.")
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Glance's empty success answers (upload, delete, tags, actions) carry WebOb's default
/// type. (uWSGI also sends `Content-Length: 0`; hyper drops it on a 204, as RFC 9110 asks.)
fn no_content() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    resp
}

fn host_of(headers: &HeaderMap, s: &Shared) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| s.addr.clone(), str::to_owned)
}

/// Media type without parameters, lower-cased (what WebOb's `request.content_type` gives).
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

// ---------------------------------------------------------------------------------------------
// Versions, health
// ---------------------------------------------------------------------------------------------

fn versions_body(host: &str) -> Value {
    let ids = [
        ("v2.18", "CURRENT"),
        ("v2.17", "SUPPORTED"),
        ("v2.16", "SUPPORTED"),
        ("v2.15", "SUPPORTED"),
        ("v2.14", "SUPPORTED"),
        ("v2.9", "SUPPORTED"),
        ("v2.7", "SUPPORTED"),
        ("v2.6", "SUPPORTED"),
        ("v2.5", "SUPPORTED"),
        ("v2.4", "SUPPORTED"),
        ("v2.3", "SUPPORTED"),
        ("v2.2", "SUPPORTED"),
        ("v2.1", "SUPPORTED"),
        ("v2.0", "SUPPORTED"),
    ];
    let versions: Vec<Value> = ids
        .iter()
        .map(|(id, st)| json!({"id": id, "status": st, "links": [{"rel": "self", "href": format!("http://{host}/v2/")}]}))
        .collect();
    json!({ "versions": versions })
}

async fn versions_root(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    json_response(
        StatusCode::MULTIPLE_CHOICES,
        &versions_body(&host_of(&headers, &s)),
    )
}

async fn versions_list(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    json_response(StatusCode::OK, &versions_body(&host_of(&headers, &s)))
}

async fn healthcheck() -> Response {
    let mut resp = Response::new(Body::from("OK"));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// Show, create, update, delete
// ---------------------------------------------------------------------------------------------

async fn show_image(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, GErr> {
    let inner = s.lock();
    let img = inner.images.get(&id).ok_or_else(|| GErr::no_image(&id))?;
    Ok(json_response(StatusCode::OK, &img.to_json()))
}

fn parse_json_body(body: &[u8]) -> Result<Value, GErr> {
    if body.is_empty() {
        return Err(GErr::bad_request("Body expected in request."));
    }
    serde_json::from_slice(body).map_err(|_| GErr::bad_request("Malformed JSON in request body."))
}

fn schema_error(msg: impl std::fmt::Display) -> GErr {
    GErr::bad_request(format!(
        "Provided object does not match schema 'image': {msg}"
    ))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// JSON-schema check of one base or custom property value (Glance validates a
/// `{key: value}` partial image for PATCH and the whole body for POST).
fn validate_value(key: &str, v: &Value) -> Result<(), GErr> {
    let bad = |what: &str| Err(schema_error(format!("{v} is not {what}")));
    match key {
        "id" => match v.as_str() {
            Some(s) if is_uuid(s) => Ok(()),
            Some(_) => bad("a valid UUID"),
            None => bad("of type 'string'"),
        },
        "name" | "owner" => match v {
            Value::Null => Ok(()),
            Value::String(s) if s.chars().count() <= 255 => Ok(()),
            Value::String(_) => bad("shorter than 256 characters"),
            _ => bad("of type 'null', 'string'"),
        },
        "visibility" => match v.as_str() {
            Some(s) if VISIBILITIES.contains(&s) => Ok(()),
            _ => bad("one of ['community', 'public', 'private', 'shared']"),
        },
        "protected" | "os_hidden" => {
            if v.is_boolean() {
                Ok(())
            } else {
                bad("of type 'boolean'")
            }
        }
        "container_format" | "disk_format" => {
            let allowed = if key == "disk_format" {
                DISK_FORMATS
            } else {
                CONTAINER_FORMATS
            };
            match v {
                Value::Null => Ok(()),
                Value::String(s) if allowed.contains(&s.as_str()) => Ok(()),
                _ => bad(&format!("one of {allowed:?}")),
            }
        }
        "min_ram" | "min_disk" => {
            if json_int(v).is_some() {
                Ok(())
            } else {
                bad("of type 'integer'")
            }
        }
        "tags" => match v.as_array() {
            Some(a)
                if a.iter()
                    .all(|t| t.as_str().is_some_and(|s| s.chars().count() <= 255)) =>
            {
                Ok(())
            }
            _ => bad("an array of strings of at most 255 characters"),
        },
        "status" => match v.as_str() {
            Some(s) if STATUSES.contains(&s) => Ok(()),
            _ => bad("a valid status"),
        },
        "checksum" | "os_hash_algo" | "os_hash_value" => {
            if v.is_null() || v.is_string() {
                Ok(())
            } else {
                bad("of type 'null', 'string'")
            }
        }
        "size" | "virtual_size" => {
            if v.is_null() || json_int(v).is_some() {
                Ok(())
            } else {
                bad("of type 'null', 'integer'")
            }
        }
        "created_at" | "updated_at" | "direct_url" | "self" | "file" | "schema" | "stores" => {
            if v.is_string() {
                Ok(())
            } else {
                bad("of type 'string'")
            }
        }
        "locations" => {
            if v.is_array() {
                Ok(())
            } else {
                bad("of type 'array'")
            }
        }
        _ => {
            if v.is_string() {
                Ok(())
            } else {
                Err(schema_error(format!("{v} is not of type 'string'")))
            }
        }
    }
}

fn json_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
}

fn non_negative(param: &str, v: i64) -> Result<i64, GErr> {
    if v < 0 {
        Err(GErr::bad_request(format!(
            "Invalid value '{v}' for parameter '{param}': Cannot be a negative value"
        )))
    } else {
        Ok(v)
    }
}

fn tags_from(v: &Value) -> Vec<String> {
    let mut tags = Vec::new();
    for t in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
        add_tag_to(&mut tags, t.to_owned());
    }
    tags
}

fn check_quotas(img: &Image) -> Result<(), GErr> {
    let props = img
        .props
        .keys()
        .filter(|k| !k.starts_with("os_glance"))
        .count();
    if props > PROPERTY_QUOTA {
        return Err(GErr::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Maximum number of properties exceeded: {props} > {PROPERTY_QUOTA}"),
        ));
    }
    if img.tags.len() > TAG_QUOTA {
        return Err(GErr::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Maximum number of tags exceeded: {} > {TAG_QUOTA}",
                img.tags.len()
            ),
        ));
    }
    Ok(())
}

fn is_reserved(key: &str) -> bool {
    key.starts_with("os_glance")
}

async fn create_image(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GErr> {
    if let Some(code) = s.lock().faults.fail_creates_with {
        return Err(injected(code, "Injected create failure"));
    }
    let body = parse_json_body(&body)?;
    let Value::Object(obj) = body else {
        return Err(schema_error(format!("{body} is not of type 'object'")));
    };
    // Deserializer: disallowed keys first, then schema, then custom-key checks.
    for key in ["direct_url", "self", "file", "schema", "stores"] {
        if obj.contains_key(key) {
            return Err(GErr::forbidden(format!("Attribute '{key}' is read-only.")));
        }
    }
    for (k, v) in &obj {
        validate_value(k, v)?;
    }
    const BASE: &[&str] = &[
        "checksum",
        "created_at",
        "container_format",
        "disk_format",
        "id",
        "min_disk",
        "min_ram",
        "name",
        "size",
        "virtual_size",
        "status",
        "tags",
        "owner",
        "updated_at",
        "visibility",
        "protected",
        "os_hidden",
    ];
    let mut props = BTreeMap::new();
    for (k, v) in &obj {
        if BASE.contains(&k.as_str()) {
            continue;
        }
        if k.chars().count() > 255 {
            return Err(GErr::bad_request(
                "Custom property should not be greater than 255 characters.",
            ));
        }
        if ["location", "deleted", "deleted_at"].contains(&k.as_str()) || is_reserved(k) {
            return Err(GErr::detail(
                StatusCode::FORBIDDEN,
                format!("Attribute '{k}' is reserved."),
            ));
        }
        // ImageFactory: read-only multihash keys are silently dropped (observed: 201 with null).
        if k == "os_hash_algo" || k == "os_hash_value" {
            continue;
        }
        if k == "locations" {
            return Err(GErr::forbidden("Attribute 'locations' is reserved."));
        }
        props.insert(k.clone(), v.clone());
    }
    for key in [
        "created_at",
        "updated_at",
        "status",
        "checksum",
        "size",
        "virtual_size",
    ] {
        if obj.contains_key(key) {
            return Err(GErr::forbidden(format!("Attribute '{key}' is read-only.")));
        }
    }
    let get_str = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut img = Image {
        id: get_str("id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: get_str("name"),
        disk_format: get_str("disk_format"),
        container_format: get_str("container_format"),
        visibility: get_str("visibility").unwrap_or_else(|| "shared".to_owned()),
        size: None,
        virtual_size: None,
        status: "queued".to_owned(),
        checksum: None,
        protected: obj
            .get("protected")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        min_ram: non_negative(
            "min_ram",
            obj.get("min_ram").and_then(json_int).unwrap_or(0),
        )?,
        min_disk: non_negative(
            "min_disk",
            obj.get("min_disk").and_then(json_int).unwrap_or(0),
        )?,
        owner: if obj.contains_key("owner") {
            get_str("owner")
        } else {
            Some(ADMIN_PROJECT.to_owned())
        },
        os_hidden: obj
            .get("os_hidden")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        os_hash_algo: None,
        os_hash_value: None,
        created: 0,
        updated: 0,
        tags: obj.get("tags").map(tags_from).unwrap_or_default(),
        props,
        data: None,
        stale_store_file: false,
        upload_token: 0,
    };
    check_quotas(&img)?;
    let mut inner = s.lock();
    if inner.images.contains_key(&img.id) || inner.deleted.contains(&img.id) {
        return Err(GErr::new(
            StatusCode::CONFLICT,
            format!("Image ID {} already exists!", img.id),
        ));
    }
    let t = inner.tick();
    img.created = t;
    img.updated = t;
    let mut resp = json_response(StatusCode::CREATED, &img.to_json());
    let location = format!("http://{}/v2/images/{}", host_of(&headers, &s), img.id);
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii location"),
    );
    inner.images.insert(img.id.clone(), img);
    Ok(resp)
}

fn injected(code: u16, what: &str) -> GErr {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    GErr::detail(status, what)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PatchOp {
    Add,
    Replace,
    Remove,
}

struct Change {
    op: PatchOp,
    key: String,
    value: Value,
}

/// Decodes `/a~1b` into `a/b`, refusing what Glance's `_validate_json_pointer` refuses.
fn decode_pointer(pointer: &str) -> Result<Vec<String>, GErr> {
    let bad = |why: &str| Err(GErr::bad_request(format!("Pointer `{pointer}` {why}")));
    let Some(rest) = pointer.strip_prefix('/') else {
        return bad("does not start with \"/\".");
    };
    // Glance: re.search(r'/\s*?/', pointer[1:])
    let adjacent = rest.match_indices('/').any(|(i, _)| {
        let after = rest[i + 1..].trim_start_matches(char::is_whitespace);
        after.starts_with('/')
    });
    if adjacent {
        return bad("contains adjacent \"/\".");
    }
    if pointer.len() > 1 && pointer.ends_with('/') {
        return bad("end with \"/\".");
    }
    if rest.trim() == "/" {
        return bad("does not contains valid token.");
    }
    let b = pointer.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')) {
            return bad("contains \"~\" not part of a recognized escape sequence.");
        }
    }
    Ok(pointer
        .trim_start_matches('/')
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~").trim().to_owned())
        .collect())
}

fn parse_changes(body: &Value, draft: u8) -> Result<Vec<Change>, GErr> {
    let Some(list) = body.as_array() else {
        return Err(GErr::bad_request(
            "Request body must be a JSON array of operation objects.",
        ));
    };
    let mut changes = Vec::new();
    for raw in list {
        let Some(raw) = raw.as_object() else {
            return Err(GErr::bad_request("Operations must be JSON objects."));
        };
        let (op, path) = if draft == 10 {
            let op = match raw.get("op").and_then(Value::as_str) {
                None if !raw.contains_key("op") => {
                    return Err(GErr::bad_request(
                        "Unable to find `op` in JSON Schema change. It must be one of the following: add, remove, replace.",
                    ));
                }
                Some("add") => PatchOp::Add,
                Some("replace") => PatchOp::Replace,
                Some("remove") => PatchOp::Remove,
                other => {
                    return Err(GErr::bad_request(format!(
                        "Invalid operation: `{}`. It must be one of the following: add, remove, replace.",
                        other.map_or_else(|| raw["op"].to_string(), str::to_owned)
                    )));
                }
            };
            let path = raw
                .get("path")
                .ok_or_else(|| GErr::bad_request("Unable to find 'path' in JSON Schema change"))?;
            (op, path)
        } else {
            let mut found = None;
            for (name, op) in [
                ("add", PatchOp::Add),
                ("remove", PatchOp::Remove),
                ("replace", PatchOp::Replace),
            ] {
                if let Some(p) = raw.get(name) {
                    if found.is_some() {
                        return Err(GErr::bad_request(
                            "Operation objects must contain only one member named \"add\", \"remove\", or \"replace\".",
                        ));
                    }
                    found = Some((op, p));
                }
            }
            found.ok_or_else(|| {
                GErr::bad_request(
                    "Operation objects must contain exactly one member named \"add\", \"remove\", or \"replace\".",
                )
            })?
        };
        let path = path
            .as_str()
            .ok_or_else(|| GErr::bad_request("Pointer must be a string."))?;
        let segments = decode_pointer(path)?;
        let root = segments[0].clone();
        let depth_ok = if root == "locations" {
            segments.len() == if op == PatchOp::Replace { 1 } else { 2 }
        } else {
            segments.len() == 1
        };
        if !depth_ok {
            return Err(GErr::bad_request(format!(
                "Invalid JSON pointer for this resource: '/{}'",
                segments.join("/")
            )));
        }
        let value = if op == PatchOp::Remove {
            Value::Null
        } else {
            let name = match op {
                PatchOp::Add => "add",
                _ => "replace",
            };
            raw.get("value").cloned().ok_or_else(|| {
                GErr::bad_request(format!(
                    "Operation \"{name}\" requires a member named \"value\"."
                ))
            })?
        };
        const READ_ONLY: &[&str] = &[
            "created_at",
            "updated_at",
            "status",
            "checksum",
            "size",
            "virtual_size",
            "direct_url",
            "self",
            "file",
            "schema",
            "id",
            "os_hash_algo",
            "os_hash_value",
        ];
        if READ_ONLY.contains(&root.as_str()) {
            return Err(GErr::forbidden(format!("Attribute '{root}' is read-only.")));
        }
        if ["location", "deleted", "deleted_at"].contains(&root.as_str()) || is_reserved(&root) {
            return Err(GErr::forbidden(format!("Attribute '{root}' is reserved.")));
        }
        if op != PatchOp::Remove && segments.len() == 1 {
            validate_value(&root, &value)?;
        }
        changes.push(Change {
            op,
            key: root,
            value,
        });
    }
    Ok(changes)
}

const PATCHABLE_BASE: &[&str] = &[
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "container_format",
    "disk_format",
    "min_ram",
    "min_disk",
    "tags",
];

fn set_base(img: &mut Image, key: &str, v: &Value) -> Result<(), GErr> {
    let s = || v.as_str().map(str::to_owned);
    match key {
        "name" => img.name = s(),
        "owner" => img.owner = s(),
        "visibility" => img.visibility = s().unwrap_or_default(),
        "protected" => img.protected = v.as_bool().unwrap_or(false),
        "os_hidden" => img.os_hidden = v.as_bool().unwrap_or(false),
        "min_ram" => img.min_ram = non_negative("min_ram", json_int(v).unwrap_or(0))?,
        "min_disk" => img.min_disk = non_negative("min_disk", json_int(v).unwrap_or(0))?,
        "tags" => img.tags = tags_from(v),
        "container_format" | "disk_format" => {
            if img.status != "queued" && img.status != "importing" {
                return Err(GErr::forbidden(format!(
                    "Attribute {key} can be only replaced for a queued image."
                )));
            }
            if key == "disk_format" {
                img.disk_format = s();
            } else {
                img.container_format = s();
            }
        }
        _ => unreachable!("not a patchable base property: {key}"),
    }
    Ok(())
}

fn apply_change(img: &mut Image, c: &Change, draft: u8) -> Result<(), GErr> {
    let base = PATCHABLE_BASE.contains(&c.key.as_str());
    match c.op {
        PatchOp::Replace => {
            if c.key == "locations" {
                let empty = c.value.as_array().is_some_and(Vec::is_empty);
                return Err(if empty {
                    GErr::detail(StatusCode::FORBIDDEN, "Cannot set locations to empty list.")
                } else {
                    GErr::forbidden(
                        "It's not allowed to update locations if locations are invisible.",
                    )
                });
            }
            if base {
                set_base(img, &c.key, &c.value)
            } else if let Some(slot) = img.props.get_mut(&c.key) {
                *slot = c.value.clone();
                Ok(())
            } else {
                Err(GErr::detail(
                    StatusCode::CONFLICT,
                    format!("Property {} does not exist.", c.key),
                ))
            }
        }
        PatchOp::Add => {
            if c.key == "locations" {
                return Err(GErr::forbidden(
                    "It's not allowed to add locations if locations are invisible.",
                ));
            }
            if draft == 4 && (base || img.props.contains_key(&c.key)) {
                return Err(GErr::detail(
                    StatusCode::CONFLICT,
                    format!("Property {} already present.", c.key),
                ));
            }
            if base {
                set_base(img, &c.key, &c.value)
            } else {
                img.props.insert(c.key.clone(), c.value.clone());
                Ok(())
            }
        }
        PatchOp::Remove => {
            if c.key == "locations" {
                return Err(GErr::forbidden(
                    "It's not allowed to remove locations if locations are invisible.",
                ));
            }
            if base {
                Err(GErr::detail(
                    StatusCode::FORBIDDEN,
                    format!("Property {} may not be removed.", c.key),
                ))
            } else if img.props.remove(&c.key).is_some() {
                Ok(())
            } else {
                Err(GErr::detail(
                    StatusCode::CONFLICT,
                    format!("Property {} does not exist.", c.key),
                ))
            }
        }
    }
}

async fn update_image(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GErr> {
    let ct = media_type(&headers);
    let draft = match ct.as_deref() {
        Some(PATCH_V20) => 4,
        Some(PATCH_V21) => 10,
        other => {
            let allowed = format!("{PATCH_V20}, {PATCH_V21}");
            let mut e = GErr::unsupported_media(
                other.unwrap_or("None"),
                format!("Image PATCH expects Content-Type one of: {allowed}"),
            );
            e.headers.push((
                HeaderName::from_static("accept-patch"),
                HeaderValue::from_str(&allowed).expect("ascii"),
            ));
            return Err(e);
        }
    };
    let body = parse_json_body(&body)?;
    let changes = parse_changes(&body, draft)?;
    let mut inner = s.lock();
    let current = inner.images.get(&id).ok_or_else(|| GErr::no_image(&id))?;
    let mut img = current.clone();
    for c in &changes {
        apply_change(&mut img, c, draft)?;
    }
    if !changes.is_empty() {
        check_quotas(&img)?;
        img.updated = inner.tick();
    }
    let out = img.to_json();
    inner.images.insert(id, img);
    Ok(json_response(StatusCode::OK, &out))
}

async fn delete_image(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, GErr> {
    let mut inner = s.lock();
    let Some(img) = inner.images.get(&id) else {
        return Err(GErr::new(
            StatusCode::NOT_FOUND,
            format!("Failed to find image {id} to delete"),
        ));
    };
    if img.protected {
        return Err(GErr::forbidden(format!(
            "Image {id} is protected and cannot be deleted."
        )));
    }
    inner.images.remove(&id);
    inner.deleted.insert(id);
    Ok(no_content())
}

async fn image_action(
    State(s): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, GErr> {
    if action != "deactivate" && action != "reactivate" {
        return Err(GErr::new(
            StatusCode::NOT_FOUND,
            "The resource could not be found.",
        ));
    }
    let mut inner = s.lock();
    let t = inner.tick();
    let img = inner
        .images
        .get_mut(&id)
        .ok_or_else(|| GErr::no_image(&id))?;
    let (from, to) = if action == "deactivate" {
        ("active", "deactivated")
    } else {
        ("deactivated", "active")
    };
    if img.status == from {
        img.status = to.to_owned();
        img.updated = t;
    } else if img.status != to {
        return Err(GErr::forbidden(format!(
            "Not allowed to {action} image in status '{}'",
            img.status
        )));
    }
    Ok(no_content())
}

async fn add_tag(
    State(s): State<Arc<Shared>>,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, GErr> {
    if tag.chars().count() > 255 {
        return Err(schema_error(format!("'{tag}' is too long")));
    }
    let mut inner = s.lock();
    let t = inner.tick();
    let img = inner
        .images
        .get_mut(&id)
        .ok_or_else(|| GErr::new(StatusCode::NOT_FOUND, format!("Image {id} not found.")))?;
    if !img.tags.contains(&tag) {
        if img.tags.len() >= TAG_QUOTA {
            return Err(GErr::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Image tag limit exceeded for image {id}: Maximum number of tags exceeded: {TAG_QUOTA}:"
                ),
            ));
        }
        img.tags.push(tag);
    }
    img.updated = t;
    Ok(no_content())
}

async fn remove_tag(
    State(s): State<Arc<Shared>>,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response, GErr> {
    let mut inner = s.lock();
    let t = inner.tick();
    let img = inner
        .images
        .get_mut(&id)
        .ok_or_else(|| GErr::new(StatusCode::NOT_FOUND, format!("Image {id} not found.")))?;
    let Some(pos) = img.tags.iter().position(|x| *x == tag) else {
        return Err(GErr::new(
            StatusCode::NOT_FOUND,
            "The resource could not be found.",
        ));
    };
    img.tags.remove(pos);
    img.updated = t;
    Ok(no_content())
}

// ---------------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------------

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `urllib.parse.quote_plus`, which Glance uses to build `first` and `next`.
fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn urlencode(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", quote_plus(k), quote_plus(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Clone, PartialEq, PartialOrd)]
enum SortVal<'a> {
    Null,
    Int(i128),
    Str(&'a str),
}

fn sort_val<'a>(img: &'a Image, key: &str) -> SortVal<'a> {
    let os = |v: &'a Option<String>| v.as_deref().map_or(SortVal::Null, SortVal::Str);
    match key {
        "name" => os(&img.name),
        "status" => SortVal::Str(&img.status),
        "container_format" => os(&img.container_format),
        "disk_format" => os(&img.disk_format),
        "size" => img.size.map_or(SortVal::Null, |n| SortVal::Int(n as i128)),
        "id" => SortVal::Str(&img.id),
        "created_at" => SortVal::Int(img.created as i128),
        "updated_at" => SortVal::Int(img.updated as i128),
        _ => SortVal::Null,
    }
}

/// Ordering of two images in the listing (Less = earlier), NULL lowest as in SQLite.
fn cmp_listing(a: &Image, b: &Image, keys: &[(String, bool)]) -> CmpOrdering {
    for (key, desc) in keys {
        let (va, vb) = (sort_val(a, key), sort_val(b, key));
        let ord = va.partial_cmp(&vb).unwrap_or(CmpOrdering::Equal);
        let ord = if *desc { ord.reverse() } else { ord };
        if ord != CmpOrdering::Equal {
            return ord;
        }
    }
    CmpOrdering::Equal
}

/// `op:value` split as Glance's `split_filter_op`: a bare ISO time keeps its colons.
fn split_filter_op(expr: &str) -> (String, String) {
    match expr.split_once(':') {
        Some((left, right)) if parse_isotime(expr).is_none() => (left.to_owned(), right.to_owned()),
        _ => ("eq".to_owned(), expr.to_owned()),
    }
}

/// Glance's `split_filter_value_for_quotes` for `in:` lists: commas split, double quotes group.
fn split_in_values(v: &str) -> Result<Vec<String>, GErr> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = v.chars().peekable();
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(GErr::bad_request(format!(
            "Invalid filter value {v}. The quote is not closed."
        )));
    }
    if !cur.is_empty() || was_quoted {
        out.push(cur);
    }
    Ok(out)
}

struct Filters {
    visibility: Option<String>,
    os_hidden: bool,
    protected: Option<bool>,
    tags: Vec<String>,
    /// (column, op, values) for name/id/status/container_format/disk_format.
    ops: Vec<(String, String, Vec<String>)>,
    times: Vec<(String, String, u64)>,
    ranges: Vec<(String, bool, i128)>,
    /// Column or custom-property equality.
    equals: Vec<(String, String)>,
}

fn column_string(img: &Image, key: &str) -> Option<Option<String>> {
    Some(match key {
        "owner" => img.owner.clone(),
        "checksum" => img.checksum.clone(),
        "os_hash_value" => img.os_hash_value.clone(),
        "os_hash_algo" => img.os_hash_algo.clone(),
        "size" => img.size.map(|n| n.to_string()),
        "virtual_size" => img.virtual_size.map(|n| n.to_string()),
        "min_ram" => Some(img.min_ram.to_string()),
        "min_disk" => Some(img.min_disk.to_string()),
        "name" => img.name.clone(),
        "id" => Some(img.id.clone()),
        "status" => Some(img.status.clone()),
        "container_format" => img.container_format.clone(),
        "disk_format" => img.disk_format.clone(),
        "visibility" => Some(img.visibility.clone()),
        _ => return None,
    })
}

impl Filters {
    fn matches(&self, img: &Image) -> bool {
        // `deleted=False` also hides killed images.
        if img.status == "killed" {
            return false;
        }
        match self.visibility.as_deref() {
            Some("all") => {}
            Some(v) => {
                if img.visibility != v {
                    return false;
                }
            }
            None => {
                if img.visibility == "community" && img.owner.as_deref() != Some(ADMIN_PROJECT) {
                    return false;
                }
            }
        }
        if img.os_hidden != self.os_hidden {
            return false;
        }
        if self.protected.is_some_and(|p| p != img.protected) {
            return false;
        }
        if !self.tags.iter().all(|t| img.tags.contains(t)) {
            return false;
        }
        for (col, op, values) in &self.ops {
            let actual = column_string(img, col).flatten();
            let hit = match op.as_str() {
                "in" => actual.is_some_and(|a| values.contains(&a)),
                _ => actual.as_deref() == values.first().map(String::as_str),
            };
            if !hit {
                return false;
            }
        }
        for (col, op, t) in &self.times {
            let v = if col == "created_at" {
                img.created
            } else {
                img.updated
            };
            let hit = match op.as_str() {
                "gt" => v > *t,
                "gte" => v >= *t,
                "lt" => v < *t,
                "lte" => v <= *t,
                "neq" => v != *t,
                _ => v == *t,
            };
            if !hit {
                return false;
            }
        }
        for (col, is_min, bound) in &self.ranges {
            let v = match col.as_str() {
                "size" => img.size.map(|n| n as i128),
                "virtual_size" => img.virtual_size.map(|n| n as i128),
                "min_ram" => Some(img.min_ram as i128),
                _ => Some(img.min_disk as i128),
            };
            let hit = v.is_some_and(|v| if *is_min { v >= *bound } else { v <= *bound });
            if !hit {
                return false;
            }
        }
        for (k, v) in &self.equals {
            let hit = match column_string(img, k) {
                Some(col) => col.as_deref() == Some(v.as_str()),
                None => img.props.get(k).and_then(Value::as_str) == Some(v.as_str()),
            };
            if !hit {
                return false;
            }
        }
        true
    }
}

async fn list_images(State(s): State<Arc<Shared>>, uri: Uri) -> Result<Response, GErr> {
    if let Some(body) = s.lock().faults.list_body.clone() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let pairs = parse_query(uri.query().unwrap_or(""));
    // The serializer rebuilds links from dict(params): one value per key (the last),
    // keys in first-seen order.
    let mut dict: Vec<(String, String)> = Vec::new();
    for (k, v) in &pairs {
        match dict.iter_mut().find(|(dk, _)| dk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => dict.push((k.clone(), v.clone())),
        }
    }
    let first_of = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let all_of = |key: &str| {
        pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let last_of = |key: &str| dict.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());

    // Deserializer checks.
    // An empty value skips validation but still filters (on ''), as in Glance.
    let visibility = last_of("visibility");
    if let Some(v) = &visibility
        && !v.is_empty()
        && !["community", "public", "private", "shared", "all"].contains(&v.as_str())
    {
        return Err(GErr::bad_request(format!("Invalid visibility value: {v}")));
    }
    if last_of("changes-since").is_some_and(|v| !v.is_empty()) {
        return Err(GErr::bad_request(
            "The \"changes-since\" filter is no longer available on v2.",
        ));
    }
    if let Some(ms) = first_of("member_status")
        && !["pending", "accepted", "rejected", "all"].contains(&ms.as_str())
    {
        return Err(GErr::bad_request(format!("Invalid status: {ms}")));
    }
    let limit = match first_of("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => {
            let n: i64 = l
                .trim()
                .parse()
                .map_err(|_| GErr::bad_request("limit param must be an integer"))?;
            if n < 0 {
                return Err(GErr::bad_request("limit param must be positive"));
            }
            (n as u64).min(MAX_LIMIT)
        }
    };
    let marker = first_of("marker");
    let sort_keys = sorting_params(&pairs)?;

    // Controller checks.
    let os_hidden = match last_of("os_hidden")
        .unwrap_or_else(|| "false".into())
        .to_lowercase()
        .as_str()
    {
        "true" => true,
        "false" => false,
        other => {
            return Err(GErr::bad_request(format!(
                "Invalid value '{other}' for 'os_hidden' filter. Valid values are 'true' or 'false'."
            )));
        }
    };
    let protected = match last_of("protected").as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(GErr::bad_request(format!(
                "Invalid value '{other}' for 'protected' filter. Valid values are 'true' or 'false'."
            )));
        }
    };
    let mut filters = Filters {
        visibility,
        os_hidden,
        protected,
        tags: all_of("tag")
            .into_iter()
            .map(|t| t.trim().to_owned())
            .collect(),
        ops: Vec::new(),
        times: Vec::new(),
        ranges: Vec::new(),
        equals: Vec::new(),
    };
    const NOT_FILTERS: &[&str] = &[
        "limit",
        "marker",
        "member_status",
        "tag",
        "sort",
        "sort_key",
        "sort_dir",
        "visibility",
        "os_hidden",
        "protected",
        "changes-since",
    ];
    for (k, v) in &dict {
        if NOT_FILTERS.contains(&k.as_str()) {
            continue;
        }
        if let Some(col) = k.strip_suffix("_min").or_else(|| k.strip_suffix("_max"))
            && ["size", "virtual_size", "min_ram", "min_disk"].contains(&col)
        {
            let n: i128 = v.trim().parse().map_err(|_| {
                GErr::bad_request("Unable to filter on a range with a non-numeric value.")
            })?;
            filters
                .ranges
                .push((col.to_owned(), k.ends_with("_min"), n));
            continue;
        }
        match k.as_str() {
            "created_at" | "updated_at" => {
                let (op, t) = split_filter_op(v);
                let t = parse_isotime(&t).ok_or_else(|| {
                    GErr::bad_request(format!(
                        "Bad \"{k}\" query filter format. Use ISO 8601 DateTime notation."
                    ))
                })?;
                if !["gt", "gte", "lt", "lte", "eq", "neq"].contains(&op.as_str()) {
                    return Err(GErr::bad_request(format!(
                        "Unable to filter by unknown operator '{op}'."
                    )));
                }
                filters.times.push((k.clone(), op, t));
            }
            "name" | "id" | "status" | "container_format" | "disk_format" => {
                let (op, rest) = split_filter_op(v);
                let values = match op.as_str() {
                    "in" => split_in_values(&rest)?,
                    "eq" => vec![rest],
                    _ => {
                        return Err(GErr::bad_request(format!(
                            "Unable to filter by unknown operator '{op}'."
                        )));
                    }
                };
                filters.ops.push((k.clone(), op, values));
            }
            _ => filters.equals.push((k.clone(), v.clone())),
        }
    }

    let mut guard = s.lock();
    if s.cache_listings {
        let query = urlencode(
            &dict
                .iter()
                .filter(|(k, _)| k != "marker" && k != "limit")
                .cloned()
                .collect::<Vec<_>>(),
        );
        let inner = &mut *guard;
        let stamp = (inner.write_requests, inner.images.len(), inner.last_micros);
        if !inner
            .list_cache
            .as_ref()
            .is_some_and(|c| c.query == query && c.stamp == stamp)
        {
            let mut rows: Vec<&Image> = inner
                .images
                .values()
                .filter(|img| filters.matches(img))
                .collect();
            rows.sort_by(|a, b| cmp_listing(a, b, &sort_keys));
            let ids: Vec<String> = rows.iter().map(|i| i.id.clone()).collect();
            let position = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect();
            inner.list_cache = Some(ListCache {
                query,
                stamp,
                ids,
                position,
            });
        }
    }
    let inner = &*guard;
    // The cache holds this query's order (just checked); a marker outside it (filtered out)
    // takes the uncached path.
    let cached_start = match (&inner.list_cache, &marker) {
        (Some(_), None) if s.cache_listings => Some(0),
        (Some(c), Some(m)) if s.cache_listings => c.position.get(m).map(|p| p + 1),
        _ => None,
    };
    let marker_img = match &marker {
        Some(m) => Some(
            inner
                .images
                .get(m)
                .ok_or_else(|| GErr::bad_request(format!("No image found with ID {m}")))?,
        ),
        None => None,
    };
    let rows: Vec<&Image> = match (cached_start, &inner.list_cache) {
        (Some(start), Some(c)) => c
            .ids
            .iter()
            .skip(start)
            .take(limit as usize)
            .filter_map(|id| inner.images.get(id))
            .collect(),
        _ => {
            let mut rows: Vec<&Image> = inner
                .images
                .values()
                .filter(|img| filters.matches(img))
                .filter(|img| {
                    marker_img
                        .is_none_or(|m| cmp_listing(img, m, &sort_keys) == CmpOrdering::Greater)
                })
                .collect();
            rows.sort_by(|a, b| cmp_listing(a, b, &sort_keys));
            rows.truncate(limit as usize);
            rows
        }
    };

    let mut link_params: Vec<(String, String)> = dict
        .iter()
        .filter(|(k, _)| k != "marker")
        .cloned()
        .collect();
    let query = urlencode(&link_params);
    let mut body = Map::new();
    body.insert(
        "images".into(),
        Value::Array(rows.iter().map(|i| i.to_json()).collect()),
    );
    body.insert(
        "first".into(),
        json!(if query.is_empty() {
            "/v2/images".to_owned()
        } else {
            format!("/v2/images?{query}")
        }),
    );
    body.insert("schema".into(), json!("/v2/schemas/images"));
    if !rows.is_empty() && rows.len() as u64 == limit {
        link_params.push(("marker".into(), rows[rows.len() - 1].id.clone()));
        body.insert(
            "next".into(),
            json!(format!("/v2/images?{}", urlencode(&link_params))),
        );
    }
    Ok(json_response(StatusCode::OK, &Value::Object(body)))
}

/// Sort keys with direction (true = desc), plus Glance's created_at/id tie-breakers.
fn sorting_params(pairs: &[(String, String)]) -> Result<Vec<(String, bool)>, GErr> {
    const KEYS: &[&str] = &[
        "name",
        "status",
        "container_format",
        "disk_format",
        "size",
        "id",
        "created_at",
        "updated_at",
    ];
    let check_key = |k: &str| -> Result<String, GErr> {
        if KEYS.contains(&k) {
            Ok(k.to_owned())
        } else {
            Err(GErr::bad_request(format!(
                "Invalid sort key: {k}. It must be one of the following: {}.",
                KEYS.join(", ")
            )))
        }
    };
    let check_dir = |d: &str| -> Result<bool, GErr> {
        match d {
            "asc" => Ok(false),
            "desc" => Ok(true),
            _ => Err(GErr::bad_request(format!("Invalid sort direction: {d}"))),
        }
    };
    let sort: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "sort")
        .map(|(_, v)| v)
        .collect();
    let old_keys: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v)
        .collect();
    let old_dirs: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v)
        .collect();
    let mut keys = Vec::new();
    let mut dirs = Vec::new();
    if let Some(sort) = sort.first() {
        if !old_keys.is_empty() || !old_dirs.is_empty() {
            return Err(GErr::bad_request(
                "Old and new sorting syntax cannot be combined",
            ));
        }
        for part in sort.trim().split(',') {
            let (k, d) = part.split_once(':').unwrap_or((part, ""));
            keys.push(check_key(k.trim())?);
            dirs.push(check_dir(if d.trim().is_empty() {
                "desc"
            } else {
                d.trim()
            })?);
        }
    } else {
        for k in &old_keys {
            keys.push(check_key(k.trim())?);
        }
        for d in &old_dirs {
            dirs.push(check_dir(d.trim())?);
        }
        if dirs.len() > 1 && dirs.len() != keys.len() {
            return Err(GErr::bad_request(
                "Number of sort dirs does not match the number of sort keys",
            ));
        }
    }
    if keys.is_empty() {
        keys.push("created_at".to_owned());
    }
    // DB layer: one direction applies to every key; tie-breakers take it too.
    let default_desc = if dirs.len() == 1 { dirs[0] } else { true };
    if dirs.len() <= 1 {
        dirs = vec![default_desc; keys.len()];
    }
    let mut out: Vec<(String, bool)> = keys.into_iter().zip(dirs).collect();
    for tie in ["created_at", "id"] {
        if !out.iter().any(|(k, _)| k == tie) {
            out.push((tie.to_owned(), default_desc));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// `timeutils.isotime`: seconds precision, `Z`.
fn isotime(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ISO 8601 date or date-time (optional fraction, `Z` or ±hh:mm) as µs since the epoch.
fn parse_isotime(s: &str) -> Option<u64> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let y = num(dp.next()?)?;
    let mo = num(dp.next()?)? as u32;
    let d = num(dp.next()?)? as u32;
    if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut micros = days_from_civil(y, mo, d) * 86_400 * 1_000_000;
    if let Some(time) = time {
        let (clock, offset_secs) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = time.rfind(['+', '-']) {
            let (c, off) = time.split_at(i);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
            (c, sign * (num(oh)? * 3600 + num(om)? * 60))
        } else {
            (time, 0)
        };
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let mut tp = hms.split(':');
        let h = num(tp.next()?)?;
        let mi = num(tp.next()?)?;
        let sec = tp.next().map_or(Some(0), num)?;
        if tp.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let frac_micros = if frac.is_empty() {
            0
        } else {
            let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
            num(&digits)?
        };
        micros += ((h * 3600 + mi * 60 + sec - offset_secs) * 1_000_000) + frac_micros;
    }
    u64::try_from(micros).ok()
}

// ---------------------------------------------------------------------------------------------
// Upload
// ---------------------------------------------------------------------------------------------

/// Puts an image left in `saving` back to `queued` if the handler ends early (error or
/// client disconnect, which drops the handler future): Glance's `_restore`.
struct UploadGuard {
    shared: Arc<Shared>,
    id: String,
    token: u64,
    armed: bool,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = self.shared.lock();
        let t = inner.tick();
        if let Some(img) = inner.images.get_mut(&self.id)
            && img.status == "saving"
            && img.upload_token == self.token
        {
            img.set_status("queued");
            img.updated = t;
        }
    }
}

/// Mirrors Glance 33's in-flight format inspection (`require_image_format_match=true`,
/// bare containers only): returns the virtual size to record or the 415 reason.
/// Only qcow2 is parsed for a virtual size; other recognised formats get null.
fn inspect(
    disk_format: &str,
    container_format: Option<&str>,
    head: &[u8],
    size: u64,
) -> Result<Option<u64>, String> {
    if container_format != Some("bare") {
        return Ok(None);
    }
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let detected = if at(0, b"QFI\xfb") && head.len() >= 104 {
        "qcow2"
    } else if at(0, b"QED\0") {
        "qed"
    } else if at(0, b"vhdxfile") {
        "vhdx"
    } else if at(0, b"conectix") {
        "vhd"
    } else if at(0, b"KDMV") {
        "vmdk"
    } else if at(0x40, b"\x7f\x10\xda\xbe") {
        "vdi"
    } else if at(0x8001, b"CD001") || at(0x8801, b"CD001") || at(0x9001, b"CD001") {
        "iso"
    } else {
        "raw"
    };
    let nonzero = |n: u64| (n != 0).then_some(n);
    if detected == disk_format {
        return match detected {
            "raw" => Ok(nonzero(size)),
            "qcow2" => {
                let be64 =
                    |o: usize| u64::from_be_bytes(head[o..o + 8].try_into().expect("8 bytes"));
                let version = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
                let data_file = version >= 3 && be64(72) & 0b100 != 0;
                if be64(8) != 0 || data_file {
                    return Err("Image failed safety checks".to_owned());
                }
                Ok(nonzero(be64(24)))
            }
            _ => Ok(None),
        };
    }
    if disk_format == "raw" {
        return Ok(nonzero(size));
    }
    if detected == "raw" && !INSPECTABLE.contains(&disk_format) {
        return Ok(None);
    }
    Err(format!(
        "Image disk_format {disk_format} does not match stream data {detected}"
    ))
}

async fn upload(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GErr> {
    let ct = media_type(&headers);
    if ct.as_deref() != Some("application/octet-stream") {
        let shown = ct.clone().unwrap_or_else(|| "None".to_owned());
        return Err(GErr::unsupported_media(
            &shown,
            format!("Invalid content type {shown}"),
        ));
    }
    let expected = match headers.get("x-openstack-image-size") {
        Some(v) => {
            let n: i64 = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    GErr::bad_request("Invalid or missing image size in request headers.")
                })?;
            Some(n)
        }
        None => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok()),
    };
    // glance_store treats 0 as "unknown size".
    let expected = expected.filter(|&n| n > 0).map(|n| n as u64);
    let size_cap = s.lock().faults.size_cap;
    if let (Some(cap), Some(n)) = (size_cap, expected)
        && n > cap
    {
        // Glance answers 413 only after streaming past the cap (glance-api.md). Reading the whole
        // body first keeps the answer deterministic: refusing before reading races the client's
        // body writes, which then fail with a broken pipe instead of seeing the 413.
        let mut stream = body.into_data_stream();
        while let Some(Ok(_)) = stream.next().await {}
        return Err(injected(413, "Image exceeds the storage quota"));
    }

    let (token, algo) = {
        let mut inner = s.lock();
        let t = inner.tick();
        inner.upload_seq += 1;
        let token = inner.upload_seq;
        let img = inner
            .images
            .get_mut(&id)
            .ok_or_else(|| GErr::no_image(&id))?;
        if img.status != "queued" {
            return Err(GErr::new(
                StatusCode::CONFLICT,
                format!(
                    "Image status transition from {} to saving is not allowed",
                    img.status
                ),
            ));
        }
        let missing: Vec<&str> = [
            ("disk_format", &img.disk_format),
            ("container_format", &img.container_format),
        ]
        .into_iter()
        .filter(|(_, v)| v.as_deref().is_none_or(str::is_empty))
        .map(|(k, _)| k)
        .collect();
        match missing.len() {
            0 => {}
            1 => {
                return Err(GErr::bad_request(format!(
                    "Property {} must be set prior to saving data.",
                    missing[0]
                )));
            }
            _ => {
                return Err(GErr::bad_request(format!(
                    "Properties {} must be set prior to saving data.",
                    missing.join(", ")
                )));
            }
        }
        if img.stale_store_file {
            // glance_store refuses to overwrite the file a 415'd upload left behind.
            return Err(GErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server has either erred or is incapable of performing the requested operation.",
            ));
        }
        img.status = "saving".to_owned();
        img.upload_token = token;
        img.updated = t;
        let algo = img
            .os_hash_algo
            .as_deref()
            .and_then(HashAlgo::parse)
            .unwrap_or(s.algo);
        (token, algo)
    };
    let mut guard = UploadGuard {
        shared: s.clone(),
        id: id.clone(),
        token,
        armed: true,
    };

    // Benchmarks: a declared upload is not hashed (see `FakeOptions::hash_uploads`).
    let declared = if s.hash_uploads {
        None
    } else {
        expected.and_then(|n| s.lock().declared_uploads.get(&(n, algo)).cloned())
    };
    let mut hashers = declared.is_none().then(|| Hashers::new(algo));
    let mut count: u64 = 0;
    let mut head: Vec<u8> = Vec::with_capacity(INSPECT_BYTES);
    let mut kept = s.store_data.then(BytesMut::new);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            GErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server has either erred or is incapable of performing the requested operation.",
            )
        })?;
        s.bytes_received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let chunk = if count == 0 && !chunk.is_empty() && s.lock().faults.corrupt_uploads {
            let mut m = BytesMut::from(&chunk[..]);
            m[0] ^= 0xFF;
            m.freeze()
        } else {
            chunk
        };
        let total = count + chunk.len() as u64;
        if let Some(exp) = expected
            && total > exp
        {
            return Err(GErr::bad_request(format!(
                "Size exceeds: expected {exp} bytes, got {total} bytes"
            )));
        }
        if let Some(h) = hashers.as_mut() {
            h.update(&chunk);
        }
        if head.len() < INSPECT_BYTES {
            let n = (INSPECT_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..n]);
        }
        if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&chunk);
        }
        count = total;
    }
    if let Some(exp) = expected
        && count != exp
    {
        return Err(GErr::bad_request(format!(
            "Size mismatch: expected {exp} bytes, got {count} bytes"
        )));
    }
    if let Some(code) = s.lock().faults.fail_uploads_with {
        return Err(injected(code, "Injected upload failure"));
    }

    let (md5, multi) = match (hashers, declared) {
        (Some(h), _) => h.finish(),
        (None, Some(d)) => d,
        (None, None) => unreachable!("an upload is either hashed or declared"),
    };
    let mut inner = s.lock();
    let t = inner.tick();
    guard.armed = false;
    let Some(img) = inner
        .images
        .get_mut(&id)
        .filter(|img| img.upload_token == token && img.status == "saving")
    else {
        return Err(GErr::new(
            StatusCode::GONE,
            format!(
                "Image {id} could not be found after upload. The image may have been deleted during the upload, cleaning up the chunks uploaded."
            ),
        ));
    };
    img.updated = t;
    // glance_store has recorded the hashes before inspection runs, so they stick even on 415.
    img.checksum = Some(md5);
    img.os_hash_algo = Some(algo.name().to_owned());
    img.os_hash_value = Some(multi);
    let disk_format = img.disk_format.clone().unwrap_or_default();
    match inspect(&disk_format, img.container_format.as_deref(), &head, count) {
        Ok(virtual_size) => {
            img.status = "active".to_owned();
            img.size = Some(count);
            img.virtual_size = virtual_size;
            img.data = Some(match kept {
                Some(k) => Stored::Bytes(k.freeze()),
                None => Stored::Discarded,
            });
            match inner.faults.answer_uploads_with {
                Some(code) => Err(injected(
                    code,
                    "Image status transition from active to saving is not allowed",
                )),
                None => Ok(no_content()),
            }
        }
        Err(reason) => {
            img.set_status("queued");
            img.stale_store_file = true;
            Err(GErr::unsupported_media("application/octet-stream", reason))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Download
// ---------------------------------------------------------------------------------------------

/// WebOb `Range.parse` + Glance's checks: `Some((offset, len, end_inclusive))` for a
/// satisfiable single range, None without a Range header.
fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64, u64)>, GErr> {
    let Some(raw) = header else { return Ok(None) };
    if raw.contains(',') {
        return Err(GErr::bad_request(
            "Requests with multiple ranges are not supported in Glance. You may make multiple single-range requests instead.",
        ));
    }
    let unsatisfiable = |msg: String| GErr::new(StatusCode::RANGE_NOT_SATISFIABLE, msg);
    let invalid = || unsatisfiable("Invalid Range header.".to_owned());
    let lower = raw.to_ascii_lowercase();
    let rest = lower
        .trim_start()
        .strip_prefix("bytes")
        .ok_or_else(invalid)?;
    let rest = rest
        .trim_start()
        .strip_prefix('=')
        .ok_or_else(invalid)?
        .trim_start();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (start_s, rest) = rest.split_at(digits_end);
    let rest = rest
        .trim_start()
        .strip_prefix('-')
        .ok_or_else(invalid)?
        .trim_start();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let end_s = &rest[..digits_end];
    // start may be negative (suffix range); end is exclusive, as in WebOb.
    let (start, end): (i128, Option<i128>) = if start_s.is_empty() {
        let n: i128 = end_s.parse().map_err(|_| invalid())?;
        (-n, None)
    } else {
        let a: i128 = start_s.parse().map_err(|_| invalid())?;
        if end_s.is_empty() {
            (a, None)
        } else {
            let b: i128 = end_s.parse::<i128>().map_err(|_| invalid())? + 1;
            if a >= b {
                return Err(invalid());
            }
            (a, Some(b))
        }
    };
    let size_i = size as i128;
    if start >= size_i {
        return Err(unsatisfiable(format!(
            "Invalid start position in Range header. Start position MUST be in the inclusive range [0, {}].",
            size_i - 1
        )));
    }
    let offset = if start >= 0 {
        start
    } else if -start < size_i {
        size_i + start
    } else {
        0
    };
    let (len, last) = match end {
        Some(e) if e < size_i => (e - offset, e - 1),
        _ => (size_i - offset, size_i - 1),
    };
    Ok(Some((offset as u64, len as u64, last as u64)))
}

#[derive(Clone, Copy, Default)]
struct DataFaults {
    corrupt_at: Option<u64>,
    truncate_at: Option<u64>,
    stall_at: Option<u64>,
}

struct Download {
    data: Stored,
    pos: u64,
    end: u64,
    sent: u64,
    faults: DataFaults,
    shared: Arc<Shared>,
    done: bool,
}

async fn next_piece(mut d: Download) -> Option<(Result<Bytes, std::io::Error>, Download)> {
    if d.done {
        return None;
    }
    if d.faults.stall_at.is_some_and(|n| d.sent >= n) && d.pos < d.end {
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    }
    if d.faults.truncate_at.is_some_and(|n| d.sent >= n) && d.pos < d.end {
        d.done = true;
        // Let hyper flush what was already sent before the connection is torn down.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "injected truncation");
        return Some((Err(err), d));
    }
    if d.pos >= d.end {
        return None;
    }
    let mut n = (d.end - d.pos).min(CHUNK as u64);
    for limit in [d.faults.truncate_at, d.faults.stall_at]
        .into_iter()
        .flatten()
    {
        if limit > d.sent {
            n = n.min(limit - d.sent);
        }
    }
    let mut piece = d.data.read(d.pos, n as usize);
    if let Some(at) = d
        .faults
        .corrupt_at
        .filter(|at| (d.pos..d.pos + n).contains(at))
    {
        let mut m = BytesMut::from(&piece[..]);
        m[(at - d.pos) as usize] ^= 0xFF;
        piece = m.freeze();
    }
    d.pos += n;
    d.sent += n;
    d.shared.bytes_served.fetch_add(n, Ordering::Relaxed);
    Some((Ok(piece), d))
}

async fn download(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, GErr> {
    let (data, size, checksum, faults) = {
        let mut inner = s.lock();
        let img = inner.images.get(&id).ok_or_else(|| GErr::no_image(&id))?;
        if !img.has_servable_data() {
            // No location (queued/saving/...) or a store that lost the file: glance_store
            // NotFound, which Glance turns into 204.
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return Ok(resp);
        }
        let data = img.data.clone().expect("servable data");
        let size = img.size.unwrap_or_else(|| data.len());
        let checksum = img.checksum.clone();
        let f = inner.faults.clone();
        let any = f.corrupt_data || f.truncate_at.is_some() || f.stall_at.is_some();
        let faults = if any
            && f.data_fault_limit
                .is_none_or(|n| inner.faulted_downloads < n)
        {
            inner.faulted_downloads += 1;
            DataFaults {
                corrupt_at: (f.corrupt_data && size > 0).then_some(size / 2),
                truncate_at: f.truncate_at,
                stall_at: f.stall_at,
            }
        } else {
            DataFaults::default()
        };
        (data, size, checksum, faults)
    };
    let range_header = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .filter(|_| !s.lock().faults.ignore_range);
    let range = parse_range(range_header, size)?;
    let (offset, len) = range.map_or((0, size), |(o, l, _)| (o, l));
    let dl = Download {
        data,
        pos: offset,
        end: offset + len,
        sent: 0,
        faults,
        shared: s.clone(),
        done: false,
    };
    let stream = futures_util::stream::unfold(dl, next_piece);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(md5) = checksum {
        h.insert("content-md5", HeaderValue::from_str(&md5).expect("hex"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((o, _, last)) = range {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {o}-{last}/{size}")).expect("ascii"),
        );
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}
