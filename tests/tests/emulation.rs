//! Instructions the host's KVM emulator refuses at guest CPL0, completed by
//! the runner (capvm_kernel::complete): the guest checks every result, the
//! stats page counts every completion.

use std::time::{Duration, Instant};

use capvm_tests::*;

/// Runs the test guest's `cmd` (a loop between `bench: go` and `bench:
/// end`) to the line with `last`: the console, the stats page read while
/// the VM runs, and how long the loop took.
fn rounds(cmd: &str, last: &str) -> (String, Vec<(String, u64)>, Duration) {
    let args = guest_args(cmd, &[]);
    let name = args.last().unwrap().clone();
    let mut child = spawn(&args);
    drop(child.stdin.take());
    let mut out = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    read_until(&mut out, &mut seen, "bench: go", deadline);
    let go = Instant::now();
    read_until(&mut out, &mut seen, "bench: end", deadline);
    let took = go.elapsed();
    read_until(&mut out, &mut seen, last, deadline);
    let stats = get_stats(&name);
    destroy(&name);
    let _ = child.wait();
    (String::from_utf8_lossy(&seen).into_owned(), stats, took)
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn popcnt_stac_clac_and_lsl_at_cpl0_give_the_right_results_and_are_counted() {
    require_kvm();
    const ROUNDS: u64 = 200;
    let (text, stats, took) = rounds(&format!("refused {ROUNDS}"), "rounds right");
    assert!(text.contains(&format!("refused: {ROUNDS} of {ROUNDS} rounds right")), "{text}");
    if host_is_emulated() {
        // Two popcnt (register, memory), one stac, one clac, two lsl a round.
        assert_eq!(stat(&stats, "vcpu-runner: completed_popcnt"), 2 * ROUNDS, "{stats:?}");
        assert_eq!(stat(&stats, "vcpu-runner: completed_stac"), ROUNDS, "{stats:?}");
        assert_eq!(stat(&stats, "vcpu-runner: completed_clac"), ROUNDS, "{stats:?}");
        assert_eq!(stat(&stats, "vcpu-runner: completed_lsl"), 2 * ROUNDS, "{stats:?}");
        let per = took / (6 * ROUNDS as u32);
        eprintln!("one completion (with its emulation-failure exit) ~ {per:?}");
    }
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn sse_at_cpl0_runs_natively_in_the_runner_with_the_right_results() {
    require_kvm();
    const ROUNDS: u64 = 200;
    let (text, stats, took) = rounds(&format!("simd {ROUNDS}"), "handled");
    // The load from above the identity map took the #PF the CPU raises:
    // CR2 at the address, a read of a page not present (error code 0).
    assert!(
        text.contains(&format!("simd: {ROUNDS} of {ROUNDS} rounds right"))
            && text.contains("simd: #PF at 0x0000000200000010 error 0, handled"),
        "{text}"
    );
    if host_is_emulated() {
        // The emulator refuses the first movq of a round; from there the
        // runner runs the round's eight SIMD instructions, and the integer
        // ones between and after them, natively: one exit a round.
        let (simd, after, runs) = (
            stat(&stats, "vcpu-runner: completed_simd"),
            stat(&stats, "vcpu-runner: completed_after_simd"),
            stat(&stats, "vcpu-runner: simd_runs"),
        );
        assert_eq!((simd, runs), (8 * ROUNDS, ROUNDS), "{stats:?}");
        assert!(after >= 2 * ROUNDS, "setz and movzx ran in the run: {stats:?}");
        assert_eq!(stat(&stats, "vcpu-runner: completed_page_fault"), 1, "{stats:?}");
        let per = took / ROUNDS as u32;
        eprintln!(
            "one round: {per:?}, {} instructions run natively after its one emulation-failure exit",
            (simd + after) / runs
        );
    }
}
