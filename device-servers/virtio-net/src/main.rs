//! capvm-virtio-net: one virtio-net NIC in its own process. It holds its
//! tap's fd (read, write, poll: no ioctl, so it cannot re-attach the tap
//! or change its offloads), guest RAM, its queues' notify and interrupt
//! eventfds, and nothing else. Started by the broker with its control
//! socket at fd 3.

use capvm_ipc::{DeviceBackend, ToBroker};
use capvm_virtio::server::{self, DeviceSandbox, ServerError, Setup};

fn main() {
    let channel = capvm_ipc::child_channel();
    let result = server::run(&channel, |setup: Setup| {
        let DeviceBackend::Net(opts) = &setup.config.backend else {
            return Err(ServerError::Protocol("capvm-virtio-net was started for another device".into()));
        };
        let [tap]: [_; 1] = setup
            .backend_fds
            .try_into()
            .map_err(|_| ServerError::Protocol("StartDevice for a NIC carries exactly one backend fd".into()))?;
        let (fds, syscalls) = capvm_policy::roles::virtio_net_backend(std::os::fd::AsRawFd::as_raw_fd(&tap));
        let sandbox = DeviceSandbox { fds, syscalls };
        Ok((capvm_virtio_net::net::Net::new(tap, opts.clone(), setup.stats), sandbox))
    });
    if let Err(e) = result {
        if channel.send(&ToBroker::Fatal(e.to_string()), &[]).is_err() {
            eprintln!("capvm-virtio-net: {e}");
        }
        std::process::exit(4);
    }
}
