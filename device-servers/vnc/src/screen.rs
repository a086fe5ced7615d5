//! The picture viewers are sent: a copy of the guest's framebuffer, taken
//! tile by tile, so that what changed since the last look is known without
//! anything from the guest but its pixels.

use capvm_ipc::display::{Mode, Vram};

/// Tiles are 64x64 pixels: small enough that a blinking cursor costs one,
/// few enough (2040 at 3840x2160) to fit an RFB update's 16-bit count.
pub const TILE: u32 = 64;

/// What the screen looks like now: `width` x `height` pixels, 4 bytes each
/// (XRGB little-endian: blue first), rows packed.
pub struct Screen {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// What a refresh found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The size changed: every tile is new.
    Resized,
    /// These tiles (row-major indices) changed.
    Tiles(Vec<usize>),
}

impl Screen {
    /// A black screen of the display's preferred size (before the guest
    /// enables a mode, and while it is off).
    pub fn blank(width: u32, height: u32) -> Screen {
        Screen { width, height, pixels: vec![0; width as usize * height as usize * 4] }
    }

    pub fn tiles_across(&self) -> u32 {
        self.width.div_ceil(TILE)
    }

    pub fn tile_count(&self) -> usize {
        (self.tiles_across() * self.height.div_ceil(TILE)) as usize
    }

    /// Tile `t`'s rectangle: (x, y, w, h).
    pub fn tile_rect(&self, t: usize) -> (u32, u32, u32, u32) {
        let (tx, ty) = (t as u32 % self.tiles_across(), t as u32 / self.tiles_across());
        let (x, y) = (tx * TILE, ty * TILE);
        (x, y, TILE.min(self.width - x), TILE.min(self.height - y))
    }

    /// Takes the guest's picture (`mode` None: the display is off, black at
    /// `blank_size`) and says what changed.
    pub fn refresh(&mut self, mode: Option<Mode>, vram: &Vram, blank_size: (u32, u32)) -> Refresh {
        let Some(mode) = mode.and_then(Mode::checked) else {
            if (self.width, self.height) != blank_size || self.pixels.iter().any(|&b| b != 0) {
                *self = Screen::blank(blank_size.0, blank_size.1);
                return Refresh::Resized;
            }
            return Refresh::Tiles(Vec::new());
        };
        let resized = (self.width, self.height) != (mode.width, mode.height);
        if resized {
            *self = Screen::blank(mode.width, mode.height);
        }
        let row_bytes = mode.width as usize * 4;
        let mut row = vec![0u8; row_bytes];
        let mut changed = vec![false; self.tile_count()];
        let across = self.tiles_across();
        for y in 0..mode.height {
            vram.copy_row(&mode, y, &mut row);
            let start = y as usize * row_bytes;
            let old = &mut self.pixels[start..start + row_bytes];
            if *old == row[..] {
                continue;
            }
            let tile_row = (y / TILE * across) as usize;
            for (i, (new, old)) in row.chunks(TILE as usize * 4).zip(old.chunks_mut(TILE as usize * 4)).enumerate() {
                if new != old {
                    old.copy_from_slice(new);
                    changed[tile_row + i] = true;
                }
            }
        }
        if resized {
            return Refresh::Resized;
        }
        Refresh::Tiles(changed.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| i).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capvm_ipc::display::create_vram;
    use std::os::fd::AsFd;

    #[test]
    fn a_refresh_finds_the_tiles_the_guest_drew_in() {
        let fd = create_vram().unwrap();
        let vram = Vram::map_read_only(fd.as_fd()).unwrap();
        let mode = Mode { width: 200, height: 100, stride: 800, offset: 0 };
        let mut s = Screen::blank(640, 480);
        assert_eq!(s.refresh(Some(mode), &vram, (640, 480)), Refresh::Resized);
        assert_eq!((s.width, s.height, s.tile_count()), (200, 100, 8));
        assert_eq!(s.refresh(Some(mode), &vram, (640, 480)), Refresh::Tiles(vec![]));
        // One pixel at (130, 70): tile column 2, row 1 of a 4-wide grid.
        nix::sys::uio::pwrite(&fd, &[0xff, 0, 0, 0], 70 * 800 + 130 * 4).unwrap();
        assert_eq!(s.refresh(Some(mode), &vram, (640, 480)), Refresh::Tiles(vec![6]));
        assert_eq!(s.tile_rect(6), (128, 64, 64, 36));
        assert_eq!(s.tile_rect(7), (192, 64, 8, 36));
        assert_eq!(&s.pixels[(70 * 200 + 130) * 4..][..4], &[0xff, 0, 0, 0]);
        // The guest turns the display off: black at the preferred size.
        assert_eq!(s.refresh(None, &vram, (640, 480)), Refresh::Resized);
        assert_eq!((s.width, s.height), (640, 480));
    }
}
