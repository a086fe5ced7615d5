//! The display's EDID (VESA E-EDID 1.4 base block): the preferred mode is
//! the command line's `w` x `h` at 60 Hz (reduced-blanking timings), so a
//! guest that asks its monitor picks that size.

/// 128 bytes for a monitor whose preferred mode is `width` x `height`
/// (each at most 4095: the descriptor's fields are 12 bits).
pub fn block(width: u32, height: u32) -> [u8; 128] {
    let mut e = [0u8; 128];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "CVM": three 5-bit letters, 'A' = 1, big-endian.
    let letter = |c: u8| (c - b'@') as u16;
    let maker = letter(b'C') << 10 | letter(b'V') << 5 | letter(b'M');
    e[8..10].copy_from_slice(&maker.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes());
    e[16] = 1; // week
    e[17] = 36; // 2026
    e[18] = 1;
    e[19] = 4;
    e[20] = 0xa0; // digital, 8 bits per colour
                  // Size in cm at 96 dots per inch.
    let (w_mm, h_mm) = (width * 254 / 960, height * 254 / 960);
    e[21] = (w_mm / 10).min(255) as u8;
    e[22] = (h_mm / 10).min(255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB, the preferred timing is native
    chromaticity(&mut e[25..35]);
    // Established timings: 640x480, 800x600 and 1024x768 at 60 Hz.
    e[35..38].copy_from_slice(&[0x21, 0x08, 0x00]);
    for i in 0..8 {
        e[38 + 2 * i..40 + 2 * i].copy_from_slice(&[0x01, 0x01]);
    }
    e[54..72].copy_from_slice(&detailed_timing(width, height, w_mm, h_mm));
    e[72..90].copy_from_slice(&text_descriptor(0xfc, b"capvm"));
    // Range limits: 50-75 Hz, 30-160 kHz, up to 600 MHz.
    e[90..108].copy_from_slice(&[0, 0, 0, 0xfd, 0, 50, 75, 30, 160, 60, 0, 0x0a, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20]);
    e[108..126].copy_from_slice(&[0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e[127] = 0u8.wrapping_sub(e[..127].iter().fold(0u8, |s, &b| s.wrapping_add(b)));
    e
}

/// sRGB primaries and D65 white, as 10-bit fractions of 1024.
fn chromaticity(out: &mut [u8]) {
    let v = [0.640f64, 0.330, 0.300, 0.600, 0.150, 0.060, 0.3127, 0.3290].map(|x| (x * 1024.0).round() as u16);
    let low = |a: u16, b: u16, c: u16, d: u16| ((a & 3) << 6 | (b & 3) << 4 | (c & 3) << 2 | (d & 3)) as u8;
    out[0] = low(v[0], v[1], v[2], v[3]);
    out[1] = low(v[4], v[5], v[6], v[7]);
    for (o, x) in out[2..].iter_mut().zip(v) {
        *o = (x >> 2) as u8;
    }
}

/// A detailed timing descriptor for `w` x `h` at 60 Hz with CVT
/// reduced-blanking-style porches.
fn detailed_timing(w: u32, h: u32, w_mm: u32, h_mm: u32) -> [u8; 18] {
    let (hblank, hfront, hsync) = (160u32, 48u32, 32u32);
    let vblank = (h * 284).div_ceil(10_000).max(15);
    let (vfront, vsync) = (3u32, 6u32);
    let clock_10khz = ((w + hblank) as u64 * (h + vblank) as u64 * 60).div_ceil(10_000) as u16;
    let c = clock_10khz.to_le_bytes();
    let hi = |a: u32, b: u32| ((a >> 8 & 0xf) << 4 | (b >> 8 & 0xf)) as u8;
    [
        c[0],
        c[1],
        w as u8,
        hblank as u8,
        hi(w, hblank),
        h as u8,
        vblank as u8,
        hi(h, vblank),
        hfront as u8,
        hsync as u8,
        ((vfront & 0xf) << 4 | (vsync & 0xf)) as u8,
        ((hfront >> 8 & 3) << 6 | (hsync >> 8 & 3) << 4 | (vfront >> 4 & 3) << 2 | (vsync >> 4 & 3)) as u8,
        w_mm as u8,
        h_mm as u8,
        hi(w_mm, h_mm),
        0,
        0,
        0x1e, // digital separate sync, both polarities positive
    ]
}

/// A display descriptor holding up to 13 bytes of text.
fn text_descriptor(tag: u8, text: &[u8]) -> [u8; 18] {
    let mut d = [0x20u8; 18];
    d[..5].copy_from_slice(&[0, 0, 0, tag, 0]);
    let n = text.len().min(12);
    d[5..5 + n].copy_from_slice(&text[..n]);
    d[5 + n] = 0x0a;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_valid_and_prefers_the_given_mode() {
        for (w, h) in [(1024, 768), (640, 480), (3840, 2160), (1920, 1080)] {
            let e = block(w, h);
            assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
            assert_eq!(e.iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0, "checksum");
            let d = &e[54..72];
            let hactive = d[2] as u32 | (d[4] as u32 >> 4) << 8;
            let vactive = d[5] as u32 | (d[7] as u32 >> 4) << 8;
            assert_eq!((hactive, vactive), (w, h));
            let hblank = d[3] as u32 | (d[4] as u32 & 0xf) << 8;
            let vblank = d[6] as u32 | (d[7] as u32 & 0xf) << 8;
            let clock = u16::from_le_bytes([d[0], d[1]]) as f64 * 10_000.0;
            let refresh = clock / ((w + hblank) as f64 * (h + vblank) as f64);
            assert!((59.9..60.5).contains(&refresh), "{w}x{h}: {refresh} Hz");
            assert_eq!(&e[72..83], b"\0\0\0\xfc\0capvm\n");
            assert_eq!(&e[8..10], &[0x0e, 0xcd], "CVM");
        }
    }
}
