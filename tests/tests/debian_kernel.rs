//! Debian's stock kernel package (linux-image-cloud-amd64, fetched by
//! tests/linux/debian-kernel, unmodified, no initrd) boots on capvm with a
//! command line that says nothing about this host, on two CPUs: capvm runs
//! kernels it has never seen, whose configuration no one here chose.
//!
//! On a host whose KVM emulates guest CPL0 code this is slow
//! (docs/linux-guest.md says where the time goes). The suite follows the
//! boot through everything that made such kernels stop here before (its
//! decompressor, the int3 self-test, XSAVE, alternatives patching, KVM
//! paravirtualization, bringing up the second CPU): about six minutes. The
//! whole boot to its root-mount panic and reboot takes well over an hour
//! here and is the ignored test; run it with `cargo test --release -p
//! capvm-tests --test debian_kernel -- --ignored`. Times go to target/bench.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use capvm_tests::*;

/// What a boot showed: the console up to the line that ended it (or all
/// of it), the stats page read then, the time, and capvm's status and
/// stderr when it ended by itself.
struct Boot {
    log: String,
    stats: Vec<(String, u64)>,
    took: Duration,
    ended: Option<(Option<i32>, String)>,
}

impl Boot {
    fn at(&self, needle: &str) -> usize {
        self.log.find(needle).unwrap_or_else(|| panic!("no {needle:?} in:\n{}\n{:?}", self.log, self.ended))
    }
}

/// Boots Debian's kernel on two CPUs with a stock command line until a
/// console line holds `until` (then the stats are read and the VM
/// destroyed) or the VM ends (stats read at the panic); fails past `limit`.
fn boot_debian(until: Option<&str>, limit: Duration) -> Boot {
    require_kvm();
    let kernel = fixture("CAPVM_DEBIAN_VMLINUZ", "linux/debian-kernel");
    let args = vm_args(2, "512M", &kernel, "console=ttyS0 panic=-1", &[]);
    let name = args.last().unwrap().clone();
    let start = Instant::now();
    let mut vm = spawn(&args);
    drop(vm.stdin.take());
    let mut console = BufReader::new(vm.stdout.take().unwrap());
    let (mut log, mut line) = (String::new(), String::new());
    let mut stats = Vec::new();
    while console.read_line(&mut line).unwrap_or(0) > 0 {
        log.push_str(&line);
        if until.is_some_and(|u| line.contains(u)) {
            let stats = get_stats(&name);
            destroy(&name);
            let _ = vm.wait();
            return Boot { log, stats, took: start.elapsed(), ended: None };
        }
        if line.contains("Kernel panic") && stats.is_empty() {
            stats = get_stats(&name);
        }
        line.clear();
        if start.elapsed() > limit {
            destroy(&name);
            panic!("Debian's kernel did not get there in {limit:?}:\n{log}");
        }
    }
    let took = start.elapsed();
    let status = vm.wait().unwrap();
    let mut stderr = String::new();
    vm.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Boot { log, stats, took, ended: Some((status.code(), stderr)) }
}

/// Writes `name value` to target/bench/`file` and prints it.
fn record(file: &str, name: &str, took: Duration) {
    let dir = bin_dir().join("../bench");
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!("{name} {:.0}\n", took.as_secs_f64());
    std::fs::write(dir.join(file), &text).unwrap();
    eprintln!("{text}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn debians_stock_kernel_brings_up_both_cpus_with_a_stock_command_line() {
    let boot = boot_debian(Some("smp: Brought up 1 node, 2 CPUs"), Duration::from_secs(20 * 60));
    assert!(boot.ended.is_none(), "the VM ended before both CPUs were up:\n{}\n{:?}", boot.log, boot.ended);
    let version = boot.at("Linux version 6.1");
    // The paths distribution kernels take: KVM paravirtualization (with
    // only the features that work here) and the XSAVE-managed FPU state.
    boot.at("Booting paravirtualized kernel on KVM");
    let fpu = boot.at("x86/fpu: Enabled xstate features");
    // Alternatives and retpoline sites patched (emulated), then the AP.
    let patched = boot.at("Freeing SMP alternatives memory");
    let smp = boot.at("smp: Brought up 1 node, 2 CPUs");
    assert!(version < fpu && fpu < patched && patched < smp, "{}", boot.log);
    assert!(!boot.log.contains("BUG:") && !boot.log.contains("Oops"), "{}", boot.log);
    if host_is_emulated() {
        // What the emulator refused on the way, completed by the runner:
        // the int3 self-test and the FPU state restore.
        let s = &boot.stats;
        assert!(stat(s, "vcpu-runner: completed_int3") > 0, "{s:?}");
        assert!(stat(s, "vcpu-runner: completed_xrstor") > 0, "{s:?}");
    }
    record("debian-kernel-smp.txt", "capvm_debian_kernel_two_cpus_s", boot.took);
}

#[test]
#[ignore = "over an hour of emulated guest CPL0 code on kvm_pvm (issue 14); minutes on VT-x/AMD-V"]
fn debians_stock_kernel_boots_on_two_cpus_to_its_root_mount_panic_and_reboots() {
    let boot = boot_debian(None, Duration::from_secs(3 * 3600));
    let version = boot.at("Linux version 6.1");
    let smp = boot.at("smp: Brought up 1 node, 2 CPUs");
    let panicked = boot.at("Kernel panic - not syncing: VFS: Unable to mount root fs");
    assert!(version < smp && smp < panicked, "{}", boot.log);
    boot.at("Booting paravirtualized kernel on KVM");
    boot.at("x86/fpu: Enabled xstate features");
    assert!(stat(&boot.stats, "vcpu-runner: completed_xrstor") > 0, "{:?}", boot.stats);
    // panic=-1 reboots at once: through the FADT's reset register, status 0.
    assert_eq!(boot.ended.as_ref().map(|e| e.0), Some(Some(0)), "{:?}\n{}", boot.ended, boot.log);
    record("debian-kernel-boot.txt", "capvm_debian_kernel_total_s", boot.took);
}
