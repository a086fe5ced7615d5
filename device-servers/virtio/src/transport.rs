//! Modern virtio over PCI (virtio 1.x, section 4.1): the function's config
//! space with its capabilities, the registers in BAR 0 (common
//! configuration, ISR, device configuration, queue notify, MSI-X table and
//! PBA), and the split virtqueues behind them.
//!
//! Everything here runs on guest-controlled input: a bad offset or size
//! reads as all-ones and writes nothing; a queue the driver set up wrong
//! is never made ready.

use std::os::fd::OwnedFd;

use capvm_ipc::stats::Counter;
use capvm_ipc::PciFunction;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::layout::*;
use crate::pci::{ConfigSpace, Identity, COMMAND_INTX_DISABLE, INTERRUPT_LINE, STATUS, STATUS_INTERRUPT};

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Vector value meaning "no MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_FAILED: u8 = 0x80;

const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
const MSIX_ENTRY_MASKED: u32 = 1;
const ISR_QUEUE: u8 = 1;

/// What a virtio device adds to the transport.
pub trait Device {
    /// The virtio device id (1 net, 2 block); the PCI device id is 0x1040 + it.
    fn device_type(&self) -> u16;
    /// The PCI class code (base, sub, interface).
    fn class(&self) -> [u8; 3];
    /// Feature bits the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// The largest size of each queue; their number is the queue count.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The device configuration structure as the driver reads it (the
    /// transport cuts accesses out of it; bytes past its end read as 0).
    fn config(&self) -> Vec<u8>;
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these features.
    fn activate(&mut self, features: u64);
    /// The driver reset the device.
    fn reset(&mut self);
    /// Work on queue `index` after a notify. Returns whether any buffer
    /// was used (the driver is then interrupted).
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool;
}

/// Counters of what the guest made this function do.
#[derive(Clone)]
pub struct TransportStats {
    pub config_accesses: Counter,
    pub mmio_accesses: Counter,
    /// Notifies that arrived as register writes (an exit), not ioeventfds.
    pub notify_exits: Counter,
    /// MSI-X messages sent.
    pub interrupts: Counter,
    /// Times INTx# was raised.
    pub intx_interrupts: Counter,
}

pub struct Transport<D: Device> {
    config: ConfigSpace,
    pub device: D,
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    config_vector: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    isr: u8,
    msix_cap: usize,
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<bool>,
    pci_cfg_cap: usize,
    /// One eventfd per MSI-X vector, bound to its GSI by the runner.
    interrupts: Vec<OwnedFd>,
    /// INTx#'s trigger eventfd (a resample irqfd in the runner): writing it
    /// asserts the line until the guest's EOI.
    intx: Option<OwnedFd>,
    /// We raised INTx# and KVM has not lowered it yet (no resample since).
    intx_up: bool,
    mem: Option<GuestMemoryMmap>,
    stats: TransportStats,
}

impl<D: Device> Transport<D> {
    pub fn new(
        device: D,
        function: &PciFunction,
        interrupts: Vec<OwnedFd>,
        intx: Option<OwnedFd>,
        stats: TransportStats,
    ) -> Transport<D> {
        let max_sizes = device.queue_max_sizes();
        assert!(max_sizes.len() <= MAX_QUEUES);
        let vectors = vectors(max_sizes.len());
        let mut config = ConfigSpace::new(&Identity {
            vendor: 0x1af4,
            device: 0x1040 + device.device_type(),
            revision: 1,
            class: device.class(),
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        for bar in &function.bars {
            config.add_bar(bar);
        }
        if let (Some(gsi), Some(_)) = (function.intx_gsi, &intx) {
            // The line register says where the pin goes, as firmware would
            // have written it; ACPI guests learn it from _PRT instead.
            config.set_interrupt_pin(INTX_PIN);
            config.put(INTERRUPT_LINE, &[gsi as u8]);
        }
        let msix_cap = config
            .add_capability(&msix_capability(vectors), &[0, 0, 0, (MSIX_ENABLE | MSIX_FUNCTION_MASK).to_le_bytes()[1]]);
        config.add_capability(&virtio_cap(CFG_COMMON, COMMON, COMMON_LEN, None), &[]);
        config.add_capability(&virtio_cap(CFG_NOTIFY, NOTIFY, 0x1000, Some(NOTIFY_MULTIPLIER as u32)), &[]);
        config.add_capability(&virtio_cap(CFG_ISR, ISR, ISR_LEN, None), &[]);
        config.add_capability(&virtio_cap(CFG_DEVICE, DEVICE, DEVICE_LEN, None), &[]);
        // VIRTIO_PCI_CAP_PCI_CFG: a window onto the BARs through config
        // space; its bar, offset, length and data fields are the driver's.
        let mut cfg_cap = virtio_cap(CFG_PCI, 0, 0, None).to_vec();
        cfg_cap.extend([0u8; 4]);
        let mut w = vec![0u8; 20];
        w[4] = 0xff;
        w[8..20].fill(0xff);
        let pci_cfg_cap = config.add_capability(&cfg_cap, &w);
        let queues = max_sizes.iter().map(|&m| Queue::new(m).expect("queue max size is a power of two")).collect();
        Transport {
            config,
            device,
            queues,
            queue_vectors: vec![NO_VECTOR; max_sizes.len()],
            config_vector: NO_VECTOR,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            isr: 0,
            msix_cap,
            msix_table: vec![[0, 0, 0, MSIX_ENTRY_MASKED]; vectors as usize],
            msix_pending: vec![false; vectors as usize],
            pci_cfg_cap,
            interrupts,
            intx,
            intx_up: false,
            mem: None,
            stats,
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    pub fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_FAILED == 0
    }

    // ---- configuration space ----

    pub fn config_read(&mut self, offset: u64, size: u8) -> u64 {
        self.stats.config_accesses.inc();
        if let Some(v) = self.pci_cfg_window(offset, size, None) {
            return v;
        }
        let v = self.config.read(offset, size);
        // Status bit 3 mirrors INTx#.
        let status = STATUS as u64;
        if self.intx_pending()
            && ConfigSpace::valid_access(offset, size)
            && (offset..offset + size as u64).contains(&status)
        {
            return v | (STATUS_INTERRUPT as u64) << (8 * (status - offset));
        }
        v
    }

    pub fn config_write(&mut self, offset: u64, size: u8, value: u64) {
        self.stats.config_accesses.inc();
        if self.pci_cfg_window(offset, size, Some(value)).is_some() {
            return;
        }
        let (was, intx_was) = (self.msix_control(), self.intx_pending());
        self.config.write(offset, size, value);
        if was & MSIX_FUNCTION_MASK != 0 && self.msix_control() & MSIX_FUNCTION_MASK == 0 {
            self.fire_pending();
        }
        // The driver turned INTx# back on (command bit 10) or MSI-X off
        // with an interrupt pending: the line goes up now.
        if !intx_was {
            self.assert_intx();
        }
    }

    /// VIRTIO_PCI_CAP_PCI_CFG's pci_cfg_data: an access through it reaches
    /// the BAR at the cap's offset with the cap's length.
    fn pci_cfg_window(&mut self, offset: u64, size: u8, write: Option<u64>) -> Option<u64> {
        let data = self.pci_cfg_cap as u64 + 16;
        if offset != data || !ConfigSpace::valid_access(offset, size) {
            return None;
        }
        let c = self.pci_cfg_cap;
        let (bar, at, len) =
            (self.config.read(c as u64 + 4, 1) as u8, self.config.u32_at(c + 8), self.config.u32_at(c + 12));
        if bar != BAR || !matches!(len, 1 | 2 | 4) || len as u8 > size {
            return Some(u64::MAX);
        }
        match write {
            Some(v) => {
                self.bar_write(at as u64, len as u8, v);
                Some(0)
            }
            None => Some(self.bar_read(at as u64, len as u8)),
        }
    }

    fn msix_control(&self) -> u16 {
        self.config.u16_at(self.msix_cap + 2)
    }

    fn msix_enabled(&self) -> bool {
        self.msix_control() & MSIX_ENABLE != 0
    }

    // ---- BAR 0 ----

    pub fn bar_read(&mut self, offset: u64, size: u8) -> u64 {
        self.stats.mmio_accesses.inc();
        let n = size as usize;
        if !valid_bar_access(offset, size) {
            return u64::MAX;
        }
        let mut out = [0u8; 8];
        match offset {
            o if o < COMMON + COMMON_LEN => {
                let regs = self.common_registers();
                let o = o as usize;
                if o + n > regs.len() {
                    return u64::MAX;
                }
                out[..n].copy_from_slice(&regs[o..o + n]);
            }
            o if (ISR..ISR + ISR_LEN).contains(&o) => {
                // Reading the ISR clears it (and deasserts INTx).
                out[0] = std::mem::take(&mut self.isr);
            }
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) => {
                let config = self.device.config();
                let at = (o - DEVICE) as usize;
                for (i, b) in out[..n].iter_mut().enumerate() {
                    *b = config.get(at + i).copied().unwrap_or(0);
                }
            }
            o if self.in_msix_table(o) => {
                let (entry, word) = msix_word(o);
                let e = self.msix_table[entry];
                let v = if size == 8 && word % 2 == 0 {
                    e[word] as u64 | (e[word + 1] as u64) << 32
                } else {
                    e[word] as u64
                };
                out = v.to_le_bytes();
            }
            o if (MSIX_PBA..MSIX_PBA + 8).contains(&o) => {
                let bits = self.msix_pending.iter().enumerate().fold(0u64, |acc, (i, &p)| acc | (p as u64) << i);
                out = (bits >> (8 * (o - MSIX_PBA))).to_le_bytes();
            }
            // Notify registers read as 0; everything else floats high.
            o if (NOTIFY..NOTIFY + 0x1000).contains(&o) => {}
            _ => return u64::MAX,
        }
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&out[..n]);
        u64::from_le_bytes(v)
    }

    /// Returns the queue a notify register write named, if it was one.
    pub fn bar_write(&mut self, offset: u64, size: u8, value: u64) -> Option<usize> {
        self.stats.mmio_accesses.inc();
        if !valid_bar_access(offset, size) {
            return None;
        }
        match offset {
            o if o < COMMON + COMMON_LEN => self.common_write(o, size, value),
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE, &value.to_le_bytes()[..size as usize]);
            }
            o if (NOTIFY..NOTIFY + NOTIFY_MULTIPLIER * self.queues.len() as u64).contains(&o) => {
                self.stats.notify_exits.inc();
                return Some(((o - NOTIFY) / NOTIFY_MULTIPLIER) as usize);
            }
            o if self.in_msix_table(o) => {
                let (entry, word) = msix_word(o);
                let was_masked = self.entry_masked(entry);
                self.msix_table[entry][word] = value as u32;
                if size == 8 && word % 2 == 0 {
                    self.msix_table[entry][word + 1] = (value >> 32) as u32;
                }
                if was_masked && !self.entry_masked(entry) {
                    self.fire_pending();
                }
            }
            _ => {}
        }
        None
    }

    fn in_msix_table(&self, offset: u64) -> bool {
        (MSIX_TABLE..MSIX_TABLE + 16 * self.msix_table.len() as u64).contains(&offset)
    }

    /// The common configuration structure as the driver reads it.
    fn common_registers(&self) -> [u8; COMMON_LEN as usize] {
        let mut r = [0u8; COMMON_LEN as usize];
        let features = self.offered_features();
        let feature_word = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        r[0x00..0x04].copy_from_slice(&self.device_feature_select.to_le_bytes());
        r[0x04..0x08].copy_from_slice(&feature_word.to_le_bytes());
        r[0x08..0x0c].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        let driver_word = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        r[0x0c..0x10].copy_from_slice(&driver_word.to_le_bytes());
        r[0x10..0x12].copy_from_slice(&self.config_vector.to_le_bytes());
        r[0x12..0x14].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        r[0x14] = self.status;
        // config_generation stays 0: no device changes its configuration
        // while the driver runs (no config-change interrupt either).
        r[0x16..0x18].copy_from_slice(&self.queue_select.to_le_bytes());
        if let Some(q) = self.queues.get(self.queue_select as usize) {
            let qs = q.state();
            r[0x18..0x1a].copy_from_slice(&qs.size.to_le_bytes());
            r[0x1a..0x1c].copy_from_slice(&self.queue_vectors[self.queue_select as usize].to_le_bytes());
            r[0x1c..0x1e].copy_from_slice(&(qs.ready as u16).to_le_bytes());
            r[0x1e..0x20].copy_from_slice(&self.queue_select.to_le_bytes());
            r[0x20..0x28].copy_from_slice(&qs.desc_table.to_le_bytes());
            r[0x28..0x30].copy_from_slice(&qs.avail_ring.to_le_bytes());
            r[0x30..0x38].copy_from_slice(&qs.used_ring.to_le_bytes());
        }
        r
    }

    fn common_write(&mut self, offset: u64, size: u8, value: u64) {
        let v32 = value as u32;
        let sel = self.queue_select as usize;
        // Queue registers change only while the queue is not enabled.
        let queue = self.queues.get_mut(sel).filter(|q| !q.ready());
        match (offset, size) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                let (shift, mask) = match self.driver_feature_select {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff << 32),
                    _ => return,
                };
                self.driver_features = (self.driver_features & !mask) | ((v32 as u64) << shift);
            }
            (0x10, 2) => self.config_vector = self.checked_vector(value as u16),
            (0x14, 1) => self.set_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            (0x18, 2) => {
                if let Some(q) = queue {
                    q.set_size(value as u16);
                }
            }
            (0x1a, 2) => {
                let v = self.checked_vector(value as u16);
                if let Some(qv) = self.queue_vectors.get_mut(sel) {
                    *qv = v;
                }
            }
            (0x1c, 2) if value == 1 => self.enable_queue(sel),
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) => {
                if let Some(q) = queue {
                    let high = offset % 8 == 4;
                    let (lo, hi) = if high { (None, Some(v32)) } else { (Some(v32), None) };
                    match offset & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    /// A vector the table has, or NO_VECTOR (which the driver reads back to
    /// learn the assignment failed).
    fn checked_vector(&self, v: u16) -> u16 {
        if (v as usize) < self.msix_table.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// Makes queue `index` ready if the driver set it up within guest RAM.
    fn enable_queue(&mut self, index: usize) {
        let Some(mem) = self.mem.as_ref() else { return };
        if let Some(q) = self.queues.get_mut(index) {
            // virtio-queue's check counts a queue that is not ready as invalid.
            q.set_ready(self.status & STATUS_FEATURES_OK != 0);
            if !q.is_valid(mem) {
                q.set_ready(false);
            }
        }
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let new = value & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let ok =
                self.driver_features & !self.offered_features() == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // The driver reads FEATURES_OK back and sees it refused.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        if new & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK != 0 {
            let features = self.driver_features;
            for q in &mut self.queues {
                q.set_event_idx(false);
            }
            self.device.activate(features);
        }
        self.status = value;
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.config_vector = NO_VECTOR;
        self.isr = 0;
        self.queue_vectors.fill(NO_VECTOR);
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
    }

    // ---- queues and interrupts ----

    /// Guest memory, for checking queue addresses when the driver enables one.
    pub fn set_memory(&mut self, mem: GuestMemoryMmap) {
        self.mem = Some(mem);
    }

    /// A notify for queue `index` (from its ioeventfd or a register write).
    pub fn notify(&mut self, index: usize) {
        let Some(mem) = self.mem.as_ref() else { return };
        if !self.driver_ok() || !self.queues.get(index).is_some_and(|q| q.ready()) {
            return;
        }
        if self.device.process_queue(index, &mut self.queues, mem) {
            self.signal_queue(index);
        }
    }

    /// Interrupts the driver for queue `index`.
    pub fn signal_queue(&mut self, index: usize) {
        self.isr |= ISR_QUEUE;
        let v = self.queue_vectors.get(index).copied().unwrap_or(NO_VECTOR);
        self.signal_vector(v);
    }

    fn entry_masked(&self, v: usize) -> bool {
        self.msix_control() & MSIX_FUNCTION_MASK != 0 || self.msix_table[v][3] & MSIX_ENTRY_MASKED != 0
    }

    fn signal_vector(&mut self, v: u16) {
        if !self.msix_enabled() {
            self.assert_intx();
            return;
        }
        if v == NO_VECTOR || v as usize >= self.interrupts.len() {
            return;
        }
        if self.entry_masked(v as usize) {
            self.msix_pending[v as usize] = true;
            return;
        }
        self.stats.interrupts.inc();
        capvm_ipc::ring::ring_eventfd(std::os::fd::AsFd::as_fd(&self.interrupts[v as usize]));
    }

    /// Whether INTx# should be up: an ISR bit the driver has not read, MSI-X
    /// off, and the command register's interrupt disable clear.
    fn intx_pending(&self) -> bool {
        self.intx.is_some()
            && self.isr != 0
            && !self.msix_enabled()
            && self.config.command() & COMMAND_INTX_DISABLE == 0
    }

    /// Raises INTx# if it should be up and is not. The line is
    /// level-triggered: KVM holds it until the guest's EOI, then lowers it
    /// and signals the resample eventfd
    /// ([`intx_resample`](Self::intx_resample)). Not raising it again while
    /// it is up matters: KVM injects a trigger later, from a work queue,
    /// and a second one could land after the driver's ISR read took the
    /// bit it was for, a spurious interrupt.
    fn assert_intx(&mut self) {
        if let (true, false, Some(fd)) = (self.intx_pending(), self.intx_up, &self.intx) {
            self.intx_up = true;
            self.stats.intx_interrupts.inc();
            capvm_ipc::ring::ring_eventfd(std::os::fd::AsFd::as_fd(fd));
        }
    }

    /// The guest acknowledged INTx# and KVM lowered it: raise it again if
    /// the driver has not read the ISR since (an interrupt that came while
    /// the line was up).
    pub fn intx_resample(&mut self) {
        self.intx_up = false;
        self.assert_intx();
    }

    /// Sends what was held back while a vector was masked.
    fn fire_pending(&mut self) {
        for v in 0..self.msix_pending.len() {
            if self.msix_pending[v] && !self.entry_masked(v) {
                self.msix_pending[v] = false;
                self.signal_vector(v as u16);
            }
        }
    }

    pub fn queues_mut(&mut self) -> (&mut D, &mut [Queue], Option<&GuestMemoryMmap>) {
        (&mut self.device, &mut self.queues, self.mem.as_ref())
    }
}

/// Whether the BAR's registers answer an access: 1, 2, 4 or 8 bytes,
/// naturally aligned, inside the BAR.
fn valid_bar_access(offset: u64, size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(size as u64) && offset < BAR_SIZE
}

/// The MSI-X table entry and its 32-bit word at a BAR offset in the table.
fn msix_word(offset: u64) -> (usize, usize) {
    (((offset - MSIX_TABLE) / 16) as usize, ((offset - MSIX_TABLE) % 16 / 4) as usize)
}

fn msix_capability(vectors: u16) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = CAP_MSIX;
    c[2..4].copy_from_slice(&(vectors - 1).to_le_bytes());
    c[4..8].copy_from_slice(&((MSIX_TABLE as u32) | BAR as u32).to_le_bytes());
    c[8..12].copy_from_slice(&((MSIX_PBA as u32) | BAR as u32).to_le_bytes());
    c
}

/// struct virtio_pci_cap, plus notify_off_multiplier for the notify cap.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, multiplier: Option<u32>) -> Vec<u8> {
    let mut c = vec![CAP_VENDOR, 0, 16, cfg_type, BAR, 0, 0, 0];
    c.extend((offset as u32).to_le_bytes());
    c.extend((length as u32).to_le_bytes());
    if let Some(m) = multiplier {
        c[2] = 20;
        c.extend(m.to_le_bytes());
    }
    c
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use capvm_ipc::stats::Counter;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use vm_memory::GuestAddress;

    use super::*;

    /// A device with two queues that records what the transport tells it.
    #[derive(Default)]
    struct Probe {
        activated: Option<u64>,
        resets: u32,
        notified: Vec<usize>,
    }

    impl Device for Probe {
        fn device_type(&self) -> u16 {
            2
        }
        fn class(&self) -> [u8; 3] {
            [1, 0x80, 0]
        }
        fn features(&self) -> u64 {
            1 << 9
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16, 16]
        }
        fn config(&self) -> Vec<u8> {
            vec![0xaa, 0xbb]
        }
        fn activate(&mut self, features: u64) {
            self.activated = Some(features);
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn process_queue(&mut self, index: usize, _: &mut [Queue], _: &GuestMemoryMmap) -> bool {
            self.notified.push(index);
            true
        }
    }

    fn eventfd() -> OwnedFd {
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap().into()
    }

    /// How many times an eventfd was signalled since the last look.
    fn signals(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        nix::unistd::read(fd.as_fd(), &mut b).map_or(0, |_| u64::from_le_bytes(b))
    }

    struct Rig {
        t: Transport<Probe>,
        /// Duplicates of the MSI-X eventfds and the INTx trigger.
        msix: Vec<OwnedFd>,
        intx: OwnedFd,
    }

    fn rig() -> Rig {
        let function = function(3, 0, 2, 0xc000_0000, 24);
        let irqs: Vec<OwnedFd> = (0..3).map(|_| eventfd()).collect();
        let msix = irqs.iter().map(|f| f.try_clone().unwrap()).collect();
        let intx = eventfd();
        let stats = TransportStats {
            config_accesses: Counter::none(),
            mmio_accesses: Counter::none(),
            notify_exits: Counter::none(),
            interrupts: Counter::none(),
            intx_interrupts: Counter::none(),
        };
        let mut t = Transport::new(Probe::default(), &function, irqs, Some(intx.try_clone().unwrap()), stats);
        t.set_memory(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        Rig { t, msix, intx }
    }

    impl Rig {
        fn common(&mut self, offset: u64, size: u8) -> u64 {
            self.t.bar_read(COMMON + offset, size)
        }
        fn set_common(&mut self, offset: u64, size: u8, v: u64) {
            self.t.bar_write(COMMON + offset, size, v);
        }
        fn status(&mut self) -> u8 {
            self.common(0x14, 1) as u8
        }
        /// Negotiates `features` and sets FEATURES_OK; true if it stuck.
        fn negotiate(&mut self, features: u64) -> bool {
            self.set_common(0x14, 1, 1 | 2); // ACKNOWLEDGE | DRIVER
            for sel in 0..2 {
                self.set_common(0x08, 4, sel);
                self.set_common(0x0c, 4, (features >> (32 * sel)) & 0xffff_ffff);
            }
            self.set_common(0x14, 1, 1 | 2 | STATUS_FEATURES_OK as u64);
            self.status() & STATUS_FEATURES_OK != 0
        }
        /// Sets queue `q` up at `base` (descriptors, avail, used) and enables it.
        fn setup_queue(&mut self, q: u16, base: u64, vector: u16) -> bool {
            self.set_common(0x16, 2, q as u64);
            self.set_common(0x18, 2, 16);
            for (reg, addr) in [(0x20, base), (0x28, base + 0x100), (0x30, base + 0x200)] {
                self.set_common(reg, 4, addr & 0xffff_ffff);
                self.set_common(reg + 4, 4, addr >> 32);
            }
            self.set_common(0x1a, 2, vector as u64);
            self.set_common(0x1c, 2, 1);
            self.common(0x1c, 2) == 1
        }
        /// MSI-X control in config space: enable, function mask.
        fn msix_control(&mut self, enable: bool, mask: bool) {
            let v = (enable as u64) << 15 | (mask as u64) << 14;
            self.t.config_write(self.t.msix_cap as u64 + 2, 2, v);
        }
        /// MSI-X table entry `v`: address, data, vector control (mask).
        fn msix_entry(&mut self, v: u64, masked: bool) {
            let at = MSIX_TABLE + 16 * v;
            self.t.bar_write(at, 8, 0xfee0_0000);
            self.t.bar_write(at + 8, 4, 0x40 + v);
            self.t.bar_write(at + 12, 4, masked as u64);
        }
    }

    /// The capability ids in config space, following the list.
    fn capabilities(t: &mut Transport<Probe>) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut at = t.config_read(0x34, 1);
        while at != 0 && out.len() < 16 {
            let id = t.config_read(at, 1) as u8;
            let cfg_type = t.config_read(at + 3, 1) as u8;
            out.push((id, if id == CAP_VENDOR { cfg_type } else { 0 }));
            at = t.config_read(at + 1, 1);
        }
        out
    }

    #[test]
    fn transport_config_space_names_a_modern_virtio_function_and_its_capabilities() {
        let mut r = rig();
        assert_eq!(r.t.config_read(0, 4), 0x1042_1af4, "virtio vendor, modern block device id");
        assert_eq!(r.t.config_read(0x0b, 1), 0x01, "class from the device");
        let caps = capabilities(&mut r.t);
        assert_eq!(
            caps,
            [
                (CAP_MSIX, 0),
                (CAP_VENDOR, CFG_COMMON),
                (CAP_VENDOR, CFG_NOTIFY),
                (CAP_VENDOR, CFG_ISR),
                (CAP_VENDOR, CFG_DEVICE),
                (CAP_VENDOR, CFG_PCI)
            ]
        );
        assert_eq!(r.t.config_read(0x3d, 1), INTX_PIN as u64);
        // Bad accesses read all-ones and change nothing.
        assert_eq!(r.t.config_read(1, 2), u64::MAX, "unaligned");
        assert_eq!(r.t.config_read(0x1000, 4), u64::MAX, "past config space");
        r.t.config_write(0, 4, 0);
        assert_eq!(r.t.config_read(0, 2), 0x1af4, "read-only identity");
    }

    #[test]
    fn transport_feature_negotiation_refuses_unoffered_bits_and_legacy_drivers() {
        let mut r = rig();
        r.set_common(0x00, 4, 1);
        assert_eq!(r.common(0x04, 4), 1, "VERSION_1 in the high word");
        r.set_common(0x00, 4, 0);
        assert_eq!(r.common(0x04, 4), 1 << 9);
        assert!(!r.negotiate(1 << 9), "no VERSION_1: refused");
        r.set_common(0x14, 1, 0);
        assert!(!r.negotiate(VIRTIO_F_VERSION_1 | 1 << 9 | 1 << 3), "a bit the device did not offer");
        r.set_common(0x14, 1, 0);
        assert!(r.negotiate(VIRTIO_F_VERSION_1 | 1 << 9));
        // Features are frozen once FEATURES_OK is set.
        r.set_common(0x08, 4, 0);
        r.set_common(0x0c, 4, 0);
        assert_eq!(r.common(0x0c, 4), 1 << 9);
        r.set_common(0x14, 1, 1 | 2 | 8 | 4);
        assert_eq!(r.t.device.activated, Some(VIRTIO_F_VERSION_1 | 1 << 9));
        assert!(r.t.driver_ok());
    }

    #[test]
    fn transport_queues_enable_only_inside_ram_and_freeze_until_reset() {
        let mut r = rig();
        assert!(!r.setup_queue(0, 0x1000, 1), "not before FEATURES_OK");
        assert!(r.negotiate(VIRTIO_F_VERSION_1));
        assert!(!r.setup_queue(0, 1 << 40, 1), "rings outside guest RAM");
        assert!(r.setup_queue(0, 0x1000, 1));
        // An enabled queue's registers do not move.
        r.set_common(0x20, 4, 0x9000);
        assert_eq!(r.common(0x20, 4), 0x1000);
        assert_eq!(r.common(0x1a, 2), 1, "its vector");
        r.set_common(0x1a, 2, 7);
        assert_eq!(r.common(0x1a, 2), NO_VECTOR as u64, "a vector the table does not have");
        // Reset: every queue disabled, the device told.
        r.set_common(0x14, 1, 0);
        assert_eq!((r.status(), r.common(0x1c, 2), r.t.device.resets), (0, 0, 1));
        // A notify before DRIVER_OK reaches nothing.
        r.t.notify(0);
        assert!(r.t.device.notified.is_empty());
    }

    #[test]
    fn transport_msix_masking_holds_interrupts_in_the_pba_until_unmasked() {
        let mut r = rig();
        assert!(r.negotiate(VIRTIO_F_VERSION_1));
        assert!(r.setup_queue(0, 0x1000, 1));
        r.set_common(0x14, 1, 1 | 2 | 8 | 4);
        r.msix_control(true, true);
        r.msix_entry(1, false);
        r.t.notify(0);
        assert_eq!(r.t.device.notified, [0]);
        assert_eq!(signals(&r.msix[1]), 0, "function masked");
        assert_eq!(r.t.bar_read(MSIX_PBA, 8), 1 << 1, "pending bit for vector 1");
        r.msix_control(true, false);
        assert_eq!(signals(&r.msix[1]), 1, "sent when unmasked");
        assert_eq!(r.t.bar_read(MSIX_PBA, 8), 0);
        // An entry mask holds it too, until the entry is unmasked.
        r.msix_entry(1, true);
        r.t.notify(0);
        assert_eq!(signals(&r.msix[1]), 0);
        r.msix_entry(1, false);
        assert_eq!(signals(&r.msix[1]), 1);
        assert_eq!(signals(&r.intx), 0, "MSI-X on: INTx# stays down");
    }

    #[test]
    fn transport_without_msix_raises_intx_once_until_resampled_and_the_isr_read() {
        let mut r = rig();
        assert!(r.negotiate(VIRTIO_F_VERSION_1));
        assert!(r.setup_queue(0, 0x1000, NO_VECTOR));
        r.set_common(0x14, 1, 1 | 2 | 8 | 4);
        r.t.notify(0);
        r.t.notify(0);
        assert_eq!(signals(&r.intx), 1, "raised once while up");
        assert_ne!(r.t.config_read(STATUS as u64, 2) & STATUS_INTERRUPT as u64, 0, "status mirrors the line");
        // The guest's EOI without an ISR read: KVM resamples, the line goes up again.
        r.t.intx_resample();
        assert_eq!(signals(&r.intx), 1);
        assert_eq!(r.t.bar_read(ISR, 1), ISR_QUEUE as u64, "the ISR says queue");
        assert_eq!(r.t.bar_read(ISR, 1), 0, "and reading cleared it");
        r.t.intx_resample();
        assert_eq!(signals(&r.intx), 0, "nothing pending: stays down");
        assert!(r.msix.iter().all(|f| signals(f) == 0));
    }

    #[test]
    fn transport_bar_accesses_outside_registers_float_high_and_notify_names_its_queue() {
        let mut r = rig();
        assert_eq!(r.t.bar_read(0x3, 2), u64::MAX, "unaligned");
        assert_eq!(r.t.bar_read(0x5000, 4), u64::MAX, "past the BAR");
        assert_eq!(r.t.bar_read(0x0400, 4), u64::MAX, "between structures");
        assert_eq!(r.t.bar_read(DEVICE, 2), 0xbbaa, "device config");
        assert_eq!(r.t.bar_read(DEVICE + 0x10, 1), 0, "past the device's config: zeros");
        assert_eq!(r.t.bar_write(NOTIFY + NOTIFY_MULTIPLIER, 2, 1), Some(1));
        assert_eq!(r.t.bar_write(NOTIFY + 2 * NOTIFY_MULTIPLIER, 2, 1), None, "no third queue");
        assert_eq!(r.t.bar_write(0x3, 2, 0), None);
    }
}
