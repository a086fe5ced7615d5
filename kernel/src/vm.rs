//! A VM: memory slots, the in-kernel irqchip and PIT, irqfds, vCPUs.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_pit_config, kvm_userspace_memory_region,
    CpuId, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
pub use kvm_ioctls::IoEventAddress;
use kvm_ioctls::{Kvm, NoDatamatch, VmFd};
pub use vmm_sys_util::eventfd::EventFd;

use crate::{Context, HostKvm, KvmError, Result, Vcpu};

/// Where KVM puts the TSS it needs for real-mode emulation on Intel: three
/// pages just below the 4 GiB boundary's BIOS area, outside guest RAM.
const TSS_ADDR: usize = 0xfffb_d000;

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    supported_cpuid: CpuId,
    host: HostKvm,
    /// irqfds and ioeventfds stay registered as long as the VM lives.
    eventfds: Vec<EventFd>,
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
        let supported_cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).context("KVM_GET_SUPPORTED_CPUID")?;
        let vm = Vm { kvm, fd, supported_cpuid, host, eventfds: Vec::new() };
        // KVM's own default wires the PIT to IOAPIC pin 0; ours (pin 2, as
        // the MADT says) must hold from the first instruction, not only
        // after the first MSI route update.
        vm.set_msi_routes(&[])?;
        Ok(vm)
    }

    /// The `/dev/kvm` and VM fd numbers, for the sandbox manifest.
    pub fn raw_fds(&self) -> (i32, i32) {
        use std::os::fd::AsRawFd;
        (self.kvm.as_raw_fd(), self.fd.as_raw_fd())
    }

    /// The registered irqfds' fd numbers.
    pub fn eventfd_numbers(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        self.eventfds.iter().map(|e| e.as_raw_fd()).collect()
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
    pub unsafe fn map_memory(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        read_only: bool,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            // A ROM: guest writes exit as MMIO (KVM_CAP_READONLY_MEM).
            flags: if read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller keeps the host range mapped for the VM's life.
        unsafe { self.fd.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")
    }

    /// Removes memory slot `slot` (a BAR's memory, when the guest moves or
    /// disables the BAR): its accesses exit again.
    pub fn unmap_memory(&self, slot: u32) -> Result<()> {
        let region =
            kvm_userspace_memory_region { slot, flags: 0, guest_phys_addr: 0, memory_size: 0, userspace_addr: 0 };
        // SAFETY: a zero-sized region deletes the slot; no host memory is named.
        unsafe { self.fd.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION (delete)")
    }

    /// Raises `gsi` whenever `fd` (an eventfd) is written.
    pub fn register_irqfd(&mut self, fd: OwnedFd, gsi: u32) -> Result<()> {
        // SAFETY: fd is an eventfd we own; EventFd takes ownership.
        let efd = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        self.fd.register_irqfd(&efd, gsi).context("KVM_IRQFD")?;
        self.eventfds.push(efd);
        Ok(())
    }

    /// A level-triggered line: writing `trigger` asserts `gsi`; when the
    /// guest acknowledges the interrupt (IOAPIC EOI), KVM deasserts it and
    /// signals `resample`, and the device asserts it again if its
    /// interrupt is still pending. How PCI INTx# works without an exit.
    pub fn register_irqfd_with_resample(&mut self, trigger: OwnedFd, resample: OwnedFd, gsi: u32) -> Result<()> {
        // SAFETY: eventfds we own; EventFd takes ownership.
        let (trigger, resample) =
            unsafe { (EventFd::from_raw_fd(trigger.into_raw_fd()), EventFd::from_raw_fd(resample.into_raw_fd())) };
        self.fd.register_irqfd_with_resample(&trigger, &resample, gsi).context("KVM_IRQFD (resample)")?;
        self.eventfds.extend([trigger, resample]);
        Ok(())
    }

    /// Signals `fd` on a guest write of any size to `addr` instead of
    /// exiting to user space: the exit-free queue-notify path. The caller
    /// keeps `fd` to move the registration when the guest moves the BAR.
    pub fn attach_ioeventfd(&self, fd: &EventFd, addr: IoEventAddress) -> Result<()> {
        self.fd.register_ioevent(fd, &addr, NoDatamatch).context("KVM_IOEVENTFD")
    }

    /// Undoes [`attach_ioeventfd`](Self::attach_ioeventfd).
    pub fn detach_ioeventfd(&self, fd: &EventFd, addr: IoEventAddress) -> Result<()> {
        self.fd.unregister_ioevent(fd, &addr, NoDatamatch).context("KVM_IOEVENTFD (deassign)")
    }

    /// Replaces the GSI routing table: the IOAPIC/PIC pins KVM set up by
    /// default stay, and each `(gsi, address, data)` becomes an MSI route.
    pub fn set_msi_routes(&self, routes: &[(u32, u64, u32)]) -> Result<()> {
        let mut entries = default_irq_routes();
        for &(gsi, address, data) in routes {
            let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
            e.u.msi = kvm_irq_routing_msi {
                address_lo: address as u32,
                address_hi: (address >> 32) as u32,
                data,
                ..Default::default()
            };
            entries.push(e);
        }
        let routing = KvmIrqRouting::from_entries(&entries).map_err(|_| KvmError {
            what: "KVM_SET_GSI_ROUTING (too many routes)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.fd.set_gsi_routing(&routing).context("KVM_SET_GSI_ROUTING")
    }

    /// Creates vCPU `id` with its CPUID and LAPIC set up.
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(id as u64).context("KVM_CREATE_VCPU")?;
        let amd = crate::cpuid::is_amd(&self.supported_cpuid);
        let cpuid = crate::cpuid::for_vcpu(&self.supported_cpuid, self.host, id, amd);
        fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
        // KVM_CAP_XSAVE2 is the size of KVM's XSAVE area (0: kvm_xsave's).
        let xsave_size = self.fd.check_extension_int(kvm_ioctls::Cap::Xsave2);
        let xsave_fits = xsave_size <= crate::complete::XSAVE_AREA as i32;
        // Refused SIMD instructions run natively (complete::simd); without
        // the page they stop the VM as any other refused instruction.
        let native = if self.host == HostKvm::Emulated {
            let cpu = crate::native::NativeCpu::new();
            // Said once: a guest that uses SIMD at CPL0 will stop.
            if let (Err(e), 0) = (&cpu, id) {
                eprintln!("capvm: refused SIMD instructions cannot be completed on this host: {e}");
            }
            cpu.ok()
        } else {
            None
        };
        let vcpu = Vcpu::new(id, fd, xsave_fits, native);
        vcpu.setup_lapic()?;
        vcpu.setup_msrs()?;
        Ok(vcpu)
    }
}

/// The wiring of a PC, which the MADT's interrupt source override tells
/// the guest: ISA IRQ 0 (the PIT, GSI 0 in KVM) reaches PIC pin 0 and
/// IOAPIC pin 2; GSI 1-15 reach PIC and IOAPIC pin of the same number,
/// 16-23 the IOAPIC only. GSI 2 has no route: PIC pin 2 is the cascade and
/// IOAPIC pin 2 belongs to GSI 0. That also matters to KVM's PIT, which
/// only injects its next tick after the guest acknowledged the last one,
/// and learns of an IOAPIC EOI through the GSI that pin routes back to.
fn default_irq_routes() -> Vec<kvm_irq_routing_entry> {
    let pin = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
        e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
        e
    };
    let mut v = Vec::new();
    for gsi in (0..24u32).filter(|&gsi| gsi != 2) {
        if gsi < 8 {
            v.push(pin(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(pin(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(pin(gsi, KVM_IRQCHIP_IOAPIC, if gsi == 0 { 2 } else { gsi }));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn vm() -> Option<Vm> {
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
        match kvm {
            Ok(f) => Some(Vm::create(OwnedFd::from(f), HostKvm::detect()).expect("create VM")),
            Err(_) if std::env::var_os("CAPVM_TESTS_WITHOUT_KVM").is_some() => None,
            Err(e) => panic!("/dev/kvm: {e} (set CAPVM_TESTS_WITHOUT_KVM=1 to skip)"),
        }
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: plain eventfd(2).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn vm_takes_irqfds_ioeventfds_and_msi_routes() {
        let Some(mut vm) = vm() else { return };
        vm.register_irqfd(eventfd(), 4).unwrap();
        vm.register_irqfd_with_resample(eventfd(), eventfd(), 19).unwrap();
        let notify = EventFd::new(libc::EFD_CLOEXEC).unwrap();
        vm.attach_ioeventfd(&notify, IoEventAddress::Mmio(0xd000_0000)).unwrap();
        vm.attach_ioeventfd(&notify, IoEventAddress::Pio(0x6000)).unwrap();
        vm.detach_ioeventfd(&notify, IoEventAddress::Mmio(0xd000_0000)).unwrap();
        vm.attach_ioeventfd(&notify, IoEventAddress::Mmio(0xd000_4000)).unwrap();
        assert!(vm.detach_ioeventfd(&notify, IoEventAddress::Mmio(0xd000_0000)).is_err());
        vm.set_msi_routes(&[(24, 0xfee0_0000, 0x4041), (25, 0xfee0_1000, 0x22)]).unwrap();
        assert!(vm.max_vcpus() >= 1);
        let vcpu = vm.create_vcpu(0).unwrap();
        assert_eq!(vcpu.id(), 0);
    }

    #[test]
    fn default_routes_wire_the_pit_to_ioapic_pin_2_and_leave_the_cascade_alone() {
        let r = default_irq_routes();
        let to = |gsi: u32| -> Vec<(u32, u32)> {
            // SAFETY: every entry is an IRQCHIP route.
            r.iter().filter(|e| e.gsi == gsi).map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) }).collect()
        };
        assert_eq!(to(0), [(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]);
        assert!(to(2).is_empty());
        assert_eq!(to(9), [(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]);
        assert_eq!(to(23), [(KVM_IRQCHIP_IOAPIC, 23)]);
        // Each IOAPIC pin but 0 routes back to exactly one GSI (KVM's EOI lookup).
        let mut pins: Vec<u32> =
            (0..24).flat_map(to).filter(|&(chip, _)| chip == KVM_IRQCHIP_IOAPIC).map(|p| p.1).collect();
        pins.sort();
        assert_eq!(pins, (1..24).collect::<Vec<_>>());
    }
}
