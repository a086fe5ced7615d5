//! bhyve's atkbdc: the i8042 keyboard controller (ports 0x60 and 0x64,
//! IRQ 1 and 12) with a PS/2 keyboard ([`keyboard`]) and mouse
//! ([`mouse`]) behind it ([`i8042`]), fed with keys and motion that a
//! display's viewers send.

pub mod i8042;
pub mod keyboard;
pub mod mouse;
pub mod scancodes;
