//! The MC146818 real-time clock and CMOS RAM behind ports 0x70/0x71, as
//! every PC has them: the guest reads the wall clock here at boot.
//!
//! The clock is the host's (CLOCK_REALTIME) plus an offset the guest sets by
//! writing a time or date register; nothing is kept across runs. Register
//! B's data mode (BCD or binary) and hour format (24 or 12) are honoured;
//! SET freezes the clock while the guest writes it. No interrupts: the
//! periodic, alarm and update-ended flags never rise, so IRQ 8 stays low,
//! and UIP always reads 0 (a read never races an update here).

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
/// The century register the FADT names (as QEMU and bhyve).
pub const CENTURY: u8 = capvm_ipc::memmap::CMOS_CENTURY;

/// Register A: the 32.768 kHz time base and a 1024 Hz rate, the power-on
/// value; the guest may change the rate (nothing uses it).
const A_DEFAULT: u8 = 0x26;
const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// Register D: the battery is good.
const D_VRT: u8 = 0x80;
/// 12-hour mode marks PM in the hours register's top bit.
const PM: u8 = 0x80;

pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// While SET is on: the guest's time, frozen.
    frozen: Option<i64>,
}

impl Default for Rtc {
    fn default() -> Rtc {
        let mut ram = [0u8; 128];
        ram[STATUS_A as usize] = A_DEFAULT;
        ram[STATUS_B as usize] = B_24H;
        ram[STATUS_D as usize] = D_VRT;
        Rtc { index: 0, ram, offset: 0, frozen: None }
    }
}

impl Rtc {
    /// An RTC whose CMOS RAM also says, as a PC BIOS's setup would, how
    /// much memory there is and how many CPUs: firmware without fw_cfg
    /// sizes RAM from it (SeaBIOS reads 0x30/0x31, 0x34/0x35, 0x5b-0x5d
    /// and 0x5f).
    pub fn with_memory(low_ram_end: u64, high_ram: u64, cpus: u32) -> Rtc {
        let mut rtc = Rtc::default();
        let mut put16 = |at: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            rtc.ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        // Base memory in KiB; extended memory (above 1 MiB) in KiB, twice;
        // memory above 16 MiB in 64 KiB blocks.
        put16(0x15, 640);
        put16(0x17, low_ram_end.saturating_sub(1 << 20) >> 10);
        put16(0x30, low_ram_end.saturating_sub(1 << 20) >> 10);
        put16(0x34, low_ram_end.saturating_sub(16 << 20) >> 16);
        // Memory above 4 GiB in 64 KiB blocks, 24 bits.
        let high = (high_ram >> 16).min(0xff_ffff) as u32;
        rtc.ram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
        rtc.ram[0x5f] = cpus.saturating_sub(1).min(255) as u8;
        rtc
    }

    /// Port 0x70: selects a register; bit 7 (NMI disable) is dropped.
    pub fn select(&mut self, index: u8) {
        self.index = index & 0x7f;
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// Port 0x71 read, `host_now` being the host's time in seconds.
    pub fn read(&mut self, host_now: i64) -> u8 {
        let i = self.index;
        match i {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                let t = Fields::of(self.guest_now(host_now));
                self.encode(i, &t)
            }
            STATUS_A => self.ram[i as usize] & !A_UIP,
            // Reading C clears its flags; none is ever set.
            STATUS_C => 0,
            _ => self.ram[i as usize],
        }
    }

    /// Port 0x71 write.
    pub fn write(&mut self, value: u8, host_now: i64) {
        let i = self.index;
        match i {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                let mut t = Fields::of(self.guest_now(host_now));
                if let Some(v) = self.decode(i, value) {
                    t.set(i, v);
                    self.set_guest_now(t.seconds(), host_now);
                }
            }
            STATUS_B => {
                let was_set = self.ram[i as usize] & B_SET != 0;
                self.ram[i as usize] = value;
                match (was_set, value & B_SET != 0) {
                    (false, true) => self.frozen = Some(self.guest_now(host_now)),
                    (true, false) => {
                        if let Some(t) = self.frozen.take() {
                            self.offset = t - host_now;
                        }
                    }
                    _ => {}
                }
            }
            STATUS_C | STATUS_D => {}
            _ => self.ram[i as usize] = value,
        }
    }

    fn guest_now(&self, host_now: i64) -> i64 {
        self.frozen.unwrap_or(host_now + self.offset)
    }

    fn set_guest_now(&mut self, t: i64, host_now: i64) {
        match self.frozen {
            Some(_) => self.frozen = Some(t),
            None => self.offset = t - host_now,
        }
    }

    fn b(&self) -> u8 {
        self.ram[STATUS_B as usize]
    }

    /// A field as the guest reads it: BCD unless binary mode, hours in
    /// the chosen format.
    fn encode(&self, reg: u8, t: &Fields) -> u8 {
        let mut v = t.get(reg);
        let mut pm = 0;
        if reg == HOURS && self.b() & B_24H == 0 {
            pm = if v >= 12 { PM } else { 0 };
            v = match v % 12 {
                0 => 12,
                h => h,
            };
        }
        let v = if self.b() & B_BINARY != 0 { v } else { to_bcd(v) };
        v | pm
    }

    /// A field the guest wrote, in its mode; None if it is not a number
    /// in that mode.
    fn decode(&self, reg: u8, value: u8) -> Option<u8> {
        let (pm, raw) =
            if reg == HOURS && self.b() & B_24H == 0 { (value & PM != 0, value & !PM) } else { (false, value) };
        let v = if self.b() & B_BINARY != 0 { raw } else { from_bcd(raw)? };
        if reg == HOURS && self.b() & B_24H == 0 {
            return match v {
                1..=12 => Some(v % 12 + if pm { 12 } else { 0 }),
                _ => None,
            };
        }
        Some(v)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    (v >> 4 < 10 && v & 0xf < 10).then(|| (v >> 4) * 10 + (v & 0xf))
}

/// A moment broken into the RTC's fields (proleptic Gregorian, UTC).
#[derive(Debug, PartialEq)]
struct Fields {
    sec: u8,
    min: u8,
    hour: u8,
    weekday: u8,
    day: u8,
    month: u8,
    year: i64,
}

impl Fields {
    fn of(t: i64) -> Fields {
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        Fields {
            sec: (secs % 60) as u8,
            min: (secs / 60 % 60) as u8,
            hour: (secs / 3600) as u8,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
            day,
            month,
            year,
        }
    }

    fn seconds(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        days * 86_400 + self.hour as i64 * 3600 + self.min as i64 * 60 + self.sec as i64
    }

    fn get(&self, reg: u8) -> u8 {
        match reg {
            SECONDS => self.sec,
            MINUTES => self.min,
            HOURS => self.hour,
            WEEKDAY => self.weekday,
            DAY => self.day,
            MONTH => self.month,
            YEAR => self.year.rem_euclid(100) as u8,
            _ => self.year.div_euclid(100).clamp(0, 99) as u8,
        }
    }

    /// Sets a field, keeping the date valid (out-of-range values are
    /// clamped: the guest gets the nearest time it could have meant).
    fn set(&mut self, reg: u8, v: u8) {
        match reg {
            SECONDS => self.sec = v.min(59),
            MINUTES => self.min = v.min(59),
            HOURS => self.hour = v.min(23),
            DAY => self.day = v.clamp(1, 31),
            MONTH => self.month = v.clamp(1, 12),
            YEAR => self.year = self.year.div_euclid(100) * 100 + v.min(99) as i64,
            CENTURY => self.year = v.min(99) as i64 * 100 + self.year.rem_euclid(100),
            _ => {} // the weekday follows from the date
        }
        self.day = self.day.min(days_in_month(self.year, self.month));
    }
}

fn days_in_month(year: i64, month: u8) -> u8 {
    let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    (days_from_civil(y, m, 1) - days_from_civil(year, month, 1)) as u8
}

/// Days since 1970-01-01 of a date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + (month <= 2) as i64;
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21 13:45:07 UTC, a Saturday.
    const NOW: i64 = 1_795_268_707;

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.select(reg);
        rtc.read(NOW)
    }

    #[test]
    fn rtc_reads_the_host_clock_in_bcd_24_hour_by_default() {
        let mut rtc = Rtc::default();
        let got: Vec<u8> =
            [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY].iter().map(|&r| read(&mut rtc, r)).collect();
        assert_eq!(got, [0x07, 0x45, 0x13, 0x07, 0x21, 0x11, 0x26, 0x20]);
        assert_eq!(read(&mut rtc, STATUS_A) & A_UIP, 0);
        assert_eq!(read(&mut rtc, STATUS_D), D_VRT);
        // Bit 7 of the index is the NMI mask, not part of the register.
        rtc.select(0x80 | HOURS);
        assert_eq!(rtc.read(NOW), 0x13);
    }

    #[test]
    fn rtc_binary_and_12_hour_modes_change_only_the_encoding() {
        let mut rtc = Rtc::default();
        rtc.select(STATUS_B);
        rtc.write(B_BINARY, NOW);
        assert_eq!(read(&mut rtc, HOURS), 1 | PM);
        assert_eq!(read(&mut rtc, MINUTES), 45);
        assert_eq!(read(&mut rtc, YEAR), 26);
    }

    #[test]
    fn rtc_a_guest_set_clock_keeps_running_from_there() {
        let mut rtc = Rtc::default();
        // SET, then 2031-02-28 23:59:50, then let it run.
        rtc.select(STATUS_B);
        rtc.write(B_SET | B_24H, NOW);
        for (reg, v) in [(YEAR, 0x31), (MONTH, 0x02), (DAY, 0x28), (HOURS, 0x23), (MINUTES, 0x59), (SECONDS, 0x50)] {
            rtc.select(reg);
            rtc.write(v, NOW);
        }
        rtc.select(STATUS_B);
        rtc.write(B_24H, NOW);
        // Fifteen host seconds later it is March.
        let at = |rtc: &mut Rtc, reg| {
            rtc.select(reg);
            rtc.read(NOW + 15)
        };
        assert_eq!(
            [at(&mut rtc, MONTH), at(&mut rtc, DAY), at(&mut rtc, HOURS), at(&mut rtc, SECONDS)],
            [0x03, 0x01, 0x00, 0x05]
        );
        // Nonsense (not BCD) changes nothing.
        rtc.select(MINUTES);
        rtc.write(0xaa, NOW + 15);
        assert_eq!(at(&mut rtc, MINUTES), 0x00);
    }

    #[test]
    fn rtc_cmos_ram_keeps_what_the_guest_wrote() {
        let mut rtc = Rtc::default();
        rtc.select(0x40);
        rtc.write(0x5a, NOW);
        assert_eq!(read(&mut rtc, 0x40), 0x5a);
        rtc.select(STATUS_C);
        rtc.write(0xff, NOW);
        assert_eq!(read(&mut rtc, STATUS_C), 0);
    }

    #[test]
    fn rtc_dates_round_trip_over_centuries_and_leap_days() {
        for t in [0, 951_782_400 /* 2000-02-29 */, NOW, 4_107_542_399 /* 2100-02-28 23:59:59 */, -86_400] {
            assert_eq!(Fields::of(t).seconds(), t);
        }
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2024, 2), 29);
    }
}
