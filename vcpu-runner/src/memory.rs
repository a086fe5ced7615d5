//! Guest RAM: the broker's memfd mapped here and registered with KVM.

use std::fs::File;
use std::os::fd::OwnedFd;

use capvm_ipc::MemoryRegion;
use capvm_kernel::Vm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::runner::RunnerError;

pub struct GuestRam {
    mem: GuestMemoryMmap,
    /// The memfd stays open as long as the mappings that hold it.
    fd: i32,
}

impl GuestRam {
    /// Maps every region of the RAM memfd and gives it to KVM as one slot each.
    pub fn map(vm: &Vm, ram: OwnedFd, regions: &[MemoryRegion], wire: bool) -> Result<GuestRam, RunnerError> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ram);
        let mem = capvm_ipc::shm::map_guest_ram(File::from(ram), regions)?;
        for (slot, (region, spec)) in mem.iter().zip(regions).enumerate() {
            let host =
                region.get_host_address(MemoryRegionAddress(0)).map_err(|e| RunnerError::Memory(e.to_string()))?;
            if wire {
                // SAFETY: mlock on our own live mapping.
                if unsafe { libc::mlock(host.cast(), region.len() as usize) } != 0 {
                    return Err(RunnerError::Memory(format!(
                        "cannot wire guest memory (-S): {}",
                        std::io::Error::last_os_error()
                    )));
                }
            }
            // SAFETY: `mem` owns the mapping and lives as long as the VM
            // (GuestRam is kept until the process exits).
            unsafe { vm.map_memory(slot as u32, region.start_addr().0, region.len(), host as u64, spec.read_only)? };
        }
        Ok(GuestRam { mem, fd })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Another handle on the same mappings (for fw_cfg's DMA).
    pub fn memory(&self) -> GuestMemoryMmap {
        self.mem.clone()
    }
}

impl capvm_kernel::PhysicalMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.mem.read_slice(buf, GuestAddress(gpa)).is_ok()
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> bool {
        self.mem.check_range(GuestAddress(gpa), buf.len()) && self.mem.write_slice(buf, GuestAddress(gpa)).is_ok()
    }

    fn host_address(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let slice = self.mem.get_slice(GuestAddress(gpa), len).ok()?;
        Some(slice.ptr_guard_mut().as_ptr())
    }
}
