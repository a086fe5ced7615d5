//! PCI bus 0 as the vCPU runner sees it: it routes, it does not emulate.
//!
//! Config space reaches the server that owns the function, through
//! configuration mechanism #1 (0xcf8/0xcfc) or ECAM. Only the host bridge
//! and the LPC bridge, which are platform and have no server, answer here
//! from a fixed header.
//!
//! The runner also keeps KVM's view of each function consistent with its
//! config space, without trusting the server: after a guest write to the
//! command register or a BAR it reads the registers back, and maps a BAR
//! (MMIO routing and its queue-notify ioeventfds) only where it fits the
//! memory map and overlaps nothing else. After a write to an MSI-X table
//! entry it reads the entry back and turns it into a GSI route, checked to
//! be an MSI address.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use capvm_ipc::ring::{ExitRing, Op, Request};
use capvm_ipc::stats::Counter;
use capvm_ipc::{memmap, BarKind, MsiSpec, PciFunction, ROM_BAR};
use capvm_kernel::vm::{EventFd, IoEventAddress};
use capvm_kernel::Vm;

use crate::router::Device;

pub use memmap::{PCI_CONFIG_ADDRESS as CONFIG_ADDRESS, PCI_CONFIG_DATA as CONFIG_DATA};
const ENABLE: u32 = 1 << 31;
const COMMAND_MEMORY: u64 = 1 << 1;
const ROM_ADDRESS: u64 = 0x30;
const ROM_ENABLE: u64 = 1;

/// A platform function answered here: vendor, device, class (base, sub).
#[derive(Clone, Copy)]
pub struct Bridge {
    pub vendor: u16,
    pub device: u16,
    pub class: [u8; 2],
}

pub const HOSTBRIDGE: Bridge = Bridge { vendor: 0x1275, device: 0x1275, class: [0x06, 0x00] };
pub const AMD_HOSTBRIDGE: Bridge = Bridge { vendor: 0x1022, device: 0x7432, class: [0x06, 0x00] };
pub const LPC: Bridge = Bridge { vendor: 0x8086, device: 0x7000, class: [0x06, 0x01] };

impl Bridge {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let mut header = [0u8; 64];
        header[0..2].copy_from_slice(&self.vendor.to_le_bytes());
        header[2..4].copy_from_slice(&self.device.to_le_bytes());
        header[0x0a] = self.class[1];
        header[0x0b] = self.class[0];
        // Multi-function bit clear, type 0 header.
        let o = offset as usize;
        let mut v = [0u8; 8];
        if let Some(bytes) = header.get(o..o + size as usize) {
            v[..size as usize].copy_from_slice(bytes);
        }
        u64::from_le_bytes(v)
    }
}

/// A function whose config space a device server owns.
pub struct ServedFunction {
    pub layout: PciFunction,
    /// Index of the device (its exit ring) in the router.
    pub device: usize,
    /// One per `layout.notify`; KVM signals them while the BAR is mapped.
    pub notify: Vec<EventFd>,
    /// The memory behind `layout.memory_bar` (host address, mapped for the
    /// runner's life) and the KVM slot it takes while the BAR decodes.
    pub memory: Option<BarMemory>,
}

#[derive(Debug, Clone, Copy)]
pub struct BarMemory {
    pub host_addr: u64,
    pub slot: u32,
}

enum Owner {
    Bridge(Bridge),
    Served(usize),
}

/// Where each served function's BARs are, as last checked.
#[derive(Default)]
struct Decoding {
    /// (function, BAR index) → (address, size), for BARs that are mapped.
    bars: BTreeMap<(usize, u8), (u64, u64)>,
    /// GSI → (MSI address, data) of every valid MSI-X entry.
    routes: BTreeMap<u32, (u64, u32)>,
}

pub struct PciBus {
    address: AtomicU32,
    slots: Vec<(u8, u8, Owner)>,
    served: Vec<ServedFunction>,
    ram: Vec<(u64, u64)>,
    decoding: Mutex<Decoding>,
    counters: PciCounters,
}

/// What the runner counts of its PCI routing (the runner's stats page).
pub struct PciCounters {
    /// Guest BAR placements refused (misaligned, outside the windows, over RAM or another BAR).
    pub rejected_bars: Counter,
    /// KVM refused an ioeventfd move or an MSI route table: the device
    /// then sees notifies as exits, or its interrupts go nowhere.
    pub routing_errors: Counter,
}

/// A config or BAR access, decoded.
pub enum Target<'a> {
    /// Config space of function (slot, func) at `offset`.
    Config { slot: u8, func: u8, offset: u64 },
    /// A BAR of a served function at `offset`.
    Bar { function: &'a ServedFunction, bar: u8, offset: u64 },
}

impl PciBus {
    pub fn new(
        bridges: Vec<(u8, u8, Bridge)>,
        served: Vec<ServedFunction>,
        ram: Vec<(u64, u64)>,
        counters: PciCounters,
    ) -> PciBus {
        let mut slots: Vec<(u8, u8, Owner)> = bridges.into_iter().map(|(s, f, b)| (s, f, Owner::Bridge(b))).collect();
        slots.extend(served.iter().enumerate().map(|(i, f)| (f.layout.slot, f.layout.func, Owner::Served(i))));
        PciBus { address: AtomicU32::new(0), slots, served, ram, decoding: Mutex::new(Decoding::default()), counters }
    }

    /// Decodes a port access at 0xcf8-0xcff. None: not a PCI port.
    pub fn pio(&self, port: u16, size: u8, write: Option<u64>) -> Option<PioResult> {
        if port == CONFIG_ADDRESS && size == 4 {
            return Some(match write {
                Some(v) => {
                    self.address.store(v as u32 & 0x80ff_fffc, Ordering::Relaxed);
                    PioResult::Done(0)
                }
                None => PioResult::Done(self.address.load(Ordering::Relaxed) as u64),
            });
        }
        if !(CONFIG_DATA..CONFIG_DATA + 4).contains(&port) {
            return None;
        }
        let a = self.address.load(Ordering::Relaxed);
        let (bus, slot, func) = ((a >> 16) & 0xff, ((a >> 11) & 0x1f) as u8, ((a >> 8) & 7) as u8);
        let offset = (a & 0xfc) as u64 + (port - CONFIG_DATA) as u64;
        if a & ENABLE == 0 || bus != 0 {
            return Some(PioResult::Done(u64::MAX));
        }
        Some(PioResult::Config { slot, func, offset })
    }

    /// Decodes an MMIO address: ECAM, or a mapped BAR.
    pub fn mmio(&self, addr: u64) -> Option<Target<'_>> {
        if (memmap::ECAM_BASE..memmap::ECAM_BASE + memmap::ECAM_SIZE).contains(&addr) {
            let off = addr - memmap::ECAM_BASE;
            return Some(Target::Config {
                slot: (off >> 15) as u8 & 0x1f,
                func: (off >> 12) as u8 & 7,
                offset: off & 0xfff,
            });
        }
        let decoding = self.decoding();
        for (&(i, bar), &(base, size)) in &decoding.bars {
            if addr >= base && addr - base < size {
                return Some(Target::Bar { function: &self.served[i], bar, offset: addr - base });
            }
        }
        None
    }

    /// A config read of (slot, func), through the owner.
    pub fn config_read(&self, devices: &[Device], vcpu: u32, slot: u8, func: u8, offset: u64, size: u8) -> u64 {
        match self.owner(slot, func) {
            None => u64::MAX,
            Some(Owner::Bridge(b)) => b.read(offset, size),
            Some(Owner::Served(i)) => {
                let ring = &devices[self.served[*i].device].ring;
                ring.call(vcpu, Request { op: Op::ConfigRead, region: 0, addr: offset, size, data: 0 })
            }
        }
    }

    /// A config write to (slot, func): forwarded, then the decoding is
    /// checked again if it touched the command register or a BAR.
    #[allow(clippy::too_many_arguments)]
    pub fn config_write(
        &self,
        vm: &Vm,
        devices: &[Device],
        vcpu: u32,
        slot: u8,
        func: u8,
        offset: u64,
        size: u8,
        value: u64,
    ) {
        let Some(Owner::Served(i)) = self.owner(slot, func) else { return };
        let i = *i;
        let ring = &devices[self.served[i].device].ring;
        ring.call(vcpu, Request { op: Op::ConfigWrite, region: 0, addr: offset, size, data: value });
        let end = offset + size as u64;
        let touches = |reg: u64, len: u64| offset < reg + len && end > reg;
        if touches(0x04, 2) || touches(0x10, 0x18) || touches(ROM_ADDRESS, 4) {
            self.remap(vm, ring, vcpu, i);
        }
        if let Some(msi) = self.served[i].layout.msi {
            let cap = msi.cap_offset as u64;
            if offset < cap + MSI_CAP_LEN && end > cap {
                self.msi_written(vm, ring, vcpu, msi);
            }
        }
    }

    /// After a guest write into a function's MSI capability: read it back
    /// and route its GSI to the message it holds, if MSI is on.
    fn msi_written(&self, vm: &Vm, ring: &ExitRing, vcpu: u32, msi: MsiSpec) {
        let read = |o: u64| {
            ring.call(
                vcpu,
                Request { op: Op::ConfigRead, region: 0, addr: msi.cap_offset as u64 + o, size: 4, data: 0 },
            ) as u32
        };
        let enabled = read(0) >> 16 & MSI_ENABLE != 0;
        let address = read(4) as u64 | (read(8) as u64) << 32;
        let data = read(12) & 0xffff;
        self.update_route(vm, msi.gsi, enabled.then_some((address, data)));
    }

    /// After a guest write into a BAR: if it hit the MSI-X table, read the
    /// entry back and update its route.
    #[allow(clippy::too_many_arguments)]
    pub fn bar_written(
        &self,
        vm: &Vm,
        ring: &ExitRing,
        vcpu: u32,
        function: &ServedFunction,
        bar: u8,
        offset: u64,
        size: u8,
    ) {
        let Some(m) = function.layout.msix.filter(|m| m.bar == bar) else { return };
        let table_end = m.table_offset + 16 * m.vectors as u64;
        if offset + size as u64 <= m.table_offset || offset >= table_end {
            return;
        }
        let entry = (offset.max(m.table_offset) - m.table_offset) / 16;
        let at = m.table_offset + 16 * entry;
        let read =
            |o: u64| ring.call(vcpu, Request { op: Op::MmioRead, region: bar, addr: at + o, size: 4, data: 0 }) as u32;
        let address = read(0) as u64 | (read(4) as u64) << 32;
        let data = read(8);
        self.update_route(vm, m.first_gsi + entry as u32, Some((address, data)));
    }

    /// Routes `gsi` to an MSI (address, data), or nowhere: KVM's routing
    /// table is replaced only when it changes.
    fn update_route(&self, vm: &Vm, gsi: u32, message: Option<(u64, u32)>) {
        let mut decoding = self.decoding();
        let changed = match message {
            Some((address, data)) if is_msi_address(address) => {
                decoding.routes.insert(gsi, (address, data)) != Some((address, data))
            }
            _ => decoding.routes.remove(&gsi).is_some(),
        };
        if changed {
            let routes: Vec<(u32, u64, u32)> = decoding.routes.iter().map(|(&g, &(a, d))| (g, a, d)).collect();
            if vm.set_msi_routes(&routes).is_err() {
                self.counters.routing_errors.inc();
            }
        }
    }

    /// The decoding map. A vCPU thread that panicked holding it has taken
    /// the process down (panic = abort), so poisoning cannot be seen.
    fn decoding(&self) -> std::sync::MutexGuard<'_, Decoding> {
        self.decoding.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn owner(&self, slot: u8, func: u8) -> Option<&Owner> {
        self.slots.iter().find(|(s, f, _)| *s == slot && *f == func).map(|(_, _, o)| o)
    }

    /// Maps what decodes before the guest runs: nothing, but for a display
    /// a directly booted kernel was told of, which starts with memory
    /// decoding on, as a BIOS leaves the screen it drew on. Through vCPU
    /// 0's ring slot: no vCPU runs yet.
    pub fn map_as_found(&self, vm: &Vm, devices: &[Device]) {
        for (i, f) in self.served.iter().enumerate() {
            self.remap(vm, &devices[f.device].ring, 0, i);
        }
    }

    /// Reads function `i`'s command register and BARs back from its server
    /// and maps each BAR where it is, if it may be there.
    fn remap(&self, vm: &Vm, ring: &ExitRing, vcpu: u32, i: usize) {
        let f = &self.served[i];
        let read =
            |offset: u64| ring.call(vcpu, Request { op: Op::ConfigRead, region: 0, addr: offset, size: 4, data: 0 });
        let memory_on = read(0x04) & COMMAND_MEMORY != 0;
        let mut decoding = self.decoding();
        for bar in &f.layout.bars {
            // The expansion ROM decodes only while its own enable bit is set too.
            let (addr, on) = if bar.index == ROM_BAR {
                let v = read(ROM_ADDRESS);
                (v & 0xffff_f800, memory_on && v & ROM_ENABLE != 0)
            } else {
                let reg = 0x10 + 4 * bar.index as u64;
                let high = (bar.kind == BarKind::Mem64).then(|| read(reg + 4));
                (bar_address(read(reg), high), memory_on)
            };
            let others = decoding.bars.iter().filter(|(&k, _)| k != (i, bar.index)).map(|(_, &placed)| placed);
            let fits = bar_may_decode(addr, bar.size, &self.ram, others);
            let new = (on && fits).then_some(addr);
            if on && !fits {
                self.counters.rejected_bars.inc();
            }
            let old = decoding.bars.get(&(i, bar.index)).map(|&(a, _)| a);
            if old == new {
                continue;
            }
            for (n, fd) in f.layout.notify.iter().zip(&f.notify).filter(|(n, _)| n.bar == bar.index) {
                let detached = old.is_none_or(|o| vm.detach_ioeventfd(fd, IoEventAddress::Mmio(o + n.offset)).is_ok());
                let attached = new.is_none_or(|a| vm.attach_ioeventfd(fd, IoEventAddress::Mmio(a + n.offset)).is_ok());
                if !(detached && attached) {
                    self.counters.routing_errors.inc();
                }
            }
            if let (Some(m), true) = (f.memory, f.layout.memory_bar == Some(bar.index)) {
                // The BAR is memory: its slot follows the BAR, or goes.
                let unmapped = old.is_none() || vm.unmap_memory(m.slot).is_ok();
                // SAFETY: host_addr maps bar.size bytes for the runner's life.
                let mapped =
                    new.is_none_or(|a| unsafe { vm.map_memory(m.slot, a, bar.size, m.host_addr, false) }.is_ok());
                if !(unmapped && mapped) {
                    self.counters.routing_errors.inc();
                }
            }
            match new {
                Some(a) => decoding.bars.insert((i, bar.index), (a, bar.size)),
                None => decoding.bars.remove(&(i, bar.index)),
            };
        }
    }
}

/// A memory BAR's address from its register(s): the low dword without its
/// type bits, and the high dword of a 64-bit BAR.
fn bar_address(low: u64, high: Option<u64>) -> u64 {
    (low & 0xffff_fff0) | high.map_or(0, |h| (h & 0xffff_ffff) << 32)
}

/// Whether a BAR of `size` at the guest's `addr` may be decoded: aligned
/// to its size, inside a BAR window clear of RAM and the platform ranges
/// (memmap::bar_fits), and overlapping no other mapped BAR. The address is
/// the guest's (all-ones while it sizes the BAR): nothing here overflows.
fn bar_may_decode(addr: u64, size: u64, ram: &[(u64, u64)], mut others: impl Iterator<Item = (u64, u64)>) -> bool {
    size > 0
        && addr.is_multiple_of(size)
        && memmap::bar_fits(addr, size, ram)
        && !others.any(|(a, s)| addr < a.saturating_add(s) && a < addr.saturating_add(size))
}

/// Whether an MSI-X entry's address is an MSI write (the LAPIC window).
/// An MSI capability with 64-bit addresses: id, next, control; address
/// low and high; data.
const MSI_CAP_LEN: u64 = 14;
/// Message control bit 0.
const MSI_ENABLE: u32 = 1;

fn is_msi_address(address: u64) -> bool {
    let (base, len) = memmap::MSI_WINDOW;
    address >= base && address - base < len
}

pub enum PioResult {
    Done(u64),
    Config { slot: u8, func: u8, offset: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: [(u64, u64); 1] = [(0, 64 << 20)];

    fn bus() -> PciBus {
        let counters = PciCounters { rejected_bars: Counter::none(), routing_errors: Counter::none() };
        PciBus::new(vec![(0, 0, HOSTBRIDGE), (31, 0, LPC)], Vec::new(), RAM.to_vec(), counters)
    }

    #[test]
    fn bar_placement_needs_alignment_a_window_and_no_overlap() {
        let none = std::iter::empty;
        assert!(bar_may_decode(0xc000_4000, 0x4000, &RAM, none()));
        assert!(!bar_may_decode(0xc000_2000, 0x4000, &RAM, none()), "misaligned");
        assert!(!bar_may_decode(0x10_0000, 0x4000, &RAM, none()), "over RAM");
        assert!(!bar_may_decode(0xe000_0000, 0x4000, &RAM, none()), "over ECAM");
        assert!(!bar_may_decode(0xfee0_0000, 0x4000, &RAM, none()), "over the LAPIC");
        assert!(!bar_may_decode(0xffff_c000, 0x4000, &RAM, none()), "the sizing value, all-ones");
        assert!(!bar_may_decode(!0x3fff_u64, 0x4000, &RAM, none()), "64-bit all-ones");
        assert!(!bar_may_decode(0xc000_0000, 0, &RAM, none()), "a BAR of no size");
        let other = [(0xc000_4000, 0x4000)];
        assert!(!bar_may_decode(0xc000_4000, 0x4000, &RAM, other.into_iter()), "on another BAR");
        assert!(bar_may_decode(0xc000_8000, 0x4000, &RAM, other.into_iter()), "right after it");
        assert!(bar_may_decode(1 << 32, 0x4000, &RAM, none()), "the 64-bit window");
    }

    #[test]
    fn bar_registers_compose_without_type_bits() {
        assert_eq!(bar_address(0xc000_400c, Some(0)), 0xc000_4000);
        assert_eq!(bar_address(0x0000_000c, Some(1)), 1 << 32);
        assert_eq!(bar_address(0xffff_ffff, None), 0xffff_fff0);
        assert_eq!(bar_address(0xffff_ffff, Some(0xffff_ffff_ffff)), !0xf_u64, "high bits past 32 ignored");
    }

    #[test]
    fn msi_routes_only_for_the_lapic_window() {
        assert!(is_msi_address(0xfee0_0000));
        assert!(is_msi_address(0xfee0_f00c));
        assert!(!is_msi_address(0xfed0_0000));
        assert!(!is_msi_address(0xfef0_0000));
        assert!(!is_msi_address(0));
    }

    #[test]
    fn config_mechanism_one_decodes_enable_bus_slot_function_and_offset() {
        let b = bus();
        assert!(matches!(b.pio(CONFIG_ADDRESS, 4, Some(0x8000_f8a7)), Some(PioResult::Done(0))));
        assert!(matches!(b.pio(CONFIG_ADDRESS, 4, None), Some(PioResult::Done(0x8000_f8a4))), "low bits dropped");
        match b.pio(CONFIG_DATA + 2, 2, None) {
            Some(PioResult::Config { slot: 31, func: 0, offset: 0xa6 }) => {}
            _ => panic!("slot 31 function 0 at 0xa6"),
        }
        b.pio(CONFIG_ADDRESS, 4, Some(0x0000_f800));
        assert!(matches!(b.pio(CONFIG_DATA, 4, None), Some(PioResult::Done(u64::MAX))), "enable bit clear");
        b.pio(CONFIG_ADDRESS, 4, Some(0x8001_0000));
        assert!(matches!(b.pio(CONFIG_DATA, 4, None), Some(PioResult::Done(u64::MAX))), "bus 1 does not exist");
        assert!(b.pio(0x80, 1, None).is_none(), "not a PCI port");
    }

    #[test]
    fn bridges_answer_their_header_and_nothing_else_answers() {
        let b = bus();
        assert_eq!(b.config_read(&[], 0, 31, 0, 0, 4), 0x7000_8086);
        assert_eq!(b.config_read(&[], 0, 31, 0, 0x0a, 2), 0x0601, "ISA bridge class");
        assert_eq!(b.config_read(&[], 0, 0, 0, 0, 2), 0x1275);
        assert_eq!(b.config_read(&[], 0, 5, 0, 0, 4), u64::MAX, "an empty slot");
        assert_eq!(b.config_read(&[], 0, 31, 0, 0xffe, 4), 0, "past the header reads zero");
    }
}
