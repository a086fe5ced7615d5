//! capvm-virtio-blk: one virtio-blk disk in its own process. It holds the
//! disk's fd (read-only when the disk is), guest RAM, its queue's notify
//! and interrupt eventfds, and nothing else. Started by the broker with its
//! control socket at fd 3.

use capvm_ipc::{DeviceBackend, ToBroker};
use capvm_virtio::server::{self, DeviceSandbox, ServerError, Setup};

fn main() {
    let channel = capvm_ipc::child_channel();
    let result = server::run(&channel, |setup: Setup| {
        let DeviceBackend::Blk(opts) = &setup.config.backend else {
            return Err(ServerError::Protocol("capvm-virtio-blk was started for another device".into()));
        };
        let [disk]: [_; 1] = setup
            .backend_fds
            .try_into()
            .map_err(|_| ServerError::Protocol("StartDevice for a disk carries exactly one backend fd".into()))?;
        let (fds, syscalls) =
            capvm_policy::roles::virtio_blk_backend(std::os::fd::AsRawFd::as_raw_fd(&disk), opts.read_only);
        let sandbox = DeviceSandbox { fds, syscalls };
        Ok((capvm_virtio_blk::blk::Blk::new(disk, opts.clone(), setup.stats), sandbox))
    });
    if let Err(e) = result {
        if channel.send(&ToBroker::Fatal(e.to_string()), &[]).is_err() {
            eprintln!("capvm-virtio-blk: {e}");
        }
        std::process::exit(4);
    }
}
