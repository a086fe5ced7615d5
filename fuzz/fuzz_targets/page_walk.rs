//! The runner's walk of the guest's page tables (`capvm_kernel::paging`):
//! tables, control registers and addresses all the guest's. The walk
//! must end (a table may point at itself), never panic, and agree with
//! itself: an address that translates for a write translates for a read,
//! to the same place.
#![no_main]

use std::cell::RefCell;

use capvm_fuzz::Input;
use capvm_kernel::paging::{translate, Access, Paging};
use capvm_kernel::PhysicalMemory;

/// 64 KiB of guest RAM at 0: room for a few tables of each level.
struct Ram(RefCell<Vec<u8>>);

impl PhysicalMemory for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        let ram = self.0.borrow();
        let Some(src) = usize::try_from(gpa).ok().and_then(|a| ram.get(a..a.checked_add(buf.len())?)) else {
            return false;
        };
        buf.copy_from_slice(src);
        true
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> bool {
        let mut ram = self.0.borrow_mut();
        let Some(dst) = usize::try_from(gpa).ok().and_then(|a| ram.get_mut(a..a.checked_add(buf.len())?)) else {
            return false;
        };
        dst.copy_from_slice(buf);
        true
    }
    fn writable_address(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let mut ram = self.0.borrow_mut();
        let at = usize::try_from(gpa).ok()?;
        ram.get_mut(at..at.checked_add(len)?).map(|s| s.as_mut_ptr())
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut walks = Vec::new();
    for _ in 0..8 {
        let p = Paging {
            cr0: input.u64(),
            // Tables within RAM mostly, so that walks go deep.
            cr3: if input.u8() & 1 == 0 { u64::from(input.u16()) } else { input.u64() },
            cr4: input.u64(),
            efer: input.u64(),
            cpl: input.u8() % 4,
            ac: input.u8() & 1 != 0,
        };
        walks.push((p, input.u64()));
    }
    let mut ram = vec![0u8; 64 << 10];
    let tables = input.bytes(ram.len());
    ram[..tables.len()].copy_from_slice(tables);
    let ram = Ram(RefCell::new(ram));
    for (p, linear) in walks {
        let write = translate(&ram, &p, linear, Access::Write);
        let read = translate(&ram, &p, linear, Access::Read);
        let _ = translate(&ram, &p, linear, Access::Fetch);
        if let Ok(phys) = write {
            assert_eq!(read, Ok(phys), "writable but not readable: {p:?} {linear:#x}");
        }
    }
});
