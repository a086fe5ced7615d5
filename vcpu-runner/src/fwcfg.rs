//! QEMU's firmware configuration interface (fw_cfg, QEMU's
//! docs/specs/fw_cfg.rst), which SeaBIOS and OVMF read their platform from:
//! a selector port (0x510), a data port (0x511) and a DMA address register
//! (0x514, big-endian; writing its low half at 0x518 starts a transfer).
//! The broker builds the items (RAM map, ACPI tables and their loader
//! script, boot order); this model only serves them.
//!
//! It lives in the runner, beside the other platform ports, because it
//! holds nothing but bytes the broker gave it and, for DMA, writes guest
//! RAM, which the runner maps anyway: a process of its own would hold the
//! same RAM and add a hop to every access, for no less privilege over the
//! host. What it parses from the guest is one 16-byte DMA descriptor, read
//! with bounds-checked guest-memory accessors; every failure is the
//! descriptor's error bit.

use capvm_ipc::FwCfgItems;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const SELECTOR: u16 = 0x510;
pub const DATA: u16 = 0x511;
/// DMA address: high half at 0x514, low half at 0x518 (each big-endian).
pub const DMA: u16 = 0x514;
pub const DMA_LOW: u16 = 0x518;
const DMA_END: u16 = 0x51c;

const KEY_SIGNATURE: u16 = 0x00;
const KEY_ID: u16 = 0x01;
const KEY_FILE_DIR: u16 = 0x19;
const KEY_FIRST_FILE: u16 = 0x20;
/// ID bits: the traditional interface and DMA.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;
/// What reading the DMA register gives: "QEMU CFG", big-endian.
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

// DMA control bits.
const CTL_ERROR: u32 = 1;
const CTL_READ: u32 = 2;
const CTL_SKIP: u32 = 4;
const CTL_SELECT: u32 = 8;
const CTL_WRITE: u32 = 0x10;

/// The longest file name the directory holds, with its NUL.
const NAME_LEN: usize = 56;

pub struct FwCfg {
    /// Every item by key, the file directory included.
    items: Vec<(u16, Vec<u8>)>,
    selected: u16,
    offset: usize,
    /// The DMA address's high half, waiting for its low half.
    dma_high: u32,
    mem: GuestMemoryMmap,
}

impl FwCfg {
    pub fn new(config: &FwCfgItems, mem: GuestMemoryMmap) -> FwCfg {
        let mut items =
            vec![(KEY_SIGNATURE, b"QEMU".to_vec()), (KEY_ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec())];
        items.extend(config.items.iter().cloned());
        let mut dir = (config.files.len() as u32).to_be_bytes().to_vec();
        for (i, (name, data)) in config.files.iter().enumerate() {
            let key = KEY_FIRST_FILE + i as u16;
            dir.extend((data.len() as u32).to_be_bytes());
            dir.extend(key.to_be_bytes());
            dir.extend([0, 0]);
            let mut n = [0u8; NAME_LEN];
            let bytes = name.as_bytes();
            n[..bytes.len().min(NAME_LEN - 1)].copy_from_slice(&bytes[..bytes.len().min(NAME_LEN - 1)]);
            dir.extend(n);
            items.push((key, data.clone()));
        }
        items.push((KEY_FILE_DIR, dir));
        FwCfg { items, selected: 0, offset: 0, dma_high: 0, mem }
    }

    /// Whether `port` is one of ours.
    pub fn owns(port: u16) -> bool {
        port == SELECTOR || port == DATA || (DMA..DMA_END).contains(&port)
    }

    fn item(&self) -> &[u8] {
        self.items.iter().find(|(k, _)| *k == self.selected).map_or(&[], |(_, d)| d)
    }

    pub fn read(&mut self, port: u16, size: u8) -> u64 {
        match port {
            DATA => {
                // Byte by byte (wider reads take consecutive bytes).
                let mut v = 0u64;
                for i in 0..size.min(8) as usize {
                    let b = self.item().get(self.offset).copied().unwrap_or(0);
                    self.offset += 1;
                    v |= (b as u64) << (8 * i);
                }
                v
            }
            p if (DMA..DMA_END).contains(&p) => {
                // The signature, as a big-endian 64-bit register.
                let bytes = DMA_SIGNATURE.to_be_bytes();
                let at = (p - DMA) as usize;
                let mut v = 0u64;
                for i in 0..size.min(8) as usize {
                    v |= (bytes.get(at + i).copied().unwrap_or(0) as u64) << (8 * i);
                }
                v
            }
            _ => u64::MAX,
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u64) {
        match (port, size) {
            (SELECTOR, 2) => self.select(value as u16),
            (DMA, 4) => self.dma_high = u32::from_be(value as u32),
            (DMA_LOW, 4) => {
                let addr = (self.dma_high as u64) << 32 | u32::from_be(value as u32) as u64;
                self.dma_high = 0;
                self.dma(addr);
            }
            // A 64-bit write at 0x514 holds both halves.
            (DMA, 8) => {
                self.dma_high = 0;
                self.dma(u64::from_be(value));
            }
            _ => {}
        }
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    /// Runs the DMA descriptor at guest-physical `addr`: {control, length,
    /// address}, big-endian. Its control word becomes 0, or the error bit.
    fn dma(&mut self, addr: u64) {
        let mut desc = [0u8; 16];
        if self.mem.read_slice(&mut desc, GuestAddress(addr)).is_err() {
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]) as usize;
        let target = u64::from_be_bytes(desc[8..16].try_into().unwrap_or_default());
        if control & CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & CTL_WRITE != 0 {
            // No item takes writes.
            false
        } else if control & (CTL_READ | CTL_SKIP) != 0 {
            let item = self.item();
            let start = self.offset.min(item.len());
            let n = length.min(item.len() - start);
            let written = control & CTL_READ == 0 || {
                // Past the item's end the guest's buffer gets zeros, a page
                // at a time (the length is the guest's: up to 4 GiB).
                let data = item[start..start + n].to_vec();
                let mut ok = self.mem.write_slice(&data, GuestAddress(target)).is_ok();
                let zeros = [0u8; 4096];
                let mut at = n;
                while ok && at < length {
                    let k = (length - at).min(zeros.len());
                    ok = self.mem.write_slice(&zeros[..k], GuestAddress(target.wrapping_add(at as u64))).is_ok();
                    at += k;
                }
                ok
            };
            self.offset += length;
            written
        } else {
            true
        };
        let status: u32 = if ok { 0 } else { CTL_ERROR };
        let _ = self.mem.write_slice(&status.to_be_bytes(), GuestAddress(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> FwCfg {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let items = FwCfgItems {
            items: vec![(0x05, 2u16.to_le_bytes().to_vec())],
            files: vec![("etc/e820".into(), vec![1, 2, 3, 4, 5]), ("bootorder".into(), b"/pci@i0cf8/*@4\n".to_vec())],
        };
        FwCfg::new(&items, mem)
    }

    fn read_item(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(SELECTOR, 2, key as u64);
        (0..n).map(|_| f.read(DATA, 1) as u8).collect()
    }

    #[test]
    fn fwcfg_signature_id_items_and_the_file_directory() {
        let mut f = fw();
        assert_eq!(read_item(&mut f, KEY_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, KEY_ID, 4), [3, 0, 0, 0]);
        assert_eq!(read_item(&mut f, 0x05, 2), [2, 0]);
        let dir = read_item(&mut f, KEY_FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[..4], &[0, 0, 0, 2]);
        assert_eq!(&dir[4..8], &[0, 0, 0, 5], "size, big-endian");
        assert_eq!(&dir[8..10], &[0, 0x20], "key, big-endian");
        assert_eq!(&dir[12..20], b"etc/e820");
        assert_eq!(&dir[72..74], &[0, 0x21], "the second file's key");
        // Reads past an item's end give zeros; unknown keys are empty.
        assert_eq!(read_item(&mut f, 0x20, 7), [1, 2, 3, 4, 5, 0, 0]);
        assert_eq!(read_item(&mut f, 0x7777, 2), [0, 0]);
        // The DMA register reads "QEMU CFG".
        let sig: Vec<u8> = (0..8).map(|i| f.read(DMA + i, 1) as u8).collect();
        assert_eq!(sig, b"QEMU CFG");
    }

    /// Writes a DMA descriptor at 0x1000 and starts it.
    fn dma(f: &mut FwCfg, control: u32, length: u32, target: u64) -> u32 {
        let mut d = control.to_be_bytes().to_vec();
        d.extend(length.to_be_bytes());
        d.extend(target.to_be_bytes());
        f.mem.write_slice(&d, GuestAddress(0x1000)).unwrap();
        f.write(DMA, 4, 0);
        f.write(DMA_LOW, 4, (0x1000u32).to_be() as u64);
        let mut c = [0u8; 4];
        f.mem.read_slice(&mut c, GuestAddress(0x1000)).unwrap();
        u32::from_be_bytes(c)
    }

    #[test]
    fn fwcfg_dma_selects_reads_skips_and_refuses_what_it_cannot_do() {
        let mut f = fw();
        assert_eq!(dma(&mut f, 0x21 << 16 | CTL_SELECT | CTL_SKIP, 5, 0), 0);
        assert_eq!(dma(&mut f, CTL_READ, 4, 0x2000), 0);
        let mut got = [0u8; 4];
        f.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got, b"i0cf", "skip 5 then read 4 of 'bootorder'");
        // Writes, and a target outside RAM, set the error bit.
        assert_eq!(dma(&mut f, CTL_WRITE, 4, 0x2000), CTL_ERROR);
        assert_eq!(dma(&mut f, 0x20 << 16 | CTL_SELECT | CTL_READ, 4, 1 << 40), CTL_ERROR);
        // A read of 4 GiB into 64 KiB of RAM fails at the end of RAM; no
        // 4 GiB buffer is made on the way.
        assert_eq!(dma(&mut f, 0x20 << 16 | CTL_SELECT | CTL_READ, u32::MAX, 0x2000), CTL_ERROR);
        // A descriptor outside RAM is ignored (nothing to write back to).
        f.write(DMA, 4, 0x0100_0000u32.to_be() as u64);
        f.write(DMA_LOW, 4, 0);
    }
}
