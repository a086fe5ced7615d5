//! The platform registers the vCPU runner owns itself: those that stop or
//! reset the whole VM — the reset control register (0xcf9), the i8042's
//! reset line (0x64), ACPI PM1a (0x400-0x405, bhyve's ports) — and two
//! clocks that hold no host resource and only read the host's time: the
//! ACPI PM timer (0x408) and the RTC with its CMOS RAM (0x70/0x71,
//! `rtc.rs`). A device server for them would add a process and a hop to
//! every read (Linux reads the PM timer in loops while it calibrates) for
//! no less privilege: each is a few registers of arithmetic on a clock.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use capvm_ipc::VmEvent;

use crate::rtc::Rtc;

pub use capvm_ipc::memmap::{PM1A_CNT_BLK, PM1A_EVT_BLK, RESET_PORT as RESET_CONTROL, RTC_DATA, RTC_INDEX};

const RESET_CONTROL_RST_CPU: u8 = 1 << 2;
pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;
const I8042_CMD_PULSE_RESET: u8 = 0xfe;
/// PM1a_EN, the upper half of the event block: the guest enables fixed
/// events there (no event ever fires, but the value must stick).
const PM1A_EN: u16 = PM1A_EVT_BLK + 2;
const PM1_SCI_EN: u16 = 1 << 0;
const PM1_SLP_EN: u16 = 1 << 13;
const PM1_SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_S5: u16 = capvm_ipc::memmap::SLP_TYP_S5 as u16;
/// The ACPI PM timer: a free-running 32-bit counter (the FADT sets
/// TMR_VAL_EXT) at 3.579545 MHz.
pub const PM_TMR: u16 = capvm_ipc::memmap::PM_TMR_BLK;
const PM_TMR_HZ: u128 = 3_579_545;
/// POST code port: writes are ignored silently.
pub const POST: u16 = 0x80;

pub struct Platform {
    reset_control: AtomicU8,
    pm1_en: AtomicU16,
    pm1_cnt: AtomicU16,
    /// The PM timer counts from here.
    start: Instant,
    /// One index register for all vCPUs, as on a PC: guests serialise
    /// their CMOS accesses themselves.
    rtc: Mutex<Rtc>,
    /// An i8042 server answers ports 0x60 and 0x64 (a VM with a display);
    /// the runner keeps only the controller's pulse reset.
    pub i8042_served: bool,
}

impl Default for Platform {
    fn default() -> Platform {
        Platform {
            reset_control: AtomicU8::new(0),
            pm1_en: AtomicU16::new(0),
            pm1_cnt: AtomicU16::new(0),
            start: Instant::now(),
            rtc: Mutex::new(Rtc::default()),
            i8042_served: false,
        }
    }
}

impl Platform {
    /// The platform of a VM with this RAM (low RAM ends at `low_ram_end`,
    /// `high_ram` bytes above 4 GiB) and `cpus` vCPUs, which the CMOS says.
    pub fn new(low_ram_end: u64, high_ram: u64, cpus: u32) -> Platform {
        Platform { rtc: Mutex::new(Rtc::with_memory(low_ram_end, high_ram, cpus)), ..Platform::default() }
    }
}

/// The host's wall clock in seconds (0 if it is before 1970).
fn host_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What a platform access did.
pub enum Outcome {
    /// Not a platform port.
    NotMine,
    /// Handled; for reads, the value.
    Done(u64),
    /// Handled, and it ends the VM run.
    Stop(VmEvent),
}

impl Platform {
    /// The RTC, even if a vCPU thread panicked holding it (its state is
    /// plain bytes, always valid).
    fn rtc(&self) -> std::sync::MutexGuard<'_, Rtc> {
        self.rtc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read(&self, port: u16, size: u8) -> Outcome {
        match (port, size) {
            (PM_TMR, 4) => Outcome::Done((self.start.elapsed().as_nanos() * PM_TMR_HZ / 1_000_000_000) as u32 as u64),
            (RTC_INDEX, 1) => Outcome::Done(self.rtc().index() as u64),
            (RTC_DATA, 1) => Outcome::Done(self.rtc().read(host_now()) as u64),
            (RESET_CONTROL, 1) => Outcome::Done(self.reset_control.load(Ordering::Relaxed) as u64),
            // No keyboard: status says output buffer empty, input buffer empty.
            (I8042_DATA | I8042_COMMAND, 1) if !self.i8042_served => Outcome::Done(0),
            (PM1A_EN, 2) => Outcome::Done(self.pm1_en.load(Ordering::Relaxed) as u64),
            (PM1A_EVT_BLK..=0x403, _) => Outcome::Done(0),
            (PM1A_CNT_BLK, 2) => Outcome::Done((self.pm1_cnt.load(Ordering::Relaxed) | PM1_SCI_EN) as u64),
            (POST, _) => Outcome::Done(0xff),
            _ => Outcome::NotMine,
        }
    }

    pub fn write(&self, port: u16, size: u8, value: u64) -> Outcome {
        match (port, size) {
            (PM_TMR, _) => Outcome::Done(0),
            (RTC_INDEX, 1) => {
                self.rtc().select(value as u8);
                Outcome::Done(0)
            }
            (RTC_DATA, 1) => {
                self.rtc().write(value as u8, host_now());
                Outcome::Done(0)
            }
            (RESET_CONTROL, 1) => {
                let v = value as u8;
                self.reset_control.store(v & !RESET_CONTROL_RST_CPU, Ordering::Relaxed);
                if v & RESET_CONTROL_RST_CPU != 0 {
                    return Outcome::Stop(VmEvent::Reboot);
                }
                Outcome::Done(0)
            }
            (I8042_COMMAND, 1) if value as u8 == I8042_CMD_PULSE_RESET => Outcome::Stop(VmEvent::Reboot),
            (I8042_DATA | I8042_COMMAND, 1) if !self.i8042_served => Outcome::Done(0),
            (PM1A_EN, 2) => {
                self.pm1_en.store(value as u16, Ordering::Relaxed);
                Outcome::Done(0)
            }
            (PM1A_EVT_BLK..=0x403, _) => Outcome::Done(0),
            (PM1A_CNT_BLK, 2) => {
                let v = value as u16;
                if v & PM1_SLP_EN != 0 && (v >> PM1_SLP_TYP_SHIFT) & 0x7 == SLP_TYP_S5 {
                    return Outcome::Stop(VmEvent::PowerOff);
                }
                self.pm1_cnt.store(v & !PM1_SLP_EN, Ordering::Relaxed);
                Outcome::Done(0)
            }
            (POST, _) => Outcome::Done(0),
            _ => Outcome::NotMine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_cf9_with_rst_cpu_reboots() {
        let p = Platform::default();
        assert!(matches!(p.write(RESET_CONTROL, 1, 0x2), Outcome::Done(_)));
        assert!(matches!(p.read(RESET_CONTROL, 1), Outcome::Done(2)));
        assert!(matches!(p.write(RESET_CONTROL, 1, 0x6), Outcome::Stop(VmEvent::Reboot)));
    }

    #[test]
    fn platform_i8042_pulse_reset_reboots() {
        let p = Platform::default();
        assert!(matches!(p.write(I8042_COMMAND, 1, 0xfe), Outcome::Stop(VmEvent::Reboot)));
        assert!(matches!(p.write(I8042_COMMAND, 1, 0xaa), Outcome::Done(_)));
        // With an i8042 server, everything but the reset goes to it.
        let p = Platform { i8042_served: true, ..Platform::default() };
        assert!(matches!(p.write(I8042_COMMAND, 1, 0xfe), Outcome::Stop(VmEvent::Reboot)));
        assert!(matches!(p.write(I8042_COMMAND, 1, 0xaa), Outcome::NotMine));
        assert!(matches!(p.read(I8042_DATA, 1), Outcome::NotMine));
    }

    #[test]
    fn platform_pm1_s5_powers_off_and_other_states_do_not() {
        let p = Platform::default();
        assert!(matches!(p.write(PM1A_CNT_BLK, 2, (5 << 10) | (1 << 13)), Outcome::Stop(VmEvent::PowerOff)));
        assert!(matches!(p.write(PM1A_CNT_BLK, 2, (3 << 10) | (1 << 13)), Outcome::Done(_)));
        assert!(matches!(p.write(PM1A_CNT_BLK, 2, 5 << 10), Outcome::Done(_)));
        assert!(matches!(p.read(PM1A_CNT_BLK, 2), Outcome::Done(v) if v & 1 == 1));
        // The enable register keeps what the guest wrote (Linux checks GBL_EN).
        assert!(matches!(p.write(PM1A_EN, 2, 1 << 5), Outcome::Done(_)));
        assert!(matches!(p.read(PM1A_EN, 2), Outcome::Done(0x20)));
    }

    #[test]
    fn platform_pm_timer_counts_at_3_58_mhz() {
        let p = Platform::default();
        let Outcome::Done(a) = p.read(PM_TMR, 4) else { panic!() };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let Outcome::Done(b) = p.read(PM_TMR, 4) else { panic!() };
        // At least 20 ms worth of ticks (a sleep is never shorter).
        assert!(b.wrapping_sub(a) as u32 >= 71_591, "{a} -> {b}");
    }

    #[test]
    fn platform_rtc_answers_on_0x70_and_0x71() {
        let p = Platform::default();
        assert!(matches!(p.write(RTC_INDEX, 1, 0x0d), Outcome::Done(_)));
        assert!(matches!(p.read(RTC_DATA, 1), Outcome::Done(0x80)));
        assert!(matches!(p.read(RTC_INDEX, 1), Outcome::Done(0x0d)));
    }

    #[test]
    fn platform_leaves_other_ports_alone() {
        let p = Platform::default();
        assert!(matches!(p.read(0x3f8, 1), Outcome::NotMine));
        assert!(matches!(p.write(0xcf8, 4, 0), Outcome::NotMine));
    }
}
