//! Each of bhyve's exit statuses, caused by a guest that asks for it.

use capvm_tests::*;

fn boot(cmd: &str, extra: &[&str]) -> Run {
    require_kvm();
    let r = run(&guest_args(cmd, extra));
    let first = cmd.split_whitespace().next().unwrap_or(cmd);
    assert!(r.stdout.contains(&format!("capvm test guest: {first}")), "guest did not start: {r:?}");
    r
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn handbook_command_line_prints_hello_on_com1_and_halts_with_2() {
    let r = boot("hello", &[]);
    assert!(r.stdout.contains("Hello from a capvm guest"), "{r:?}");
    assert_eq!(r.code(), 2, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn reset_through_cf9_exits_0() {
    let r = boot("reboot", &[]);
    assert_eq!(r.code(), 0, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn reset_through_i8042_exits_0() {
    let r = boot("reboot-kbd", &[]);
    assert_eq!(r.code(), 0, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn acpi_s5_poweroff_exits_1() {
    let r = boot("poweroff", &[]);
    assert_eq!(r.code(), 1, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn halt_with_interrupts_off_exits_2() {
    let r = boot("halt", &[]);
    assert_eq!(r.code(), 2, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn halt_counts_never_started_aps_as_stopped() {
    let r = boot("halt", &["-c", "2"]);
    assert_eq!(r.code(), 2, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn triple_fault_exits_3_and_says_so() {
    let r = boot("triple-fault", &[]);
    assert_eq!(r.code(), 3, "{r:?}");
    assert!(r.stderr.contains("triple-faulted"), "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn unemulated_port_with_strict_io_exits_4_naming_the_port() {
    let r = boot("unknown-port", &["-e"]);
    assert_eq!(r.code(), 4, "{r:?}");
    assert!(r.stderr.contains("I/O port 0x1234"), "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn unemulated_port_without_strict_io_reads_all_ones() {
    let r = boot("unknown-port", &[]);
    assert!(r.stdout.contains("port 0x1234 read 0x00000000000000ff"), "{r:?}");
    assert_eq!(r.code(), 2, "{r:?}");
}

/// On kvm_pvm the instruction emulator cannot run `xsaves` at CPL0 and the
/// runner does not complete it: capvm reports where, what and what it
/// tried, in one line, and exits 4.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn emulation_failure_is_reported_with_rip_cpl_bytes_and_what_was_tried() {
    let r = boot("xsaves", &[]);
    if host_is_emulated() {
        assert_eq!(r.code(), 4, "{r:?}");
        assert!(r.stderr.contains("(CPL 0), instruction bytes 0f c7"), "{r:?}");
        assert!(r.stderr.contains("RIP 0x10"), "{r:?}");
        assert!(r.stderr.contains("xsaves is not completed; ran again 3 times"), "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    }
}

/// `lock cmpxchg16b` at CPL0: the emulator refuses it here, the runner
/// completes it (one atomic operation on guest RAM); elsewhere it runs.
/// Equal to RDX:RAX = 0:0, so RCX:RBX = 1:1 is stored.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn cmpxchg16b_at_cpl0_is_carried_out() {
    let r = boot("cmpxchg16b", &[]);
    assert!(r.stdout.contains("cmpxchg16b ran, memory 0x0000000000000001:0x0000000000000001"), "{r:?}");
    assert_eq!(r.code(), 2, "{r:?}");
}

/// On kvm_pvm, CX16 must not be offered: the emulator cannot run it.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn cpuid_hides_cx16_on_an_emulated_host() {
    let r = boot("hello", &[]);
    let hex = r.stdout.split("cpuid.1.ecx=0x").nth(1).expect("cpuid line");
    let ecx = u64::from_str_radix(&hex[..16], 16).unwrap();
    let cx16 = ecx & (1 << 13) != 0;
    assert_eq!(cx16, !host_is_emulated(), "cpuid.1.ecx={ecx:#x}");
    assert!(ecx & (1 << 31) != 0, "hypervisor bit missing: {ecx:#x}");
}

/// Port I/O from guest user mode (through the TSS I/O bitmap) reaches the
/// device server: 1000 writes to COM1's scratch register, then a reset.
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn user_mode_port_io_reaches_the_uart_server() {
    let r = boot("pio-loop 1000 0x3ff", &[]);
    assert!(r.stdout.contains("pio-loop done"), "{r:?}");
    assert_eq!(r.code(), 0, "{r:?}");
}
