//! What a firmware boot's fw_cfg holds (served by the runner,
//! vcpu-runner/src/fwcfg.rs): the CPU count, the RAM map, the ACPI tables
//! with their loader script, how long to wait after a failed boot, and
//! where the firmware's screen goes when there is none.

use capvm_ipc::{FwCfgItems, MemoryRegion};

use crate::acpi;

const KEY_RAM_SIZE: u16 = 0x03;
const KEY_NB_CPUS: u16 = 0x05;
const KEY_MAX_CPUS: u16 = 0x0f;
const E820_RAM: u32 = 1;
/// Milliseconds SeaBIOS waits before it reboots when nothing booted
/// (its own default is 60 s).
const BOOT_FAIL_WAIT_MS: u32 = 5000;
/// COM1: with no display, SeaBIOS prints its screen there (sercon).
const SERCON_PORT: u16 = 0x3f8;

/// fw_cfg for `cpus` vCPUs, the RAM in `regions` (the ROM's region is not
/// RAM and is left out) and the drives with a `bootindex=` (index, the
/// firmware's device path).
/// `user` holds the files of bhyve's `-f`.
pub fn items(
    cpus: u32,
    regions: &[MemoryRegion],
    mut boot_order: Vec<(u32, String)>,
    user: Vec<(String, Vec<u8>)>,
    i8042: bool,
) -> FwCfgItems {
    let ram: Vec<&MemoryRegion> = regions.iter().filter(|r| !r.read_only).collect();
    let mut e820 = Vec::new();
    for r in &ram {
        e820.extend(r.guest_addr.to_le_bytes());
        e820.extend(r.size.to_le_bytes());
        e820.extend(E820_RAM.to_le_bytes());
    }
    let ram_size: u64 = ram.iter().map(|r| r.size).sum();
    let ram_top = ram.iter().map(|r| r.guest_addr + r.size).max().unwrap_or(0);
    let acpi = acpi::loader_files(&acpi::Platform { cpus, ram_top, i8042 });
    // bootorder: one device path a line, lowest bootindex first; devices
    // without one follow in the firmware's own order.
    boot_order.sort();
    let mut bootorder: Vec<u8> = boot_order.iter().flat_map(|(_, p)| format!("{p}\n").into_bytes()).collect();
    bootorder.push(0);
    let mut fw = FwCfgItems {
        items: vec![
            (KEY_RAM_SIZE, ram_size.to_le_bytes().to_vec()),
            (KEY_NB_CPUS, (cpus as u16).to_le_bytes().to_vec()),
            (KEY_MAX_CPUS, (cpus as u16).to_le_bytes().to_vec()),
        ],
        files: vec![
            ("etc/e820".into(), e820),
            ("bootorder".into(), bootorder),
            ("etc/boot-fail-wait".into(), BOOT_FAIL_WAIT_MS.to_le_bytes().to_vec()),
            ("etc/sercon-port".into(), SERCON_PORT.to_le_bytes().to_vec()),
            (acpi::TABLES_FILE.into(), acpi.tables),
            (acpi::RSDP_FILE.into(), acpi.rsdp),
            ("etc/table-loader".into(), acpi.loader),
        ],
    };
    fw.files.extend(user);
    fw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fw_cfg_items_hold_the_ram_map_boot_order_and_user_files() {
        let regions = [
            MemoryRegion { guest_addr: 0, size: 256 << 20, offset: 0, read_only: false },
            MemoryRegion { guest_addr: (1 << 32) - (256 << 10), size: 256 << 10, offset: 256 << 20, read_only: true },
        ];
        let order = vec![(2, "/pci@i0cf8/*@3".to_string()), (1, "/pci@i0cf8/*@4/drive@0/disk@0".to_string())];
        let fw = items(2, &regions, order, vec![("opt/capvm/hello".into(), b"hi".to_vec())], false);
        let file = |n: &str| &fw.files.iter().find(|(name, _)| name == n).unwrap_or_else(|| panic!("no {n}")).1;
        let e820 = file("etc/e820");
        assert_eq!(e820.len(), 20, "RAM only, not the ROM");
        assert_eq!(u64::from_le_bytes(e820[8..16].try_into().unwrap()), 256 << 20);
        assert_eq!(file("bootorder"), b"/pci@i0cf8/*@4/drive@0/disk@0\n/pci@i0cf8/*@3\n\0", "lowest bootindex first");
        assert_eq!(file("opt/capvm/hello"), b"hi");
        assert!(fw.items.contains(&(KEY_NB_CPUS, vec![2, 0])));
    }
}
