//! IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data (ACS-3 7.12, 7.13):
//! 256 little-endian words, strings with their bytes swapped pairwise,
//! and an integrity word that makes all 512 bytes sum to zero.

use capvm_ipc::AhciDrive;

use crate::ata::MAX_TRIM_BLOCKS;

struct Words([u16; 256]);

impl Words {
    fn new(info: &AhciDrive) -> Words {
        let mut w = Words([0; 256]);
        w.string(10, 20, &info.disk.serial);
        w.string(23, 8, &info.revision);
        w.string(27, 40, &info.model);
        // DMA and LBA; words 64-70 and 88 valid.
        w.0[49] = 1 << 9 | 1 << 8;
        w.0[53] = 0x0006;
        // Multiword DMA 0-2, PIO 3-4, their cycle times.
        w.0[63] = 0x0007;
        w.0[64] = 0x0003;
        w.0[65..69].fill(120);
        // ATA8-ACS and the versions before it.
        w.0[80] = 0x01f0;
        w.0[84] = 1 << 14;
        w.0[87] = 1 << 14;
        // UDMA 0-6 supported, UDMA 6 selected.
        w.0[88] = 0x7f | 1 << 14;
        w
    }

    /// An ATA string: `len` bytes at word `at`, space padded, each word's
    /// first character in its high byte.
    fn string(&mut self, at: usize, len: usize, s: &str) {
        let mut bytes = vec![b' '; len];
        for (b, c) in bytes.iter_mut().zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' ')) {
            *b = c;
        }
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            self.0[at + i] = u16::from_be_bytes([pair[0], pair[1]]);
        }
    }

    fn bytes(mut self) -> [u8; 512] {
        self.0[255] = 0xa5;
        let mut out = [0u8; 512];
        for (i, w) in self.0.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        let sum = out[..511].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        out[511] = sum.wrapping_neg();
        out
    }
}

/// IDENTIFY DEVICE of a disk.
pub fn disk(info: &AhciDrive) -> [u8; 512] {
    let d = &info.disk;
    let sectors = d.size / d.sector_size as u64;
    let mut w = Words::new(info);
    // Fixed (not removable) ATA device.
    w.0[0] = 0x0040;
    // CHS of old, for the few that still look: 16383/16/63.
    w.0[1] = 16383;
    w.0[3] = 16;
    w.0[6] = 63;
    w.0[47] = 0x8000 | 16;
    w.0[60..62].copy_from_slice(&u32_words(sectors.min(0x0fff_ffff) as u32));
    // 32 queued commands; SATA Gen1-3 and NCQ.
    w.0[75] = 31;
    w.0[76] = 1 << 8 | 0b1110;
    // Supported: write cache, look-ahead, NOP; FLUSH CACHE (EXT) and LBA48.
    w.0[82] = 1 << 14 | 1 << 6 | 1 << 5;
    w.0[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10;
    w.0[85] = w.0[82];
    w.0[86] = w.0[83] & !(1 << 14);
    w.0[100..104].copy_from_slice(&u64_words(sectors));
    // Logical and physical sector sizes.
    let per_physical = (d.physical_sector_size / d.sector_size.max(1)).max(1);
    w.0[106] = 1 << 14 | (per_physical.trailing_zeros() as u16);
    if per_physical > 1 {
        w.0[106] |= 1 << 13;
    }
    if d.sector_size > 512 {
        w.0[106] |= 1 << 12;
        w.0[117..119].copy_from_slice(&u32_words(d.sector_size / 2));
    }
    if !d.read_only && !d.no_delete && d.can_discard {
        // TRIM, with deterministic zeros after it (a punched hole reads 0).
        w.0[169] = 1;
        w.0[105] = MAX_TRIM_BLOCKS;
        w.0[69] = 1 << 14 | 1 << 5;
    }
    w.0[217] = info.rotation_rate;
    w.bytes()
}

/// IDENTIFY PACKET DEVICE of a CD-ROM.
pub fn cd(info: &AhciDrive) -> [u8; 512] {
    let mut w = Words::new(info);
    // ATAPI, CD-ROM, removable, 50 µs to DRQ, 12-byte packets.
    w.0[0] = 0x8000 | 5 << 8 | 1 << 7 | 2 << 5;
    w.0[76] = 0b0110;
    // The PACKET feature set, NOP.
    w.0[82] = 1 << 14 | 1 << 4;
    w.0[83] = 1 << 14;
    w.0[85] = w.0[82];
    w.bytes()
}

fn u32_words(v: u32) -> [u16; 2] {
    [v as u16, (v >> 16) as u16]
}

fn u64_words(v: u64) -> [u16; 4] {
    [v as u16, (v >> 16) as u16, (v >> 32) as u16, (v >> 48) as u16]
}

#[cfg(test)]
mod tests {
    use super::*;
    use capvm_ipc::BlkOptions;

    fn info(size: u64, sector_size: u32) -> AhciDrive {
        AhciDrive {
            cd: false,
            disk: BlkOptions {
                read_only: false,
                sector_size,
                physical_sector_size: 4096,
                size,
                no_delete: false,
                can_discard: true,
                serial: "BHYVE-1234".into(),
            },
            model: "CAPVM AHCI DISK".into(),
            revision: "001".into(),
            rotation_rate: 1,
        }
    }

    fn word(b: &[u8; 512], i: usize) -> u16 {
        u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
    }

    #[test]
    fn identify_strings_capacity_and_checksum_are_as_acs_says() {
        let b = disk(&info(200 << 30, 512));
        assert_eq!(&b[20..30], b"HBVY-E2143", "serial, bytes swapped in pairs");
        assert_eq!(&b[54..70], b"ACVP MHAICD SI K", "model");
        let lba48 = (0..4).fold(0u64, |a, i| a | (word(&b, 100 + i) as u64) << (16 * i));
        assert_eq!(lba48, (200 << 30) / 512);
        assert_eq!(word(&b, 60) as u32 | (word(&b, 61) as u32) << 16, 0x0fff_ffff, "LBA28 saturates");
        assert_eq!(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0, "integrity word");
        assert_eq!(b[510], 0xa5);
        assert_eq!(word(&b, 106), 0x6003, "8 logical sectors per physical one");
        assert_eq!(word(&b, 169), 1, "TRIM");
        assert_ne!(word(&b, 76) & 1 << 8, 0, "NCQ");
    }

    #[test]
    fn identify_of_a_4k_disk_names_its_logical_sector_size() {
        let b = disk(&info(1 << 30, 4096));
        assert_eq!(word(&b, 106), 0x5000);
        assert_eq!(word(&b, 117) as u32 | (word(&b, 118) as u32) << 16, 2048, "in words");
        let lba48 = (0..4).fold(0u64, |a, i| a | (word(&b, 100 + i) as u64) << (16 * i));
        assert_eq!(lba48, (1 << 30) / 4096);
    }

    #[test]
    fn identify_packet_names_a_removable_cd_rom() {
        let b = cd(&info(1 << 20, 2048));
        assert_eq!(word(&b, 0), 0x85c0);
        assert_eq!(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
    }
}
