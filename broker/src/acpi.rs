//! The guest's ACPI tables, built with the acpi_tables crate and written to
//! guest RAM in the BIOS area (0xe0000), where a guest that scans for the
//! RSDP finds it; PVH and Linux boot protocols also get its address.
//!
//! - FADT: PM1a event/control blocks at bhyve's ports 0x400/0x404 (the
//!   runner owns them: SLP_TYP 5 + SLP_EN powers off), the 32-bit PM
//!   timer at 0x408, the reset register 0xcf9 with value 6 (the runner
//!   resets the VM), the RTC's century register, no 8042.
//! - MADT: one enabled local APIC per vCPU (APIC ID = vCPU index, which
//!   the runner's CPUID reports too), the in-kernel IOAPIC (GSIs 0-23) and
//!   a PC's interrupt source overrides (IRQ 0 → GSI 2, SCI level/high).
//! - MCFG: ECAM for bus 0.
//! - DSDT: the PCI root bridge with its bus, I/O and memory windows and
//!   its interrupt routing (_PRT: every slot's INTA#-INTD# to IOAPIC pins
//!   16-23, `memmap::pci_intx_gsi`), and \_S5 for poweroff; the ECAM
//!   window as a motherboard resource; the RTC at 0x70 (no interrupt).

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{self, AccessSize, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::Aml;
use acpi_tables::{facs::FACS, mcfg::MCFG, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT};
use capvm_ipc::memmap;

/// Where the tables go: the BIOS read-only area, reserved in the E820 map.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The tables must end below the BIOS area's end.
const AREA_END: u64 = 0x10_0000;

const OEM_ID: [u8; 6] = *b"CAPVM ";
const OEM_TABLE: [u8; 8] = *b"CAPVMTBL";
const OEM_REVISION: u32 = 1;

use memmap::{CMOS_CENTURY, PM1A_CNT_BLK, PM1A_EVT_BLK, PM_TMR_BLK, RESET_VALUE, SLP_TYP_S5};

/// What the tables describe.
pub struct Platform {
    pub cpus: u32,
    /// First address above guest RAM: where the 64-bit BAR window starts.
    pub ram_top: u64,
    /// An i8042 with a PS/2 keyboard and mouse (a VM with a display).
    pub i8042: bool,
}

/// The tables laid out from RSDP_ADDR: (guest address, bytes) pairs.
pub fn tables(p: &Platform) -> Vec<(u64, Vec<u8>)> {
    // The RSDP comes first at a fixed address; the rest follow.
    let (mut placed, xsdt, next) = place_tables(p, RSDP_ADDR + 64);
    assert!(next <= AREA_END, "ACPI tables overflow the BIOS area");
    placed.push((RSDP_ADDR, bytes(&Rsdp::new(OEM_ID, xsdt))));
    placed
}

/// The tables as firmware gets them through fw_cfg: one blob whose
/// pointers hold offsets into it, the RSDP, and the loader script that
/// tells the firmware where to put both and how to fix the pointers and
/// checksums up (QEMU's `etc/table-loader`; docs/firmware.md).
pub struct LoaderFiles {
    pub tables: Vec<u8>,
    pub rsdp: Vec<u8>,
    pub loader: Vec<u8>,
}

pub const TABLES_FILE: &str = "etc/acpi/tables";
pub const RSDP_FILE: &str = "etc/acpi/rsdp";

pub fn loader_files(p: &Platform) -> LoaderFiles {
    // From offset 64: no table sits at 0, so a pointer field that holds 0
    // is one the table leaves unset.
    let (placed, xsdt, end) = place_tables(p, 64);
    let mut tables = vec![0u8; end as usize];
    for (at, t) in &placed {
        tables[*at as usize..*at as usize + t.len()].copy_from_slice(t);
    }
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt));
    let mut loader = Loader::default();
    loader.allocate(RSDP_FILE, 16, ZONE_FSEG);
    loader.allocate(TABLES_FILE, 64, ZONE_HIGH);
    for (at, t) in &placed {
        let at = *at as u32;
        // The pointer fields: the FADT's FACS and DSDT (32- and 64-bit),
        // the XSDT's entries.
        let fields: Vec<(u32, u8)> = match &t[0..4] {
            b"FACP" => vec![(36, 4), (40, 4), (132, 8), (140, 8)],
            b"XSDT" => (36..t.len() as u32).step_by(8).map(|o| (o, 8)).collect(),
            _ => Vec::new(),
        };
        for (off, size) in fields {
            let o = off as usize;
            if t[o..o + size as usize].iter().any(|&b| b != 0) {
                loader.add_pointer(TABLES_FILE, TABLES_FILE, at + off, size);
            }
        }
        if &t[0..4] != b"FACS" {
            loader.add_checksum(TABLES_FILE, at + 9, at, t.len() as u32);
        }
    }
    for (off, size) in [(16u32, 4u8), (24, 8)] {
        let o = off as usize;
        if rsdp[o..o + size as usize].iter().any(|&b| b != 0) {
            loader.add_pointer(RSDP_FILE, TABLES_FILE, off, size);
        }
    }
    loader.add_checksum(RSDP_FILE, 8, 0, 20);
    loader.add_checksum(RSDP_FILE, 32, 0, rsdp.len() as u32);
    LoaderFiles { tables, rsdp, loader: loader.0 }
}

const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;

/// QEMU's table-loader commands, 128 bytes each.
#[derive(Default)]
struct Loader(Vec<u8>);

impl Loader {
    fn command(&mut self, kind: u32, fields: &[&[u8]]) {
        let mut c = vec![0u8; 128];
        c[0..4].copy_from_slice(&kind.to_le_bytes());
        let mut at = 4;
        for f in fields {
            c[at..at + f.len()].copy_from_slice(f);
            at += f.len();
        }
        self.0.extend(c);
    }

    fn name(file: &str) -> [u8; 56] {
        let mut n = [0u8; 56];
        n[..file.len()].copy_from_slice(file.as_bytes());
        n
    }

    fn allocate(&mut self, file: &str, align: u32, zone: u8) {
        self.command(1, &[&Self::name(file), &align.to_le_bytes(), &[zone]]);
    }

    /// Adds `src`'s address to the `size`-byte value at `offset` in `dest`.
    fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) {
        self.command(2, &[&Self::name(dest), &Self::name(src), &offset.to_le_bytes(), &[size]]);
    }

    /// Sets the byte at `result` so that `[start, start + length)` sums to 0.
    fn add_checksum(&mut self, file: &str, result: u32, start: u32, length: u32) {
        self.command(3, &[&Self::name(file), &result.to_le_bytes(), &start.to_le_bytes(), &length.to_le_bytes()]);
    }
}

/// Places DSDT, FACS, FADT, MADT, MCFG and XSDT from `first`, 64-byte
/// aligned (FACS needs it). Returns them, the XSDT's address and the
/// aligned end of the last one.
fn place_tables(p: &Platform, first: u64) -> (Vec<(u64, Vec<u8>)>, u64, u64) {
    let mut placed: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = first;
    let mut place = |bytes: Vec<u8>| -> u64 {
        let addr = next;
        next = (addr + bytes.len() as u64).next_multiple_of(64);
        placed.push((addr, bytes));
        addr
    };

    let dsdt = place(dsdt(p));
    let facs = place(bytes(&FACS::new()));
    let fadt = place(fadt(dsdt, facs, p.i8042));
    let madt = place(madt(p));
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE, OEM_REVISION);
    mcfg.add_ecam(memmap::ECAM_BASE, 0, 0, 0);
    let mcfg = place(bytes(&mcfg));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, OEM_REVISION);
    for t in [fadt, madt, mcfg] {
        xsdt.add_entry(t);
    }
    let xsdt = place(bytes(&xsdt));
    (placed, xsdt, next)
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn fadt(dsdt: u64, facs: u64, i8042: bool) -> Vec<u8> {
    let io = |port: u16, bits: u8| GAS::new(gas::AddressSpace::SystemIo, bits, 0, AccessSize::Undefined, port as u64);
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .flag(Flags::TmrValExt);
    f.sci_int = u16::from(memmap::SCI_IRQ).into();
    // SMI_CMD 0: ACPI mode is always on; nothing to switch.
    f.pm1a_evt_blk = (PM1A_EVT_BLK as u32).into();
    f.pm1a_cnt_blk = (PM1A_CNT_BLK as u32).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.x_pm1a_evt_blk = io(PM1A_EVT_BLK, 32);
    f.x_pm1a_cnt_blk = io(PM1A_CNT_BLK, 16);
    f.pm_tmr_blk = (PM_TMR_BLK as u32).into();
    f.pm_tmr_len = 4;
    f.x_pm_tmr_blk = io(PM_TMR_BLK, 32);
    f.century = CMOS_CENTURY;
    f.reset_reg = GAS::new(gas::AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, memmap::RESET_PORT.into());
    f.reset_value = RESET_VALUE;
    // IA-PC boot architecture: no legacy devices (bit 0); an 8042 (bit 1)
    // only with a display, so the guest does not probe what is not there
    // (Linux believes a revision-2+ FADT without it); MSI works (bit 3 clear).
    f.iapc_boot_arch = if i8042 { 2u16 } else { 0 }.into();
    bytes(&f.finalize())
}

fn madt(p: &Platform) -> Vec<u8> {
    let mut m =
        MADT::new(OEM_ID, OEM_TABLE, OEM_REVISION, LocalInterruptController::Address(memmap::LAPIC_ADDR as u32));
    for cpu in 0..p.cpus {
        m.add_structure(ProcessorLocalApic::new(cpu as u8, cpu as u8, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the local APICs' (IDs share one space).
    m.add_structure(IoApic::new(p.cpus as u8, memmap::IOAPIC_ADDR as u32, 0));
    let mut table = bytes(&m);
    // The PIT's IRQ 0 is IOAPIC pin 2, as on every PC (the kernel crate
    // routes it there); the SCI is level-triggered, active high.
    append_structure(&mut table, &interrupt_source_override(0, 2, 0));
    append_structure(
        &mut table,
        &interrupt_source_override(memmap::SCI_IRQ, memmap::SCI_IRQ.into(), ACTIVE_HIGH | LEVEL),
    );
    table
}

/// MPS INTI flags of an interrupt source override.
const ACTIVE_HIGH: u16 = 0b01;
const LEVEL: u16 = 0b11 << 2;

/// MADT structure type 2 (ACPI 6.5, 5.2.12.5), which acpi_tables 0.2
/// does not have: ISA `irq` arrives at `gsi`.
fn interrupt_source_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut s = [2, 10, 0, irq, 0, 0, 0, 0, 0, 0];
    s[4..8].copy_from_slice(&gsi.to_le_bytes());
    s[8..10].copy_from_slice(&flags.to_le_bytes());
    s
}

/// Appends `structure` to a finished table, fixing its length and checksum.
fn append_structure(table: &mut Vec<u8>, structure: &[u8]) {
    table.extend_from_slice(structure);
    let len = table.len() as u32;
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    table[9] = 0u8.wrapping_sub(table.iter().fold(0u8, |a, &b| a.wrapping_add(b)));
}

fn dsdt(p: &Platform) -> Vec<u8> {
    let (mmio32_start, mmio32_end) = memmap::PCI_MMIO32;
    let mmio64_start = memmap::pci_mmio64_start(p.ram_top);
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio32_start as u32,
        (mmio32_end - 1) as u32,
        None,
    );
    let (high32_start, high32_end) = memmap::PCI_MMIO32_HIGH;
    let mmio32_high = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        high32_start as u32,
        (high32_end - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        memmap::PCI_MMIO64_END - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_ports, &io_low, &io_high, &mmio32, &mmio32_high, &mmio64]);
    // _PRT entries name a GSI directly (source 0): level-triggered,
    // active-low, as ACPI says for such entries; KVM's IOAPIC takes an
    // asserted line whatever the polarity.
    let routes: Vec<[u32; 4]> = (0..32u8)
        .flat_map(|slot| {
            (1..=4u8).map(move |pin| [(slot as u32) << 16 | 0xffff, pin as u32 - 1, 0, memmap::pci_intx_gsi(slot, pin)])
        })
        .collect();
    let routes: Vec<aml::Package> =
        routes.iter().map(|r| aml::Package::new(r.iter().map(|v| v as &dyn Aml).collect())).collect();
    let prt = aml::Package::new(routes.iter().map(|p| p as &dyn Aml).collect());
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_ADR".into(), &aml::ZERO),
        aml::Name::new("_SEG".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
        aml::Name::new("_PRT".into(), &prt),
    ];
    let pci0 = aml::Device::new("_SB_.PCI0".into(), names.iter().map(|n| n as &dyn Aml).collect());
    // The ECAM window as a motherboard resource, so the guest trusts MCFG.
    let ecam = aml::Memory32Fixed::new(false, memmap::ECAM_BASE as u32, memmap::ECAM_SIZE as u32);
    let ecam_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mb_hid = aml::EISAName::new("PNP0C02");
    let mb_names = [
        aml::Name::new("_HID".into(), &mb_hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &ecam_crs),
    ];
    let motherboard = aml::Device::new("_SB_.MRES".into(), mb_names.iter().map(|n| n as &dyn Aml).collect());
    // The RTC, so the guest's driver finds it; no IRQ: it never interrupts.
    let rtc_ports = aml::IO::new(memmap::RTC_INDEX, memmap::RTC_INDEX, 1, 2);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_ports]);
    let rtc_hid = aml::EISAName::new("PNP0B00");
    let rtc_names = [aml::Name::new("_HID".into(), &rtc_hid), aml::Name::new("_CRS".into(), &rtc_crs)];
    let rtc = aml::Device::new("_SB_.RTC_".into(), rtc_names.iter().map(|n| n as &dyn Aml).collect());
    // The i8042's keyboard (ports 0x60/0x64, IRQ 1) and mouse (IRQ 12),
    // for guests that find them through ACPI (Linux's i8042 PnP probe).
    let kbd_ports = [aml::IO::new(0x60, 0x60, 1, 1), aml::IO::new(0x64, 0x64, 1, 1)];
    let irq = |n| aml::Interrupt::new(true, true, false, false, n);
    let (kbd_irq, mou_irq) = (irq(1), irq(12));
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_ports[0], &kbd_ports[1], &kbd_irq]);
    let mou_crs = aml::ResourceTemplate::new(vec![&mou_irq]);
    let (kbd_hid, mou_hid) = (aml::EISAName::new("PNP0303"), aml::EISAName::new("PNP0F13"));
    let kbd_names = [aml::Name::new("_HID".into(), &kbd_hid), aml::Name::new("_CRS".into(), &kbd_crs)];
    let mou_names = [aml::Name::new("_HID".into(), &mou_hid), aml::Name::new("_CRS".into(), &mou_crs)];
    let kbd = aml::Device::new("_SB_.KBD_".into(), kbd_names.iter().map(|n| n as &dyn Aml).collect());
    let mou = aml::Device::new("_SB_.MOU_".into(), mou_names.iter().map(|n| n as &dyn Aml).collect());
    let s5 = aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]);
    let s5 = aml::Name::new("_S5_".into(), &s5);
    let mut body = Vec::new();
    pci0.to_aml_bytes(&mut body);
    motherboard.to_aml_bytes(&mut body);
    rtc.to_aml_bytes(&mut body);
    if p.i8042 {
        kbd.to_aml_bytes(&mut body);
        mou.to_aml_bytes(&mut body);
    }
    s5.to_aml_bytes(&mut body);
    let mut sdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE, OEM_REVISION);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {

    /// Runs a table-loader script as firmware does, with the tables blob
    /// at `tables_at` and the RSDP at `rsdp_at`.
    fn run_loader(f: &LoaderFiles, tables_at: u64, rsdp_at: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut tables, mut rsdp) = (f.tables.clone(), f.rsdp.clone());
        let name = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches('\0').to_string();
        let le32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        for c in f.loader.chunks_exact(128) {
            match le32(&c[0..4]) {
                1 => {}
                2 => {
                    let (dest, src) = (name(&c[4..60]), name(&c[60..116]));
                    let (off, size) = (le32(&c[116..120]), c[120] as usize);
                    let base = if src == TABLES_FILE { tables_at } else { rsdp_at };
                    let file = if dest == TABLES_FILE { &mut tables } else { &mut rsdp };
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(&file[off..off + size]);
                    let new = (u64::from_le_bytes(v) + base).to_le_bytes();
                    file[off..off + size].copy_from_slice(&new[..size]);
                }
                3 => {
                    let file = if name(&c[4..60]) == TABLES_FILE { &mut tables } else { &mut rsdp };
                    let (result, start, len) = (le32(&c[60..64]), le32(&c[64..68]), le32(&c[68..72]));
                    let sum = file[start..start + len].iter().fold(0u8, |a, &b| a.wrapping_add(b));
                    file[result] = file[result].wrapping_sub(sum);
                }
                other => panic!("unknown loader command {other}"),
            }
        }
        (tables, rsdp)
    }

    #[test]
    fn acpi_fw_cfg_loader_rebuilds_the_direct_boot_tables_byte_for_byte() {
        let p = Platform { cpus: 2, ram_top: 256 << 20, i8042: true };
        let f = loader_files(&p);
        // Loaded where a direct boot puts them, the tables come out the same.
        let (tables, rsdp) = run_loader(&f, RSDP_ADDR, RSDP_ADDR);
        for (addr, want) in super::tables(&p) {
            let got = if addr == RSDP_ADDR { &rsdp[..] } else { &tables[(addr - RSDP_ADDR) as usize..][..want.len()] };
            assert_eq!(got, &want[..], "table at {addr:#x} ({:?})", String::from_utf8_lossy(&want[..4]));
        }
        // Anywhere else, every checksum still holds.
        let (tables, rsdp) = run_loader(&f, 0x7fe_0000, 0xf_5a00);
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0);
        let xsdt_at = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        assert!(xsdt_at > 0x7fe_0000, "{xsdt_at:#x}");
        let xsdt = &tables[(xsdt_at - 0x7fe_0000) as usize..];
        assert_eq!(&xsdt[..4], b"XSDT");
    }

    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn find<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8]) -> &'a (u64, Vec<u8>) {
        tables.iter().find(|(_, t)| t.starts_with(sig)).unwrap()
    }

    #[test]
    fn tables_checksum_link_up_and_fit_the_bios_area() {
        let t = tables(&Platform { cpus: 2, ram_top: 256 << 20, i8042: false });
        let (rsdp_at, rsdp) = find(&t, b"RSD PTR ");
        assert_eq!(*rsdp_at, RSDP_ADDR);
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        for sig in [&b"XSDT"[..], b"FACP", b"APIC", b"MCFG", b"DSDT"] {
            let (at, bytes) = find(&t, sig);
            assert!(checksum_ok(bytes), "{}", String::from_utf8_lossy(sig));
            assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize, bytes.len());
            assert!(*at >= RSDP_ADDR && at + bytes.len() as u64 <= AREA_END);
        }
        // The RSDP names the XSDT, the XSDT the FADT, MADT and MCFG.
        let xsdt_at = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let (at, xsdt) = find(&t, b"XSDT");
        assert_eq!(xsdt_at, *at);
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        for sig in [&b"FACP"[..], b"APIC", b"MCFG"] {
            assert!(entries.contains(&find(&t, sig).0));
        }
        // Two local APICs (type 0), one IOAPIC (type 1), two overrides (type 2) after the 44-byte header.
        let madt = &find(&t, b"APIC").1;
        let types: Vec<u8> = {
            let (mut at, mut v) = (44, Vec::new());
            while at < madt.len() {
                v.push(madt[at]);
                at += madt[at + 1] as usize;
            }
            v
        };
        assert_eq!(types, vec![0, 0, 1, 2, 2]);
        // IRQ 0 arrives at GSI 2.
        assert_eq!(madt[72..82], [2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
        // The DSDT holds the root bridge and \_S5.
        let dsdt = &find(&t, b"DSDT").1;
        assert!(dsdt.windows(4).any(|w| w == b"PCI0") && dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"_PRT") && dsdt.windows(4).any(|w| w == b"RTC_"));
        // The FADT names the PM timer (PM_TMR_BLK at 76, its length at
        // 91) and the century register (108).
        let fadt = &find(&t, b"FACP").1;
        assert_eq!(u32::from_le_bytes(fadt[76..80].try_into().unwrap()), 0x408);
        assert_eq!((fadt[91], fadt[108]), (4, 0x32));
    }
}
