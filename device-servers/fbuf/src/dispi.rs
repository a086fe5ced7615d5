//! The Bochs VBE "DISPI" registers, as QEMU's bochs-display answers them
//! at BAR 2 + 0x500: sixteen-bit registers at index * 2. The guest writes
//! a resolution and depth while the display is disabled, then enables it;
//! the virtual width and the offsets pan a larger picture. Only 32 bits
//! per pixel is shown (what every driver of this device picks); another
//! depth leaves the display off and is counted.

use capvm_ipc::display::{Mode, MAX_SIZE, VRAM_SIZE};

pub const INDEX_ID: u16 = 0;
pub const INDEX_XRES: u16 = 1;
pub const INDEX_YRES: u16 = 2;
pub const INDEX_BPP: u16 = 3;
pub const INDEX_ENABLE: u16 = 4;
pub const INDEX_BANK: u16 = 5;
pub const INDEX_VIRT_WIDTH: u16 = 6;
pub const INDEX_VIRT_HEIGHT: u16 = 7;
pub const INDEX_X_OFFSET: u16 = 8;
pub const INDEX_Y_OFFSET: u16 = 9;
pub const INDEX_VIDEO_MEMORY_64K: u16 = 10;
const REGISTERS: usize = 11;

/// The newest interface revision (what bochs-display reports).
pub const ID5: u16 = 0xb0c5;
pub const ENABLED: u16 = 0x01;
/// While set, XRES/YRES/BPP read back their maxima.
pub const GETCAPS: u16 = 0x02;
pub const LFB_ENABLED: u16 = 0x40;
pub const NOCLEARMEM: u16 = 0x80;
const MAX_BPP: u16 = 32;

pub struct Dispi {
    regs: [u16; REGISTERS],
}

/// What a register write did to the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The display shows this mode now, or is off (None).
    Mode(Option<Mode>),
    /// Enabled with a depth the display does not show.
    UnsupportedDepth(u16),
}

impl Default for Dispi {
    fn default() -> Self {
        let mut regs = [0; REGISTERS];
        regs[INDEX_ID as usize] = ID5;
        regs[INDEX_VIDEO_MEMORY_64K as usize] = (VRAM_SIZE / 0x10000) as u16;
        Dispi { regs }
    }
}

impl Dispi {
    fn reg(&self, i: u16) -> u16 {
        self.regs[i as usize]
    }

    fn enabled(&self) -> bool {
        self.reg(INDEX_ENABLE) & ENABLED != 0
    }

    pub fn read(&self, index: u16) -> u16 {
        let caps = self.reg(INDEX_ENABLE) & GETCAPS != 0;
        match index {
            INDEX_XRES if caps => MAX_SIZE.0 as u16,
            INDEX_YRES if caps => MAX_SIZE.1 as u16,
            INDEX_BPP if caps => MAX_BPP,
            i if (i as usize) < REGISTERS => self.reg(i),
            _ => 0,
        }
    }

    pub fn write(&mut self, index: u16, value: u16) -> Change {
        match index {
            // Resolution and depth change only while the display is off.
            INDEX_XRES | INDEX_YRES | INDEX_BPP if self.enabled() => Change::None,
            INDEX_XRES => {
                self.regs[INDEX_XRES as usize] = value.min(MAX_SIZE.0 as u16);
                Change::None
            }
            INDEX_YRES => {
                self.regs[INDEX_YRES as usize] = value.min(MAX_SIZE.1 as u16);
                Change::None
            }
            INDEX_BPP => {
                self.regs[INDEX_BPP as usize] = if matches!(value, 8 | 15 | 16 | 24 | 32) { value } else { 0 };
                Change::None
            }
            INDEX_ENABLE => {
                let was = self.enabled();
                self.regs[INDEX_ENABLE as usize] = value & (ENABLED | GETCAPS | LFB_ENABLED | NOCLEARMEM);
                if self.enabled() && !was {
                    // A new mode starts unpanned, as wide as it is.
                    self.regs[INDEX_VIRT_WIDTH as usize] = self.reg(INDEX_XRES);
                    self.regs[INDEX_X_OFFSET as usize] = 0;
                    self.regs[INDEX_Y_OFFSET as usize] = 0;
                    self.update_virt_height();
                }
                self.change()
            }
            INDEX_VIRT_WIDTH => {
                self.regs[INDEX_VIRT_WIDTH as usize] = value.max(self.reg(INDEX_XRES));
                self.update_virt_height();
                self.change()
            }
            INDEX_X_OFFSET | INDEX_Y_OFFSET => {
                self.regs[index as usize] = value;
                self.change()
            }
            // The bank (for the VGA window, which this device lacks), the
            // ID and the read-only registers: kept or ignored.
            INDEX_BANK => {
                self.regs[INDEX_BANK as usize] = value;
                Change::None
            }
            INDEX_ID => {
                if (0xb0c0..=ID5).contains(&value) {
                    self.regs[INDEX_ID as usize] = value;
                }
                Change::None
            }
            _ => Change::None,
        }
    }

    /// Sets `width` x `height` at 32 bits and enables it, as a driver
    /// would (a BIOS's mode before a directly booted kernel).
    pub fn set_mode(&mut self, width: u16, height: u16) -> Change {
        self.write(INDEX_ENABLE, 0);
        self.write(INDEX_XRES, width);
        self.write(INDEX_YRES, height);
        self.write(INDEX_BPP, 32);
        self.write(INDEX_ENABLE, ENABLED | LFB_ENABLED)
    }

    /// How many rows of the virtual width fit in VRAM.
    fn update_virt_height(&mut self) {
        let row = self.reg(INDEX_VIRT_WIDTH) as u64 * self.bytes_per_pixel();
        let rows = VRAM_SIZE.checked_div(row).unwrap_or(0).min(u16::MAX as u64);
        self.regs[INDEX_VIRT_HEIGHT as usize] = rows as u16;
    }

    fn bytes_per_pixel(&self) -> u64 {
        (self.reg(INDEX_BPP) as u64).div_ceil(8)
    }

    /// The picture the registers describe now.
    fn change(&self) -> Change {
        if !self.enabled() {
            return Change::Mode(None);
        }
        if self.reg(INDEX_BPP) != 32 {
            return Change::UnsupportedDepth(self.reg(INDEX_BPP));
        }
        let stride = self.reg(INDEX_VIRT_WIDTH) as u32 * 4;
        let offset = self.reg(INDEX_Y_OFFSET) as u64 * stride as u64 + self.reg(INDEX_X_OFFSET) as u64 * 4;
        let mode = Mode {
            width: self.reg(INDEX_XRES) as u32,
            height: self.reg(INDEX_YRES) as u32,
            stride,
            offset: offset.min(u32::MAX as u64) as u32,
        };
        // A mode that does not fit VRAM shows nothing rather than garbage.
        Change::Mode(mode.checked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's bochs driver writes to set a mode.
    fn set_mode(d: &mut Dispi, w: u16, h: u16) -> Change {
        d.write(INDEX_ENABLE, 0);
        d.write(INDEX_BPP, 32);
        d.write(INDEX_XRES, w);
        d.write(INDEX_YRES, h);
        d.write(INDEX_BANK, 0);
        d.write(INDEX_VIRT_WIDTH, w);
        d.write(INDEX_X_OFFSET, 0);
        d.write(INDEX_Y_OFFSET, 0);
        d.write(INDEX_ENABLE, ENABLED | LFB_ENABLED)
    }

    #[test]
    fn a_driver_sets_a_mode_and_pans() {
        let mut d = Dispi::default();
        assert_eq!(d.read(INDEX_ID), ID5);
        assert_eq!(d.read(INDEX_VIDEO_MEMORY_64K), 512);
        let m = Mode { width: 800, height: 600, stride: 3200, offset: 0 };
        assert_eq!(set_mode(&mut d, 800, 600), Change::Mode(Some(m)));
        assert_eq!(d.read(INDEX_VIRT_HEIGHT) as u64, VRAM_SIZE / 3200);
        // Resolution writes are ignored while enabled.
        d.write(INDEX_XRES, 640);
        assert_eq!(d.read(INDEX_XRES), 800);
        // Panning: the picture starts a row lower.
        assert_eq!(d.write(INDEX_Y_OFFSET, 1), Change::Mode(Some(Mode { offset: 3200, ..m })));
        assert_eq!(d.write(INDEX_ENABLE, 0), Change::Mode(None));
    }

    #[test]
    fn the_mode_at_start_is_the_one_a_driver_would_set() {
        let (mut started, mut driven) = (Dispi::default(), Dispi::default());
        assert_eq!(started.set_mode(1024, 768), set_mode(&mut driven, 1024, 768));
        assert_eq!(started.regs, driven.regs);
        assert_eq!(started.read(INDEX_VIRT_WIDTH), 1024);
    }

    #[test]
    fn capabilities_and_bad_values() {
        let mut d = Dispi::default();
        d.write(INDEX_ENABLE, GETCAPS);
        assert_eq!((d.read(INDEX_XRES), d.read(INDEX_YRES), d.read(INDEX_BPP)), (3840, 2160, 32));
        d.write(INDEX_ENABLE, 0);
        // A depth the display does not show, and sizes clamped to the maximum.
        assert_eq!(
            set_mode(&mut d, 1024, 768).clone(),
            Change::Mode(Some(Mode { width: 1024, height: 768, stride: 4096, offset: 0 }))
        );
        d.write(INDEX_ENABLE, 0);
        d.write(INDEX_BPP, 16);
        assert_eq!(d.write(INDEX_ENABLE, ENABLED), Change::UnsupportedDepth(16));
        d.write(INDEX_ENABLE, 0);
        d.write(INDEX_BPP, 32);
        d.write(INDEX_XRES, 60000);
        d.write(INDEX_YRES, 60000);
        assert_eq!((d.read(INDEX_XRES), d.read(INDEX_YRES)), (3840, 2160));
        // Panned past the end of VRAM: nothing shown.
        d.write(INDEX_ENABLE, ENABLED);
        assert_eq!(d.write(INDEX_Y_OFFSET, 0xffff), Change::Mode(None));
        assert_eq!(d.read(99), 0);
    }
}
