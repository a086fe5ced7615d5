//! The display function guests already drive: QEMU's bochs-display
//! (PCI 1234:1111, class 03.80). BAR 0 is the framebuffer (memory the
//! runner maps; this process never sees it), BAR 2 holds the EDID block at
//! 0, the DISPI registers at 0x500 (16-bit, index * 2) and QEMU's extended
//! registers at 0x600. Linux's `bochs` DRM driver, SeaBIOS's
//! vgabios-bochs-display and OVMF's video driver speak it.

pub mod dispi;
pub mod edid;
pub mod layout;
