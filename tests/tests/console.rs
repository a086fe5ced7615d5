//! COM1 backends, boot formats and configuration, end to end.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use capvm_tests::*;

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn stdio_input_reaches_the_guest_and_its_echo_comes_back() {
    require_kvm();
    let mut child = spawn(&guest_args("echo", &[]));
    child.stdin.take().unwrap().write_all(b"ping from the host q").unwrap();
    let r = finish(child, Duration::from_secs(30));
    assert!(r.stdout.contains("ping from the host "), "{r:?}");
    assert!(r.stdout.contains("bye"), "{r:?}");
    assert_eq!(r.code(), 1, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn socket_backend_serves_a_client_and_is_removed_afterwards() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("capvm-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("com1.sock");
    let mut args = guest_args("echo", &[]);
    let i = args.iter().position(|a| a == "com1,stdio").unwrap();
    args[i] = format!("com1,{}", sock.display());
    let child = spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    stream.write_all(b"over the socket q").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("bye") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let r = finish(child, Duration::from_secs(30));
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("over the socket "), "client saw {got:?}; {r:?}");
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(!sock.exists(), "socket {} left behind", sock.display());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn initrd_is_loaded_and_named_in_the_pvh_module_list() {
    require_kvm();
    let rd = std::env::temp_dir().join(format!("capvm-initrd-{}", std::process::id()));
    std::fs::write(&rd, b"CAPVMRD!and more bytes").unwrap();
    let r = run(&guest_args("initrd", &["-o", &format!("boot.initrd={}", rd.display())]));
    std::fs::remove_file(&rd).unwrap();
    assert!(r.stdout.contains("modules=0x0000000000000001"), "{r:?}");
    assert!(r.stdout.contains("initrd starts with CAPVMRD!"), "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn elf_without_pvh_note_enters_in_64_bit_mode() {
    require_kvm();
    let mut args = guest_args("hello", &[]);
    let i = args.iter().position(|a| a.starts_with("boot.kernel=")).unwrap();
    args[i] = format!("boot.kernel={}", guest_without_pvh_note().display());
    let r = run(&args);
    assert!(r.stdout.contains("Hello from a capvm guest"), "{r:?}");
    assert_eq!(r.code(), 2, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn memory_above_the_pci_hole_and_several_vcpus_boot() {
    require_kvm();
    let r = run(&guest_args("hello", &["-c", "4", "-m", "4G"]));
    assert!(r.stdout.contains("Hello from a capvm guest"), "{r:?}");
    assert_eq!(r.code(), 2, "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_config_file_says_what_the_flags_say() {
    require_kvm();
    let file = std::env::temp_dir().join(format!("capvm-{}.conf", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "# bhyve_config(5) style\nname={}\ncpus=1\nmemory.size=64M\npci.0.31.0.device=lpc\nlpc.com1.path=stdio\nboot.kernel={}\nboot.cmdline=poweroff\n",
            unique_vm_name(),
            guest().display()
        ),
    )
    .unwrap();
    let r = run(&["-k".to_string(), file.display().to_string()]);
    std::fs::remove_file(&file).unwrap();
    assert!(r.stdout.contains("capvm test guest: poweroff"), "{r:?}");
    assert_eq!(r.code(), 1, "{r:?}");
}

fn capvm_args(args: &[&str]) -> Run {
    run(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn bad_command_lines_get_one_line_and_status_4() {
    let missing = "boot.kernel=/nonexistent/kernel";
    let cases: &[(&[&str], &str)] = &[
        (&[], "no VM name"),
        (&["-Q", "vm"], "unknown or unsupported option -Q"),
        (&["-m", "lots", "vm"], "memory size"),
        (&["-s", "3,virtio-sound", "vm"], "-s help"),
        (&["-l", "com1,stdio", "-o", missing, "vm"], "-s 31,lpc"),
        (&["-o", missing, "vm"], "cannot open boot.kernel /nonexistent/kernel"),
        (&["-o", "boot.kernel=/etc/hostname", "vm"], "not an ELF64 kernel or a bzImage"),
        (&["-k", "/nonexistent.conf", "vm"], "cannot read config file"),
    ];
    for (args, expect) in cases {
        let r = capvm_args(args);
        assert_eq!(r.code(), 4, "{args:?}: {r:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {r:?}");
        assert!(lines[0].starts_with("capvm: ") && lines[0].contains(expect), "{args:?}: {r:?}");
    }
}

#[test]
fn help_lists_slots_and_lpc_devices() {
    let r = capvm_args(&["-s", "help"]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout.contains("hostbridge") && r.stdout.contains("lpc"), "{r:?}");
    let r = capvm_args(&["-l", "help"]);
    assert_eq!(r.code(), 0);
    assert!(r.stdout.contains("com1") && r.stdout.contains("com4"), "{r:?}");
    let r = capvm_args(&["-h"]);
    assert!(r.stdout.contains("usage: capvm"), "{r:?}");
}

/// Reads `master` until `needle` shows up (or 20 s pass); returns all read.
fn read_until(master: &mut std::fs::File, got: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(got).contains(needle) && Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn tty_backend_is_raw_and_carries_both_directions() {
    require_kvm();
    let (mut master_fd, mut slave_fd) = (0, 0);
    // SAFETY: openpty fills two fds; no name, termios or winsize.
    let rc = unsafe {
        libc::openpty(&mut master_fd, &mut slave_fd, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0);
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{slave_fd}")).unwrap();
    let mut args = guest_args("echo", &[]);
    let i = args.iter().position(|a| a == "com1,stdio").unwrap();
    args[i] = format!("com1,{}", slave_path.display());
    let child = spawn(&args);
    // SAFETY: we own the master fd.
    let mut master = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(master_fd) };
    let mut got = Vec::new();
    read_until(&mut master, &mut got, "echo ready");
    // Cooked, the line discipline would hold this (no newline) and echo it.
    master.write_all(b"tty bytes q").unwrap();
    read_until(&mut master, &mut got, "bye");
    let r = finish(child, Duration::from_secs(30));
    // SAFETY: closing the slave fd we own.
    unsafe { libc::close(slave_fd) };
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("tty bytes "), "{got:?}; {r:?}");
    assert_eq!(got.matches("tty bytes").count(), 1, "line discipline echoed: {got:?}");
    assert_eq!(r.code(), 1, "{r:?}");
}
