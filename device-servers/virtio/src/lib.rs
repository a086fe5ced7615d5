//! What every capvm virtio device server shares: modern virtio over PCI
//! (config space, BAR registers, MSI-X, split virtqueues from the
//! virtio-queue crate) and the server's event loop. A device server (blk,
//! net) adds its device model through [`transport::Device`].

pub mod chain;
pub mod layout;
pub use capvm_pci as pci;
pub mod server;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod transport;

pub use transport::{Device, Transport};
