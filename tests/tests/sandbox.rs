//! Every child in capability mode: what /proc shows, what the audit shows,
//! and the hostile matrix (every role against every forbidden operation).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use capvm_tests::*;

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn ns(pid: u32, name: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap()
}

fn open_fds(pid: u32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// fd numbers per role from `--print-policy` output (reserved fds left out).
fn policy_fds(text: &str) -> Vec<(String, BTreeSet<i32>)> {
    let mut out: Vec<(String, BTreeSet<i32>)> = Vec::new();
    let mut in_fds = false;
    for line in text.lines() {
        if let Some(role) = line.strip_prefix("role ") {
            out.push((role.to_string(), BTreeSet::new()));
            in_fds = false;
        } else if line.trim() == "fds:" {
            in_fds = true;
        } else if line.trim_start().starts_with("syscalls") {
            in_fds = false;
        } else if in_fds && !line.contains("(when connected)") {
            if let Some(fd) = line.split_whitespace().next().and_then(|w| w.parse().ok()) {
                out.last_mut().unwrap().1.insert(fd);
            }
        }
    }
    out
}

/// Polls `capvmctl --audit` until `n` children have entered their sandbox.
fn wait_sandboxed(name: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = capvmctl(&[&format!("--vm={name}"), "--audit"]);
        if audit.matches("sandbox entered in").count() >= n || Instant::now() > deadline {
            return audit;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A read-only 64 KiB disk image for the sandbox tests.
fn ro_disk(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("capvm-sandbox-{}-{tag}.img", std::process::id()));
    std::fs::write(&p, vec![0u8; 64 << 10]).unwrap();
    p
}

/// Two COM ports (stdio and a socket), a read-only disk, a NIC on a tap
/// capvm creates, an AHCI controller with the same disk as a CD, a display
/// (its registers' server, its VNC server on a port the kernel picks, and
/// the i8042 server for its keyboard and mouse;
/// 0.0.0.0: the test's network namespace has no loopback up),
/// and two vCPUs, spinning.
fn two_port_args(name: &str, sock: &std::path::Path, disk: &std::path::Path) -> Vec<String> {
    let com2 = format!("com2,{}", sock.display());
    let blk = format!("4,virtio-blk,{},ro", disk.display());
    let ahci = format!("6,ahci-cd,{}", disk.display());
    let mut args = guest_args(
        "spin",
        &["-c", "2", "-l", &com2, "-s", &blk, "-s", "5,virtio-net,sbtap0", "-s", &ahci, "-s", "7,fbuf,tcp=0.0.0.0:0"],
    );
    *args.last_mut().unwrap() = name.to_string();
    args
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn every_child_is_confined_as_proc_shows_and_holds_only_its_manifest_fds() {
    require_kvm();
    let name = unique_vm_name();
    let sock = std::env::temp_dir().join(format!("{name}.com2.sock"));
    let disk = ro_disk("confined");
    let args = two_port_args(&name, &sock, &disk);
    let mut pp = args.clone();
    pp.insert(0, "--print-policy".into());
    let policy = run(&pp);
    assert_eq!(policy.code(), 0, "{policy:?}");
    let manifests = policy_fds(&policy.stdout);
    assert_eq!(manifests.len(), 10, "{}", policy.stdout);
    // The broker's own manifest comes last: what it keeps once its
    // children run, and where Landlock lets it reach.
    let broker_policy = policy.stdout.split("\nrole broker\n").nth(1).expect("the broker's manifest");
    assert!(broker_policy.contains("CAP_KILL only") && broker_policy.contains("remove files under"), "{broker_policy}");
    let calls: Vec<&str> = broker_policy.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for forbidden in ["execve", "execveat", "clone", "clone3", "fork", "socket", "connect", "ptrace", "mount"] {
        assert!(!calls.contains(&forbidden), "the broker may still {forbidden}: {broker_policy}");
    }
    assert!(calls.contains(&"kill") && calls.contains(&"wait4"), "{broker_policy}");
    // The read-only disk's server holds it without CAP_WRITE and cannot pwrite.
    let blk = policy.stdout.split("role virtio-blk").nth(1).expect("a virtio-blk manifest");
    let blk = blk.split("role ").next().unwrap();
    assert!(blk.contains("disk (opened read-only)") && !blk.contains("pwritev"), "{blk}");
    // The NIC's server holds its tap without ioctl: it cannot re-attach it.
    let net = policy.stdout.split("role virtio-net").nth(1).expect("a virtio-net manifest");
    let net = net.split("role ").next().unwrap();
    assert!(net.contains("tap") && !net.contains("ioctl"), "{net}");
    // The AHCI server's CD is read-only too; it has one MSI vector and INTx#.
    let ahci = policy.stdout.split("role ahci-cd").nth(1).expect("an ahci-cd manifest");
    let ahci = ahci.split("role ").next().unwrap();
    assert!(ahci.contains("disk (opened read-only)") && !ahci.contains("pwritev"), "{ahci}");
    assert!(ahci.contains("MSI/MSI-X vector 0 (irqfd)") && ahci.contains("INTx# (irqfd, level)"), "{ahci}");
    // The display's registers reach no guest RAM; its VNC server holds a
    // listening socket and its viewers, the picture read-only, no more.
    let fbuf = policy.stdout.split("role fbuf").nth(1).expect("an fbuf manifest");
    let fbuf = fbuf.split("role ").next().unwrap();
    assert!(!fbuf.contains("guest RAM") && fbuf.contains("display state page"), "{fbuf}");
    let vnc = policy.stdout.split("role vnc").nth(1).expect("a vnc manifest");
    let vnc = vnc.split("role ").next().unwrap();
    assert!(!vnc.contains("guest RAM") && !vnc.contains("exit-ring") && vnc.contains("accept4"), "{vnc}");
    assert!(vnc.contains("framebuffer (read-only)") && !vnc.contains("pwritev"), "{vnc}");
    // The i8042 reads viewers' input and raises its two lines; no more.
    let ps2 = policy.stdout.split("role i8042").nth(1).expect("an i8042 manifest");
    let ps2 = ps2.split("role ").next().unwrap();
    assert!(ps2.contains("IRQ 1") && ps2.contains("IRQ 12") && !ps2.contains("guest RAM"), "{ps2}");
    let runner = policy.stdout.split("role vcpu-runner").nth(1).expect("a runner manifest");
    assert!(runner.contains("KVM_SET_USER_MEMORY_REGION") && runner.contains("framebuffer memory"), "{runner}");

    let netns = Netns::create();
    let child = netns.spawn_capvm(&args);
    // `ip netns exec` execs capvm: same pid.
    let broker = child.id();
    let kids = wait_for_children(broker, 9, Duration::from_secs(10));
    assert_eq!(kids.len(), 9, "{kids:?}");
    let audit = wait_sandboxed(&name, 9);
    for (pid, comm) in &kids {
        let pid = *pid;
        assert_eq!(status_field(pid, "Seccomp:"), "2", "{comm}");
        assert_eq!(status_field(pid, "NoNewPrivs:"), "1", "{comm}");
        assert_eq!(status_field(pid, "CapEff:"), "0000000000000000", "{comm}");
        for n in ["mnt", "net", "pid", "ipc", "uts", "user"] {
            assert_ne!(ns(pid, n), ns(broker, n), "{comm} shares the broker's {n} namespace");
        }
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap().collect();
        assert!(root.is_empty(), "{comm}'s root is not empty: {root:?}");
        // The manifest this child's role prints, matched through the audit's pid line.
        let role = audit
            .lines()
            .find(|l| l.ends_with(&format!("pid {pid}")))
            .unwrap_or_else(|| panic!("audit does not list pid {pid}:\n{audit}"))
            .split("  pid")
            .next()
            .unwrap()
            .replace("uart server", "uart");
        let want = &manifests.iter().find(|(r, _)| *r == role).unwrap_or_else(|| panic!("no manifest for {role}")).1;
        assert_eq!(&open_fds(pid), want, "{role} holds other fds than its manifest lists");
        // No page of any child is writable and executable at once; the
        // runner's native-instruction pages are executable through one
        // mapping only, read-only there (emulated hosts).
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains("wx"))),
            "{role}:\n{maps}"
        );
        let native: Vec<_> = maps.lines().filter(|l| l.contains("memfd:capvm-native")).collect();
        if role == "vcpu-runner" && host_is_emulated() {
            let code: Vec<_> = native.iter().filter(|l| l.contains(" r-xs ")).collect();
            assert_eq!(code.len(), 2, "a code page per vCPU:\n{maps}");
            assert!(runner.contains("refused guest SIMD instructions run there"), "{runner}");
        } else {
            assert!(native.is_empty(), "{role}:\n{maps}");
        }
    }
    // The broker is confined too: its own filter, no_new_privs, CAP_KILL
    // alone (it runs as root here), in the host's namespaces.
    assert_eq!(status_field(broker, "Seccomp:"), "2", "the broker has no seccomp filter");
    assert_eq!(status_field(broker, "NoNewPrivs:"), "1");
    assert_eq!(status_field(broker, "CapEff:"), "0000000000000020", "the broker keeps more than CAP_KILL");
    let broker_line = audit.lines().next().unwrap_or_default();
    assert!(broker_line.starts_with(&format!("broker  pid {broker}: confined")), "{audit}");
    assert!(audit.contains("anything else kills it"), "{audit}");
    assert!(audit.contains("seccomp: filter"), "{audit}");
    assert!(audit.contains("landlock: enforced"), "{audit}");
    assert!(audit.contains("KVM_RUN"), "{audit}");
    let json = capvmctl(&[&format!("--vm={name}"), "--audit", "--json"]);
    for key in [
        "\"role\":",
        "\"pid\":",
        "\"seccomp\":\"filter\"",
        "\"namespaces\":[\"user\"",
        "\"fds\":[{\"fd\":",
        "\"rights\":[",
        "\"violations\":[]",
    ] {
        assert!(json.contains(key), "{key} missing in {json}");
    }
    assert!(capvmctl(&["--list"]).contains(&name));
    assert!(capvmctl(&[&format!("--vm={name}"), "--destroy"]).contains("destroying"));
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(!runtime_dir().join(format!("{name}.sock")).exists(), "control socket left behind");
    assert!(!sock.exists(), "COM2 socket left behind");
    assert!(kids.iter().all(|(p, _)| !pid_exists(*p)));
    assert!(!netns.has_link("sbtap0"), "the tap capvm created was left behind");
    std::fs::remove_file(disk).unwrap();
}

/// What each hostile operation shows up as in the audit.
const MATRIX: [(&str, &str); 9] = [
    ("open", "openat"),
    ("socket", "socket"),
    ("connect", "connect"),
    ("execve", "execve"),
    ("ptrace", "ptrace"),
    ("kill", "kill"),
    ("mmap-exec", "mmap"),
    ("pwrite", "pwritev"),
    ("ioctl", "ioctl"),
];

fn audit_log(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("capvm-audit-{}-{tag}.jsonl", std::process::id()))
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn hostile_matrix_every_role_every_operation_denied_and_audited() {
    require_kvm();
    let disk = ro_disk("matrix");
    let blk = format!("4,virtio-blk,{},ro", disk.display());
    let ahci = format!("6,ahci,hd:{},ro", disk.display());
    let netns = Netns::create();
    for role in ["uart", "vcpu-runner", "virtio-blk", "virtio-net", "ahci", "fbuf", "vnc", "i8042"] {
        for (op, syscall) in MATRIX {
            let log = audit_log(&format!("{role}-{op}"));
            let _ = std::fs::remove_file(&log);
            let hook = format!("sandbox.test_violation={role}:{op}");
            let audit = format!("sandbox.audit_log={}", log.display());
            let r = netns.run_capvm(&guest_args(
                "hello",
                &[
                    "-o",
                    "sandbox.violations=log",
                    "-o",
                    &hook,
                    "-o",
                    &audit,
                    "-s",
                    &blk,
                    "-s",
                    "5,virtio-net,mxtap0",
                    "-s",
                    &ahci,
                    "-s",
                    "7,fbuf,tcp=0.0.0.0:0",
                ],
            ));
            // Denied, recorded, and the VM went on to run the guest to its halt.
            assert_eq!(r.code(), 2, "{role}:{op}: {r:?}");
            assert!(r.stdout.contains("Hello from a capvm guest"), "{role}:{op}: {r:?}");
            assert!(r.stderr.contains(&format!("forbidden system call {syscall}(")), "{role}:{op}: {r:?}");
            let records = std::fs::read_to_string(&log).unwrap_or_default();
            let line = records
                .lines()
                .find(|l| l.contains(&format!("\"syscall\":\"{syscall}\"")))
                .unwrap_or_else(|| panic!("{role}:{op}: no {syscall} record in {records:?}"));
            assert!(
                line.contains(&format!("\"role\":\"{}", if role == "uart" { "uart server" } else { role })),
                "{line}"
            );
            assert!(line.contains("\"action\":\"denied\""), "{line}");
            std::fs::remove_file(&log).unwrap();
        }
    }
    std::fs::remove_file(disk).unwrap();
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_violation_in_kill_mode_stops_the_vm_and_leaves_nothing() {
    require_kvm();
    for role in ["uart", "vcpu-runner"] {
        let log = audit_log(&format!("kill-{role}"));
        let _ = std::fs::remove_file(&log);
        let hook = format!("sandbox.test_violation={role}:open");
        let audit = format!("sandbox.audit_log={}", log.display());
        let child = spawn(&guest_args("spin", &["-o", &hook, "-o", &audit]));
        // The violating child may be gone before we look: check what we saw
        // and the pid the broker's line names.
        let kids = wait_for_children(child.id(), 2, Duration::from_millis(500));
        let r = finish(child, Duration::from_secs(20));
        let named: u32 = r
            .stderr
            .split("(pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{role}: no pid in {r:?}"));
        assert!(!pid_exists(named), "{role}: pid {named} outlived the VM");
        assert_eq!(r.code(), 4, "{role}: {r:?}");
        assert!(r.stderr.contains("made a forbidden system call, openat("), "{role}: {r:?}");
        assert!(r.stderr.contains("stopping the VM (sandbox.violations=kill)"), "{role}: {r:?}");
        let records = std::fs::read_to_string(&log).unwrap();
        assert!(records.contains("\"action\":\"killed\""), "{records}");
        assert!(kids.iter().all(|(p, _)| !pid_exists(*p)), "{role}: children outlived the VM");
        std::fs::remove_file(&log).unwrap();
    }
}

/// Once its children run the broker is confined: Landlock refuses it a
/// file outside its paths, and its seccomp filter refuses a socket, with
/// EPERM in log mode and by killing it (the VM with it) in kill mode,
/// which the kernel logs.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn the_broker_is_confined_once_its_children_run() {
    use std::os::unix::process::ExitStatusExt;
    require_kvm();
    let log = audit_log("broker");
    let audit = format!("sandbox.audit_log={}", log.display());
    for (mode, op, refused) in
        [("kill", "open", "returned -1 (Permission denied"), ("log", "socket", "returned -1 (Operation not permitted")]
    {
        let hook = format!("sandbox.test_violation=broker:{op}");
        let violations = format!("sandbox.violations={mode}");
        let r = run(&guest_args("hello", &["-o", &hook, "-o", &audit, "-o", &violations]));
        assert_eq!(r.code(), 2, "{op}: {r:?}");
        assert!(r.stderr.contains(&format!("sandbox.test_violation=broker:{op}: {refused}")), "{op}: {r:?}");
        assert!(r.stdout.contains("Hello from a capvm guest"), "{op}: {r:?}");
    }
    let child = spawn(&guest_args("spin", &["-o", "sandbox.test_violation=broker:socket", "-o", &audit]));
    let pid = child.id();
    let r = finish(child, Duration::from_secs(20));
    assert_eq!(r.status.signal(), Some(libc::SIGSYS), "{r:?}");
    // Nobody else can audit the broker: the kernel logs the call (audit
    // type 1326), when this host lets us read its log.
    if let Ok(out) = Command::new("dmesg").output() {
        let log = String::from_utf8_lossy(&out.stdout);
        let line = log.lines().find(|l| l.contains("type=1326") && l.contains(&format!(" pid={pid} ")));
        eprintln!("the kernel's record of the broker's call: {line:?}");
        if let Some(line) = line {
            assert!(line.contains("syscall=41") && line.contains("sig=31"), "{line}");
        }
    }
    assert!(!log.exists(), "the broker's own calls are not the children's audit");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_clean_run_writes_no_audit_log() {
    require_kvm();
    let log = audit_log("clean");
    let _ = std::fs::remove_file(&log);
    let r = run(&guest_args("hello", &["-o", &format!("sandbox.audit_log={}", log.display())]));
    assert_eq!(r.code(), 2, "{r:?}");
    assert!(!log.exists());
}

/// What an operator types into gdb to make a stopped process open
/// /etc/passwd: on the syscall instruction the thread stopped after, with
/// its registers set by hand and put back after (orig_rax last, so the
/// interrupted call restarts). Not `print open(...)`: gdb 13 then puts
/// back the whole extended state, which fails on hosts with AMX tiles
/// ("Couldn't write extended state status: Bad address"); writing single
/// general registers does not touch it.
const OPEN_BY_HAND: [&str; 28] = [
    "set $s_rip = $pc",
    "set $s_rsp = $sp",
    "set $s_rax = $rax",
    "set $s_rdi = $rdi",
    "set $s_rsi = $rsi",
    "set $s_rdx = $rdx",
    "set $s_rcx = $rcx",
    "set $s_r11 = $r11",
    "set $s_flags = $eflags",
    "set $s_orig = $orig_rax",
    "print/x *(unsigned short *)($s_rip - 2)",
    "set {char[12]} ($s_rsp - 1024) = \"/etc/passwd\"",
    "set $pc = $s_rip - 2",
    "set $rax = 257",
    "set $rdi = -100",
    "set $rsi = $s_rsp - 1024",
    "set $rdx = 0",
    "stepi",
    "print $rax",
    "set $pc = $s_rip",
    "set $rax = $s_rax",
    "set $rdi = $s_rdi",
    "set $rsi = $s_rsi",
    "set $rdx = $s_rdx",
    "set $rcx = $s_rcx",
    "set $r11 = $s_r11",
    "set $eflags = $s_flags",
    "set $orig_rax = $s_orig",
];

/// The acceptance scenario: an operator attaches gdb to a sandboxed process
/// and makes it call openat("/etc/passwd"). The call fails, and the violation
/// shows in capvmctl --audit. (The echo guest keeps its vCPU exiting, so a
/// ptrace stop reaches every thread.)
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_debugger_making_a_child_open_a_file_is_denied_and_audited() {
    require_kvm();
    for (comm, binary, role) in
        [("capvm-uart", "capvm-uart", "uart server (com1)"), ("capvm-vcpu-runn", "capvm-vcpu-runner", "vcpu-runner")]
    {
        let name = unique_vm_name();
        let mut args = guest_args("echo", &["-o", "sandbox.violations=log", "-o", "sandbox.audit_log=/dev/null"]);
        *args.last_mut().unwrap() = name.clone();
        let mut child = spawn(&args);
        let kids = wait_for_children(child.id(), 2, Duration::from_secs(10));
        let (pid, _) = kids.iter().find(|(_, n)| n == comm).unwrap_or_else(|| panic!("{comm} in {kids:?}")).clone();
        wait_sandboxed(&name, 2);
        let mut gdb = Command::new("gdb");
        gdb.args(["-batch", "-nx", "-ex", "set sysroot /", "-ex"]);
        gdb.arg(format!("file {}", bin_dir().join(binary).display()));
        gdb.args(["-ex", &format!("attach {pid}")]);
        for command in OPEN_BY_HAND {
            gdb.args(["-ex", command]);
        }
        let gdb = gdb.output().expect("run gdb (scripts/setup installs it)");
        let out = String::from_utf8_lossy(&gdb.stdout);
        let err = String::from_utf8_lossy(&gdb.stderr);
        assert!(out.contains("$1 = 0x50f"), "{role}: not stopped after a syscall instruction:\n{out}\n{err}");
        assert!(out.contains("$2 = -"), "{role}: openat did not fail under gdb:\n{out}\n{err}");
        let audit = capvmctl(&[&format!("--vm={name}"), "--audit"]);
        let section = audit.split(&format!("{role}  pid {pid}")).nth(1).unwrap_or_else(|| panic!("{audit}"));
        assert!(section.contains("violations: 1") && section.contains("\"syscall\":\"openat\""), "{role}:\n{audit}");
        drop(child.stdin.take());
        capvmctl(&[&format!("--vm={name}"), "--destroy"]);
        let r = finish(child, Duration::from_secs(10));
        assert_eq!(r.code(), 1, "{role}: {r:?}");
    }
}

/// A compromised device server lies to the broker: a forged "reboot"
/// (which bhyve-style wrappers answer by starting the VM again), a second
/// sandbox report, a viewer that connected, a late server, bytes that are
/// no message. None is believed: each stops the VM with status 4 naming
/// the liar.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn the_broker_believes_no_lie_a_device_server_tells() {
    require_kvm();
    let disk = ro_disk("lies");
    let blk = format!("4,virtio-blk,{},ro", disk.display());
    for (role, op, said) in [
        ("uart", "forge-event", "uart server (com1) (pid"),
        ("virtio-blk", "forge-event", "virtio-blk (0:4.0) (pid"),
        ("virtio-blk", "resend-report", "virtio-blk (0:4.0) (pid"),
        ("uart", "viewer-connected", "uart server (com1) (pid"),
        ("uart", "report-late", "uart server (com1) (pid"),
        ("virtio-blk", "garbage", "virtio-blk (0:4.0) (pid"),
    ] {
        let hook = format!("sandbox.test_violation={role}:{op}");
        let r = run(&guest_args("idle", &["-o", &hook, "-s", &blk]));
        assert_eq!(r.code(), 4, "{role}:{op}: {r:?}");
        assert!(r.stderr.contains(said), "{role}:{op}: {r:?}");
        let why = match op {
            "forge-event" => "sent a lifecycle event, which only the vCPU runner may send; stopping the VM",
            "viewer-connected" => "said a viewer connected, which only a display's VNC server may say, once",
            "report-late" => "reported a late device server, which only the vCPU runner may report",
            "garbage" => "sent a bad message",
            _ => "sent a second sandbox report; stopping the VM",
        };
        assert!(r.stderr.contains(why), "{role}:{op}: {r:?}");
    }

    std::fs::remove_file(disk).unwrap();
}

/// The audit is the kernel's, not the child's: whatever a compromised
/// child does first (ignore SIGSYS, close its channel, make a thousand
/// forbidden calls), its forbidden `socket(AF_INET, SOCK_STREAM, 0)` is
/// recorded with its arguments by the broker, from the seccomp listener.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_child_cannot_hide_a_forbidden_call_from_the_audit() {
    require_kvm();
    // (A child that closes its channel in log mode breaks itself: its own
    // loop needs it. Kill mode ends it at the socket call anyway.)
    for (op, mode) in [("close-channel", "kill"), ("ignore-sigsys", "log")] {
        let log = audit_log(&format!("{op}-{mode}"));
        let _ = std::fs::remove_file(&log);
        let hook = format!("sandbox.test_violation=uart:{op}");
        let audit = format!("sandbox.audit_log={}", log.display());
        let mode_opt = format!("sandbox.violations={mode}");
        let r = run(&guest_args("hello", &["-o", &hook, "-o", &audit, "-o", &mode_opt]));
        let records = std::fs::read_to_string(&log).unwrap_or_default();
        let socket = records
            .lines()
            .find(|l| l.contains("\"syscall\":\"socket\""))
            .unwrap_or_else(|| panic!("{op} {mode}: no socket record in {records:?}; {r:?}"));
        assert!(socket.contains("\"args\":[2,1,0,") && socket.contains("\"role\":\"uart server (com1)\""), "{socket}");
        if mode == "kill" {
            assert_eq!(r.code(), 4, "{op}: {r:?}");
            assert!(r.stderr.contains("made a forbidden system call, socket(0x2, 0x1, 0x0"), "{op}: {r:?}");
            assert!(socket.contains("\"action\":\"killed\""), "{socket}");
        } else {
            // EPERM, and the guest runs to its halt.
            assert_eq!(r.code(), 2, "{op}: {r:?}");
            assert!(r.stdout.contains("Hello from a capvm guest"), "{op}: {r:?}");
            assert!(socket.contains("\"action\":\"denied\""), "{socket}");
        }
        if op == "ignore-sigsys" {
            // signal(SIGSYS, SIG_IGN) is itself forbidden to a uart server.
            assert!(records.contains("\"syscall\":\"rt_sigaction\",\"nr\":13,\"args\":[31,"), "{records}");
        }
        std::fs::remove_file(&log).unwrap();
    }

    // A flood of forbidden calls (log mode) cannot fill the disk: 64
    // records, the rest counted, and the VM runs on.
    let log = audit_log("flood");
    let _ = std::fs::remove_file(&log);
    let audit = format!("sandbox.audit_log={}", log.display());
    let r = run(&guest_args(
        "hello",
        &["-o", "sandbox.test_violation=uart:flood-violations", "-o", &audit, "-o", "sandbox.violations=log"],
    ));
    assert_eq!(r.code(), 2, "the VM should run on: {r:?}");
    assert!(r.stdout.contains("Hello from a capvm guest"), "{r:?}");
    assert!(r.stderr.contains("made more than 64 forbidden system calls; the rest are counted, not logged"), "{r:?}");
    let records = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(records.lines().count(), 64, "{records}");
    std::fs::remove_file(&log).unwrap();
}

/// A device server that stops answering (SIGSTOP, as a wedged or hostile
/// one would) is named once its vCPU has waited `exit_ring.report`, and
/// ends the VM with status 4 at `exit_ring.deadline`.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_stopped_server_is_reported_then_ends_the_vm_naming_it() {
    require_kvm();
    let log = audit_log("late");
    let audit = format!("sandbox.audit_log={}", log.display());
    // COM1's interrupt-enable register, written from guest user mode in a
    // loop: every write waits for the uart server.
    let args = guest_args(
        "pio-loop 4000000000 0x3f9",
        &["-o", "exit_ring.report=0.3", "-o", "exit_ring.deadline=1.5", "-o", &audit],
    );
    let mut child = spawn(&args);
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut out, &mut seen, "bench: go", Instant::now() + Duration::from_secs(20));
    let kids = wait_for_children(child.id(), 2, Duration::from_secs(10));
    let (uart, _) = kids.iter().find(|(_, comm)| comm.contains("uart")).unwrap_or_else(|| panic!("{kids:?}"));
    let stopped = Instant::now();
    // SAFETY: kill(2) on our VM's own child.
    assert_eq!(unsafe { libc::kill(*uart as i32, libc::SIGSTOP) }, 0);
    child.stdout = Some(out);
    let r = finish(child, Duration::from_secs(20));
    let took = stopped.elapsed();
    assert_eq!(r.code(), 4, "{r:?}");
    let late =
        r.stderr.find("device server com1 has not answered vCPU 0 for").unwrap_or_else(|| panic!("{}", r.stderr));
    let stop = r
        .stderr
        .find("device server com1 did not answer vCPU 0 within 1.5 s")
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(late < stop, "{}", r.stderr);
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
    let audit = std::fs::read_to_string(&log).unwrap();
    assert!(audit.contains("\"event\":\"late\"") && audit.contains("\"role\":\"com1\""), "{audit}");
    std::fs::remove_file(log).unwrap();
    assert!(!pid_exists(*uart), "the stopped server was left behind");
}

/// Unprivileged operation: a user in the `kvm` group (any uid; setpriv
/// needs no passwd entry) runs a VM with a runtime directory of its own.
/// Each child gets a user namespace of its own, which owns its pid
/// namespace; inside the sandbox all is as under root: seccomp, no
/// capabilities, the user's uid outside.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_user_in_the_kvm_group_runs_a_sandboxed_vm() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_kvm();
    const UID: u32 = 64_123;
    let kvm_gid = std::fs::metadata("/dev/kvm").unwrap().gid();
    // The binaries where that user may run them (a checkout under /root
    // is not), and a runtime directory it owns.
    let dir = std::env::temp_dir().join(format!("capvm-unpriv-{}", std::process::id()));
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    for b in ["capvm", "capvm-uart", "capvm-vcpu-runner"] {
        std::fs::copy(bin_dir().join(b), dir.join(b)).unwrap();
    }
    std::fs::copy(guest(), dir.join("testguest")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&run_dir, Some(UID), Some(kvm_gid)).unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(UID), Some(kvm_gid)).unwrap();
    let name = unique_vm_name();
    let mut cmd = Command::new("setpriv");
    // Through env(1): spawn_with sets the tests' own runtime directory.
    cmd.args(["--reuid", &UID.to_string(), "--regid", &kvm_gid.to_string(), "--clear-groups", "--", "env"])
        .arg(format!("CAPVM_RUNTIME_DIR={}", run_dir.display()))
        .arg(format!("HOME={}", home.display()))
        .arg("XDG_STATE_HOME=")
        .arg(dir.join("capvm"));
    let args: Vec<String> = ["-c", "1", "-m", "64M", "-s", "0,hostbridge", "-s", "31,lpc", "-l", "com1,stdio"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-o".into(),
            format!("boot.kernel={}", dir.join("testguest").display()),
            "-o".into(),
            "boot.cmdline=idle".into(),
            // A forbidden call, for the user's own audit log.
            "-o".into(),
            "sandbox.violations=log".into(),
            "-o".into(),
            "sandbox.test_violation=uart:open".into(),
            name.clone(),
        ])
        .collect();
    let child = spawn_with(cmd, &args);
    // setpriv and env exec capvm: same pid.
    let kids = wait_for_children(child.id(), 2, Duration::from_secs(10));
    assert_eq!(kids.len(), 2, "{kids:?}");
    std::thread::sleep(Duration::from_millis(500));
    for (pid, comm) in &kids {
        assert_eq!(status_field(*pid, "Seccomp:"), "2", "{comm}");
        assert_eq!(status_field(*pid, "CapEff:"), "0000000000000000", "{comm}");
        let uid = status_field(*pid, "Uid:");
        assert!(uid.split_whitespace().all(|u| u == UID.to_string()), "{comm}: uid {uid}");
        assert_ne!(ns(*pid, "pid"), ns(child.id(), "pid"), "{comm} shares the broker's pid namespace");
    }
    // The broker confines itself as a user too, with no capability at all.
    assert_eq!(status_field(child.id(), "Seccomp:"), "2", "the user's broker");
    assert_eq!(status_field(child.id(), "CapEff:"), "0000000000000000", "the user's broker");
    // The audit log is the user's, under ~/.local/state/capvm.
    let audit = home.join(format!(".local/state/capvm/{name}.audit.jsonl"));
    let records = std::fs::read_to_string(&audit).unwrap_or_else(|e| panic!("{}: {e}", audit.display()));
    assert!(records.contains("\"syscall\":\"openat\""), "{records}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(r.stdout.contains("capvm test guest: idle"), "{r:?}");
    assert!(!run_dir.join(format!("{name}.sock")).exists(), "control socket left behind");
    assert!(kids.iter().all(|(p, _)| !pid_exists(*p)));
    std::fs::remove_dir_all(&dir).unwrap();
}
