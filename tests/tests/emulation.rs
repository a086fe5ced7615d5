//! Instructions the host's KVM emulator refuses at guest CPL0, completed by
//! the runner (capvm_kernel::complete): the guest checks every result, the
//! stats page counts every completion.

use std::time::{Duration, Instant};

use capvm_tests::*;

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn popcnt_stac_and_clac_at_cpl0_give_the_right_results_and_are_counted() {
    require_kvm();
    const ROUNDS: u64 = 200;
    let args = guest_args(&format!("refused {ROUNDS}"), &[]);
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen, mut buf) = (Vec::new(), [0u8; 256]);
    let (mut go, mut end) = (None, None);
    while !String::from_utf8_lossy(&seen).contains("rounds right") {
        assert!(Instant::now() < deadline, "guest did not finish: {}", String::from_utf8_lossy(&seen));
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "capvm ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if go.is_none() && text.contains("bench: go") {
            go = Some(Instant::now());
        }
        if end.is_none() && text.contains("bench: end") {
            end = Some(Instant::now());
        }
    }
    let stats = get_stats(&name);
    destroy(&name);
    let _ = child.wait();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains(&format!("refused: {ROUNDS} of {ROUNDS} rounds right")), "{text}");
    if host_is_emulated() {
        // Two popcnt (register, memory), one stac, one clac a round.
        assert_eq!(stat(&stats, "vcpu-runner: completed_popcnt"), 2 * ROUNDS, "{stats:?}");
        assert_eq!(stat(&stats, "vcpu-runner: completed_stac"), ROUNDS, "{stats:?}");
        assert_eq!(stat(&stats, "vcpu-runner: completed_clac"), ROUNDS, "{stats:?}");
        if let (Some(go), Some(end)) = (go, end) {
            let per = end.duration_since(go) / (4 * ROUNDS as u32);
            eprintln!("one completion (with its emulation-failure exit) ~ {per:?}");
        }
    }
}
