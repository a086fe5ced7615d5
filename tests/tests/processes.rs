//! The VM as processes: who runs, who dies, what is left behind.

use std::time::Duration;

use capvm_tests::*;

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a pid we started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// A VM spinning at CPL0: the broker, its children (pid, comm) and its name.
type SpinningVm = (std::process::Child, Vec<(u32, String)>, String);

/// Starts the spinning guest and waits for its two children.
fn spinning_vm() -> SpinningVm {
    require_kvm();
    let args = guest_args("spin", &[]);
    let child = spawn(&args);
    let kids = wait_for_children(child.id(), 2, Duration::from_secs(10));
    (child, kids, args.last().unwrap().clone())
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_running_vm_is_broker_runner_and_uart_each_its_own_executable() {
    let (child, kids, _) = spinning_vm();
    let names: Vec<&str> = kids.iter().map(|(_, n)| n.as_str()).collect();
    // comm is cut to 15 characters.
    assert_eq!(names.len(), 2, "{kids:?}");
    assert!(names.contains(&"capvm-uart"), "{kids:?}");
    assert!(names.contains(&"capvm-vcpu-runn"), "{kids:?}");
    for (pid, _) in &kids {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_ne!(exe, capvm_bin(), "child {pid} is a fork of the broker, not a fresh exec");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
        assert!(fds < 20, "child {pid} holds {fds} fds");
    }
    signal(child.id(), libc::SIGTERM);
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 1, "{r:?}");
}

/// A vCPU spinning in emulated CPL0 code never leaves KVM_RUN here; SIGTERM
/// must still stop everything (by escalating to SIGKILL).
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn sigterm_stops_every_child_even_with_a_spinning_vcpu() {
    let (child, kids, _) = spinning_vm();
    assert_eq!(kids.len(), 2, "{kids:?}");
    signal(child.id(), libc::SIGTERM);
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(r.stderr.contains("received SIGTERM"), "{r:?}");
    for (pid, name) in kids {
        assert!(!pid_exists(pid), "{name} ({pid}) outlived the broker");
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn sigint_stops_the_vm_too() {
    let (child, kids, _) = spinning_vm();
    signal(child.id(), libc::SIGINT);
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 1, "{r:?}");
    for (pid, _) in kids {
        assert!(!pid_exists(pid));
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn killing_the_uart_server_stops_the_vm_with_4_naming_it() {
    let (child, kids, _) = spinning_vm();
    let (uart, _) = kids.iter().find(|(_, n)| n == "capvm-uart").expect("uart child").clone();
    signal(uart, libc::SIGKILL);
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 4, "{r:?}");
    assert!(r.stderr.contains(&format!("uart server (com1) (pid {uart}) was killed by signal 9 (SIGKILL)")), "{r:?}");
    for (pid, name) in kids {
        assert!(!pid_exists(pid), "{name} ({pid}) outlived the broker");
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn killing_the_vcpu_runner_stops_the_vm_with_4_naming_it() {
    let (child, kids, _) = spinning_vm();
    let (runner, _) = kids.iter().find(|(_, n)| n.starts_with("capvm-vcpu")).expect("runner").clone();
    signal(runner, libc::SIGKILL);
    let r = finish(child, Duration::from_secs(10));
    assert_eq!(r.code(), 4, "{r:?}");
    assert!(r.stderr.contains(&format!("vcpu-runner (pid {runner}) was killed by signal 9")), "{r:?}");
    assert!(kids.iter().all(|(p, _)| !pid_exists(*p)));
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn killing_the_broker_takes_its_children_along() {
    let (mut child, kids, vm) = spinning_vm();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while kids.iter().any(|(p, _)| pid_exists(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, name) in kids {
        assert!(!pid_exists(pid), "{name} ({pid}) outlived a SIGKILLed broker");
    }
    // Nothing can remove the control socket of a SIGKILLed broker (the
    // next VM of that name replaces it); the test does.
    let sock = runtime_dir().join(format!("{vm}.sock"));
    assert!(sock.exists(), "the VM had no control socket at {}", sock.display());
    std::fs::remove_file(sock).unwrap();
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A guest that has set its disk up and sleeps, with a COM port, a disk and
/// a NIC on a tap: no process of capvm's may busy-wait for it. Together
/// they stay under 1% of a core (the runner's halt watchdog is most of it).
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn an_idle_vm_with_every_device_costs_under_one_percent_of_a_core() {
    require_kvm();
    let ns = Netns::create();
    let img = std::env::temp_dir().join(format!("capvm-idle-{}.img", std::process::id()));
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("3,virtio-blk,{}", img.display());
    let args = vm_args(2, "64M", guest(), "blk-rw 1 idle", &["-s", &disk, "-s", "4,virtio-net,idletap0"]);
    let mut child = ns.spawn_capvm(&args);
    let mut out = child.stdout.take().unwrap();
    read_until(&mut out, &mut Vec::new(), "blk done", std::time::Instant::now() + Duration::from_secs(60));
    let mut pids: Vec<u32> = children_of(child.id()).into_iter().map(|(p, _)| p).collect();
    assert_eq!(pids.len(), 4, "runner, uart, disk and NIC servers");
    pids.push(child.id());
    let ticks = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (t0, c0) = (std::time::Instant::now(), ticks());
    std::thread::sleep(Duration::from_secs(8));
    let (elapsed, used) = (t0.elapsed().as_secs_f64(), ticks() - c0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = used as f64 / hz / elapsed;
    eprintln!("idle VM: {:.2}% of a core over {elapsed:.1} s", share * 100.0);
    child.stdout = Some(out);
    signal(child.id(), libc::SIGTERM);
    let r = finish(child, Duration::from_secs(10));
    std::fs::remove_file(&img).unwrap();
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(share < 0.01, "an idle VM used {:.2}% of a core", share * 100.0);
}

/// capvmctl clients that connect and say nothing delay nothing: requests
/// from others are answered and a dead child is noticed at once (each
/// silent client used to hold the supervisor for up to a second).
#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn silent_control_clients_hold_up_neither_requests_nor_the_supervisor() {
    let (child, kids, name) = spinning_vm();
    let sock = runtime_dir().join(format!("{name}.sock"));
    let silent: Vec<std::os::unix::net::UnixStream> =
        (0..5).map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(200));
    let asked = std::time::Instant::now();
    let stats = get_stats(&name);
    assert!(stats.iter().any(|(k, _)| k.starts_with("vcpu-runner:")), "{stats:?}");
    // Five silent clients at a second each would be five seconds.
    assert!(asked.elapsed() < Duration::from_millis(2500), "answered after {:?}", asked.elapsed());
    let (uart, _) = kids.iter().find(|(_, n)| n == "capvm-uart").expect("uart child").clone();
    let killed = std::time::Instant::now();
    signal(uart, libc::SIGKILL);
    let r = finish(child, Duration::from_secs(10));
    assert!(killed.elapsed() < Duration::from_millis(2500), "noticed after {:?}", killed.elapsed());
    assert_eq!(r.code(), 4, "{r:?}");
    drop(silent);
}
