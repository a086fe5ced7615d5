//! The platform clocks the vCPU runner owns: the RTC with its CMOS RAM
//! (0x70/0x71) and the ACPI PM timer (0x408), read by the test guest.

use std::process::Command;

use capvm_tests::*;

/// The host's UTC time as the guest prints the RTC's.
fn host_utc() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S"]).output().expect("run date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The text after `key` on the line that has it.
fn after<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find_map(|l| l.split_once(key)).map(|(_, v)| v.trim()).unwrap_or_else(|| panic!("no {key:?}: {out}"))
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn the_rtc_tells_the_hosts_time_keeps_a_guest_set_time_and_the_pm_timer_runs() {
    require_kvm();
    let before = host_utc();
    let r = run(&guest_args("clock", &[]));
    let after_run = host_utc();
    assert_eq!(r.code(), 2, "{r:?}");
    // The guest's reading lies within the run, to the second (the
    // strings compare as times).
    let rtc = after(&r.stdout, "clock: rtc ");
    assert!(before.as_str() <= rtc && rtc <= after_run.as_str(), "RTC {rtc}, host {before} .. {after_run}");
    let ticks: u64 = field(&r.stdout, "clock: pm timer advanced ").and_then(|w| w.parse().ok()).expect("a tick count");
    assert!(ticks > 0, "{r:?}");
    // Set to 2031-02-28 23:59:58 under SET; it then runs on from there
    // (into March if two seconds passed).
    let set = after(&r.stdout, "clock: set ");
    assert!(("2031-02-28 23:59:58".."2031-03-01 00:00:10").contains(&set), "{set}");
}
