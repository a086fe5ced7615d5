//! `fbuf`: drives the display (bochs-display, 1234:1111) as a driver
//! would, from user mode so the drawing runs natively: reads the DISPI ID
//! and the EDID's preferred mode, sets 640x480x32 and draws picture 1,
//! waits for a byte on COM1 (the host captures the screen meanwhile), sets
//! 800x600 and draws picture 2, waits again. Then it turns on the i8042's
//! keyboard and mouse (polled, translation on) and prints every byte they
//! send, `kbd XX` or `aux XX`, until Escape; after one more byte on COM1
//! it powers off. The host
//! computes the same pictures (`pixel`) and scancodes to compare.
//! `fbuf-anim` redraws the whole screen without end (a benchmark).

use crate::io::{getc, inb, outb, poweroff, print, print_dec, print_hex};
use crate::virtio::{self, cfg_read32, cfg_write32, mmio_r, mmio_w};

const DISPI: u64 = 0x500;
const XRES: u64 = 1;
const YRES: u64 = 2;
const BPP: u64 = 3;
const ENABLE: u64 = 4;
const VIRT_WIDTH: u64 = 6;

/// The picture: a colour per pixel from its position and the picture's
/// number (tests/tests/fbuf.rs computes the same).
fn pixel(x: u32, y: u32, k: u32) -> u32 {
    let r = (x.wrapping_mul(7) + k * 50) & 0xff;
    let g = y.wrapping_mul(3) & 0xff;
    let b = ((x ^ y).wrapping_mul(k)) & 0xff;
    r << 16 | g << 8 | b
}

fn dispi_w(mmio: u64, index: u64, v: u16) {
    // SAFETY: a DISPI register of the display's MMIO BAR.
    unsafe { mmio_w::<u16>(mmio + DISPI + 2 * index, v) }
}

fn dispi_r(mmio: u64, index: u64) -> u16 {
    // SAFETY: as dispi_w.
    unsafe { mmio_r::<u16>(mmio + DISPI + 2 * index) }
}

fn set_mode_and_draw(vram: u64, mmio: u64, w: u32, h: u32, k: u32) {
    dispi_w(mmio, ENABLE, 0);
    dispi_w(mmio, BPP, 32);
    dispi_w(mmio, XRES, w as u16);
    dispi_w(mmio, YRES, h as u16);
    dispi_w(mmio, VIRT_WIDTH, w as u16);
    dispi_w(mmio, ENABLE, 0x41);
    for y in 0..h {
        for x in 0..w {
            // SAFETY: inside VRAM (32 MiB; w * h * 4 is far less).
            unsafe { mmio_w::<u32>(vram + 4 * (y * w + x) as u64, pixel(x, y, k)) }
        }
    }
    print(b"fbuf: drawn ");
    print_dec(w as u64);
    print(b" ");
    print_dec(h as u64);
    print(b"\n");
}

/// The display's VRAM and MMIO BARs, memory decoding on.
fn display() -> (u64, u64) {
    let Some(slot) = virtio::find(0x1234, 0x1111) else {
        print(b"fbuf: no display on bus 0\n");
        poweroff()
    };
    cfg_write32(slot, 0x04, (cfg_read32(slot, 0x04) & 0xffff) | 0x2);
    ((cfg_read32(slot, 0x10) & !0xf) as u64, (cfg_read32(slot, 0x18) & !0xf) as u64)
}

/// `fbuf-anim`: 1024x768, then picture 1, 2, 3... over the whole screen,
/// as fast as user mode draws them, forever (bench/vs-qemu's display
/// figures: every update a viewer gets is a full screen).
pub extern "C" fn animate() -> ! {
    let (vram, mmio) = display();
    set_mode_and_draw(vram, mmio, 1024, 768, 1);
    print(b"fbuf: animating\n");
    for k in 2.. {
        for y in 0..768 {
            for x in 0..1024 {
                // SAFETY: inside VRAM.
                unsafe { mmio_w::<u32>(vram + 4 * (y * 1024 + x) as u64, pixel(x, y, k)) }
            }
        }
    }
    poweroff()
}

/// `fbuf-still`: 1024x768 with picture 1, drawn at CPL0 (slowly where
/// CPL0 is emulated), then asleep with interrupts on: a still screen and
/// an idle vCPU, for the VNC server's CPU use (bench/vs-qemu).
pub fn still() -> ! {
    let (vram, mmio) = display();
    set_mode_and_draw(vram, mmio, 1024, 768, 1);
    print(b"fbuf: still\n");
    // Both 8259s masked: firmware (SeaBIOS under QEMU) leaves the PIT
    // ticking into a guest without an IDT.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    crate::io::idle()
}

pub extern "C" fn run() -> ! {
    let (vram, mmio) = display();
    // The EDID's header and its preferred mode (the first detailed timing).
    // SAFETY: the EDID block at the start of the MMIO BAR.
    let edid = |i: u64| unsafe { mmio_r::<u8>(mmio + i) } as u64;
    let header = (0..8).fold(0u64, |v, i| v << 8 | edid(i));
    let width = edid(56) | (edid(58) >> 4) << 8;
    let height = edid(59) | (edid(61) >> 4) << 8;
    print(b"fbuf: id ");
    print_hex(dispi_r(mmio, 0) as u64);
    print(b" edid ");
    print_hex(header);
    print(b" preferred ");
    print_dec(width);
    print(b"x");
    print_dec(height);
    print(b"\n");
    set_mode_and_draw(vram, mmio, 640, 480, 1);
    getc();
    set_mode_and_draw(vram, mmio, 800, 600, 2);
    getc();
    input()
}

const I8042_DATA: u16 = 0x60;
const I8042_STATUS: u16 = 0x64;

fn i8042_command(cmd: u8) {
    outb(I8042_STATUS, cmd);
}

/// Reads what the keyboard and mouse send until Escape's make code.
fn input() -> ! {
    // Command byte: system flag, translation, no interrupts (polled).
    i8042_command(0x60);
    outb(I8042_DATA, 0x44);
    i8042_command(0xa8);
    i8042_command(0xd4);
    outb(I8042_DATA, 0xf4);
    // The mouse's ACK.
    while inb(I8042_STATUS) & 1 == 0 {}
    let ack = inb(I8042_DATA);
    print(b"fbuf: mouse ack ");
    hex2(ack);
    print(b"\nfbuf: input ready\n");
    loop {
        let status = inb(I8042_STATUS);
        if status & 1 == 0 {
            continue;
        }
        let byte = inb(I8042_DATA);
        let aux = status & 0x20 != 0;
        print(if aux { b"aux " } else { b"kbd " });
        hex2(byte);
        print(b"\n");
        if !aux && byte == 0x01 {
            // The host reads the counters, then lets the guest power off.
            print(b"fbuf: escape\n");
            getc();
            poweroff()
        }
    }
}

fn hex2(b: u8) {
    let digit = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
    print(&[digit(b >> 4), digit(b & 0xf)]);
}
