//! virtio-net end to end: the test guest's own virtio-net driver against
//! the capvm-virtio-net server, on a real tap in a network namespace the
//! test creates, with a raw socket on the tap's host side
//! (tests/net/tap_peer.py) as the peer.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use capvm_tests::*;

const GUEST_MAC: &str = "02:aa:bb:cc:dd:ee";
const PEER_MAC: &str = "02:00:00:00:00:01";

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the guest sends (net.rs): broadcast from its MAC, EtherType
/// 0x88b5, 100 payload bytes 3i+1.
fn guest_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac_bytes(GUEST_MAC));
    f.extend([0x88, 0xb5]);
    f.extend((0..100u32).map(|i| (i * 3 + 1) as u8));
    f
}

/// What the peer sends (tap_peer.py): 1000 bytes to the guest's MAC,
/// payload bytes 5i+7.
fn peer_frame() -> Vec<u8> {
    let mut f = mac_bytes(GUEST_MAC);
    f.extend(mac_bytes(PEER_MAC));
    f.extend([0x88, 0xb5]);
    f.extend((0..1000 - 14u32).map(|i| ((5 * i + 7) % 256) as u8));
    f
}

fn net_args(cmd: &str, slot: &str) -> Vec<String> {
    guest_args(cmd, &["-s", slot])
}

/// Runs guest command `cmd` on a NIC on tap "ctap0" in a fresh namespace,
/// with the tap peer sending `copies` copies of its frame once the guest's
/// has arrived. Returns capvm's run and what the peer printed.
fn exchange(cmd: &str, copies: u32) -> (Run, String) {
    let ns = Netns::create();
    ns.add_tap("ctap0");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("net/tap_peer.py");
    let mut peer = ns
        .command("python3")
        .arg(script)
        .args(["ctap0", GUEST_MAC, PEER_MAC, "1000", &copies.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut peer_out = BufReader::new(peer.stdout.take().unwrap());
    let mut line = String::new();
    peer_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the tap peer did not start");

    let args = net_args(cmd, &format!("3,virtio-net,ctap0,mac={GUEST_MAC}"));
    let r = finish(ns.spawn_capvm(&args), Duration::from_secs(60));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut peer_out, &mut rest).unwrap();
    let _ = peer.wait();
    (r, rest)
}

/// Both directions crossed exactly: the guest's frame is the first the
/// peer saw, and the peer's frame reached the guest split over two
/// 512-byte buffers (mergeable RX).
fn assert_exact_both_ways(r: &Run, peer: &str) {
    assert_eq!(r.code(), 1, "the guest should power off after its frame arrived: {r:?}");
    assert_eq!(field(peer, "guest-frame "), Some(hex(&guest_frame()).as_str()), "peer saw: {peer}");
    assert_eq!(field(peer, "sent-frame "), Some(hex(&peer_frame()).as_str()), "peer: {peer}");
    assert!(r.stdout.contains("net: received 1000 bytes in 2 buffers: "), "{r:?}");
    assert_eq!(field(&r.stdout, "buffers: "), Some(hex(&peer_frame()).as_str()), "the guest got other bytes");
    assert!(r.stderr.is_empty(), "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn frames_cross_the_tap_exactly_in_both_directions() {
    require_kvm();
    let (r, peer) = exchange("net", 1);
    assert!(r.stdout.contains("net: mac 02aabbccddee"), "the device configuration has the wrong MAC: {r:?}");
    assert_exact_both_ways(&r, &peer);
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn hostile_chains_are_returned_and_the_nic_keeps_working() {
    require_kvm();
    // Six hostile RX chains each cost one frame; the seventh copy lands.
    let (r, peer) = exchange("net-fuzz", 12);
    assert!(r.stdout.contains("net-fuzz: 7 of 7 hostile TX chains returned, 64 random TX chains returned"), "{r:?}");
    // Nothing of a hostile TX chain reached the tap: the first frame the
    // peer saw is the good one (hostile ones carry another payload).
    assert_exact_both_ways(&r, &peer);
    assert!(r.stdout.contains("net-fuzz: 6 RX chains returned empty (6 were hostile)"), "{r:?}");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn a_tap_capvm_creates_is_gone_when_the_vm_is() {
    require_kvm();
    let ns = Netns::create();
    // The guest sends its frame, then waits for one that never comes.
    let args = net_args("net", "3,virtio-net,cvtap9");
    let name = args.last().unwrap().clone();
    let mut child = ns.spawn_capvm(&args);
    drop(child.stdin.take());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("net: sent") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "capvm ended early");
    }
    assert!(ns.has_link("cvtap9"), "capvm did not create the tap");
    assert!(capvmctl(&[&format!("--vm={name}"), "--destroy"]).contains("destroying"));
    let _ = child.wait();
    assert!(!ns.has_link("cvtap9"), "the tap capvm created outlived the VM");
}

#[test]
#[cfg_attr(no_kvm, ignore = "needs /dev/kvm; CAPVM_TESTS_WITHOUT_KVM is set")]
fn bad_nic_options_are_one_clear_line_and_status_4() {
    require_kvm();
    let ns = Netns::create();
    for (slot, want) in [
        ("3,virtio-net", "give a tap"),
        ("3,virtio-net,lo", "tap lo: exists and is not a tap"),
        ("3,virtio-net,tap0,mac=ff:ff:ff:ff:ff:ff", "mac=ff:ff:ff:ff:ff:ff"),
        ("3,virtio-net,tap0,mtu=9", "mtu=9"),
        ("3,virtio-net,tap0,speed=10", "virtio-net has no option 'speed'"),
    ] {
        let r = ns.run_capvm(&net_args("hello", slot));
        assert_eq!(r.code(), 4, "{slot}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{slot}: {r:?}");
        assert!(r.stderr.contains(want), "{slot}: {r:?}");
    }
}
