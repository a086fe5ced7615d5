//! Rectangle encodings (RFC 6143, 7.7): Raw, Zlib and ZRLE.
//!
//! Zlib is Raw through one zlib stream per viewer; ZRLE cuts the rectangle
//! into 64x64 tiles, sends each as a solid colour, a packed palette (2 to
//! 16 colours: text consoles) or raw compact pixels, all through a second
//! stream. Each stream lives as long as the connection (the viewer's
//! inflater keeps its state), and every rectangle ends with a sync flush.

use flate2::{Compress, Compression, FlushCompress};

use crate::rfb::PixelFormat;
use crate::screen::Screen;

pub const RAW: i32 = 0;
pub const ZLIB: i32 = 6;
pub const ZRLE: i32 = 16;

/// The stats page's names for updates sent in each (`updates_<name>`).
pub const NAMES: [&str; 3] = ["raw", "zlib", "zrle"];

pub fn name(encoding: i32) -> &'static str {
    match encoding {
        ZLIB => NAMES[1],
        ZRLE => NAMES[2],
        _ => NAMES[0],
    }
}

/// The encoding for pixel data: the first the viewer lists that this
/// server speaks (its list is in order of preference), else Raw.
pub fn choose(listed: &[i32]) -> i32 {
    listed.iter().copied().find(|e| [RAW, ZLIB, ZRLE].contains(e)).unwrap_or(RAW)
}

/// zlib level 1: most of the gain for a framebuffer at a fraction of the
/// CPU (two cores serve the guest too).
const LEVEL: u32 = 1;
const TILE: u32 = 64;

/// A viewer's compressors, made on first use.
#[derive(Default)]
pub struct Encoder {
    zlib: Option<Compress>,
    zrle: Option<Compress>,
}

impl Encoder {
    /// Appends the data of rectangle (x, y, w, h) of `screen` in
    /// `encoding` (the rectangle header is the caller's).
    pub fn rect(
        &mut self,
        encoding: i32,
        format: &PixelFormat,
        screen: &Screen,
        r: (u32, u32, u32, u32),
        out: &mut Vec<u8>,
    ) {
        match encoding {
            ZLIB => {
                let mut raw = Vec::new();
                raw_pixels(format, screen, r, &mut raw);
                let z = self.zlib.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), true));
                with_length(out, &deflate(z, &raw));
            }
            ZRLE => {
                let mut tiles = Vec::new();
                zrle_tiles(format, screen, r, &mut tiles);
                let z = self.zrle.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), true));
                with_length(out, &deflate(z, &tiles));
            }
            _ => raw_pixels(format, screen, r, out),
        }
    }
}

fn with_length(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Deflates `input` into the stream and sync-flushes it: the viewer can
/// inflate everything sent so far.
fn deflate(z: &mut Compress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 + 64);
    let start = z.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let done = (z.total_in() - start) as usize;
        // miniz_oxide reports errors only for misuse (a finished stream).
        if z.compress_vec(&input[done..], &mut out, FlushCompress::Sync).is_err() {
            break;
        }
        // The flush is complete once it leaves room unused.
        if (z.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    out
}

fn raw_pixels(format: &PixelFormat, screen: &Screen, (x, y, w, h): (u32, u32, u32, u32), out: &mut Vec<u8>) {
    for row in y..y + h {
        let start = (row * screen.width + x) as usize * 4;
        for px in screen.pixels[start..start + w as usize * 4].chunks(4) {
            format.put(px, out);
        }
    }
}

/// ZRLE's CPIXEL: a 32-bit true-colour pixel whose colours fit in three
/// bytes is sent as those three (RFC 6143, 7.7.6).
fn cpixel(format: &PixelFormat, px: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    format.put(px, out);
    if format.bits_per_pixel != 32 || !format.true_colour || format.depth > 24 {
        return;
    }
    let colours = (0..3).fold(0u64, |bits, i| bits | u64::from(format.max[i]) << format.shift[i]);
    let (low, high) = (colours < 1 << 24, colours & 0xff == 0);
    // The three bytes that carry colour, in the viewer's byte order.
    let drop_first = match (low, high) {
        (true, _) => format.big_endian,
        (false, true) => !format.big_endian,
        (false, false) => return,
    };
    if drop_first {
        out.remove(start);
    } else {
        out.truncate(start + 3);
    }
}

fn zrle_tiles(format: &PixelFormat, screen: &Screen, (x, y, w, h): (u32, u32, u32, u32), out: &mut Vec<u8>) {
    let pixel = |px: u32, py: u32| {
        let at = (py * screen.width + px) as usize * 4;
        &screen.pixels[at..at + 4]
    };
    for ty in (y..y + h).step_by(TILE as usize) {
        for tx in (x..x + w).step_by(TILE as usize) {
            let (tw, th) = (TILE.min(x + w - tx), TILE.min(y + h - ty));
            // The tile's colours, up to 16 (a palette); more: raw.
            let mut palette: Vec<&[u8]> = Vec::new();
            'scan: for py in ty..ty + th {
                for px in tx..tx + tw {
                    let p = pixel(px, py);
                    if !palette.contains(&p) {
                        palette.push(p);
                        if palette.len() > 16 {
                            break 'scan;
                        }
                    }
                }
            }
            match palette.len() {
                1 => {
                    out.push(1);
                    cpixel(format, palette[0], out);
                }
                n @ 2..=16 => {
                    out.push(n as u8);
                    for p in &palette {
                        cpixel(format, p, out);
                    }
                    let bits = match n {
                        2 => 1,
                        3..=4 => 2,
                        _ => 4,
                    };
                    for py in ty..ty + th {
                        let (mut byte, mut used) = (0u8, 0);
                        for px in tx..tx + tw {
                            let index = palette.iter().position(|&c| c == pixel(px, py)).unwrap_or(0) as u8;
                            byte |= index << (8 - bits - used);
                            used += bits;
                            if used == 8 {
                                out.push(byte);
                                (byte, used) = (0, 0);
                            }
                        }
                        if used > 0 {
                            out.push(byte);
                        }
                    }
                }
                _ => {
                    out.push(0);
                    for py in ty..ty + th {
                        for px in tx..tx + tw {
                            cpixel(format, pixel(px, py), out);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfb::NATIVE;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(z: &mut Decompress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 22);
        z.decompress_vec(data, &mut out, FlushDecompress::Sync).unwrap();
        out
    }

    /// A 130x70 screen: a solid tile, a two-colour tile (text), a tile of
    /// many colours, and edge tiles of odd sizes.
    fn screen() -> Screen {
        let (w, h) = (130u32, 70u32);
        let mut s = Screen { width: w, height: h, pixels: vec![0; (w * h * 4) as usize] };
        for y in 0..h {
            for x in 0..w {
                let c: u32 = match (x / 64, y / 64) {
                    (0, 0) => 0x0020_4060,
                    (1, 0) => {
                        if (x + y) % 3 == 0 {
                            0x00ff_ffff
                        } else {
                            0x0000_0000
                        }
                    }
                    _ => x * 7919 + y * 104_729,
                };
                s.pixels[((y * w + x) * 4) as usize..][..4].copy_from_slice(&(c & 0xff_ffff).to_le_bytes());
            }
        }
        s
    }

    /// Decodes ZRLE tiles (solid, packed palette, raw; 3-byte CPIXELs of
    /// the native format) back to XRGB pixels, as a viewer would.
    fn decode_zrle(data: &[u8], (w, h): (u32, u32)) -> Vec<u32> {
        let mut img = vec![0u32; (w * h) as usize];
        let mut i = 0;
        let mut take = |n: usize| {
            let s = &data[i..i + n];
            i += n;
            s.to_vec()
        };
        let cpx = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], 0]);
        for ty in (0..h).step_by(64) {
            for tx in (0..w).step_by(64) {
                let (tw, th) = (64.min(w - tx), 64.min(h - ty));
                let sub = take(1)[0];
                match sub {
                    0 => {
                        for py in ty..ty + th {
                            for px in tx..tx + tw {
                                img[(py * w + px) as usize] = cpx(&take(3));
                            }
                        }
                    }
                    1 => {
                        let c = cpx(&take(3));
                        for py in ty..ty + th {
                            for px in tx..tx + tw {
                                img[(py * w + px) as usize] = c;
                            }
                        }
                    }
                    n @ 2..=16 => {
                        let pal: Vec<u32> = (0..n).map(|_| cpx(&take(3))).collect();
                        let bits = if n == 2 {
                            1
                        } else if n <= 4 {
                            2
                        } else {
                            4
                        };
                        for py in ty..ty + th {
                            let row = take((tw * bits).div_ceil(8) as usize);
                            for px in 0..tw {
                                let bit = px * bits;
                                let v = (row[(bit / 8) as usize] >> (8 - bits - bit % 8)) & ((1 << bits) - 1) as u8;
                                img[(py * w + tx + px) as usize] = pal[v as usize];
                            }
                        }
                    }
                    other => panic!("subencoding {other}"),
                }
            }
        }
        assert_eq!(i, data.len(), "trailing bytes");
        img
    }

    #[test]
    fn zrle_and_zlib_decode_to_the_screen_through_one_stream_each() {
        let s = screen();
        let want: Vec<u32> = s.pixels.chunks(4).map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0])).collect();
        let mut e = Encoder::default();
        let (mut zrle, mut zlib) = (Decompress::new(true), Decompress::new(true));
        // Twice: the second rectangle must inflate with the stream's state.
        for _ in 0..2 {
            let mut out = Vec::new();
            e.rect(ZRLE, &NATIVE, &s, (0, 0, s.width, s.height), &mut out);
            let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            assert_eq!(len, out.len() - 4);
            let tiles = inflate(&mut zrle, &out[4..]);
            assert_eq!(decode_zrle(&tiles, (s.width, s.height)), want);
            // Tile kinds: solid, a 2-colour palette, raw.
            assert_eq!((tiles[0], tiles[4]), (1, 2), "{:?}", &tiles[..8]);

            let mut out = Vec::new();
            e.rect(ZLIB, &NATIVE, &s, (0, 0, s.width, s.height), &mut out);
            let raw = inflate(&mut zlib, &out[4..]);
            let opaque: Vec<u8> = s.pixels.chunks(4).flat_map(|p| [p[0], p[1], p[2], 0xff]).collect();
            assert_eq!(raw, opaque);
            assert!(out.len() < raw.len() / 2, "zlib compressed {} to {}", raw.len(), out.len());
        }
    }

    #[test]
    fn the_viewers_order_of_preference_picks_the_encoding() {
        assert_eq!(choose(&[ZRLE, ZLIB, RAW]), ZRLE);
        assert_eq!(choose(&[5, ZLIB, ZRLE]), ZLIB);
        assert_eq!(choose(&[-223, 7]), RAW);
        assert_eq!(choose(&[]), RAW);
    }

    #[test]
    fn a_cpixel_is_three_bytes_where_the_colours_fit() {
        let px = [0x11, 0x22, 0x33, 0x00];
        let mut out = Vec::new();
        cpixel(&NATIVE, &px, &mut out);
        assert_eq!(out, [0x11, 0x22, 0x33]);
        // Big-endian, colours in the low three bytes: the last three.
        let be = PixelFormat { big_endian: true, ..NATIVE };
        let mut out = Vec::new();
        cpixel(&be, &px, &mut out);
        assert_eq!(out, [0x33, 0x22, 0x11]);
        // Colours in the top three bytes (shifts 24, 16, 8), little-endian.
        let high = PixelFormat { shift: [24, 16, 8], ..NATIVE };
        let mut out = Vec::new();
        cpixel(&high, &px, &mut out);
        assert_eq!(out, [0x11, 0x22, 0x33]);
        // 16 bits a pixel: CPIXEL is PIXEL.
        let rgb565 = PixelFormat { bits_per_pixel: 16, depth: 16, max: [31, 63, 31], shift: [11, 5, 0], ..NATIVE };
        let mut out = Vec::new();
        cpixel(&rgb565, &px, &mut out);
        assert_eq!(out.len(), 2);
    }
}
