//! Helpers for capvm's integration tests: find the binaries, build the test
//! guest once, run a VM with a deadline and collect what it printed.
//!
//! Tests need /dev/kvm and fail loudly without it, unless the run opts out
//! with CAPVM_TESTS_WITHOUT_KVM=1 (then KVM tests return early, saying so).

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where cargo put the workspace binaries (target/<profile>/).
pub fn bin_dir() -> PathBuf {
    // This test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

pub fn capvm_bin() -> PathBuf {
    let p = bin_dir().join("capvm");
    for b in ["capvm", "capvm-vcpu-runner", "capvm-uart"] {
        assert!(
            bin_dir().join(b).exists(),
            "{b} is not built in {}: run `cargo build --workspace` first (scripts/test does)",
            bin_dir().display()
        );
    }
    p
}

/// Fails a KVM test loudly when /dev/kvm is missing. A run that opts out
/// (CAPVM_TESTS_WITHOUT_KVM=1 when the tests are built, see build.rs)
/// marks those tests ignored instead, so they never count as passed.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: these tests boot real guests (build them with CAPVM_TESTS_WITHOUT_KVM=1 to mark them ignored)"
    );
}

/// Builds tests/guests once per test process and returns the guest ELF.
pub fn guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--quiet"])
            .current_dir(&dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo for the test guest");
        assert!(out.status.success(), "building the test guest failed:\n{}", String::from_utf8_lossy(&out.stderr));
        dir.join("target/release/testguest")
    })
}

/// The test guest with its PVH note removed and its ELF entry moved to the
/// 64-bit entry point, to exercise the non-PVH ELF path.
pub fn guest_without_pvh_note() -> &'static Path {
    static GUEST64: OnceLock<PathBuf> = OnceLock::new();
    GUEST64.get_or_init(|| {
        let src = guest();
        let nm = Command::new("nm").arg(src).output().expect("run nm (binutils)");
        let syms = String::from_utf8_lossy(&nm.stdout);
        let addr = syms
            .lines()
            .find(|l| l.ends_with(" entry64"))
            .and_then(|l| l.split_whitespace().next())
            .expect("entry64 symbol");
        let dst = src.with_file_name("testguest-no-pvh");
        let st = Command::new("objcopy")
            .args(["--remove-section=.note.Xen", &format!("--set-start=0x{addr}")])
            .arg(src)
            .arg(&dst)
            .status()
            .expect("run objcopy (binutils)");
        assert!(st.success());
        dst
    })
}

/// A finished VM run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// The Handbook-style command line for the test guest with `cmd` on its
/// kernel command line, plus `extra` flags before the VM name.
pub fn guest_args(cmd: &str, extra: &[&str]) -> Vec<String> {
    vm_args(1, "64M", guest(), cmd, extra)
}

/// A VM with `cpus` vCPUs and `memory`, a host bridge, an LPC bridge with
/// COM1 on stdio, booting `kernel` with `cmdline`, plus `extra` flags; the
/// last word is a VM name of its own.
pub fn vm_args(cpus: u32, memory: &str, kernel: &Path, cmdline: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["-c".into(), cpus.to_string(), "-m".into(), memory.into()];
    args.extend(["-s", "0,hostbridge", "-s", "31,lpc", "-l", "com1,stdio"].iter().map(|s| s.to_string()));
    args.push("-o".into());
    args.push(format!("boot.kernel={}", kernel.display()));
    args.push("-o".into());
    args.push(format!("boot.cmdline={cmdline}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(unique_vm_name());
    args
}

/// A VM name no other test uses at the same time (control sockets are per name).
pub fn unique_vm_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs capvmctl against the test VMs' runtime directory; panics if it fails.
pub fn capvmctl(args: &[&str]) -> String {
    let out = Command::new(bin_dir().join("capvmctl"))
        .env("CAPVM_RUNTIME_DIR", runtime_dir())
        .args(args)
        .output()
        .expect("run capvmctl");
    assert!(out.status.success(), "capvmctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `capvmctl --get-stats` of VM `name`, as ("role: counter", value) pairs.
pub fn get_stats(name: &str) -> Vec<(String, u64)> {
    capvmctl(&[&format!("--vm={name}"), "--get-stats"])
        .lines()
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The word after `key` on the first line that has it (guest and peer output).
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.split_once(key)).and_then(|(_, rest)| rest.split_whitespace().next())
}

/// One counter of `get_stats`' answer; panics if it is missing.
pub fn stat(stats: &[(String, u64)], key: &str) -> u64 {
    stats.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key} in {stats:?}")).1
}

/// Reads capvm's output into `seen` until it holds `needle`; fails when
/// capvm ends first or `deadline` passes.
pub fn read_until(out: &mut (impl Read + AsFd), seen: &mut Vec<u8>, needle: &str, deadline: Instant) {
    assert!(
        try_read_until(out, seen, needle, deadline),
        "guest did not get to {needle:?}: {}",
        String::from_utf8_lossy(seen)
    );
}

/// As `read_until`, but says whether `needle` came before `deadline`. A
/// guest that prints nothing more cannot hold it past the deadline: each
/// read waits (poll) only for the time left.
pub fn try_read_until(out: &mut (impl Read + AsFd), seen: &mut Vec<u8>, needle: &str, deadline: Instant) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = [PollFd::new(out.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.min(Duration::from_secs(60))).unwrap_or(PollTimeout::NONE);
        if poll(&mut pfd, ms).unwrap_or(0) == 0 {
            continue;
        }
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "capvm ended early: {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..n]);
    }
    true
}

/// Asks VM `name` to stop (capvmctl --destroy); a VM already gone is fine.
pub fn destroy(name: &str) {
    let _ = Command::new(bin_dir().join("capvmctl"))
        .env("CAPVM_RUNTIME_DIR", runtime_dir())
        .args([&format!("--vm={name}"), "--destroy"])
        .output();
}

/// Where test VMs keep their control sockets.
pub fn runtime_dir() -> PathBuf {
    std::env::temp_dir().join("capvm-tests-run")
}

/// Starts capvm with piped stdio.
pub fn spawn(args: &[String]) -> Child {
    spawn_with(Command::new(capvm_bin()), args)
}

/// Starts `cmd` (capvm, or a wrapper that execs it) with `args` and piped stdio.
pub fn spawn_with(mut cmd: Command, args: &[String]) -> Child {
    // A test that fails before it waits for its VM must not leave it
    // running: the VM gets SIGTERM (and stops its children) when the
    // test's thread ends.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.env("CAPVM_RUNTIME_DIR", runtime_dir())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start capvm")
}

/// Waits for `child` at most `limit`; kills it and panics on a hang.
pub fn finish(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("capvm did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Run { status, stdout, stderr }
}

/// Runs capvm to the end (30 s at most) with stdin closed.
pub fn run(args: &[String]) -> Run {
    let mut child = spawn(args);
    drop(child.stdin.take());
    finish(child, Duration::from_secs(30))
}

/// The pids whose parent is `pid`, with their names.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').unwrap() + 1..close].to_string();
        let ppid: u32 = stat[close + 2..].split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((p, comm));
        }
    }
    out.sort();
    out
}

/// Waits until `pid` has `n` children that have exec'd (or `limit` passes)
/// and returns them.
pub fn wait_for_children(pid: u32, n: usize, limit: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + limit;
    loop {
        let c = children_of(pid);
        let execd = c.iter().filter(|(_, name)| name != "capvm").count();
        if execd >= n || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
pub fn pid_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').is_some_and(|i| !stat[i + 2..].starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether the host's KVM emulates guest CPL0 code (kvm_pvm).
pub fn host_is_emulated() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A network namespace of the test's own, deleted (with its taps) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with loopback up and IPv6 off, so the kernel sends
    /// nothing of its own on the taps made in it.
    pub fn create() -> Netns {
        let ns = Netns { name: format!("capvm-{}", unique_vm_name()) };
        let st = Command::new("ip").args(["netns", "add", &ns.name]).status().expect("run ip (iproute2)");
        assert!(st.success(), "ip netns add {} failed (tests run as root)", ns.name);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs capvm inside the namespace to the end (30 s at most), stdin closed.
    pub fn run_capvm(&self, args: &[String]) -> Run {
        let mut child = self.spawn_capvm(args);
        drop(child.stdin.take());
        finish(child, Duration::from_secs(30))
    }

    /// Starts capvm inside the namespace with piped stdio.
    pub fn spawn_capvm(&self, args: &[String]) -> Child {
        spawn_with(self.command(capvm_bin()), args)
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.command(argv[0]).args(&argv[1..]).output().expect("run ip netns exec");
        assert!(out.status.success(), "{argv:?} in {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A persistent tap, up (carrier comes when capvm attaches).
    pub fn add_tap(&self, tap: &str) {
        self.run(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        self.run(&["ip", "link", "set", tap, "up"]);
    }

    /// Whether an interface of that name exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        self.command("ip").args(["link", "show", name]).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A helper process (a DHCP server, a tap peer) killed when the test ends,
/// even when it ends by a failed assertion.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An ISO 9660 image (xorriso, which scripts/setup installs) holding one
/// file `name` with `text`; `tag` keeps the tests' images apart.
pub fn iso_image(tag: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capvm-iso-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    let iso = dir.with_extension("iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .arg(&dir)
        .output()
        .expect("run xorriso (scripts/setup installs it)");
    assert!(out.status.success(), "xorriso failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(dir).unwrap();
    iso
}

/// A file a fixture script under tests/ makes (a kernel): the path in
/// `$env` if scripts/test set it, else what the script prints.
pub fn fixture(env: &str, script: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&script).stderr(Stdio::inherit()).output().expect("run a fixture script");
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
