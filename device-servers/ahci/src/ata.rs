//! The ATA command set of a disk (ACS-3, the part drivers and firmware
//! use): IDENTIFY, DMA and NCQ reads and writes, flushes, TRIM, and a
//! clean ABRT for everything else.

use crate::hba::{gather, image_io, reply, Command, CommandError, Done, Drive};
use crate::identify;

const READ_DMA: u8 = 0xc8;
const READ_DMA_EXT: u8 = 0x25;
const WRITE_DMA: u8 = 0xca;
const WRITE_DMA_EXT: u8 = 0x35;
const READ_FPDMA_QUEUED: u8 = 0x60;
const WRITE_FPDMA_QUEUED: u8 = 0x61;
const READ_VERIFY: u8 = 0x40;
const READ_VERIFY_EXT: u8 = 0x42;
const FLUSH_CACHE: u8 = 0xe7;
const FLUSH_CACHE_EXT: u8 = 0xea;
const DATA_SET_MANAGEMENT: u8 = 0x06;
const SET_FEATURES: u8 = 0xef;
const IDENTIFY_DEVICE: u8 = 0xec;
const CHECK_POWER_MODE: u8 = 0xe5;
const STANDBY_IMMEDIATE: u8 = 0xe0;
const IDLE_IMMEDIATE: u8 = 0xe1;
const STANDBY: u8 = 0xe2;
const IDLE: u8 = 0xe3;
const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
const SET_MULTIPLE_MODE: u8 = 0xc6;

/// Most 512-byte blocks of TRIM ranges one DATA SET MANAGEMENT may carry
/// (IDENTIFY word 105 says so).
pub const MAX_TRIM_BLOCKS: u16 = 8;

pub fn is_ncq(command: u8) -> bool {
    matches!(command, READ_FPDMA_QUEUED | WRITE_FPDMA_QUEUED)
}

/// The 48-bit LBA of a command FIS.
fn lba48(f: &[u8; 20]) -> u64 {
    u64::from_le_bytes([f[4], f[5], f[6], f[8], f[9], f[10], 0, 0])
}

/// The 28-bit LBA of a command FIS (the device register's low nibble on top).
fn lba28(f: &[u8; 20]) -> u64 {
    u64::from_le_bytes([f[4], f[5], f[6], f[7] & 0xf, 0, 0, 0, 0])
}

/// A sector count where 0 means the most the field can say.
fn count(raw: u32, bits: u32) -> u64 {
    if raw == 0 {
        1 << bits
    } else {
        raw as u64
    }
}

pub fn execute(drive: &Drive, cmd: &Command) -> Result<Done, CommandError> {
    let f = &cmd.fis;
    let command = f[2];
    let sector = drive.info.disk.sector_size as u64;
    let sectors = drive.info.disk.size / sector;
    // (first LBA, count, write) of a data command.
    let rw = match command {
        READ_DMA | WRITE_DMA => Some((lba28(f), count(f[12] as u32, 8), command == WRITE_DMA)),
        READ_DMA_EXT | WRITE_DMA_EXT => {
            Some((lba48(f), count(u16::from_le_bytes([f[12], f[13]]) as u32, 16), command == WRITE_DMA_EXT))
        }
        // NCQ: the count is in the features fields, the tag in count.
        READ_FPDMA_QUEUED | WRITE_FPDMA_QUEUED => {
            Some((lba48(f), count(u16::from_le_bytes([f[3], f[11]]) as u32, 16), command == WRITE_FPDMA_QUEUED))
        }
        _ => None,
    };
    if let Some((lba, n, write)) = rw {
        if write && drive.info.disk.read_only {
            return Err(CommandError::ReadOnly);
        }
        if lba.checked_add(n).is_none_or(|end| end > sectors) {
            return Err(CommandError::OutOfRange);
        }
        return image_io(&drive.image, cmd, lba * sector, n * sector, !write);
    }
    match command {
        IDENTIFY_DEVICE => {
            let bytes = reply(cmd, &identify::disk(&drive.info))?;
            Ok(Done { bytes, pio_in: true, to_guest: true, ..Done::default() })
        }
        READ_VERIFY | READ_VERIFY_EXT => {
            let (lba, n) = if command == READ_VERIFY {
                (lba28(f), count(f[12] as u32, 8))
            } else {
                (lba48(f), count(u16::from_le_bytes([f[12], f[13]]) as u32, 16))
            };
            if lba.checked_add(n).is_none_or(|end| end > sectors) {
                return Err(CommandError::OutOfRange);
            }
            Ok(Done::default())
        }
        FLUSH_CACHE | FLUSH_CACHE_EXT => {
            if !drive.info.disk.read_only {
                drive.image.flush()?;
            }
            Ok(Done::default())
        }
        DATA_SET_MANAGEMENT if f[3] & 1 == 1 => trim(drive, cmd, sectors),
        SET_FEATURES => match f[3] {
            // Write cache on/off, transfer mode, read look-ahead on/off,
            // SATA features on/off: nothing to change in an image.
            0x02 | 0x82 | 0x03 | 0xaa | 0x55 | 0x10 | 0x90 => Ok(Done::default()),
            _ => Err(CommandError::Unsupported(command)),
        },
        // Always active: the count register says so.
        CHECK_POWER_MODE => Ok(Done { count: 0xff, ..Done::default() }),
        STANDBY_IMMEDIATE | IDLE_IMMEDIATE | STANDBY | IDLE | INITIALIZE_DEVICE_PARAMETERS | SET_MULTIPLE_MODE => {
            Ok(Done::default())
        }
        _ => Err(CommandError::Unsupported(command)),
    }
}

/// DATA SET MANAGEMENT with the TRIM bit: punch a hole for each range
/// (8 bytes: a 48-bit LBA and a 16-bit count; count 0 is unused).
fn trim(drive: &Drive, cmd: &Command, sectors: u64) -> Result<Done, CommandError> {
    let d = &drive.info.disk;
    if d.read_only || d.no_delete || !d.can_discard {
        return Err(CommandError::Unsupported(DATA_SET_MANAGEMENT));
    }
    let blocks = u16::from_le_bytes([cmd.fis[12], cmd.fis[13]]);
    if blocks == 0 || blocks > MAX_TRIM_BLOCKS {
        return Err(CommandError::Unsupported(DATA_SET_MANAGEMENT));
    }
    let ranges = gather(cmd, blocks as usize * 512)?;
    let sector = d.sector_size as u64;
    // Check every range before punching any.
    let mut todo = Vec::new();
    for r in ranges.chunks_exact(8) {
        let v = u64::from_le_bytes(r.try_into().unwrap_or_default());
        let (lba, n) = (v & 0xffff_ffff_ffff, v >> 48);
        if n == 0 {
            continue;
        }
        if lba + n > sectors {
            return Err(CommandError::OutOfRange);
        }
        todo.push((lba, n));
    }
    for (lba, n) in todo {
        drive.image.clear(lba * sector, n * sector, true)?;
    }
    Ok(Done { bytes: blocks as u64 * 512, ..Done::default() })
}
