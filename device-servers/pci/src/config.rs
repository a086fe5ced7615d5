//! A type-0 PCI configuration space (4 KiB, as ECAM shows it) whose bytes
//! carry a write mask: the guest changes only the bits a real function
//! would let it change. BAR sizing falls out of that: writing all-ones to a
//! BAR reads back the size mask with the type bits.

use capvm_ipc::{BarKind, BarSpec, ROM_BAR};

pub const CONFIG_SIZE: usize = 4096;

pub const VENDOR_ID: usize = 0x00;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const ROM_ADDRESS: usize = 0x30;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status bit 3: the function's INTx# is asserted.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
const STATUS_CAPABILITIES: u16 = 1 << 4;
const BAR_MEM64: u32 = 0b100;
/// The expansion ROM's enable bit; its address takes bits 31:11.
pub const ROM_ENABLE: u32 = 1;

/// Where capabilities start: right after the type-0 header.
const FIRST_CAPABILITY: usize = 0x40;

pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SIZE]>,
    writable: Box<[u8; CONFIG_SIZE]>,
    /// The next free offset for a capability.
    next_cap: usize,
    /// The "next" byte of the last capability added (0x34 at first).
    last_link: usize,
}

/// Identity of a function.
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass, programming interface.
    pub class: [u8; 3],
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

impl ConfigSpace {
    pub fn new(id: &Identity) -> ConfigSpace {
        let mut c = ConfigSpace {
            regs: Box::new([0; CONFIG_SIZE]),
            writable: Box::new([0; CONFIG_SIZE]),
            next_cap: FIRST_CAPABILITY,
            last_link: CAPABILITIES_POINTER,
        };
        c.put(VENDOR_ID, &id.vendor.to_le_bytes());
        c.put(VENDOR_ID + 2, &id.device.to_le_bytes());
        c.put(0x08, &[id.revision, id.class[2], id.class[1], id.class[0]]);
        c.put(SUBSYSTEM_VENDOR_ID, &id.subsystem_vendor.to_le_bytes());
        c.put(SUBSYSTEM_VENDOR_ID + 2, &id.subsystem.to_le_bytes());
        c.allow(COMMAND, &(COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE).to_le_bytes());
        c.allow(INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Writes bytes as the device (ignores the write mask).
    pub fn put(&mut self, offset: usize, bytes: &[u8]) {
        self.regs[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Lets the guest change these bits at `offset`.
    fn allow(&mut self, offset: usize, mask: &[u8]) {
        self.writable[offset..offset + mask.len()].copy_from_slice(mask);
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.regs[offset], self.regs[offset + 1]])
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let r = &self.regs;
        u32::from_le_bytes([r[offset], r[offset + 1], r[offset + 2], r[offset + 3]])
    }

    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// A memory BAR at the address the broker chose; [`ROM_BAR`] is the
    /// expansion ROM, placed there but not yet enabled.
    pub fn add_bar(&mut self, bar: &BarSpec) {
        let size_mask = !(bar.size - 1);
        if bar.index == ROM_BAR {
            self.put(ROM_ADDRESS, &(bar.addr as u32 & !0x7ff).to_le_bytes());
            self.allow(ROM_ADDRESS, &((size_mask as u32 & !0x7ff) | ROM_ENABLE).to_le_bytes());
            return;
        }
        let at = BAR0 + 4 * bar.index as usize;
        let (type_bits, words) = match bar.kind {
            BarKind::Mem32 => (0, 1),
            BarKind::Mem64 => (BAR_MEM64, 2),
        };
        self.put(at, &((bar.addr as u32 & !0xf) | type_bits).to_le_bytes());
        self.allow(at, &(size_mask as u32 & !0xf).to_le_bytes());
        if words == 2 {
            self.put(at + 4, &((bar.addr >> 32) as u32).to_le_bytes());
            self.allow(at + 4, &((size_mask >> 32) as u32).to_le_bytes());
        }
    }

    /// The legacy interrupt pin (1 = INTA#).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.put(INTERRUPT_PIN, &[pin]);
    }

    /// Appends a capability. `body` starts with the capability id; its
    /// second byte (the link) is filled in. `writable` masks `body`'s bytes.
    /// Returns the capability's offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        let at = self.next_cap;
        assert!(at + body.len() <= 0x100, "capabilities overflow the legacy config space");
        self.put(at, body);
        self.regs[at + 1] = 0;
        self.allow(at, writable);
        self.writable[at + 1] = 0;
        self.regs[self.last_link] = at as u8;
        self.last_link = at + 1;
        self.next_cap = (at + body.len() + 3) & !3;
        let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
        self.put(STATUS, &status.to_le_bytes());
        at
    }

    /// Whether an access is one a function answers: 1, 2 or 4 bytes,
    /// naturally aligned, inside the space.
    pub fn valid_access(offset: u64, size: u8) -> bool {
        matches!(size, 1 | 2 | 4) && offset.is_multiple_of(size as u64) && offset + size as u64 <= CONFIG_SIZE as u64
    }

    /// A guest read: all-ones for an access no function answers.
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if !Self::valid_access(offset, size) {
            return u64::MAX;
        }
        let o = offset as usize;
        let mut v = [0u8; 8];
        v[..size as usize].copy_from_slice(&self.regs[o..o + size as usize]);
        u64::from_le_bytes(v)
    }

    /// A guest write: only writable bits change.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) {
        if !Self::valid_access(offset, size) {
            return;
        }
        let o = offset as usize;
        for (i, b) in value.to_le_bytes()[..size as usize].iter().enumerate() {
            let m = self.writable[o + i];
            self.regs[o + i] = (self.regs[o + i] & !m) | (b & m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::new(&Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: [0x01, 0x80, 0x00],
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        c.add_bar(&BarSpec { index: 0, kind: BarKind::Mem64, size: 0x4000, addr: 0xc000_0000 });
        c
    }

    #[test]
    fn header_reads_identity_and_ignores_read_only_writes() {
        let mut c = space();
        assert_eq!(c.read(0, 4), 0x1042_1af4);
        c.write(0, 4, 0);
        assert_eq!(c.read(0, 2), 0x1af4);
        assert_eq!(c.read(0x0b, 1), 0x01);
        c.write(COMMAND as u64, 2, 0xffff);
        assert_eq!(c.command(), 0x0406);
    }

    #[test]
    fn the_expansion_rom_sizes_in_2k_granules_and_enables_on_its_own() {
        let mut c = space();
        c.add_bar(&BarSpec { index: ROM_BAR, kind: BarKind::Mem32, size: 0x8000, addr: 0xc001_0000 });
        assert_eq!(c.read(0x30, 4), 0xc001_0000, "placed, not enabled");
        c.write(0x30, 4, 0xffff_fffe);
        assert_eq!(c.read(0x30, 4), 0xffff_8000, "32 KiB, enable still clear");
        c.write(0x30, 4, 0xc002_0001);
        assert_eq!(c.read(0x30, 4), 0xc002_0001);
        assert_eq!(c.read(0x10, 4), 0xc000_0004, "BAR 0 untouched");
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask_and_keeps_the_type() {
        let mut c = space();
        assert_eq!(c.read(0x10, 4), 0xc000_0004);
        c.write(0x10, 4, 0xffff_ffff);
        c.write(0x14, 4, 0xffff_ffff);
        assert_eq!(c.read(0x10, 4), 0xffff_c004);
        assert_eq!(c.read(0x14, 4), 0xffff_ffff);
        c.write(0x10, 4, 0xd000_0000);
        c.write(0x14, 4, 0x1);
        assert_eq!(c.read(0x10, 4), 0xd000_0004);
        assert_eq!(c.read(0x14, 4), 1);
    }

    #[test]
    fn capabilities_form_a_list_from_0x34() {
        let mut c = space();
        let a = c.add_capability(&[0x11, 0xaa, 0, 0], &[0, 0, 0, 0xc0]);
        let b = c.add_capability(&[0x09, 0xbb, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(c.read(0x34, 1), a as u64);
        assert_eq!(c.read(a as u64 + 1, 1), b as u64);
        assert_eq!(c.read(b as u64 + 1, 1), 0);
        assert_ne!(c.read(STATUS as u64, 2) & 0x10, 0);
        c.write(a as u64 + 2, 2, 0xffff);
        assert_eq!(c.read(a as u64 + 2, 2), 0xc000);
    }

    #[test]
    fn bad_accesses_float_high_and_change_nothing() {
        let mut c = space();
        for (off, size) in [(1, 2), (2, 4), (4095, 2), (4096, 1), (u64::MAX, 4), (0, 8), (0, 3)] {
            assert_eq!(c.read(off, size), u64::MAX, "{off} {size}");
            c.write(off, size, 0);
        }
        assert_eq!(c.read(0, 4), 0x1042_1af4);
    }
}
