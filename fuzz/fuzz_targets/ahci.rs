//! An AHCI controller with a disk on port 0 and a CD-ROM on port 1, as a
//! hostile guest drives it: register writes and reads in any order, and
//! the commands they issue read from guest RAM whose command lists,
//! command tables (FISes, ATAPI packets, PRDTs) come from the input.
#![no_main]

use std::sync::OnceLock;

use capvm_ahci::hba::{CommandError, Drive, Hba, Kick, Stats};
use capvm_block::Image;
use capvm_fuzz::{guest_ram, memfd_disk, Input};
use capvm_ipc::{AhciDrive, BlkOptions};

const SECTORS: u64 = 64;
/// Where the ports' registers start, and each port's: PxCLB, PxFB, PxCMD
/// (ST and FRE), PxCI (AHCI 1.3.1, 3.3).
const PORT: u64 = 0x100;
const PORT_LEN: u64 = 0x80;
const CLB: u64 = 0x00;
const FB: u64 = 0x08;
const CMD: u64 = 0x18;
const START: u64 = 1 << 4 | 1;

struct NoStats;
impl Stats for NoStats {
    fn command(&self, _: bool, _: bool) {}
    fn error(&self, _: CommandError) {}
    fn bytes(&self, _: bool, _: u64) {}
}

fn drive(cd: bool) -> Drive {
    static DISKS: OnceLock<[std::os::fd::OwnedFd; 2]> = OnceLock::new();
    let disks = DISKS.get_or_init(|| [memfd_disk(SECTORS * 512), memfd_disk(SECTORS * 2048)]);
    let info = AhciDrive {
        cd,
        disk: BlkOptions {
            read_only: cd,
            sector_size: if cd { 2048 } else { 512 },
            physical_sector_size: 512,
            size: SECTORS * if cd { 2048 } else { 512 },
            no_delete: false,
            can_discard: true,
            serial: "FUZZ".into(),
        },
        model: "capvm fuzz".into(),
        revision: "1".into(),
        rotation_rate: 1,
    };
    Drive::new(Image::new(disks[usize::from(cd)].try_clone().expect("dup")), info)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut hba = Hba::new(vec![drive(false), drive(true)]);
    let mem = guest_ram(&mut input, 0x1_0000);
    // Both ports started as a driver leaves them, lists and FIS areas in RAM.
    for p in 0..2u64 {
        let at = PORT + p * PORT_LEN;
        hba.write(at + CLB, 4, 0x1000 + p * 0x400, Some(&mem));
        hba.write(at + FB, 4, 0x3000 + p * 0x100, Some(&mem));
        hba.write(at + CMD, 4, START, Some(&mem));
    }
    while !input.done() {
        let op = input.u8();
        let reg = match op >> 5 {
            // The port registers, most of the time.
            0..=5 => PORT + u64::from(input.u8() & 1) * PORT_LEN + u64::from(input.u8() % 0x20) * 4,
            _ => u64::from(input.u16()) % 0x2000,
        };
        let size = input.size();
        if op & 1 == 0 {
            let _ = hba.read(reg, size);
            continue;
        }
        match hba.write(reg, size, input.u64(), Some(&mem)) {
            Kick::Port(n) => hba.run_port(n, &mem, &NoStats),
            Kick::Interrupts | Kick::None => {
                let _ = hba.interrupt_pending();
            }
        }
    }
});
