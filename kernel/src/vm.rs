//! A VM: memory slots, the in-kernel irqchip and PIT, irqfds, vCPUs.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::{Context, HostKvm, Result, Vcpu};

/// Where KVM puts the TSS it needs for real-mode emulation on Intel: three
/// pages just below the 4 GiB boundary's BIOS area, outside guest RAM.
const TSS_ADDR: usize = 0xfffb_d000;

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    supported_cpuid: CpuId,
    host: HostKvm,
    /// irqfds stay registered as long as the VM lives.
    irqfds: Vec<EventFd>,
}

impl Vm {
    /// Creates a VM on an open `/dev/kvm`, with the in-kernel irqchip
    /// (PIC, IOAPIC, LAPICs) and PIT.
    pub fn create(kvm_fd: OwnedFd, host: HostKvm) -> Result<Vm> {
        // SAFETY: kvm_fd is an open /dev/kvm that we own.
        let kvm = unsafe { Kvm::from_raw_fd(kvm_fd.into_raw_fd()) };
        let fd = kvm.create_vm().context("KVM_CREATE_VM")?;
        fd.set_tss_address(TSS_ADDR).context("KVM_SET_TSS_ADDR")?;
        fd.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).context("KVM_CREATE_PIT2")?;
        let supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).context("KVM_GET_SUPPORTED_CPUID")?;
        Ok(Vm { kvm, fd, supported_cpuid, host, irqfds: Vec::new() })
    }

    /// Most vCPUs this KVM runs in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Maps `size` bytes of host memory at `host_addr` as guest-physical
    /// `guest_addr` in memory slot `slot`.
    ///
    /// # Safety
    /// The host range must stay mapped, readable and writable for the life of
    /// the VM: the guest writes into it behind Rust's back.
    pub unsafe fn map_memory(&self, slot: u32, guest_addr: u64, size: u64, host_addr: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller keeps the host range mapped for the VM's life.
        unsafe { self.fd.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")
    }

    /// Raises `gsi` whenever `fd` (an eventfd) is written.
    pub fn register_irqfd(&mut self, fd: OwnedFd, gsi: u32) -> Result<()> {
        // SAFETY: fd is an eventfd we own; EventFd takes ownership.
        let efd = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        self.fd.register_irqfd(&efd, gsi).context("KVM_IRQFD")?;
        self.irqfds.push(efd);
        Ok(())
    }

    /// Creates vCPU `id` with its CPUID and LAPIC set up.
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(id as u64).context("KVM_CREATE_VCPU")?;
        let amd = crate::cpuid::is_amd(&self.supported_cpuid);
        let cpuid = crate::cpuid::for_vcpu(&self.supported_cpuid, self.host, id, amd);
        fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
        let vcpu = Vcpu::new(id, fd);
        vcpu.setup_lapic()?;
        vcpu.setup_msrs()?;
        Ok(vcpu)
    }
}
