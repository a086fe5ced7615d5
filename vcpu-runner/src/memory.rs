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
    /// Guest-physical ranges KVM maps read-only (the firmware ROM): a
    /// completed store there is refused, as KVM refuses the guest's own.
    read_only: Vec<std::ops::Range<u64>>,
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
        Ok(GuestRam::over(mem, fd, regions))
    }

    fn over(mem: GuestMemoryMmap, fd: i32, regions: &[MemoryRegion]) -> GuestRam {
        let read_only = regions.iter().filter(|r| r.read_only).map(|r| r.guest_addr..r.guest_addr + r.size).collect();
        GuestRam { mem, fd, read_only }
    }

    /// Whether `len` bytes at `gpa` touch a read-only region.
    fn touches_rom(&self, gpa: u64, len: usize) -> bool {
        let end = gpa.saturating_add(len as u64);
        self.read_only.iter().any(|r| gpa < r.end && r.start < end)
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
        !self.touches_rom(gpa, buf.len())
            && self.mem.check_range(GuestAddress(gpa), buf.len())
            && self.mem.write_slice(buf, GuestAddress(gpa)).is_ok()
    }

    fn writable_address(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        if self.touches_rom(gpa, len) {
            return None;
        }
        let slice = self.mem.get_slice(GuestAddress(gpa), len).ok()?;
        Some(slice.ptr_guard_mut().as_ptr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capvm_kernel::PhysicalMemory;

    /// A completed store, or an A/D bit, into the firmware ROM is refused
    /// (KVM maps it read-only; the runner's mapping of the memfd is not).
    #[test]
    fn rom_takes_no_completed_writes() {
        // ROM right above RAM, so that one store can cross into it.
        let rom = 0x10000;
        let regions = [
            MemoryRegion { guest_addr: 0, size: 0x10000, offset: 0, read_only: false },
            MemoryRegion { guest_addr: rom, size: 0x10000, offset: 0x10000, read_only: true },
        ];
        let fd = capvm_ipc::shm::sealed_memfd("rom-test", 0x20000).unwrap();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let ram = GuestRam::over(capvm_ipc::shm::map_guest_ram(File::from(fd), &regions).unwrap(), raw, &regions);
        assert!(ram.write(0x1000, &[1, 2, 3, 4]));
        assert!(ram.writable_address(0xfff8, 8).is_some());
        assert!(ram.write(rom - 4, &[0xaa; 4]), "a store that ends where ROM starts");
        assert!(!ram.write(rom + 0x100, &[0xaa]), "a store into ROM");
        assert!(!ram.write(rom - 2, &[0xaa; 4]), "a store that ends in ROM");
        assert!(ram.writable_address(rom + 0x100, 8).is_none(), "an A/D bit in ROM");
        let mut b = [0u8; 1];
        assert!(ram.read(rom + 0x100, &mut b) && b[0] == 0, "ROM still reads, unchanged");
    }
}
