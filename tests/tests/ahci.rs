//! AHCI end to end: the test guest's own AHCI driver against the
//! capvm-ahci server, with a disk image and a CD made here with xorriso,
//! checked from the guest's console, the server's counters and the image
//! file on the host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capvm_tests::*;

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("capvm-ahci-{}-{tag}", std::process::id()))
}

fn iso(tag: &str) -> PathBuf {
    iso_image(&format!("ahci-{tag}"), "hello.txt", "hello from the CD\n")
}

/// The guest's pattern (guests/src/ahci.rs).
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) + 3) as u8 ^ (i >> 8) as u8
}

const PATTERN_LBA: usize = 100;

fn guest_line<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line {start:?} in {out}"))
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn guest_driver_runs_disk_ncq_cd_and_hostile_commands_through_one_controller() {
    require_kvm();
    let disk = temp("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let cd = iso("cd");
    let iso_blocks = std::fs::metadata(&cd).unwrap().len() / 2048;
    let slot = format!("4,ahci,hd:{},nmrr=1,cd:{}", disk.display(), cd.display());
    let args = guest_args("ahci", &["-s", &slot]);
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    let mut seen = Vec::new();
    read_until(child.stdout.as_mut().unwrap(), &mut seen, "ahci: done", Instant::now() + Duration::from_secs(60));
    let stats = get_stats(&name);
    destroy(&name);
    let r = finish(child, Duration::from_secs(20));
    let out = String::from_utf8_lossy(&seen).into_owned();

    assert!(out.contains("ahci: controller ports=2 version=0x0000000000010301 ncq=1"), "{out}");
    let port0 = guest_line(&out, "ahci: port 0 ");
    assert!(port0.contains("sig=0x0000000000000101 model=CAPVM SATA DISK "), "{port0}");
    assert!(port0.contains(&format!("sectors={} trim=1", (64 << 20) / 512)), "{port0}");
    assert!(out.contains("ahci: rw ok"), "{out}");
    assert!(out.contains("ahci: ncq 4 slots ok"), "{out}");
    let want =
        format!("ahci: port 1 sig=0x00000000eb140101 identify-packet=0x00000000000085c0 blocks={iso_blocks} pvd=CD001");
    assert!(out.contains(&want), "{want} not in {out}");
    assert!(out.contains("ahci: cd write refused sense=0x0000000000000007/0x0000000000000027"), "{out}");
    assert!(out.contains("ahci: hostile 6 of 6 refused, tfd 0x0000000000000440, port still works"), "{out}");

    // The server counted what the guest did, each refusal by its kind.
    let c = |k: &str| stat(&stats, &format!("ahci (0:4.0): {k}"));
    assert_eq!(c("ncq_commands"), 4, "{stats:?}");
    assert_eq!(c("packet_commands"), 4, "{stats:?}");
    assert_eq!(c("bytes_written"), 4096, "{stats:?}");
    for (kind, n) in [
        ("errors_outside_ram", 2),
        ("errors_bad_prdt", 1),
        ("errors_out_of_range", 1),
        ("errors_bad_fis", 1),
        ("errors_unsupported", 1),
        ("errors_check_condition", 1),
        ("errors_read_only", 0),
        ("errors_io", 0),
    ] {
        assert_eq!(c(kind), n, "{kind}: {stats:?}");
    }
    assert_eq!(c("command_errors"), 7, "{stats:?}");
    assert!(c("interrupts") >= 1, "no MSI: {stats:?}");
    assert_eq!(c("intx_interrupts"), 0, "{stats:?}");
    assert!(r.stderr.lines().all(|l| l == "capvm: destroyed by capvmctl"), "{r:?}");

    // The pattern is on the host at LBA 100, and nothing else changed.
    let bytes = std::fs::read(&disk).unwrap();
    let at = PATTERN_LBA * 512;
    assert!((0..4096).all(|i| bytes[at + i] == pattern(i)), "the pattern is not at LBA 100");
    assert!(bytes[..at].iter().chain(&bytes[at + 4096..]).all(|&b| b == 0), "bytes outside the pattern changed");
    std::fs::remove_file(disk).unwrap();
    std::fs::remove_file(cd).unwrap();
}

/// The CD's image is opened read-only: capvm runs with one that it may
/// not write, and nothing it does changes it.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn ahci_cd_alone_serves_a_read_only_iso() {
    require_kvm();
    let cd = iso("ro");
    let before = std::fs::read(&cd).unwrap();
    let mut perms = std::fs::metadata(&cd).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&cd, perms).unwrap();
    let args = guest_args("ahci", &["-s", &format!("5,ahci-cd,{}", cd.display())]);
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    let mut seen = Vec::new();
    read_until(child.stdout.as_mut().unwrap(), &mut seen, "ahci: done", Instant::now() + Duration::from_secs(60));
    destroy(&name);
    let r = finish(child, Duration::from_secs(20));
    let out = String::from_utf8_lossy(&seen);
    assert!(out.contains("ahci: controller ports=1"), "{out}");
    assert!(out.contains("pvd=CD001"), "{out}");
    assert!(out.contains("ahci: cd write refused sense=0x0000000000000007/0x0000000000000027"), "{out}");
    assert!(r.stderr.lines().all(|l| l == "capvm: destroyed by capvmctl"), "{r:?}");
    assert_eq!(std::fs::read(&cd).unwrap(), before, "the CD image changed");
    std::fs::remove_file(cd).unwrap();
}

/// Bad AHCI options are one line each and status 4, before any child runs.
#[test]
fn bad_ahci_options_are_one_line_errors() {
    let missing = Path::new("/nonexistent/capvm-ahci.img");
    for (slot, want) in [
        ("4,ahci".to_string(), "give its drives"),
        ("4,ahci,foo.img".to_string(), "start each port with hd:PATH or cd:PATH"),
        ("4,ahci-cd,x.iso,sectorsize=512".to_string(), "a CD's sectors are 2048 bytes"),
        ("4,ahci-hd,x.img,nmrr=7".to_string(), "nmrr=7"),
        (format!("4,ahci-hd,{}", missing.display()), "cannot open /nonexistent/capvm-ahci.img"),
    ] {
        let r = run(&guest_args("hello", &["-s", &slot]));
        assert_eq!(r.code(), 4, "{slot}: {r:?}");
        assert!(r.stderr.contains(want), "{slot}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{slot}: {r:?}");
    }
}
