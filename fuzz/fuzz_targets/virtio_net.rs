//! A virtio-net NIC behind its virtio-pci transport, as a hostile guest
//! and a hostile network drive it: register accesses and notifies over
//! guest RAM from the input (TX chains), and frames of any size arriving
//! on its "tap" (a datagram socket pair: frame boundaries, as a tap keeps
//! them) for the RX queue.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use capvm_fuzz::{guest_ram, transport, virtio_bar_offset, Input};
use capvm_ipc::NetOptions;
use capvm_virtio::layout;
use capvm_virtio::server::Backend;
use capvm_virtio_net::net::Net;

fn tap_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds; checked, then owned.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: the fds just made.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (tap, network) = tap_pair();
    let stats_fd = capvm_ipc::stats::create().expect("stats page");
    let mut stats = capvm_ipc::stats::Stats::attach(std::os::fd::AsFd::as_fd(&stats_fd)).expect("stats page");
    let net = Net::new(tap, NetOptions { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], mtu: 1500 }, &mut stats);
    let mut t = transport(net, &layout::function(5, 0, layout::NET_QUEUES, 0xc000_0000, 24));
    t.set_memory(guest_ram(&mut input, 0x1_0000));
    let mut sink = vec![0u8; 70_000];
    while !input.done() {
        let op = input.u8();
        let offset = virtio_bar_offset(op, &mut input);
        let size = input.size();
        match op % 7 {
            0 | 1 => drop(t.bar_write(offset, size, input.u64())),
            2 => drop(t.bar_read(offset, size)),
            3 => t.notify(usize::from(input.u8() % 2)),
            4 => {
                // A frame from the network, then the device's turn.
                let n = usize::from(input.u16()) % 9000;
                let frame = input.bytes(n);
                // SAFETY: a send of a local buffer on our own socket.
                unsafe { libc::send(network.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                let (device, queues, mem) = t.queues_mut();
                if let Some(mem) = mem {
                    let mem = mem.clone();
                    let _ = device.on_backend(queues, &mem);
                }
            }
            5 => t.config_write(u64::from(input.u16()) % 4096, size, input.u64()),
            _ => {
                // What the device sent: drained, as the network would.
                // SAFETY: a receive into a local buffer from our own socket.
                while unsafe { libc::recv(network.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len(), 0) } > 0 {}
            }
        }
    }
});
