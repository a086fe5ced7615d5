//! virtio-blk end to end: the test guest's own virtio driver against the
//! capvm-virtio-blk server, checked from the guest's console and from the
//! image file on the host.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use capvm_tests::*;

/// A zero-filled image of `size` bytes, unique to this test.
fn image(tag: &str, size: u64) -> PathBuf {
    let p = std::env::temp_dir().join(format!("capvm-blk-{}-{tag}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn with_disk(cmd: &str, disk: &str) -> Vec<String> {
    guest_args(cmd, &["-s", &format!("3,virtio-blk,{disk}")])
}

/// The number the guest printed after `key`.
fn guest_count(out: &str, key: &str) -> u64 {
    let n = field(out, key).map(|w| w.trim_end_matches(','));
    n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no '{key}N' in the guest's output: {out}"))
}

/// The guest's pattern (blk.rs): byte i of round r is i*7 + r + 0x5a.
fn pattern_round(round: u64) -> Vec<u8> {
    (0..4096u64).map(|i| (i * 7 + round + 0x5a) as u8).collect()
}

fn pattern() -> Vec<u8> {
    pattern_round(0)
}

const PATTERN_OFFSET: usize = 16 * 512;

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn guest_writes_flushes_reads_back_and_the_image_holds_the_pattern() {
    require_kvm();
    let img = image("rw", 1 << 20);
    let r = run(&with_disk("blk-rw 1", img.to_str().unwrap()));
    assert_eq!(r.code(), 2, "{r:?}");
    assert!(r.stdout.contains("1 rounds of write, flush, read-back ok"), "{r:?}");
    assert!(r.stdout.contains("blk: id CAPVM-3-0 status 0"), "{r:?}");
    assert!(guest_count(&r.stdout, "interrupts ") >= 1, "no MSI-X interrupt reached the guest: {r:?}");
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[PATTERN_OFFSET..PATTERN_OFFSET + 4096], &pattern()[..], "the pattern is not at sector 16");
    assert!(bytes[..PATTERN_OFFSET].iter().all(|&b| b == 0), "bytes before sector 16 changed");
    assert!(bytes[PATTERN_OFFSET + 4096..].iter().all(|&b| b == 0), "bytes after the pattern changed");
    std::fs::remove_file(img).unwrap();
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_read_only_disk_refuses_writes_and_the_image_is_unchanged() {
    require_kvm();
    let img = image("ro", 1 << 20);
    std::fs::write(&img, vec![0xee; 1 << 20]).unwrap();
    let r = run(&with_disk("blk-ro", &format!("{},ro", img.display())));
    assert_eq!(r.code(), 2, "{r:?}");
    assert!(r.stdout.contains("blk: read-only feature 1"), "{r:?}");
    assert!(r.stdout.contains("blk: write status 1, read status 0"), "{r:?}");
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0xee), "a read-only image changed");
    std::fs::remove_file(img).unwrap();
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn hostile_chains_and_bar_moves_get_errors_and_the_server_survives() {
    require_kvm();
    let img = image("fuzz", 1 << 20);
    let r = run(&with_disk("blk-fuzz", img.to_str().unwrap()));
    assert_eq!(r.code(), 2, "a server died or the VM failed: {r:?}");
    assert!(r.stdout.contains("fuzz: 10 of 10 hostile chains refused, 64 random chains returned"), "{r:?}");
    assert!(r.stdout.contains("config space ok; BAR moves ok"), "{r:?}");
    assert!(r.stdout.contains("fuzz: device at 0x00000000c0100000 still works"), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
    std::fs::remove_file(img).unwrap();
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn without_msix_completions_interrupt_through_intx_and_the_ioapic() {
    require_kvm();
    let img = image("intx", 1 << 20);
    let r = run(&with_disk("blk-rw 3 intx", img.to_str().unwrap()));
    assert_eq!(r.code(), 2, "{r:?}");
    // Slot 3's INTA# is IOAPIC pin 19 (the swizzle the DSDT's _PRT states).
    assert!(r.stdout.contains("blk: INTx# pin 1 line 19"), "{r:?}");
    assert!(r.stdout.contains("3 rounds of write, flush, read-back ok"), "{r:?}");
    // Ten requests, each waited for with sti;hlt: a lost interrupt would
    // hang the guest. Completions may share an interrupt. Spurious ones
    // (ISR 0) happen on this host, at most one per real one (KVM signals
    // the resample before the guest's EOI, docs/kvm-pvm.md); a line that
    // stayed up would storm instead.
    let (real, spurious) = (guest_count(&r.stdout, "interrupts "), guest_count(&r.stdout, "spurious "));
    assert!(real >= 1 && spurious <= real, "{r:?}");
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[PATTERN_OFFSET..PATTERN_OFFSET + 4096], &pattern_round(2)[..]);
    std::fs::remove_file(img).unwrap();
}

/// Runs `blk-rw ROUNDS idle` and reads the stats once the guest is done.
fn stats_after(rounds: u32) -> Vec<(String, u64)> {
    let img = image(&format!("notify{rounds}"), 1 << 20);
    let args = with_disk(&format!("blk-rw {rounds} idle"), img.to_str().unwrap());
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    read_until(&mut out, &mut Vec::new(), "blk done", Instant::now() + Duration::from_secs(60));
    let stats = get_stats(&name);
    destroy(&name);
    let _ = child.wait();
    std::fs::remove_file(img).unwrap();
    stats
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn queue_notifies_take_the_ioeventfd_path_and_exits_do_not_grow_with_requests() {
    require_kvm();
    let (few, many) = (stats_after(2), stats_after(12));
    let blk = "virtio-blk (0:3.0)";
    // Each round is three requests (write, flush, read), plus one GET_ID.
    assert_eq!(stat(&few, &format!("{blk}: requests")), 2 * 3 + 1, "{few:?}");
    assert_eq!(stat(&many, &format!("{blk}: requests")), 12 * 3 + 1, "{many:?}");
    // Every notify came through the ioeventfd, none as an exit.
    assert_eq!(stat(&many, &format!("{blk}: notify_exits")), 0, "{many:?}");
    assert!(stat(&many, &format!("{blk}: ioeventfd_notifies")) >= 12 * 3, "{many:?}");
    // The runner's user-space exits are those of setup and printing: 30
    // more requests add no MMIO exit and no port exit beyond the two
    // digits the longer command line and count print.
    let (m_few, m_many) = (stat(&few, "vcpu-runner: mmio_exits"), stat(&many, "vcpu-runner: mmio_exits"));
    assert_eq!(m_few, m_many, "MMIO exits grew with requests: {few:?} {many:?}");
    let (p_few, p_many) = (stat(&few, "vcpu-runner: pio_exits"), stat(&many, "vcpu-runner: pio_exits"));
    assert!(p_many.abs_diff(p_few) <= 8, "port exits grew with requests: {p_few} -> {p_many}");
}

/// A driver with 32 sequential 4 KiB writes in flight: the server joins
/// them into fewer host calls, and every request still completes, each
/// with its own status (the guest resets on any that failed).
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn sequential_writes_in_flight_join_in_one_call_and_all_complete() {
    require_kvm();
    let img = image("joined", 4 << 20);
    // The bench's buffers start at 64 MiB.
    let disk = format!("3,virtio-blk,{}", img.display());
    let args = vm_args(1, "256M", guest(), "blk-bench write 4096 32 3000 hold", &["-s", &disk]);
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut out, &mut seen, "bench: end", Instant::now() + Duration::from_secs(60));
    let stats = get_stats(&name);
    destroy(&name);
    let _ = child.wait();
    std::fs::remove_file(img).unwrap();
    let blk = "virtio-blk (0:3.0)";
    assert_eq!(stat(&stats, &format!("{blk}: requests")), 3000, "{stats:?}");
    assert_eq!(stat(&stats, &format!("{blk}: bytes_written")), 3000 * 4096, "{stats:?}");
    assert_eq!(stat(&stats, &format!("{blk}: request_errors")), 0, "{stats:?}");
    // Each notify finds a few requests at least; most join the one before.
    let merged = stat(&stats, &format!("{blk}: requests_merged"));
    eprintln!("{merged} of 3000 requests joined the one before");
    assert!(merged >= 1000, "only {merged} of 3000 requests joined another: {stats:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn bad_disk_options_are_one_clear_line_and_status_4() {
    require_kvm(); // the disk is opened after /dev/kvm
    let cases = [
        ("3,virtio-blk,/nonexistent/capvm.img", "cannot open /nonexistent/capvm.img"),
        ("3,virtio-blk,/dev/null,frob", "virtio-blk has no option 'frob'"),
        ("3,virtio-blk", "give the image file or block device"),
        ("3,virtio-blk,/dev/null,sectorsize=1000", "sectorsize=1000"),
        ("3,virtio-blk,/dev/null", "/dev/null is neither a file nor a block device"),
    ];
    for (slot, want) in cases {
        let r = run(&guest_args("hello", &["-s", slot]));
        assert_eq!(r.code(), 4, "{slot}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{slot}: {r:?}");
        assert!(r.stderr.contains(want), "{slot}: {r:?}");
    }
}

/// Image locks: a VM holding an image read-write keeps every other VM
/// from opening it (one line naming the VM, status 4), readers share it,
/// and `nolock` opts out. AHCI disks take the same locks.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn an_image_open_read_write_in_one_vm_is_refused_to_another() {
    require_kvm();
    let img = image("lock", 1 << 20);
    let disk = img.to_str().unwrap();
    let holder_args = with_disk("idle", disk);
    let holder = holder_args.last().unwrap().clone();
    let mut vm1 = spawn(&holder_args);
    let mut seen = Vec::new();
    read_until(vm1.stdout.as_mut().unwrap(), &mut seen, "idling", Instant::now() + Duration::from_secs(20));
    for (slot, what) in [
        (format!("3,virtio-blk,{disk}"), "read-write"),
        (format!("3,virtio-blk,{disk},ro"), "read-only"),
        (format!("3,ahci-hd,{disk}"), "AHCI"),
    ] {
        let r = run(&guest_args("hello", &["-s", &slot]));
        assert_eq!(r.code(), 4, "{what}: {r:?}");
        assert!(
            r.stderr.contains(&format!("{disk} is in use by VM {holder} (capvm pid {})", vm1.id())),
            "{what}: {r:?}"
        );
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    }
    let r = run(&with_disk("hello", &format!("{disk},nolock")));
    assert_eq!(r.code(), 2, "nolock: {r:?}");
    destroy(&holder);
    finish(vm1, Duration::from_secs(20));

    // Readers share: one idles with it read-only, another reads it too.
    let reader_args = with_disk("idle", &format!("{disk},ro"));
    let reader = reader_args.last().unwrap().clone();
    let mut vm2 = spawn(&reader_args);
    let mut seen = Vec::new();
    read_until(vm2.stdout.as_mut().unwrap(), &mut seen, "idling", Instant::now() + Duration::from_secs(20));
    let r = run(&with_disk("hello", &format!("{disk},ro")));
    assert_eq!(r.code(), 2, "a second reader: {r:?}");
    let r = run(&with_disk("hello", disk));
    assert_eq!(r.code(), 4, "a writer beside a reader: {r:?}");
    destroy(&reader);
    finish(vm2, Duration::from_secs(20));
    // And once every VM is gone, the image is free again.
    let r = run(&with_disk("hello", disk));
    assert_eq!(r.code(), 2, "{r:?}");
    std::fs::remove_file(img).unwrap();
}

/// Durability: once the guest has seen its write and the FLUSH after it
/// acknowledged, the bytes are in the image, whether the disk's server or
/// the whole VM is then SIGKILLed (nothing is kept in a process's memory).
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_flushed_write_survives_a_sigkill_of_the_server_or_the_whole_vm() {
    require_kvm();
    for (victim, cache) in [("server", ""), ("vm", ""), ("vm", ",sync")] {
        let img = image(&format!("kill-{victim}{}", cache.trim_start_matches(',')), 1 << 20);
        let args = with_disk("blk-rw 1 idle", &format!("{}{cache}", img.display()));
        let mut child = spawn(&args);
        let mut out = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        read_until(&mut out, &mut seen, "blk done", Instant::now() + Duration::from_secs(30));
        let kids = children_of(child.id());
        let server = kids.iter().find(|(_, comm)| comm.contains("virtio-bl")).expect("the disk's server").0;
        let pids: Vec<u32> = if victim == "server" {
            vec![server]
        } else {
            std::iter::once(child.id()).chain(kids.iter().map(|(p, _)| *p)).collect()
        };
        for pid in pids {
            // SAFETY: kill(2) on the VM's own processes.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        child.stdout = Some(out);
        let r = finish(child, Duration::from_secs(30));
        if victim == "server" {
            assert_eq!(r.code(), 4, "the VM stops naming its dead server: {r:?}");
        }
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(&bytes[PATTERN_OFFSET..PATTERN_OFFSET + 4096], &pattern()[..], "{victim}{cache}: write lost");
        std::fs::remove_file(img).unwrap();
        // A SIGKILLed broker leaves its control socket behind.
        let _ = std::fs::remove_file(runtime_dir().join(format!("{}.sock", args.last().unwrap())));
    }
}
