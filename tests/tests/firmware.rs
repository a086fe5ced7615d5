//! Firmware boot (`-l bootrom`): Debian's SeaBIOS starts at the reset
//! vector from a read-only ROM below 4 GiB, sizes RAM from the CMOS, places
//! the PCI BARs itself and drives capvm's AHCI CD through ATAPI, looking
//! for something to boot.

use std::path::Path;
use std::time::{Duration, Instant};

use capvm_tests::*;

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

fn firmware_args(rom: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["-c", "1", "-m", "256M", "-s", "0,hostbridge", "-s", "31,lpc", "-l", "com1,stdio", "-l"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(format!("bootrom,{rom}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(unique_vm_name());
    args
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn seabios_reads_fw_cfg_tries_the_ahci_cd_on_com1_and_reboots_when_nothing_boots() {
    require_kvm();
    assert!(Path::new(SEABIOS).exists(), "{SEABIOS} missing (scripts/setup installs seabios)");
    let cd = iso_image("firmware", "hello.txt", "not bootable\n");
    let mut args = firmware_args(SEABIOS, &["-s", &format!("4,ahci-cd,{}", cd.display())]);
    args[1] = "2".into();
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    let mut seen = Vec::new();
    // fw_cfg's etc/sercon-port puts SeaBIOS's screen on COM1; it finds the
    // controller at the BAR it chose, IDENTIFY PACKETs the CD and reads its
    // boot record, which this ISO lacks.
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = child.stdout.as_mut().unwrap();
    read_until(out, &mut seen, "Boot failed: Could not read from CDROM (code 0004)", deadline);
    let stats = get_stats(&name);
    // etc/boot-fail-wait (5 s here, 60 by default), then a reboot: status 0.
    read_until(out, &mut seen, "No bootable device.  Retrying in 5 seconds.", deadline);
    let r = finish(child, Duration::from_secs(60));
    let console = String::from_utf8_lossy(&seen);
    assert!(console.contains("SeaBIOS (version"), "{console}");
    assert!(console.contains("Booting from DVD/CD..."), "{console}");
    assert_eq!(r.code(), 0, "{r:?}");
    let server = "ahci-cd (0:4.0)";
    assert!(stat(&stats, &format!("{server}: packet_commands")) >= 2, "{stats:?}");
    assert!(stat(&stats, &format!("{server}: bytes_read")) >= 2048, "{stats:?}");
    assert_eq!(stat(&stats, &format!("{server}: command_errors")), 0, "{stats:?}");
    // The BAR SeaBIOS placed (just below the IOAPIC) was accepted.
    assert_eq!(stat(&stats, "vcpu-runner: bar_moves_rejected"), 0, "{stats:?}");
    std::fs::remove_file(cd).unwrap();
}

/// What cannot be a boot ROM, and a ROM with a kernel, are one line each,
/// status 4, before any child starts.
#[test]
fn bad_boot_roms_are_one_line_errors() {
    let dir = std::env::temp_dir();
    let odd = dir.join(format!("capvm-rom-odd-{}.bin", std::process::id()));
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let huge = dir.join(format!("capvm-rom-huge-{}.bin", std::process::id()));
    std::fs::File::create(&huge).unwrap().set_len(32 << 20).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (firmware_args("/nonexistent/bios.bin", &[]), "cannot open -l bootrom /nonexistent/bios.bin"),
        (firmware_args(odd.to_str().unwrap(), &[]), "whole 4 KiB pages, at most 16 MiB"),
        (firmware_args(huge.to_str().unwrap(), &[]), "whole 4 KiB pages, at most 16 MiB"),
        (firmware_args(&format!("{SEABIOS},/nonexistent/vars.fd"), &[]), "cannot open -l bootrom variable store"),
        (firmware_args(&format!("{SEABIOS},{}", dir.display()), &[]), "cannot open -l bootrom variable store"),
        (firmware_args(&format!("{SEABIOS},{}", odd.display()), &[]), "whole 4 KiB blocks"),
        (firmware_args(&format!("{SEABIOS},{}", huge.display()), &[]), "whole 4 KiB blocks"),
        (
            firmware_args(SEABIOS, &["-o", &format!("boot.kernel={}", guest().display())]),
            "-o boot.kernel and -l bootrom both say what to boot",
        ),
        (firmware_args(SEABIOS, &["-f", "opt/x,file=/nonexistent/x"]), "cannot open -f /nonexistent/x"),
        (firmware_args(SEABIOS, &["-f", "etc/e820,string=x"]), "etc/ and bootorder are capvm's own"),
        (guest_args("hello", &["-f", "opt/x,string=y"]), "-f adds a file for firmware: it needs -l bootrom"),
    ];
    for (args, want) in cases {
        let r = run(&args);
        assert_eq!(r.code(), 4, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {r:?}");
    }
    std::fs::remove_file(odd).unwrap();
    std::fs::remove_file(huge).unwrap();
}

/// The bhyve Handbook's installer line, unchanged but for the ROM path
/// and a CPU count this host can carry: SeaBIOS boots GRUB from the AHCI
/// CD, GRUB's menu is on COM1, Linux starts, finds both CPUs through the
/// ACPI tables fw_cfg delivered, the virtio disk and NIC, mounts the CD as
/// its root, panics for want of init and reboots: status 0.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn the_handbook_firmware_line_boots_linux_from_a_grub_iso_on_an_ahci_cd() {
    require_kvm();
    // tests/linux/iso: grub-mkrescue's ISO of the fixture's bzImage.
    let iso = fixture("CAPVM_LINUX_ISO", "linux/iso");
    let disk = std::env::temp_dir().join(format!("capvm-grub-disk-{}.img", std::process::id()));
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let ns = Netns::create();
    ns.add_tap("fwtap0");
    let name = unique_vm_name();
    let args: Vec<String> = [
        "-AHP",
        "-s",
        "0:0,hostbridge",
        "-s",
        "1:0,lpc",
        "-s",
        "2:0,virtio-net,fwtap0",
        "-s",
        &format!("3:0,virtio-blk,{}", disk.display()),
        "-s",
        &format!("4:0,ahci-cd,{}", iso.display()),
        "-c",
        "2",
        "-m",
        "1024M",
        "-l",
        "com1,stdio",
        "-l",
        &format!("bootrom,{SEABIOS}"),
        &name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let start = Instant::now();
    let r = {
        let child = ns.spawn_capvm(&args);
        finish(child, Duration::from_secs(20 * 60))
    };
    let took = start.elapsed();
    let log = &r.stdout;
    let at = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("no {needle:?} on COM1:\n{log}\n{}", r.stderr));
    let grub = at("capvm test Linux");
    let linux = at("Linux version 6.1");
    let smp = at("smp: Brought up 1 node, 2 CPUs");
    let root = at("VFS: Mounted root (iso9660 filesystem) readonly");
    let panicked = at("Kernel panic - not syncing: No working init found");
    assert!(grub < linux && linux < smp && smp < root && root < panicked, "{log}");
    at("ACPI: Using ACPI (MADT) for SMP configuration information");
    at("virtio_blk virtio");
    // The NIC: the static address went onto the virtio-net device.
    at("IP-Config: Complete:");
    at("device=eth0");
    at("sr 0:0:0:0: [sr0] scsi3-mmc drive");
    assert_eq!(r.code(), 0, "{r:?}");
    eprintln!("capvm_firmware_grub_linux_s {:.0}", took.as_secs_f64());
    std::fs::remove_file(disk).unwrap();
}

/// A grub-mkrescue ISO whose GRUB says which it is on COM1 and reboots.
fn naming_iso(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("capvm-grub-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("boot/grub")).unwrap();
    let cfg = format!("serial --unit=0 --speed=115200\nterminal_output serial\necho \"capvm boot: {tag}\"\nreboot\n");
    std::fs::write(dir.join("boot/grub/grub.cfg"), cfg).unwrap();
    let iso = dir.with_extension("iso");
    let out =
        std::process::Command::new("grub-mkrescue").arg("-o").arg(&iso).arg(&dir).output().expect("grub-mkrescue");
    assert!(out.status.success(), "grub-mkrescue: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(dir).unwrap();
    iso
}

/// `bootindex=` decides which of two bootable devices SeaBIOS boots (fw_cfg
/// `bootorder`); the grub-mkrescue ISO is a hybrid image, so it boots as
/// an `ahci-hd` too.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn bootindex_picks_the_boot_device_and_a_hybrid_iso_boots_as_a_disk() {
    require_kvm();
    let (cd, hd) = (naming_iso("cd"), naming_iso("hd"));
    for (cd_index, hd_index, want, not) in
        [(2, 1, "capvm boot: hd", "capvm boot: cd"), (1, 2, "capvm boot: cd", "capvm boot: hd")]
    {
        let args = firmware_args(
            SEABIOS,
            &[
                "-s",
                &format!("4,ahci-cd,{},bootindex={cd_index}", cd.display()),
                "-s",
                &format!("5,ahci-hd,{},ro,bootindex={hd_index}", hd.display()),
            ],
        );
        let r = {
            let child = spawn(&args);
            finish(child, Duration::from_secs(300))
        };
        assert!(r.stdout.contains(want) && !r.stdout.contains(not), "{want}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(r.code(), 0, "GRUB's reboot ends the run with status 0: {r:?}");
    }
    std::fs::remove_file(cd).unwrap();
    std::fs::remove_file(hd).unwrap();
}

/// The quick firmware test's boot sector (GNU as, real mode, then 32-bit
/// protected mode): prints on COM1, reads fw_cfg's signature, drives the
/// variable store's flash at FLASH through CFI commands (what it reads is
/// printed, in hex where it is not text), and powers off through PM1a.
const BOOT_SECTOR: &str = r#"
    .code16
    .globl start
start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    movw $hello, %si
1:  lodsb
    testb %al, %al
    jz 2f
    call putc16
    jmp 1b
2:  movw $0x510, %dx            # fw_cfg selector: signature
    xorw %ax, %ax
    outw %ax, %dx
    movw $0x511, %dx
    movw $4, %cx
3:  inb %dx, %al
    call putc16
    loop 3b
    lgdt gdtr
    movl %cr0, %eax
    orb $1, %al
    movl %eax, %cr0
    ljmp $0x08, $pm
putc16:
    pushw %dx
    movw $0x3f8, %dx
    outb %al, %dx
    popw %dx
    ret

    .code32
pm:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $0x7c00, %esp
    movl $FLASH, %ebx
    movb $' ', %al
    call putc
    movl $0, %esi                # the array: "VARS" and what is at 16
    movl $4, %ecx
    call chars
    movl $16, %esi
    movl $5, %ecx
    call chars
    movb $0x50, (%ebx)           # clear status: reads the array again
    movb (%ebx), %al
    call hex
    movb $0x70, (%ebx)           # read status: ready
    movb (%ebx), %al
    call hex
    movb $0x90, (%ebx)           # read identifier: Intel
    movb (%ebx), %al
    call hex
    movl $16, %esi               # program "capvm" at 16, byte by byte
    movl $word, %edi
4:  movb $0x10, (%ebx,%esi)
    movb (%edi), %al
    movb %al, (%ebx,%esi)
    incl %esi
    incl %edi
    cmpl $21, %esi
    jne 4b
    movb $0xff, (%ebx)
    movl $16, %esi
    movl $5, %ecx
    call chars
    movb $0x20, 0x1000(%ebx)     # erase block 1
    movb $0xd0, 0x1000(%ebx)
    movb (%ebx), %al
    call hex
    movb $0xff, (%ebx)
    movb 0x1000(%ebx), %al
    call hex
    movb $'\n', %al
    call putc
    movw $0x404, %dx             # PM1a control: S5
    movw $0x3400, %ax
    outw %ax, %dx
5:  hlt
    jmp 5b
chars:                           # ecx bytes of the array at esi, as text
    movb (%ebx,%esi), %al
    call putc
    incl %esi
    loop chars
    movb $' ', %al
    jmp putc
hex:                             # al as two hex digits and a space
    pushl %eax
    shrb $4, %al
    call nibble
    popl %eax
    andb $0xf, %al
    call nibble
    movb $' ', %al
    jmp putc
nibble:
    cmpb $10, %al
    jb 6f
    addb $39, %al
6:  addb $'0', %al
putc:
    pushl %edx
    movw $0x3f8, %dx
    outb %al, %dx
    popl %edx
    ret

hello:
    .asciz "capvm boot sector: "
word:
    .ascii "capvm"
    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
gdtr:
    .word 23
    .long gdt
    .org 510
    .word 0xaa55
"#;

/// A 1 MiB disk whose boot sector is `BOOT_SECTOR`, with the flash at `flash`.
fn boot_sector_disk(flash: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("capvm-bootsector-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bs.S"), BOOT_SECTOR).unwrap();
    let sh = |cmd: &mut std::process::Command| {
        let out = cmd.current_dir(&dir).output().expect("binutils (as, ld)");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh(std::process::Command::new("as").args(["--32", "--defsym", &format!("FLASH={flash:#x}"), "-o", "bs.o", "bs.S"]));
    sh(std::process::Command::new("ld").args([
        "-m",
        "elf_i386",
        "-Ttext=0x7c00",
        "--oformat=binary",
        "-e",
        "start",
        "-o",
        "bs.bin",
        "bs.o",
    ]));
    let mut sector = std::fs::read(dir.join("bs.bin")).unwrap();
    assert_eq!(sector.len(), 512, "the boot sector is one sector");
    sector.resize(1 << 20, 0);
    let disk = dir.with_extension("img");
    std::fs::write(&disk, sector).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    disk
}

/// Issue 16's quick firmware test and the variable store: SeaBIOS boots a
/// virtio disk whose boot sector prints on COM1, reads fw_cfg's signature,
/// programs and erases the VARFILE's flash (`-l bootrom,ROM,VARFILE`) and
/// powers off: status 1. What it wrote is in the file, and the next boot
/// reads it back.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn seabios_boots_a_boot_sector_that_keeps_bytes_in_the_variable_store() {
    require_kvm();
    const VARS: u64 = 128 << 10;
    let rom_size = std::fs::metadata(SEABIOS).unwrap().len();
    let flash = (1u64 << 32) - rom_size - VARS;
    let disk = boot_sector_disk(flash);
    let vars = std::env::temp_dir().join(format!("capvm-vars-{}.fd", std::process::id()));
    let mut initial = vec![b'Z'; VARS as usize];
    initial[..4].copy_from_slice(b"VARS");
    std::fs::write(&vars, &initial).unwrap();
    let args = || {
        firmware_args(&format!("{SEABIOS},{}", vars.display()), &["-s", &format!("3,virtio-blk,{},ro", disk.display())])
    };
    let first = finish(spawn(&args()), Duration::from_secs(120));
    assert_eq!(first.code(), 1, "PM1a S5 is a poweroff: {first:?}");
    // From the sector's first word to the end of its line (SeaBIOS's
    // "Booting from Hard Disk..." comes before it on the same line).
    let line = |r: &Run| {
        let at = r.stdout.find("capvm boot sector:")?;
        r.stdout[at..].lines().next().map(str::to_string)
    };
    // fw_cfg's signature; the array; clear status reads the array ('V'),
    // read status says ready, the identifier is Intel's; the programmed
    // word; ready after the erase; the erased block reads 0xff.
    assert_eq!(line(&first).as_deref(), Some("capvm boot sector: QEMU VARS ZZZZZ 56 80 89 capvm 80 ff "), "{first:?}");
    let after = std::fs::read(&vars).unwrap();
    assert_eq!(after.len(), VARS as usize, "the store keeps its size");
    assert_eq!(&after[..16], &initial[..16]);
    assert_eq!(&after[16..21], b"capvm");
    assert!(after[0x1000..0x2000].iter().all(|&b| b == 0xff), "block 1 erased");
    assert_eq!(&after[21..0x1000], &initial[21..0x1000]);
    assert_eq!(&after[0x2000..], &initial[0x2000..]);

    // The next boot finds the word where the last one left it.
    let second = finish(spawn(&args()), Duration::from_secs(120));
    assert_eq!(second.code(), 1, "{second:?}");
    assert!(line(&second).unwrap_or_default().contains("QEMU VARS capvm 56"), "{second:?}");
    std::fs::remove_file(vars).unwrap();
    std::fs::remove_file(disk).unwrap();
}
