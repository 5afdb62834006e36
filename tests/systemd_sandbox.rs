//! A real copy under the seccomp sandbox of the systemd units in deploy/systemd, as systemd builds
//! it from their `SystemCallFilter=`, `SystemCallErrorNumber=`, `SystemCallArchitectures=`,
//! `RestrictAddressFamilies=` and `MemoryDenyWriteExecute=` lines, run as an unprivileged user as
//! `DynamicUser=` does. The units' filter once denied setpriority, which the hashing threads call,
//! with systemd's default action: every copy died of SIGSYS (exit 159) and the service
//! crash-looped (issue 9, item 15). A sandboxing change that breaks the service fails here.
//!
//! The unit files are read at test time, and the syscall groups are expanded by
//! `systemd-analyze syscall-filter`, so the test follows both the units and the systemd that would
//! run them. Not reproduced: the namespace settings (ProtectSystem=, PrivateTmp=, ...) and the
//! narrower seccomp settings (LockPersonality=, RestrictRealtime=, RestrictNamespaces=,
//! RestrictSUIDSGID=, ProtectClock=, ...), whose syscalls glance-sync does not make.
//!
//! Needs root (to become user nobody) and systemd-analyze (Debian package systemd, which
//! tests/run.sh installs).
#![cfg(target_os = "linux")]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Instant;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use serde_json::json;
use support::glance_api::{Api, image_body, random_bytes};
use support::harness::{RealGlance, repo_root};
use support::scenario::copies_by_source;
use support::sync_cli::{SyncRun, bin_for_any_user, finish, write_config};

const UNITS: [&str; 2] = ["glance-sync.service", "glance-sync-run.service"];

/// The sandbox lines of both units as shipped before issue 9 item 15 was fixed: setpriority
/// denied (it is in @resources) with systemd's default action, killing the process. Kept to prove
/// that this test catches a filter that kills the service.
const SHIPPED_BEFORE_FIX: &str = "\
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
";

/// The user `DynamicUser=` stands for: unprivileged, owning nothing but the state directory.
const NOBODY: u32 = 65534;

/// `SHM_EXEC` of linux/shm.h (not in the libc crate): shmat() mapping executable.
const SHM_EXEC: u64 = 0o100000;

/// A copy whose hashing takes long enough to be a real stream (several batches per thread).
const IMAGE_BYTES: usize = 4 << 20;

// ---- the unit's settings, read as systemd reads them --------------------------------------------

/// The seccomp-related settings of a unit, each as its assignments in file order.
#[derive(Debug, Default)]
struct Sandbox {
    syscall_filter: Vec<String>,
    syscall_error_number: Vec<String>,
    syscall_architectures: Vec<String>,
    restrict_address_families: Vec<String>,
    memory_deny_write_execute: Vec<String>,
}

impl Sandbox {
    /// The settings of the `[Service]` section (or of bare lines without any section header).
    fn parse(text: &str) -> Sandbox {
        let mut sandbox = Sandbox::default();
        let mut in_service = true;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "continued line {line:?}: this test reads one line per assignment; join it"
            );
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().to_string();
            let list = match key.trim() {
                "SystemCallFilter" => &mut sandbox.syscall_filter,
                "SystemCallErrorNumber" => &mut sandbox.syscall_error_number,
                "SystemCallArchitectures" => &mut sandbox.syscall_architectures,
                "RestrictAddressFamilies" => &mut sandbox.restrict_address_families,
                "MemoryDenyWriteExecute" => &mut sandbox.memory_deny_write_execute,
                _ => continue,
            };
            if in_service {
                list.push(value);
            }
        }
        sandbox
    }

    /// The seccomp programs systemd installs for these settings, in its order (address families,
    /// MemoryDenyWriteExecute=, then the syscall filter as the last step before exec). The kernel
    /// runs them all; the strictest answer wins.
    fn seccomp_programs(&self, groups: &SyscallGroups) -> Vec<BpfProgram> {
        // seccompiler's programs kill the process on a call of another architecture, which is
        // what SystemCallArchitectures=native adds; without it they would be stricter than systemd.
        let archs: Vec<&str> = self
            .syscall_architectures
            .iter()
            .flat_map(|a| a.split_whitespace())
            .collect();
        assert!(
            archs == ["native"],
            "SystemCallArchitectures={archs:?}: this test reproduces only `native`"
        );
        let mut programs = Vec::new();
        if let Some(families) = self.address_families() {
            programs.push(address_family_program(&families));
        }
        if self
            .memory_deny_write_execute
            .last()
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "on" | "1"))
        {
            programs.push(memory_deny_write_execute_program());
        }
        if let Some(filter) = self.syscall_filter(groups) {
            programs.push(syscall_filter_program(&filter, self.syscall_errno()));
        }
        programs
    }

    fn syscall_filter(&self, groups: &SyscallGroups) -> Option<ListSetting<String>> {
        let mut setting = None;
        for value in &self.syscall_filter {
            // systemd starts every allow list with @default, the calls any program needs.
            apply_assignment(
                &mut setting,
                value,
                || groups.expand("@default"),
                |word| groups.expand(word),
            );
        }
        setting
    }

    /// What a denied call gets: `None` for systemd's default, killing the process (SIGSYS).
    fn syscall_errno(&self) -> Option<u32> {
        match self.syscall_error_number.last().map(String::as_str) {
            None | Some("") | Some("kill") => None,
            Some(name) => Some(errno_by_name(name)),
        }
    }

    fn address_families(&self) -> Option<ListSetting<i64>> {
        let mut setting = None;
        for value in &self.restrict_address_families {
            if value == "none" {
                setting = Some(ListSetting {
                    allow_list: true,
                    entries: BTreeSet::new(),
                });
                continue;
            }
            apply_assignment(&mut setting, value, Vec::new, |word| {
                vec![address_family_by_name(word)]
            });
        }
        setting
    }
}

/// A list setting as systemd holds it after all its assignments.
#[derive(Debug, PartialEq)]
struct ListSetting<T> {
    /// Only `entries` allowed; else everything but `entries`.
    allow_list: bool,
    entries: BTreeSet<T>,
}

/// One assignment of a list setting (SystemCallFilter=, RestrictAddressFamilies=), as systemd's
/// config_parse_syscall_filter and config_parse_address_families apply it: the first assignment
/// makes an allow list (plain) or a deny list (`~`); later plain entries add to an allow list and
/// remove from a deny list, `~` entries the opposite; an empty assignment starts over.
fn apply_assignment<T: Ord>(
    setting: &mut Option<ListSetting<T>>,
    value: &str,
    allow_list_start: impl FnOnce() -> Vec<T>,
    mut expand: impl FnMut(&str) -> Vec<T>,
) {
    if value.is_empty() {
        *setting = None;
        return;
    }
    let (invert, words) = match value.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let setting = setting.get_or_insert_with(|| ListSetting {
        allow_list: !invert,
        entries: if invert {
            BTreeSet::new()
        } else {
            allow_list_start().into_iter().collect()
        },
    });
    for word in words.split_whitespace() {
        assert!(
            !word.contains(':'),
            "{word:?}: per-entry error numbers (name:errno) are not reproduced by this test"
        );
        for entry in expand(word) {
            if invert != setting.allow_list {
                setting.entries.insert(entry);
            } else {
                setting.entries.remove(&entry);
            }
        }
    }
}

/// systemd's syscall groups, as the systemd on this machine defines them.
struct SyscallGroups(HashMap<String, Vec<String>>);

impl SyscallGroups {
    fn from_systemd_analyze() -> SyscallGroups {
        let out = std::process::Command::new("systemd-analyze")
            .arg("syscall-filter")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run systemd-analyze ({e}): it lists the syscall groups the units \
                     name; install Debian's package systemd (tests/run.sh does)"
                )
            });
        assert!(
            out.status.success(),
            "systemd-analyze syscall-filter failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let groups = SyscallGroups::parse(&String::from_utf8_lossy(&out.stdout));
        assert!(
            groups.0.contains_key("@default") && groups.0.contains_key("@system-service"),
            "systemd-analyze syscall-filter listed no @default or @system-service group"
        );
        groups
    }

    /// `systemd-analyze syscall-filter`'s listing: a `@group` line, then its members indented
    /// (syscalls and nested `@group`s, `#` lines are comments); other sections start with `#`.
    fn parse(listing: &str) -> SyscallGroups {
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        let mut current: Option<String> = None;
        for line in listing.lines() {
            let entry = line.trim();
            if !line.starts_with(char::is_whitespace) {
                current = entry.starts_with('@').then(|| entry.to_string());
                if let Some(name) = &current {
                    groups.entry(name.clone()).or_default();
                }
            } else if let Some(group) = &current
                && !entry.is_empty()
                && !entry.starts_with('#')
            {
                groups.get_mut(group).unwrap().push(entry.to_string());
            }
        }
        SyscallGroups(groups)
    }

    /// The syscall names `word` stands for: itself, or a group's members, nested groups expanded.
    fn expand(&self, word: &str) -> Vec<String> {
        if !word.starts_with('@') {
            return vec![word.to_string()];
        }
        let members = self.0.get(word).unwrap_or_else(|| {
            panic!("syscall group {word} is unknown to this systemd, which would ignore it")
        });
        members.iter().flat_map(|m| self.expand(m)).collect()
    }
}

/// This architecture's number of a syscall that systemd names; `None` for names of other
/// architectures (mmap2, ...), which libseccomp ignores here too.
fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name)
        .ok()
        .map(|s| i64::from(s.id()))
}

fn errno_by_name(name: &str) -> u32 {
    let errno = match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "ENOSYS" => libc::ENOSYS,
        "EINVAL" => libc::EINVAL,
        _ => name.parse().unwrap_or_else(|_| {
            panic!("SystemCallErrorNumber={name}: add this error name to errno_by_name")
        }),
    };
    errno as u32
}

fn address_family_by_name(name: &str) -> i64 {
    i64::from(match name {
        "AF_UNIX" | "AF_LOCAL" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        _ => panic!("RestrictAddressFamilies={name}: add this family to address_family_by_name"),
    })
}

// ---- the seccomp programs systemd builds from them (src/shared/seccomp-util.c) -------------------

fn arch() -> seccompiler::TargetArch {
    std::env::consts::ARCH
        .try_into()
        .expect("seccompiler supports this architecture")
}

/// One condition on argument `arg` (compared as 64 bits, as libseccomp does on 64-bit machines).
fn when(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    SeccompRule::new(vec![
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).unwrap(),
    ])
    .unwrap()
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    otherwise: SeccompAction,
    on_match: SeccompAction,
) -> BpfProgram {
    SeccompFilter::new(rules, otherwise, on_match, arch())
        .and_then(BpfProgram::try_from)
        .expect("compile the seccomp program")
}

/// The syscall filter: in an allow list the listed calls run and the others get the negative
/// action; in a deny list the opposite. The negative action kills the process (SIGSYS) unless
/// SystemCallErrorNumber= gives an errno.
fn syscall_filter_program(filter: &ListSetting<String>, errno: Option<u32>) -> BpfProgram {
    let negative = errno.map_or(SeccompAction::KillProcess, SeccompAction::Errno);
    let rules = filter
        .entries
        .iter()
        .filter_map(|name| syscall_number(name))
        .map(|nr| (nr, vec![]))
        .collect();
    if filter.allow_list {
        program(rules, negative, SeccompAction::Allow)
    } else {
        program(rules, SeccompAction::Allow, negative)
    }
}

/// RestrictAddressFamilies= (seccomp_restrict_address_families): socket() with a family not
/// allowed fails with EAFNOSUPPORT. An allow list blocks below its lowest family, above its
/// highest, and each unlisted one in between.
fn address_family_program(families: &ListSetting<i64>) -> BpfProgram {
    let socket_rules: Vec<SeccompRule> = if families.allow_list {
        match (families.entries.first(), families.entries.last()) {
            (Some(&first), Some(&last)) => {
                let mut rules = vec![
                    when(0, SeccompCmpOp::Lt, first as u64),
                    when(0, SeccompCmpOp::Gt, last as u64),
                ];
                rules.extend(
                    (first..last)
                        .filter(|af| !families.entries.contains(af))
                        .map(|af| when(0, SeccompCmpOp::Eq, af as u64)),
                );
                rules
            }
            // Nothing allowed: every socket() fails.
            _ => vec![],
        }
    } else {
        families
            .entries
            .iter()
            .map(|&af| when(0, SeccompCmpOp::Eq, af as u64))
            .collect()
    };
    program(
        BTreeMap::from([(libc::SYS_socket, socket_rules)]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
    )
}

/// MemoryDenyWriteExecute= (seccomp_memory_deny_write_execute): EPERM for mmap() of memory both
/// writable and executable, for mprotect()/pkey_mprotect() making memory executable, and for
/// shmat() with SHM_EXEC. (Newer systemd versions use the kernel's prctl(PR_SET_MDWE) where it
/// exists instead, to the same end; Debian 12's systemd 252 uses these rules.)
fn memory_deny_write_execute_program() -> BpfProgram {
    let write_exec = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let exec = libc::PROT_EXEC as u64;
    program(
        BTreeMap::from([
            (
                libc::SYS_mmap,
                vec![when(2, SeccompCmpOp::MaskedEq(write_exec), write_exec)],
            ),
            (
                libc::SYS_mprotect,
                vec![when(2, SeccompCmpOp::MaskedEq(exec), exec)],
            ),
            (
                libc::SYS_pkey_mprotect,
                vec![when(2, SeccompCmpOp::MaskedEq(exec), exec)],
            ),
            (
                libc::SYS_shmat,
                vec![when(2, SeccompCmpOp::MaskedEq(SHM_EXEC), SHM_EXEC)],
            ),
        ]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )
}

// ---- running glance-sync in that sandbox ---------------------------------------------------------

fn require_root() {
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test must run as root: it runs glance-sync as user nobody ({NOBODY}), as the \
         units' DynamicUser= does, and only root can switch users (tests/run.sh runs as root in CI)"
    );
}

/// What the service would find: the binary in a directory anyone can read, and a state
/// directory (with the config) owned by the service's user, so that no path permission of the
/// test's own checkout decides the outcome.
struct Service {
    _state_dir: tempfile::TempDir,
    config: PathBuf,
}

impl Service {
    fn install(source_url: &str, target_url: &str) -> Service {
        let state_dir = tempfile::tempdir().unwrap();
        // The hashing threads' priority call is what the units' old filter killed: ask for it.
        let config = write_config(
            state_dir.path(),
            &[("prod", source_url), ("dr", target_url)],
            "prod",
            &["dr"],
            "[transfer]\nhashing_nice = 19\n",
        );
        for path in [state_dir.path(), &config] {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        Service {
            _state_dir: state_dir,
            config,
        }
    }

    /// `glance-sync --config CONFIG run` as systemd starts the unit: as user nobody, with
    /// no_new_privs and the seccomp programs installed in the child just before exec.
    async fn run_sandboxed(&self, programs: Vec<BpfProgram>) -> SyncRun {
        let mut cmd = tokio::process::Command::new(bin_for_any_user());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("RUST_LOG", "info")
            .current_dir("/")
            .stdin(Stdio::null())
            // std switches groups and user before the pre_exec closure runs.
            .gid(NOBODY)
            .uid(NOBODY);
        // SAFETY: runs in the forked child, where only async-signal-safe work is allowed: the
        // programs were compiled before the fork, and installing them is two syscalls (prctl
        // PR_SET_NO_NEW_PRIVS, which NoNewPrivileges= also sets, and seccomp) with no allocation.
        unsafe {
            cmd.pre_exec(move || {
                for p in &programs {
                    seccompiler::apply_filter(p).map_err(|_| std::io::Error::last_os_error())?;
                }
                Ok(())
            });
        }
        finish(&mut cmd).await
    }
}

/// Starts a source with one image of a few MiB; returns it with its Glance (alive while kept).
async fn source_with_one_image() -> (RealGlance, serde_json::Value) {
    let glance = RealGlance::start("sandbox-src");
    let image = Api::new(&glance.url)
        .create_with_data(
            image_body("sandboxed", "raw", json!({})),
            random_bytes(IMAGE_BYTES, 15),
        )
        .await;
    assert_eq!(image["status"], "active", "{image:#}");
    (glance, image)
}

fn unit_text(unit: &str) -> String {
    let path = repo_root().join("deploy").join("systemd").join(unit);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn a_copy_succeeds_as_an_unprivileged_user_under_each_units_seccomp_sandbox() {
    require_root();
    let groups = SyscallGroups::from_systemd_analyze();
    let (src, image) = source_with_one_image().await;
    for unit in UNITS {
        let sandbox = Sandbox::parse(&unit_text(unit));
        assert!(
            !sandbox.syscall_filter.is_empty(),
            "{unit} has no SystemCallFilter=: this test would prove nothing"
        );
        let dst = RealGlance::start("sandbox-dst");
        let service = Service::install(&src.url, &dst.url);
        let started = Instant::now();
        let run = service
            .run_sandboxed(sandbox.seccomp_programs(&groups))
            .await;
        eprintln!(
            "{unit}: glance-sync run exited {} after {:.1} s",
            run.code,
            started.elapsed().as_secs_f64()
        );
        run.assert_code(0);
        // With SystemCallErrorNumber=EPERM a denied call no longer kills: it shows as a warning
        // or an error (the hashing threads' priority, say), which a working sandbox never causes.
        assert!(
            !run.stderr.contains(" WARN ") && !run.stderr.contains(" ERROR "),
            "{unit}: the sandboxed run logged a warning or an error:\n{}",
            run.stderr
        );
        let copies = copies_by_source(&Api::new(&dst.url)).await;
        let copy = match copies.get(image["id"].as_str().unwrap()).map(Vec::as_slice) {
            Some([copy]) => copy,
            other => panic!("{unit}: expected one copy on the target, found {other:?}"),
        };
        assert_eq!(copy["status"], "active", "{unit}: {copy:#}");
        for key in ["size", "checksum", "os_hash_algo", "os_hash_value"] {
            assert!(!image[key].is_null(), "source {key} is null: {image:#}");
            assert_eq!(copy[key], image[key], "{unit}: {key} of the copy");
        }
    }
}

#[tokio::test]
#[ignore = "needs real Glance: run tests/run.sh"]
async fn the_filter_shipped_before_the_fix_kills_the_copy_with_sigsys() {
    require_root();
    let groups = SyscallGroups::from_systemd_analyze();
    let (src, _image) = source_with_one_image().await;
    let dst = RealGlance::start("sandbox-old");
    let service = Service::install(&src.url, &dst.url);
    let started = Instant::now();
    let run = service
        .run_sandboxed(Sandbox::parse(SHIPPED_BEFORE_FIX).seccomp_programs(&groups))
        .await;
    eprintln!(
        "filter shipped before the fix: glance-sync run exited {} after {:.1} s",
        run.code,
        started.elapsed().as_secs_f64()
    );
    // Whether the upload reached the target before the hashing threads were killed depends on
    // scheduling (the hashing queues hold several MiB): only the death is certain.
    run.assert_code(128 + libc::SIGSYS);
}

// ---- how the assignments are read (no root, no Glance) --------------------------------------------

const LISTING: &str = "\
@default
    # System calls that are always permitted
    execve
    exit_group

@privileged
    # All system calls which need super-user capabilities
    setuid

@resources
    # Alter resource settings
    nice
    setpriority

@system-service
    # General system service operations
    @default
    @resources
    read

# Ungrouped System Calls (known but not included in any of the groups except @known):
#   seccomp
";

fn read_filter(lines: &str) -> Option<ListSetting<String>> {
    Sandbox::parse(lines).syscall_filter(&SyscallGroups::parse(LISTING))
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn the_first_filter_line_decides_allow_or_deny_list_and_later_lines_remove_or_add_back() {
    // Allow list: @default comes implicitly, `~` removes, a later plain line adds back.
    assert_eq!(
        read_filter(
            "SystemCallFilter=read\n\
             SystemCallFilter=@system-service\n\
             SystemCallFilter=~@resources read\n\
             SystemCallFilter=setpriority\n"
        ),
        Some(ListSetting {
            allow_list: true,
            entries: set(&["execve", "exit_group", "setpriority"]),
        })
    );
    // Deny list: no @default; a plain line takes a call out of the denied set.
    assert_eq!(
        read_filter("SystemCallFilter=~@resources\nSystemCallFilter=nice\n"),
        Some(ListSetting {
            allow_list: false,
            entries: set(&["setpriority"]),
        })
    );
    // An empty assignment starts over.
    assert_eq!(
        read_filter("SystemCallFilter=~@resources\nSystemCallFilter=\n"),
        None
    );
}

#[test]
fn a_denied_call_kills_unless_systemcallerrornumber_names_an_errno() {
    let errno = |text: &str| Sandbox::parse(text).syscall_errno();
    assert_eq!(errno(""), None);
    assert_eq!(
        errno("SystemCallErrorNumber=EPERM\n"),
        Some(libc::EPERM as u32)
    );
    assert_eq!(
        errno("SystemCallErrorNumber=EPERM\nSystemCallErrorNumber=\n"),
        None
    );
    assert_eq!(errno("[Unit]\nSystemCallErrorNumber=EPERM\n"), None);
}

#[test]
fn the_units_allow_setpriority_back_and_answer_other_denied_calls_with_eperm() {
    let groups = SyscallGroups::parse(LISTING);
    for unit in UNITS {
        let sandbox = Sandbox::parse(&unit_text(unit));
        let filter = sandbox.syscall_filter(&groups).unwrap();
        assert!(filter.allow_list, "{unit}");
        assert!(filter.entries.contains("setpriority"), "{unit}");
        for denied in ["nice", "setuid"] {
            assert!(!filter.entries.contains(denied), "{unit}: {denied} allowed");
        }
        assert_eq!(sandbox.syscall_errno(), Some(libc::EPERM as u32), "{unit}");
    }
}
