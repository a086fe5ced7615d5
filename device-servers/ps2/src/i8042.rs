//! The i8042 controller: its status and command byte, its commands, the
//! one-byte output buffer fed from the keyboard's and the mouse's queues,
//! and which interrupt line a byte raises. Pulse reset (0xfe on port 0x64)
//! never reaches it: the runner resets the VM itself.

use std::collections::VecDeque;

use crate::keyboard::Keyboard;
use crate::mouse::Mouse;

pub const DATA: u16 = 0x60;
pub const COMMAND: u16 = 0x64;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
/// The last write was to the command port.
const STATUS_A2: u8 = 0x08;
/// The keyboard is not inhibited (no key lock).
const STATUS_UNLOCKED: u8 = 0x10;
/// The byte in the output buffer is the mouse's.
const STATUS_AUX: u8 = 0x20;

const CONFIG_KBD_IRQ: u8 = 0x01;
const CONFIG_AUX_IRQ: u8 = 0x02;
const CONFIG_SYS: u8 = 0x04;
const CONFIG_KBD_OFF: u8 = 0x10;
const CONFIG_AUX_OFF: u8 = 0x20;
const CONFIG_XLATE: u8 = 0x40;

/// Bytes a device may have waiting; more are dropped (and counted).
pub const QUEUE: usize = 256;

/// Which line to pulse after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Irqs {
    pub keyboard: bool,
    pub mouse: bool,
}

pub struct I8042 {
    config: u8,
    status: u8,
    /// The output buffer: a byte and whether the mouse sent it.
    output: Option<(u8, bool)>,
    kbd_queue: VecDeque<u8>,
    aux_queue: VecDeque<u8>,
    /// The controller's own answers, which come through whichever port is off.
    replies: VecDeque<u8>,
    /// A controller command waiting for its data byte.
    pending: Option<u8>,
    output_port: u8,
    pub keyboard: Keyboard,
    pub mouse: Mouse,
    /// Bytes dropped because a queue was full.
    pub dropped: u64,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            // As firmware leaves it: keyboard interrupt on, translation on.
            config: CONFIG_KBD_IRQ | CONFIG_SYS | CONFIG_XLATE,
            status: STATUS_SYS | STATUS_UNLOCKED,
            output: None,
            kbd_queue: VecDeque::new(),
            aux_queue: VecDeque::new(),
            replies: VecDeque::new(),
            pending: None,
            output_port: 0x03,
            keyboard: Keyboard::default(),
            mouse: Mouse::default(),
            dropped: 0,
        }
    }
}

impl I8042 {
    pub fn read(&mut self, port: u16) -> (u8, Irqs) {
        match port {
            DATA => {
                let byte = self.output.take().map_or(0, |(b, _)| b);
                (byte, self.fill())
            }
            _ => {
                let mut s = self.status & !(STATUS_OBF | STATUS_AUX);
                if let Some((_, aux)) = self.output {
                    s |= STATUS_OBF | if aux { STATUS_AUX } else { 0 };
                }
                (s, Irqs::default())
            }
        }
    }

    pub fn write(&mut self, port: u16, byte: u8) -> Irqs {
        if port == COMMAND {
            self.status |= STATUS_A2;
            self.controller_command(byte);
        } else {
            self.status &= !STATUS_A2;
            match self.pending.take() {
                Some(0x60) => {
                    self.config = byte;
                    self.status = (self.status & !STATUS_SYS) | (byte & CONFIG_SYS);
                }
                Some(0xd1) => self.output_port = byte,
                Some(0xd2) => self.queue(false, &[byte]),
                Some(0xd3) => self.queue(true, &[byte]),
                Some(0xd4) => {
                    let answer = self.mouse.command(byte);
                    self.queue(true, &answer);
                }
                // A byte for the keyboard: writing it also enables it.
                _ => {
                    self.config &= !CONFIG_KBD_OFF;
                    let answer = self.keyboard.command(byte);
                    self.queue(false, &answer);
                }
            }
        }
        self.fill()
    }

    fn controller_command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.reply(self.config),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.pending = Some(cmd),
            0xa7 => self.config |= CONFIG_AUX_OFF,
            0xa8 => self.config &= !CONFIG_AUX_OFF,
            0xa9 | 0xab => self.reply(0x00),
            0xaa => {
                self.status |= STATUS_SYS;
                self.reply(0x55);
            }
            0xad => self.config |= CONFIG_KBD_OFF,
            0xae => self.config &= !CONFIG_KBD_OFF,
            0xc0 => self.reply(0x80),
            0xd0 => self.reply(self.output_port),
            // Pulse output lines (0xf0-0xff), and anything unknown: nothing.
            _ => {}
        }
    }

    /// A controller's own answer: ahead of the devices' bytes.
    fn reply(&mut self, byte: u8) {
        self.replies.push_back(byte);
    }

    fn queue(&mut self, aux: bool, bytes: &[u8]) {
        let q = if aux { &mut self.aux_queue } else { &mut self.kbd_queue };
        for &b in bytes {
            if q.len() >= QUEUE {
                self.dropped += 1;
            } else {
                q.push_back(b);
            }
        }
    }

    /// A key from a viewer.
    pub fn key(&mut self, qnum: u8, down: bool) -> Irqs {
        let bytes = self.keyboard.key(qnum, down, self.config & CONFIG_XLATE != 0);
        self.queue(false, &bytes);
        self.fill()
    }

    /// Pointer motion from a viewer.
    pub fn motion(&mut self, dx: i32, dy: i32, wheel: i32, buttons: u8) -> Irqs {
        let bytes = self.mouse.motion(dx, dy, wheel, buttons);
        self.queue(true, &bytes);
        self.fill()
    }

    /// Moves the next byte into an empty output buffer; says which line
    /// to raise for it.
    fn fill(&mut self) -> Irqs {
        if self.output.is_some() {
            return Irqs::default();
        }
        let kbd = if let Some(b) = self.replies.pop_front() {
            Some(b)
        } else if self.config & CONFIG_KBD_OFF == 0 {
            self.kbd_queue.pop_front()
        } else {
            None
        };
        if let Some(b) = kbd {
            self.output = Some((b, false));
            return Irqs { keyboard: self.config & CONFIG_KBD_IRQ != 0, mouse: false };
        }
        if self.config & CONFIG_AUX_OFF == 0 {
            if let Some(b) = self.aux_queue.pop_front() {
                self.output = Some((b, true));
                return Irqs { keyboard: false, mouse: self.config & CONFIG_AUX_IRQ != 0 };
            }
        }
        Irqs::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_data(c: &mut I8042) -> u8 {
        let (s, _) = c.read(COMMAND);
        assert_ne!(s & STATUS_OBF, 0, "a byte is waiting");
        c.read(DATA).0
    }

    #[test]
    fn linux_i8042_probe_then_keys_and_mouse() {
        let mut c = I8042::default();
        // Flush, read and write the command byte, self test.
        assert_eq!(c.read(COMMAND).0 & STATUS_OBF, 0);
        c.write(COMMAND, 0x20);
        let cfg = read_data(&mut c);
        assert_eq!(cfg & CONFIG_XLATE, CONFIG_XLATE);
        c.write(COMMAND, 0x60);
        c.write(DATA, cfg | CONFIG_AUX_IRQ);
        c.write(COMMAND, 0xaa);
        assert_eq!(read_data(&mut c), 0x55);
        // The mouse through 0xd4: reset answers FA AA 00 on the aux side.
        c.write(COMMAND, 0xd4);
        let irqs = c.write(DATA, 0xff);
        assert!(irqs.mouse && !irqs.keyboard);
        assert_ne!(c.read(COMMAND).0 & STATUS_AUX, 0);
        assert_eq!([read_data(&mut c), read_data(&mut c), read_data(&mut c)], [0xfa, 0xaa, 0x00]);
        // A key, translated to set 1, raises IRQ 1.
        let irqs = c.key(0x1e, true);
        assert!(irqs.keyboard);
        assert_eq!(read_data(&mut c), 0x1e);
        // With translation off the keyboard's set 2 comes through.
        c.write(COMMAND, 0x60);
        c.write(DATA, CONFIG_KBD_IRQ | CONFIG_AUX_IRQ | CONFIG_SYS);
        c.key(0x1e, false);
        assert_eq!([read_data(&mut c), read_data(&mut c)], [0xf0, 0x1c]);
        // Reading the data port with nothing waiting gives 0, no interrupt.
        assert_eq!(c.read(DATA), (0, Irqs::default()));
    }

    #[test]
    fn disabled_ports_hold_their_bytes_and_queues_are_bounded() {
        let mut c = I8042::default();
        c.write(COMMAND, 0xad);
        c.key(0x1e, true);
        assert_eq!(c.read(COMMAND).0 & STATUS_OBF, 0, "keyboard port off: the byte waits");
        c.write(COMMAND, 0xae);
        assert_eq!(read_data(&mut c), 0x1e);
        for _ in 0..QUEUE + 10 {
            c.key(0x1e, true);
        }
        assert_eq!(c.dropped, 10 - 1, "one is in the output buffer");
    }
}
