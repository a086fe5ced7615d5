//! A CD-ROM behind ATAPI: IDENTIFY PACKET DEVICE and the MMC-6 packet
//! commands that Linux's sr driver, SeaBIOS and GRUB send. What it
//! refuses ends in CHECK CONDITION with the sense MMC names (a write is
//! DATA PROTECT / WRITE PROTECTED); REQUEST SENSE then returns it.

use crate::hba::{image_io, reply, Command, CommandError, Done, Drive};
use crate::identify;

pub const PACKET: u8 = 0xa0;
const IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
const DEVICE_RESET: u8 = 0x08;
/// SET FEATURES: Linux sets the transfer mode of ATAPI devices too.
const SET_FEATURES: u8 = 0xef;

const TEST_UNIT_READY: u8 = 0x00;
const REQUEST_SENSE: u8 = 0x03;
const INQUIRY: u8 = 0x12;
const START_STOP_UNIT: u8 = 0x1b;
const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
const READ_CAPACITY: u8 = 0x25;
const READ_10: u8 = 0x28;
const READ_12: u8 = 0xa8;
const READ_TOC: u8 = 0x43;
const GET_CONFIGURATION: u8 = 0x46;
const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
const READ_DISC_INFORMATION: u8 = 0x51;
const MODE_SENSE_10: u8 = 0x5a;
/// Commands that write the medium: WRITE(10), WRITE(12), WRITE AND
/// VERIFY(10), SYNCHRONIZE CACHE is harmless and answered.
const WRITES: [u8; 3] = [0x2a, 0xaa, 0x2e];
const SYNCHRONIZE_CACHE: u8 = 0x35;

pub const BLOCK: u64 = 2048;

// Sense keys.
const ILLEGAL_REQUEST: u8 = 0x5;
const DATA_PROTECT: u8 = 0x7;

/// The sense data of the last CHECK CONDITION.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

fn check(drive: &mut Drive, key: u8, asc: u8, ascq: u8) -> CommandError {
    drive.sense = Sense { key, asc, ascq };
    CommandError::CheckCondition(key)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Blocks on the medium (a last partial block counts; it reads padded).
fn blocks(drive: &Drive) -> u64 {
    drive.info.disk.size.div_ceil(BLOCK)
}

pub fn execute(drive: &mut Drive, cmd: &Command) -> Result<Done, CommandError> {
    match cmd.fis[2] {
        PACKET => packet(drive, cmd),
        IDENTIFY_PACKET_DEVICE => {
            let bytes = reply(cmd, &identify::cd(&drive.info))?;
            Ok(Done { bytes, pio_in: true, to_guest: true, ..Done::default() })
        }
        DEVICE_RESET => {
            drive.sense = Sense::default();
            Ok(Done::default())
        }
        SET_FEATURES => Ok(Done::default()),
        // IDENTIFY DEVICE and every other ATA command: aborted, so that a
        // driver that probes with it learns it speaks to a packet device.
        other => Err(CommandError::Unsupported(other)),
    }
}

/// Sends `data`, cut to the CDB's allocation length.
fn send(cmd: &Command, data: &[u8], alloc: usize) -> Result<Done, CommandError> {
    let bytes = reply(cmd, &data[..data.len().min(alloc)])?;
    Ok(Done { bytes, to_guest: true, count: 3, ..Done::default() })
}

fn packet(drive: &mut Drive, cmd: &Command) -> Result<Done, CommandError> {
    let cdb = &cmd.packet;
    let ok = Done { count: 3, ..Done::default() };
    let op = cdb[0];
    let result = match op {
        TEST_UNIT_READY | START_STOP_UNIT | PREVENT_ALLOW_MEDIUM_REMOVAL | SYNCHRONIZE_CACHE => Ok(ok),
        REQUEST_SENSE => {
            let s = std::mem::take(&mut drive.sense);
            let mut d = [0u8; 18];
            d[0] = 0x70;
            d[2] = s.key;
            d[7] = 10;
            d[12] = s.asc;
            d[13] = s.ascq;
            return send(cmd, &d, cdb[4] as usize);
        }
        INQUIRY => {
            let mut d = [b' '; 36];
            d[..8].copy_from_slice(&[5, 0x80, 0x05, 0x32, 31, 0, 0, 0]);
            d[8..13].copy_from_slice(b"CAPVM");
            let model = drive.info.model.as_bytes();
            let n = model.len().min(16);
            d[16..16 + n].copy_from_slice(&model[..n]);
            let rev = drive.info.revision.as_bytes();
            let n = rev.len().min(4);
            d[32..32 + n].copy_from_slice(&rev[..n]);
            send(cmd, &d, be16(&cdb[3..5]) as usize)
        }
        READ_CAPACITY => {
            let mut d = [0u8; 8];
            d[..4].copy_from_slice(&((blocks(drive).max(1) - 1) as u32).to_be_bytes());
            d[4..].copy_from_slice(&(BLOCK as u32).to_be_bytes());
            send(cmd, &d, 8)
        }
        READ_10 | READ_12 => {
            let lba = be32(&cdb[2..6]) as u64;
            let n = if op == READ_10 { be16(&cdb[7..9]) as u64 } else { be32(&cdb[6..10]) as u64 };
            if lba + n > blocks(drive) {
                return Err(check(drive, ILLEGAL_REQUEST, 0x21, 0));
            }
            image_io(&drive.image, cmd, lba * BLOCK, n * BLOCK, true).map(|d| Done { count: 3, ..d })
        }
        READ_TOC => read_toc(drive, cmd),
        GET_CONFIGURATION => {
            let profile: u16 = if drive.info.disk.size > 700 << 20 { 0x0010 } else { 0x0008 };
            let mut d = vec![0u8; 8];
            d[6..8].copy_from_slice(&profile.to_be_bytes());
            // Feature 0: the profile list, both ROM profiles, the one
            // that fits the medium current.
            d.extend([0, 0, 0x03, 8]);
            d.extend(0x0010u16.to_be_bytes());
            d.extend([(profile == 0x0010) as u8, 0]);
            d.extend(0x0008u16.to_be_bytes());
            d.extend([(profile == 0x0008) as u8, 0]);
            let len = (d.len() - 4) as u32;
            d[..4].copy_from_slice(&len.to_be_bytes());
            send(cmd, &d, be16(&cdb[7..9]) as usize)
        }
        GET_EVENT_STATUS_NOTIFICATION => {
            if cdb[1] & 1 == 0 {
                // Only polled operation.
                return Err(check(drive, ILLEGAL_REQUEST, 0x24, 0));
            }
            let d: &[u8] = if cdb[4] & 0x10 != 0 {
                // Media class: no change, medium present.
                &[0, 6, 0x04, 0x10, 0, 0x02, 0, 0]
            } else {
                &[0, 2, 0x80, 0x10]
            };
            send(cmd, d, be16(&cdb[7..9]) as usize)
        }
        READ_DISC_INFORMATION => {
            let mut d = [0u8; 34];
            // Complete disc, last session complete; one session, one track.
            d[..8].copy_from_slice(&[0, 32, 0x0e, 1, 1, 1, 1, 0]);
            send(cmd, &d, be16(&cdb[7..9]) as usize)
        }
        MODE_SENSE_10 => mode_sense(drive, cmd),
        op if WRITES.contains(&op) => Err(check(drive, DATA_PROTECT, 0x27, 0)),
        _ => Err(check(drive, ILLEGAL_REQUEST, 0x20, 0)),
    };
    if result.is_ok() {
        drive.sense = Sense::default();
    }
    result
}

/// READ TOC/PMA/ATIP: formats 0 (the TOC) and 1 (session information).
fn read_toc(drive: &mut Drive, cmd: &Command) -> Result<Done, CommandError> {
    let cdb = &cmd.packet;
    let msf = cdb[1] & 2 != 0;
    let format = cdb[2] & 0xf;
    let alloc = be16(&cdb[7..9]) as usize;
    let address = |lba: u64| -> [u8; 4] {
        if msf {
            let f = lba + 150;
            [0, (f / 75 / 60) as u8, (f / 75 % 60) as u8, (f % 75) as u8]
        } else {
            (lba as u32).to_be_bytes()
        }
    };
    let mut d = vec![0, 0, 1, 1];
    match format {
        0 => {
            // Track 1 (data), then the lead-out.
            d.extend([0, 0x14, 1, 0]);
            d.extend(address(0));
            d.extend([0, 0x14, 0xaa, 0]);
            d.extend(address(blocks(drive)));
        }
        1 => {
            d.extend([0, 0x14, 1, 0]);
            d.extend(address(0));
        }
        _ => return Err(check(drive, ILLEGAL_REQUEST, 0x24, 0)),
    }
    let len = (d.len() - 2) as u16;
    d[..2].copy_from_slice(&len.to_be_bytes());
    send(cmd, &d, alloc)
}

/// MODE SENSE(10): the CD capabilities page (0x2a), alone or as "all".
fn mode_sense(drive: &mut Drive, cmd: &Command) -> Result<Done, CommandError> {
    let cdb = &cmd.packet;
    let page = cdb[2] & 0x3f;
    if page != 0x2a && page != 0x3f {
        return Err(check(drive, ILLEGAL_REQUEST, 0x24, 0));
    }
    let mut d = vec![0u8; 8];
    // Reads CD-R; plays audio; lock, eject, a tray; 4x (706 kB/s) at
    // most and now.
    let mut caps = [0u8; 20];
    caps[..7].copy_from_slice(&[0x2a, 18, 0x01, 0, 0x71, 0, 0x29]);
    caps[8..10].copy_from_slice(&(706u16).to_be_bytes());
    caps[14..16].copy_from_slice(&(706u16).to_be_bytes());
    d.extend(caps);
    let len = (d.len() - 2) as u16;
    d[..2].copy_from_slice(&len.to_be_bytes());
    send(cmd, &d, be16(&cdb[7..9]) as usize)
}
