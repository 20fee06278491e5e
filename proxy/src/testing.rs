//! Helpers for privileged tests, shared by every crate's tests (feature `testing`).
//!
//! # Policy
//!
//! A privileged test calls [`privileged`] first. As root it runs. Without root it fails,
//! saying why, because CI runs these tests as root and a test that silently passes there
//! proves nothing. A developer without root may opt out explicitly with
//! `FAIRLEAD_SKIP_PRIVILEGED=1`: the test then prints
//! `SKIPPED (FAIRLEAD_SKIP_PRIVILEGED=1): <test name>` to stderr (past libtest's output
//! capture, so the skip shows even without `--nocapture`) and returns.
//!
//! ```no_run
//! #[test]
//! fn attaches_to_a_cgroup() {
//!     if !fairlead_proxy::testing::privileged("attaches_to_a_cgroup") {
//!         return;
//!     }
//!     // ...
//! }
//! ```

use std::{
    error::Error as StdError,
    fmt::Write as _,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The opt-out variable: set to `1` to skip privileged tests when not root.
pub const SKIP_PRIVILEGED_ENV: &str = "FAIRLEAD_SKIP_PRIVILEGED";

/// Whether the privileged test `test_name` should run: `true` as root; `false` (after
/// printing `SKIPPED ...` to stderr) without root when [`SKIP_PRIVILEGED_ENV`] is `1`.
///
/// # Panics
///
/// Without root and without the opt-out, so that the test fails and says why.
#[must_use]
pub fn privileged(test_name: &str) -> bool {
    let euid = effective_uid();
    if euid == Some(0) {
        return true;
    }
    if std::env::var_os(SKIP_PRIVILEGED_ENV).is_some_and(|v| v == "1") {
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
        // and a skip must never be silent.
        let _ = writeln!(
            io::stderr(),
            "SKIPPED ({SKIP_PRIVILEGED_ENV}=1): {test_name}"
        );
        return false;
    }
    let who = euid.map_or_else(|| "an unknown user".to_owned(), |uid| format!("uid {uid}"));
    panic!(
        "{test_name} is a privileged test (BPF, cgroups, namespaces) and must run as root, \
         but runs as {who}. Run it as root (CI does), or set {SKIP_PRIVILEGED_ENV}=1 to skip \
         privileged tests explicitly."
    );
}

/// The effective uid of this process, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// An error and all its sources, one per line: for test failures, where the interesting
/// part (a verifier log, an errno) is usually a source.
#[must_use]
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, "\n  caused by: {cause}");
        source = cause.source();
    }
    text
}

pub use crate::datapath::cgroup2_root;

/// A unique, throw-away name: `fairlead-test-<label>-<pid>-<n>-<nanos>`.
fn unique_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fairlead-test-{label}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A child cgroup v2 with a unique name, removed on drop, for attaching programs without
/// touching the machine's own cgroups.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/fairlead-test-<label>-...`.
    pub fn new(label: &str) -> io::Result<Self> {
        let root = cgroup2_root()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy"))?;
        let path = root.join(unique_name(label));
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// The cgroup directory (what programs attach to).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its `cgroup.procs`: writing a pid there moves that process into the cgroup.
    #[must_use]
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can only be removed once empty; a process that just exited may still be
        // leaving it, so retry for a moment.
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("cannot remove test cgroup {}: {e}", self.path.display());
        }
    }
}

/// Where bpffs is mounted on the machines fairlead runs on.
pub const BPFFS: &str = "/sys/fs/bpf";

/// A directory on bpffs with a unique name, for pinning maps; removed with everything pinned
/// in it on drop (unpinning a map frees it once nothing else holds it).
#[derive(Debug)]
pub struct TestPinDir {
    path: PathBuf,
}

impl TestPinDir {
    /// Creates `/sys/fs/bpf/fairlead-test-<label>-...`.
    pub fn new(label: &str) -> io::Result<Self> {
        let path = Path::new(BPFFS).join(unique_name(label));
        fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestPinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "cannot remove test pin directory {}: {e}",
                self.path.display()
            );
        }
    }
}

/// A network namespace with a unique name (`flt-<label>-<n>`), deleted on drop with every
/// interface in it.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

/// A short unique name: interface names have at most 15 bytes.
fn short_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    format!("{prefix}{pid}x{n}")
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl TestNetns {
    /// Creates the namespace and brings its loopback up.
    pub fn new(label: &str) -> io::Result<Self> {
        let name = short_name(&format!("flt-{label}-"));
        ip(&["netns", "add", &name])?;
        let this = Self { name };
        this.ip(&["link", "set", "lo", "up"])?;
        Ok(this)
    }

    /// The namespace's name (for `ip netns exec`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace.
    #[must_use]
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Joins `self` and `peer` with a veth pair and gives each end an address with prefix
    /// (`"10.0.1.1/24"`, `"fd00:1::1/64"`, IPv6 without duplicate-address detection).
    /// Returns the names of the two ends (in `self`, in `peer`).
    pub fn link(
        &self,
        addresses: &[&str],
        peer: &TestNetns,
        peer_addresses: &[&str],
    ) -> io::Result<(String, String)> {
        let a = short_name("fla");
        let b = short_name("flb");
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &self.name])?;
        ip(&["link", "set", &b, "netns", &peer.name])?;
        for (ns, dev, addrs) in [(self, &a, addresses), (peer, &b, peer_addresses)] {
            for addr in addrs {
                if addr.contains(':') {
                    ns.ip(&["addr", "add", addr, "dev", dev, "nodad"])?;
                } else {
                    ns.ip(&["addr", "add", addr, "dev", dev])?;
                }
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok((a, b))
    }

    /// Runs `sysctl -qw <setting>` inside the namespace (`net.*` settings are per namespace).
    pub fn sysctl(&self, setting: &str) -> io::Result<()> {
        let out = self.command("sysctl").args(["-qw", setting]).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "sysctl {setting}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Moves the calling thread into the namespace, for good (`BPF_PROG_TEST_RUN` runs
    /// programs in the caller's namespace: its routes and settings decide `bpf_fib_lookup`'s
    /// answers). The namespace lives on while the thread is in it.
    pub fn enter(&self) -> io::Result<()> {
        let file = std::fs::File::open(self.path())?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(io::Error::from)
    }

    /// The path of the namespace (for `nsenter --net=`).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete test netns {}: {e}", self.name);
        }
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` (stdin closed, output collected) and returns its output; kills it and
/// panics if it has not exited within `timeout`, so that a hung client fails its test.
///
/// # Panics
///
/// If the command cannot be started, or hangs.
#[must_use]
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Ok(out) = rx.recv_timeout(timeout) {
        out.expect("collect output")
    } else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("client hung for {timeout:?}");
    }
}
