//! A small virtio 1.x PCI driver of our own: find a function on bus 0
//! through 0xcf8/0xcfc, walk its capabilities (each names its own BAR, so
//! QEMU's layout works as well as capvm's), bring it up with up to two
//! split virtqueues and MSI-X, and submit descriptor chains.
//!
//! Guest CPL0 code is emulated on some hosts and the emulator cannot run
//! SSE, so every memory access that could become a vector store is
//! volatile.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use crate::io::{inl, outl};

/// Room for 32 requests of two descriptors in flight (the benchmarks).
pub const QSIZE: u16 = 64;
/// Queues a device can have here (virtio-net: RX and TX).
pub const MAX_QUEUES: usize = 2;
pub const VECTOR_CONFIG: u8 = 0x41;
pub const VECTOR_QUEUE: u8 = 0x40;

const STATUS_ACK: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;

/// Scratch RAM the fuzzers let a device scribble on (32-48 MiB).
const SCRATCH: u64 = 0x200_0000;
/// An address no guest RAM has (1 TiB).
pub const OUTSIDE_RAM: u64 = 1 << 40;

/// xorshift64: the fuzzers' randomness, the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn config_address(slot: u8, offset: u8) -> u32 {
    0x8000_0000 | (slot as u32) << 11 | (offset as u32 & 0xfc)
}

pub fn cfg_read32(slot: u8, offset: u8) -> u32 {
    outl(0xcf8, config_address(slot, offset));
    inl(0xcfc)
}

pub fn cfg_write32(slot: u8, offset: u8, v: u32) {
    outl(0xcf8, config_address(slot, offset));
    outl(0xcfc, v);
}

fn cfg_read8(slot: u8, offset: u8) -> u8 {
    (cfg_read32(slot, offset) >> (8 * (offset & 3))) as u8
}

pub unsafe fn mmio_w<T>(addr: u64, v: T) {
    write_volatile(addr as *mut T, v)
}

pub unsafe fn mmio_r<T: Copy>(addr: u64) -> T {
    read_volatile(addr as *const T)
}

/// Function 0 of the first slot with this vendor:device, if any.
pub fn find(vendor: u16, device: u16) -> Option<u8> {
    (0..32u8).find(|&s| cfg_read32(s, 0) == (device as u32) << 16 | vendor as u32)
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[repr(C, align(4096))]
struct Ring {
    desc: [Desc; QSIZE as usize],
    /// flags, idx, ring[QSIZE], used_event
    avail: [u16; 2 + QSIZE as usize + 1],
    _pad: [u8; 4096 - 16 * QSIZE as usize - 2 * (3 + QSIZE as usize)],
    /// flags:idx, then (id, len) pairs, then avail_event
    used: [u32; 1 + 2 * QSIZE as usize + 1],
}

const EMPTY_RING: Ring = Ring {
    desc: [Desc { addr: 0, len: 0, flags: 0, next: 0 }; QSIZE as usize],
    avail: [0; 2 + QSIZE as usize + 1],
    _pad: [0; 4096 - 16 * QSIZE as usize - 2 * (3 + QSIZE as usize)],
    used: [0; 1 + 2 * QSIZE as usize + 1],
};
static mut RINGS: [Ring; MAX_QUEUES] = [EMPTY_RING; MAX_QUEUES];

/// Memory BAR `idx` of a function: its address, with the next BAR's
/// high half if it is a 64-bit BAR.
fn bar_address(slot: u8, idx: u8) -> u64 {
    let low = cfg_read32(slot, 0x10 + 4 * idx);
    let high = if low & 0b110 == 0b100 { cfg_read32(slot, 0x14 + 4 * idx) } else { 0 };
    (low & !0xf) as u64 | (high as u64) << 32
}

/// A virtio-pci function brought up with its queues. The structures'
/// addresses are absolute (BAR address + offset).
pub struct Device {
    pub slot: u8,
    /// BAR 0's address (the one the fuzzer moves).
    pub bar: u64,
    common: u64,
    notify: u64,
    notify_multiplier: u64,
    device_cfg: u64,
    /// The ISR byte (reading it clears it and ends INTx#).
    pub isr: u64,
    msix_table: u64,
    pub features: u64,
    /// Each queue's notify register in the BAR, from its queue_notify_off.
    notify_at: [u64; MAX_QUEUES],
    avail_idx: [u16; MAX_QUEUES],
    /// Chains offered that the device cannot return.
    lost: [u16; MAX_QUEUES],
}

impl Device {
    /// Finds the BAR and the capabilities, enables memory decoding, bus
    /// mastering and, if `msix`, MSI-X (else the device interrupts
    /// through INTx#, see `route_intx`).
    pub fn probe(slot: u8, msix: bool) -> Device {
        let bar = bar_address(slot, 0);
        let (mut common, mut notify, mut notify_multiplier, mut device_cfg, mut isr, mut msix_table) =
            (0, 0, 0, 0, 0, 0);
        let mut ptr = cfg_read8(slot, 0x34);
        while ptr != 0 {
            match cfg_read8(slot, ptr) {
                0x09 => {
                    let at = bar_address(slot, cfg_read8(slot, ptr + 4)) + cfg_read32(slot, ptr + 8) as u64;
                    match cfg_read8(slot, ptr + 3) {
                        1 => common = at,
                        2 => {
                            notify = at;
                            notify_multiplier = cfg_read32(slot, ptr + 16) as u64;
                        }
                        3 => isr = at,
                        4 => device_cfg = at,
                        _ => {}
                    }
                }
                0x11 => {
                    let table = cfg_read32(slot, ptr + 4);
                    msix_table = bar_address(slot, (table & 7) as u8) + (table & !7) as u64;
                    if msix {
                        let ctrl = cfg_read32(slot, ptr);
                        cfg_write32(slot, ptr, ctrl | 1 << 31); // MSI-X enable
                    }
                }
                _ => {}
            }
            ptr = cfg_read8(slot, ptr + 1);
        }
        let cmd = cfg_read32(slot, 4);
        cfg_write32(slot, 4, (cmd & 0xffff) | 0x6); // memory + bus master
        Device {
            slot,
            bar,
            common,
            notify,
            notify_multiplier,
            device_cfg,
            isr,
            msix_table,
            features: 0,
            notify_at: [0; MAX_QUEUES],
            avail_idx: [0; MAX_QUEUES],
            lost: [0; MAX_QUEUES],
        }
    }

    /// Points BAR 0 at a new address (the runner checks it); the
    /// structures in it move along.
    pub fn move_bar(&mut self, addr: u64) {
        cfg_write32(self.slot, 0x10, addr as u32);
        cfg_write32(self.slot, 0x14, (addr >> 32) as u32);
        let [n0, n1] = &mut self.notify_at;
        for at in
            [&mut self.common, &mut self.notify, &mut self.device_cfg, &mut self.isr, &mut self.msix_table, n0, n1]
        {
            // Offsets within BAR 0 (of at most 64 KiB), kept modulo 2^64:
            // the fuzzer moves the BAR to all-ones and back.
            let offset = at.wrapping_sub(self.bar);
            if offset < 0x1_0000 {
                *at = addr.wrapping_add(offset);
            }
        }
        self.bar = addr;
    }

    fn reg(&self, off: u64) -> u64 {
        self.common + off
    }

    pub fn status(&self) -> u8 {
        // SAFETY: the common configuration structure in our BAR.
        unsafe { mmio_r::<u8>(self.reg(0x14)) }
    }

    /// Reads the device configuration at `offset`.
    pub fn config8(&self, offset: u64) -> u8 {
        // SAFETY: the device configuration structure in our BAR.
        unsafe { mmio_r::<u8>(self.device_cfg + offset) }
    }

    /// The virtio initialisation sequence (3.1.1) with `wanted` features
    /// and `queues` queues. Returns false if the device refused them.
    pub fn init(&mut self, wanted: u64, queues: usize) -> bool {
        // SAFETY: registers of our own device, and our static ring.
        unsafe {
            mmio_w::<u8>(self.reg(0x14), 0);
            mmio_w::<u8>(self.reg(0x14), STATUS_ACK | STATUS_DRIVER);
            mmio_w::<u32>(self.reg(0x00), 0);
            let lo = mmio_r::<u32>(self.reg(0x04)) as u64;
            mmio_w::<u32>(self.reg(0x00), 1);
            let offered = lo | (mmio_r::<u32>(self.reg(0x04)) as u64) << 32;
            self.features = offered & (wanted | VIRTIO_F_VERSION_1);
            mmio_w::<u32>(self.reg(0x08), 0);
            mmio_w::<u32>(self.reg(0x0c), self.features as u32);
            mmio_w::<u32>(self.reg(0x08), 1);
            mmio_w::<u32>(self.reg(0x0c), (self.features >> 32) as u32);
            mmio_w::<u8>(self.reg(0x14), STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
            if self.status() & STATUS_FEATURES_OK == 0 {
                return false;
            }
            // MSI-X: entry 0 for configuration, entry 1 + q for queue q, all
            // to the BSP's LAPIC, fixed delivery.
            for entry in 0..=queues as u64 {
                let vector = if entry == 0 { VECTOR_CONFIG } else { VECTOR_QUEUE };
                let e = self.msix_table + 16 * entry;
                mmio_w::<u32>(e, 0xfee0_0000);
                mmio_w::<u32>(e + 4, 0);
                mmio_w::<u32>(e + 8, vector as u32);
                mmio_w::<u32>(e + 12, 0);
            }
            mmio_w::<u16>(self.reg(0x10), 0);
            let common = self.common;
            let set64 = |off: u64, v: u64| {
                mmio_w::<u32>(common + off, v as u32);
                mmio_w::<u32>(common + off + 4, (v >> 32) as u32);
            };
            // An index, not an iterator: RINGS is a static mut reached only
            // through raw pointers.
            #[allow(clippy::needless_range_loop)]
            for q in 0..queues.min(MAX_QUEUES) {
                mmio_w::<u16>(self.reg(0x16), q as u16);
                let max = mmio_r::<u16>(self.reg(0x18));
                mmio_w::<u16>(self.reg(0x18), QSIZE.min(max));
                let ring = addr_of_mut!(RINGS[q]);
                set64(0x20, addr_of_mut!((*ring).desc) as u64);
                set64(0x28, addr_of_mut!((*ring).avail) as u64);
                set64(0x30, addr_of_mut!((*ring).used) as u64);
                mmio_w::<u16>(self.reg(0x1a), q as u16 + 1);
                let off = mmio_r::<u16>(self.reg(0x1e)) as u64;
                self.notify_at[q] = self.notify + off * self.notify_multiplier;
                mmio_w::<u16>(self.reg(0x1c), 1);
            }
            mmio_w::<u8>(self.reg(0x14), STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        }
        true
    }

    /// Writes descriptor `i` of queue `q`.
    pub fn set_desc(&mut self, q: usize, i: u16, d: Desc) {
        // SAFETY: our static rings; i is masked into the table.
        unsafe { write_volatile(addr_of_mut!(RINGS[q % MAX_QUEUES].desc[(i % QSIZE) as usize]), d) }
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        // SAFETY: the device writes the used ring; we only read it.
        (unsafe { read_volatile(addr_of_mut!(RINGS[q % MAX_QUEUES].used[0])) } >> 16) as u16
    }

    /// The (head, len) the device returned at used ring position `pos`.
    pub fn used_at(&self, q: usize, pos: u16) -> (u32, u32) {
        let i = 1 + 2 * (pos % QSIZE) as usize;
        // SAFETY: as used_idx.
        let ring = unsafe { addr_of_mut!(RINGS[q % MAX_QUEUES]) };
        unsafe { (read_volatile(addr_of_mut!((*ring).used[i])), read_volatile(addr_of_mut!((*ring).used[i + 1]))) }
    }

    /// Offers the chain starting at `head` on queue `q` without notifying.
    pub fn offer(&mut self, q: usize, head: u16) {
        let q = q % MAX_QUEUES;
        let pos = self.avail_idx[q];
        // SAFETY: our static ring.
        let ring = unsafe { addr_of_mut!(RINGS[q]) };
        unsafe {
            write_volatile(addr_of_mut!((*ring).avail[2 + (pos % QSIZE) as usize]), head);
            self.avail_idx[q] = pos.wrapping_add(1);
            write_volatile(addr_of_mut!((*ring).avail[1]), self.avail_idx[q]);
        }
    }

    /// Tells the device queue `q` has new chains.
    pub fn kick(&self, q: usize) {
        // SAFETY: the queue's notify register in our BAR.
        unsafe { mmio_w::<u16>(self.notify_at[q % MAX_QUEUES], q as u16) }
    }

    /// Sleeps until queue `q`'s used index reaches (or passes) `idx`.
    pub fn wait_used(&self, q: usize, idx: u16) {
        // Interrupts off while checking, then sti;hlt as one step: the
        // MSI cannot slip in between the check and the sleep.
        while (self.used_idx(q).wrapping_sub(idx) as i16) < 0 {
            // SAFETY: waits for the queue interrupt.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) }
        }
    }

    /// Offers the chain starting at `head` on queue `q`, notifies, and, if
    /// `wait`, sleeps until the device returns it. Returns the used length.
    pub fn submit(&mut self, q: usize, head: u16, wait: bool) -> u32 {
        let q = q % MAX_QUEUES;
        let used_pos = self.avail_idx[q].wrapping_sub(self.lost[q]);
        self.offer(q, head);
        self.kick(q);
        if !wait {
            return 0;
        }
        self.wait_used(q, used_pos.wrapping_add(1));
        self.used_at(q, used_pos).1
    }

    /// Offers `rounds` random chains of 1-4 descriptors on queue `q`, one
    /// at a time, each waited for: addresses in SCRATCH or outside RAM,
    /// random lengths, flags and nexts. The fuzzers' shared part. Returns
    /// how far the used ring moved: the chains the device returned.
    pub fn submit_random_chains(&mut self, q: usize, seed: u64, rounds: u64) -> u64 {
        let before = self.used_idx(q);
        let mut rng = Rng(seed);
        for _ in 0..rounds {
            for i in 0..1 + rng.next() % 4 {
                let r = rng.next();
                let addr = if r & 1 == 0 { SCRATCH + (r >> 8) % 0x100_0000 } else { OUTSIDE_RAM | r >> 24 };
                let flags = (rng.next() % 8) as u16;
                let len = (rng.next() % 8192) as u32;
                self.set_desc(q, i as u16, Desc { addr, len, flags, next: (rng.next() % 20) as u16 });
            }
            self.submit(q, 0, true);
        }
        self.used_idx(q).wrapping_sub(before) as u64
    }

    /// Counts an offered chain the device will never return (its head
    /// is outside the table): later waits must not expect it.
    pub fn forget_one(&mut self, q: usize) {
        self.lost[q % MAX_QUEUES] = self.lost[q % MAX_QUEUES].wrapping_add(1);
    }
}

/// The IDT: only the two device vectors have gates.
static mut IDT: [[u64; 2]; 256] = [[0; 2]; 256];
#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}
static mut IDT_POINTER: IdtPointer = IdtPointer { limit: 0, base: 0 };

/// Counted by irq_entry and intx_entry (for a non-zero ISR).
#[no_mangle]
static mut irq_count: u64 = 0;
/// INTx# interrupts whose ISR read 0: nobody's.
#[no_mangle]
static mut spurious_count: u64 = 0;
/// The ISR intx_entry reads.
#[no_mangle]
static mut intx_isr: u64 = 0;

pub fn irqs() -> u64 {
    // SAFETY: a u64 the interrupt handler increments.
    unsafe { read_volatile(addr_of_mut!(irq_count)) }
}

pub fn spurious_irqs() -> u64 {
    // SAFETY: as irqs.
    unsafe { read_volatile(addr_of_mut!(spurious_count)) }
}

core::arch::global_asm!(
    r#"
    .section .text
    .global irq_entry
irq_entry:
    push %rax
    incq irq_count(%rip)
    mov $0xfee000b0, %eax       /* LAPIC EOI */
    movl $0, (%rax)
    pop %rax
    iretq

    /* INTx#: level-triggered, so the handler reads the device's ISR
       (which clears it) before the EOI; otherwise the line would be
       raised again at once. */
    .global intx_entry
intx_entry:
    push %rax
    mov intx_isr(%rip), %rax
    movzbl (%rax), %eax
    test %eax, %eax
    jz 1f
    incq irq_count(%rip)
    jmp 2f
1:  incq spurious_count(%rip)
2:  mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rax
    iretq
"#,
    options(att_syntax)
);

const IOAPIC: u64 = 0xfec0_0000;
/// Redirection entry: level-triggered (bit 15), active high, fixed
/// delivery to APIC ID 0, unmasked.
const IOAPIC_LEVEL: u32 = 1 << 15;

/// Routes `dev`'s INTx# to the queue vector: reads the pin and line
/// registers (the line is the IOAPIC pin capvm wired it to), programs
/// that IOAPIC pin, and points the vector at the ISR-reading handler.
/// Returns (pin, line).
pub fn route_intx(dev: &Device) -> (u8, u8) {
    extern "C" {
        fn intx_entry();
    }
    let (line, pin) = (cfg_read8(dev.slot, 0x3c), cfg_read8(dev.slot, 0x3d));
    set_gate(VECTOR_QUEUE, intx_entry as *const () as u64);
    // SAFETY: our own statics, the IOAPIC's registers, interrupts off.
    unsafe {
        write_volatile(addr_of_mut!(intx_isr), dev.isr);
        let reg = 0x10 + 2 * line as u32;
        mmio_w::<u32>(IOAPIC, reg + 1);
        mmio_w::<u32>(IOAPIC + 0x10, 0);
        mmio_w::<u32>(IOAPIC, reg);
        mmio_w::<u32>(IOAPIC + 0x10, IOAPIC_LEVEL | VECTOR_QUEUE as u32);
    }
    (pin, line)
}

/// Points vector `v` at `handler`: a 64-bit interrupt gate, present,
/// DPL 0, code selector 0x08.
pub fn set_gate(v: u8, handler: u64) {
    let low = (handler & 0xffff) | 0x08 << 16 | 0x8e00u64 << 32 | (handler >> 16 & 0xffff) << 48;
    // SAFETY: our own IDT; interrupts are off while it changes.
    unsafe { write_volatile(addr_of_mut!(IDT[v as usize]), [low, handler >> 32]) }
}

/// Software-enables the LAPIC and installs the handler for both vectors.
pub fn enable_interrupts() {
    extern "C" {
        fn irq_entry();
    }
    for v in [VECTOR_QUEUE, VECTOR_CONFIG] {
        set_gate(v, irq_entry as *const () as u64);
    }
    load_idt();
    // SAFETY: the LAPIC's spurious-vector register; interrupts are off.
    unsafe { mmio_w::<u32>(0xfee0_00f0, 0x1ff) }
}

/// Loads the IDT (the gates `set_gate` wrote).
pub fn load_idt() {
    // SAFETY: our own IDT, set up with interrupts off.
    unsafe {
        write_volatile(
            addr_of_mut!(IDT_POINTER),
            IdtPointer { limit: (core::mem::size_of::<[[u64; 2]; 256]>() - 1) as u16, base: addr_of_mut!(IDT) as u64 },
        );
        core::arch::asm!("lidt [{}]", in(reg) addr_of_mut!(IDT_POINTER), options(nostack));
    }
}
