//! capvm's world switch: the only code that touches `/dev/kvm`.
//!
//! A thin, safe layer over kvm-ioctls (the role vmm.ko and libvmmapi play in
//! bhyve): VM and vCPU creation, memory slots, register state for the first
//! instruction, the run loop with decoded exits, the in-kernel irqchip and
//! PIT, irqfds, and a CPUID fitted to what the host's KVM can run.

pub mod boot;
pub mod complete;
pub mod cpuid;
pub mod host;
pub mod native;
pub mod paging;
pub mod vcpu;
pub mod vm;

pub use host::HostKvm;
pub use vcpu::{Exit, PhysicalMemory, RefusedAt, Vcpu};
pub use vm::Vm;

/// A failed KVM operation, naming what we tried.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct KvmError {
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

pub type Result<T> = std::result::Result<T, KvmError>;

pub(crate) trait Context<T> {
    fn context(self, what: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, kvm_ioctls::Error> {
    fn context(self, what: &'static str) -> Result<T> {
        self.map_err(|source| KvmError { what, source })
    }
}
