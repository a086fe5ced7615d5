//! capvm-virtio-blk: one virtio-blk disk in its own process. It holds the
//! disk's fd (read-only when the disk is), guest RAM, its queue's notify
//! and interrupt eventfds, and nothing else. Started by the broker with its
//! control socket at fd 3.

mod blk;

use capvm_ipc::{ToBroker, VirtioBackend};
use capvm_policy::{FdGrant, Right, SyscallRule};
use capvm_virtio::server::{self, DeviceSandbox, Setup};

fn main() {
    let channel = capvm_ipc::child_channel();
    let result = server::run(&channel, |setup: Setup| {
        let VirtioBackend::Blk(opts) = &setup.config.backend else {
            return Err("capvm-virtio-blk was started for another device".into());
        };
        let [disk]: [_; 1] = setup.backend_fds.try_into().map_err(|_| "StartVirtio for a disk carries exactly one backend fd")?;
        let sandbox = sandbox(std::os::fd::AsRawFd::as_raw_fd(&disk), opts.read_only);
        Ok((blk::Blk::new(disk, opts.clone(), setup.stats), sandbox))
    });
    if let Err(e) = result {
        if channel.send(&ToBroker::Fatal(e.to_string()), &[]).is_err() {
            eprintln!("capvm-virtio-blk: {e}");
        }
        std::process::exit(4);
    }
}

/// The disk with the rights its mode needs: pread needs CAP_READ|CAP_SEEK,
/// pwrite CAP_WRITE|CAP_SEEK; a read-only disk gets no CAP_WRITE at all.
fn sandbox(disk: i32, read_only: bool) -> DeviceSandbox {
    use capvm_policy::Args::FdWith;
    use Right::*;
    let r = |name, args, why| SyscallRule { name, args, why };
    let mut syscalls = vec![r("pread64", FdWith(&[Read, Seek]), "read sectors")];
    let rights: &[Right] = if read_only {
        &[Read, Seek]
    } else {
        syscalls.extend([
            r("pwrite64", FdWith(&[Write, Seek]), "write sectors"),
            r("fdatasync", FdWith(&[Fsync]), "FLUSH"),
            r("fallocate", FdWith(&[Write]), "DISCARD and WRITE_ZEROES"),
        ]);
        &[Read, Write, Seek, Fsync]
    };
    let what = if read_only { "disk (opened read-only)" } else { "disk" };
    DeviceSandbox { fds: vec![FdGrant::new(disk, what, rights)], syscalls }
}
