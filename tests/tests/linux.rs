//! A real Linux kernel (Debian's linux-source-6.1, built by
//! tests/linux/build from tests/linux/config.fragment, no patches) boots on
//! capvm with a virtio-blk ext2 root, virtio-net on a tap with a DHCP
//! server in a network namespace the test creates, and AHCI disks and CDs. Checked from the kernel
//! log, the DHCP server's log and the disk image; no guest user space (it
//! cannot run on this host: docs/linux-guest.md).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capvm_tests::*;

const GUEST_IP: &str = "10.0.2.15";
const SERVER_IP: &str = "10.0.2.1";

/// One Linux VM at a time: two at once on a 2-core host take longer than
/// one after the other, and the boot times recorded would mean nothing.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cached vmlinux (tests/linux/build prints its path; it builds only
/// when the fragment changed).
fn vmlinux() -> PathBuf {
    fixture("CAPVM_LINUX_VMLINUX", "linux/build")
}

/// An 8 MiB ext2 image with one file, made by mke2fs -d; `tag` keeps the
/// tests' images apart (they run at once, in one process).
fn root_image(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capvm-linux-root-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/motd"), "capvm\n").unwrap();
    let img = dir.with_extension("img");
    let _ = std::fs::remove_file(&img);
    let st = Command::new("mke2fs")
        .args(["-q", "-t", "ext2", "-d"])
        .arg(&dir)
        .arg(&img)
        .arg("8M")
        .status()
        .expect("run mke2fs (e2fsprogs)");
    assert!(st.success());
    std::fs::remove_dir_all(dir).unwrap();
    img
}

fn mount_count(img: &Path) -> u32 {
    let out = Command::new("dumpe2fs").arg("-h").arg(img).output().expect("run dumpe2fs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("Mount count:")).expect("a mount count");
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

/// Where `needle` first appears in the log, or a panic naming it.
fn at(log: &str, needle: &str) -> usize {
    log.find(needle).unwrap_or_else(|| panic!("the kernel log lacks {needle:?}:\n{log}"))
}

/// The whole of issue 6: `-c 2 -m 256M`, a virtio-blk ext2 root mounted
/// rw, virtio-net with a DHCP lease, the reboot through ACPI.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn linux_on_two_cpus_mounts_its_virtio_blk_root_gets_a_dhcp_lease_and_reboots() {
    require_kvm();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = vmlinux();
    let img = root_image("msi");
    assert_eq!(mount_count(&img), 0);

    // capvm, its tap and a DHCP server live in a namespace of their own.
    let ns = Netns::create();
    let leases = std::env::temp_dir().join(format!("capvm-linux-{}.leases", std::process::id()));
    ns.add_tap("ltap0");
    ns.run(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", "ltap0"]);
    let mut dhcp = KillOnDrop(
        ns.command("dnsmasq")
            .args(["--no-daemon", "--conf-file=/dev/null", "--interface=ltap0", "--bind-interfaces", "--port=0"])
            .arg(format!("--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.0,1h"))
            .args(["--log-dhcp", "--log-facility=-"])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq (dnsmasq-base)"),
    );

    let cmdline = "console=ttyS0 panic=-1 reboot=acpi root=/dev/vda rw ip=dhcp".to_string();
    let disk = format!("3,virtio-blk,{}", img.display());
    // And an AHCI controller with a disk and a CD, for Linux's own drivers.
    let sata = scratch_disk("sata", 16 << 20);
    let cd = iso_image("linux-msi", "motd", "capvm\n");
    let ahci = format!("5,ahci,hd:{},cd:{}", sata.display(), cd.display());
    let args = vm_args(2, "256M", &kernel, &cmdline, &["-s", &disk, "-s", "4,virtio-net,ltap0", "-s", &ahci]);
    let name = args.last().unwrap().clone();

    let boot = watch(ns.spawn_capvm(&args), &name);
    let (log, stats) = (&boot.log, &boot.stats);
    let mut dhcp_log = String::new();
    let _ = dhcp.0.kill();
    let _ = dhcp.0.wait();
    dhcp.0.stdout.take().unwrap().read_to_string(&mut dhcp_log).unwrap();
    dhcp.0.stderr.take().unwrap().read_to_string(&mut dhcp_log).unwrap();

    // A KVM paravirtualized kernel, as distributions build them, with
    // kvm-clock: the PV features capvm offers on this host work.
    at(log, "Booting paravirtualized kernel on KVM");
    at(log, "kvm-clock: Using msrs");
    // In order: both CPUs, the disk probed, the root mount (after the
    // lease, with a NIC), the panic (then the reboot through the FADT's
    // reset register: exit 0).
    at(log, "ACPI: Using ACPI (MADT) for SMP configuration information");
    let smp = at(log, "smp: Brought up 1 node, 2 CPUs");
    let blk = at(log, "virtio_blk virtio0: [vda] 16384 512-byte logical blocks");
    let mounted = at(log, "VFS: Mounted root (ext2 filesystem) on device");
    let panicked = at(log, "Kernel panic - not syncing: No working init found");
    assert!(smp < blk && blk < mounted && mounted < panicked, "{log}");
    assert!(!log.contains("ACPI Error"), "{log}");
    assert!(!log.contains("VFS: Mounted root (ext2 filesystem) readonly"), "{log}");
    // The platform clocks: the FADT's PM timer, and an RTC to read the
    // wall clock from (without one Linux waits a second, then says so).
    at(log, "ACPI: PM-Timer IO Port: 0x408");
    assert!(!log.contains("Unable to read current time from RTC"), "{log}");
    // Interrupts reached the guest through MSI-X (MSI for AHCI), which
    // Linux prefers.
    for dev in ["virtio-blk (0:3.0)", "virtio-net (0:4.0)", "ahci (0:5.0)"] {
        assert!(stat(stats, &format!("{dev}: interrupts")) > 0, "{dev} sent no MSI(-X) message: {stats:?}");
        assert_eq!(stat(stats, &format!("{dev}: intx_interrupts")), 0, "{dev} used INTx#: {stats:?}");
    }
    // Linux's ahci, libata, sd and sr drivers took both drives, without
    // error handling on the way.
    at(log, "ahci 0000:00:05.0: AHCI 0001.0301 32 slots 2 ports 6 Gbps 0x3 impl SATA mode");
    at(log, "ata1: SATA link up 6.0 Gbps");
    at(log, "ata1.00: ATA-8: CAPVM SATA DISK, 001, max UDMA/133");
    at(log, "ata1.00: 32768 sectors, multi 0: LBA48 NCQ (depth 32)");
    at(log, "ata2.00: ATAPI: CAPVM SATA DVD ROM, 001, max UDMA/133");
    at(log, "sd 0:0:0:0: [sda] 32768 512-byte logical blocks");
    at(log, "sr 1:0:0:0: [sr0] scsi3-mmc drive: 4x/4x xa/form2 tray");
    for bad in ["exception Emask", "failed command", "hard resetting link", "I/O error", "device error ignored"] {
        assert!(!log.contains(bad), "{bad}:\n{log}");
    }
    // The sr driver probes MMC commands a CD-ROM may lack: CHECK CONDITION
    // for those is the answer; nothing else may have failed.
    let ahci = |k: &str| stat(stats, &format!("ahci (0:5.0): {k}"));
    assert_eq!(ahci("command_errors"), ahci("errors_check_condition"), "{stats:?}");
    assert!(ahci("ncq_commands") >= 1 && ahci("packet_commands") >= 1, "{stats:?}");
    // The lease came before the mount, and the DHCP server handed that
    // address to the NIC's MAC.
    let lease = at(log, &format!("IP-Config: Got DHCP answer from {SERVER_IP}, my address is {GUEST_IP}"));
    assert!(lease < mounted, "{log}");
    let mac = log
        .lines()
        .find_map(|l| l.split_once("hwaddr="))
        .and_then(|(_, m)| m.split(',').next())
        .unwrap_or_else(|| panic!("IP-Config printed no hwaddr:\n{log}"));
    assert!(dhcp_log.contains(&format!("DHCPACK(ltap0) {GUEST_IP} {mac}")), "no DHCPACK for {mac}: {dhcp_log}");
    // panic=-1 reboots at once, reboot=acpi through the reset register: capvm exits 0.
    assert_eq!(boot.status.code(), Some(0), "{}\n{log}", boot.stderr);
    // The rw mount bumped the superblock's mount count on the host.
    assert_eq!(mount_count(&img), 1, "the mount count did not go up");

    record_times(boot.root_mounted.unwrap(), boot.total);
    std::fs::remove_file(img).unwrap();
    std::fs::remove_file(sata).unwrap();
    std::fs::remove_file(cd).unwrap();
    let _ = std::fs::remove_file(leases);
}

/// A zero-filled image of `size` bytes.
fn scratch_disk(tag: &str, size: u64) -> PathBuf {
    let p = std::env::temp_dir().join(format!("capvm-linux-{tag}-{}.img", std::process::id()));
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Boot times for the benchmark report (bench/): target/bench/linux-boot.txt.
fn record_times(root: Duration, total: Duration) {
    let dir = bin_dir().join("../bench");
    std::fs::create_dir_all(&dir).unwrap();
    let text =
        format!("capvm_linux_root_mount_s {:.1}\ncapvm_linux_total_s {:.1}\n", root.as_secs_f64(), total.as_secs_f64());
    std::fs::write(dir.join("linux-boot.txt"), &text).unwrap();
    eprintln!("{text}");
}

/// Without MSI (`pci=nomsi`) Linux must find each function's INTx# line
/// in the DSDT's _PRT; its virtio-blk root then mounts only if those
/// level-triggered interrupts arrive and end. Also: the second CPU, and
/// the reboot through the FADT's reset register.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn linux_without_msi_mounts_its_root_through_intx_from_the_prt() {
    require_kvm();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = vmlinux();
    let img = root_image("intx");
    let cmdline = "console=ttyS0 panic=-1 reboot=acpi pci=nomsi root=/dev/vda rw".to_string();
    let disk = format!("3,virtio-blk,{}", img.display());
    let cd = iso_image("linux-intx", "motd", "capvm\n");
    let ahci = format!("5,ahci-cd,{}", cd.display());
    let args = vm_args(2, "256M", &kernel, &cmdline, &["-s", &disk, "-s", &ahci]);
    let name = args.last().unwrap().clone();
    let boot = watch(spawn(&args), &name);
    let log = &boot.log;
    let madt = at(log, "ACPI: Using ACPI (MADT) for SMP configuration information");
    let smp = at(log, "smp: Brought up 1 node, 2 CPUs");
    let mounted = at(log, "VFS: Mounted root (ext2 filesystem) on device");
    let panicked = at(log, "Kernel panic - not syncing: No working init found");
    assert!(madt < smp && smp < mounted && mounted < panicked, "{log}");
    assert!(!log.contains("ACPI Error") && !log.contains("PCI INT A"), "{log}");
    let blk = "virtio-blk (0:3.0)";
    assert!(stat(&boot.stats, &format!("{blk}: intx_interrupts")) > 0, "no INTx#: {:?}", boot.stats);
    assert_eq!(stat(&boot.stats, &format!("{blk}: interrupts")), 0, "MSI-X was used: {:?}", boot.stats);
    // The AHCI CD's port interrupts came through its INTx# line too.
    at(log, "sr 0:0:0:0: [sr0] scsi3-mmc drive");
    let ahci = "ahci-cd (0:5.0)";
    assert!(stat(&boot.stats, &format!("{ahci}: intx_interrupts")) > 0, "no INTx#: {:?}", boot.stats);
    assert_eq!(stat(&boot.stats, &format!("{ahci}: interrupts")), 0, "MSI was used: {:?}", boot.stats);
    assert_eq!(boot.status.code(), Some(0), "{}\n{log}", boot.stderr);
    assert_eq!(mount_count(&img), 1, "the mount count did not go up");
    std::fs::remove_file(img).unwrap();
    std::fs::remove_file(cd).unwrap();
}

/// What a Linux boot printed and did.
struct Boot {
    log: String,
    /// The device servers' counters, read when the root was mounted.
    stats: Vec<(String, u64)>,
    status: std::process::ExitStatus,
    stderr: String,
    root_mounted: Option<Duration>,
    total: Duration,
}

/// Follows VM `name`'s console to its end (15 minutes at most).
fn watch(mut vm: std::process::Child, name: &str) -> Boot {
    let start = Instant::now();
    drop(vm.stdin.take());
    let mut console = BufReader::new(vm.stdout.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    let mut root_mounted = None;
    let mut stats = Vec::new();
    while console.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains("VFS: Mounted root") && root_mounted.is_none() {
            root_mounted = Some(start.elapsed());
            // The VM lives on for seconds (freeing init memory, looking
            // for init): read the device servers' counters now.
            stats = get_stats(name);
        }
        log.push_str(&line);
        line.clear();
        assert!(start.elapsed() < Duration::from_secs(900), "Linux did not finish in 15 minutes:\n{log}");
    }
    let total = start.elapsed();
    // The console closed: capvm is exiting.
    let status = vm.wait().unwrap();
    let mut stderr = String::new();
    vm.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Boot { log, stats, status, stderr, root_mounted, total }
}
