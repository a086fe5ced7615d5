//! The PS/2 keyboard: its command set (reset, identify, scancode set,
//! LEDs, typematic, enable/disable, echo) and the key bytes it queues.

use crate::scancodes;

pub const ACK: u8 = 0xfa;
const BAT_OK: u8 = 0xaa;
const RESEND: u8 = 0xfe;
const ECHO: u8 = 0xee;

pub struct Keyboard {
    /// Scanning: keys are sent only while enabled.
    pub enabled: bool,
    /// The scancode set the keyboard sends (1, 2 or 3; 3 is answered as 2).
    pub set: u8,
    /// A command that takes a parameter byte, waiting for it.
    awaiting: Option<u8>,
    last: u8,
}

impl Default for Keyboard {
    fn default() -> Self {
        Keyboard { enabled: true, set: 2, awaiting: None, last: ACK }
    }
}

impl Keyboard {
    /// A byte the guest wrote to the keyboard: what it answers.
    pub fn command(&mut self, byte: u8) -> Vec<u8> {
        let out = self.answer(byte);
        if let Some(&b) = out.last() {
            self.last = b;
        }
        out
    }

    fn answer(&mut self, byte: u8) -> Vec<u8> {
        if let Some(cmd) = self.awaiting.take() {
            return match cmd {
                // Get (0) or set the scancode set.
                0xf0 if byte == 0 => vec![ACK, self.set],
                0xf0 if (1..=3).contains(&byte) => {
                    self.set = byte;
                    vec![ACK]
                }
                0xf0 => vec![RESEND],
                // LEDs, typematic rate: taken and ignored.
                _ => vec![ACK],
            };
        }
        match byte {
            0xff => {
                *self = Keyboard::default();
                vec![ACK, BAT_OK]
            }
            0xfe => vec![self.last],
            0xf2 => vec![ACK, 0xab, 0x83],
            0xed | 0xf0 | 0xf3 => {
                self.awaiting = Some(byte);
                vec![ACK]
            }
            0xf4 => {
                self.enabled = true;
                vec![ACK]
            }
            0xf5 => {
                self.enabled = false;
                self.set = 2;
                vec![ACK]
            }
            0xf6 => {
                self.set = 2;
                vec![ACK]
            }
            0xf7..=0xfd => vec![ACK],
            0xee => vec![ECHO],
            _ => vec![RESEND],
        }
    }

    /// The bytes a key press or release sends, in the set the guest reads:
    /// set 1 when it asked for it or the controller translates set 2.
    pub fn key(&self, qnum: u8, down: bool, translate: bool) -> Vec<u8> {
        if !self.enabled {
            return Vec::new();
        }
        scancodes::bytes(qnum, down, self.set == 1 || translate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_linux_atkbd_asks() {
        let mut k = Keyboard::default();
        assert_eq!(k.command(0xff), [ACK, BAT_OK]);
        assert_eq!(k.command(0xf2), [ACK, 0xab, 0x83]);
        assert_eq!(k.command(0xf0), [ACK]);
        assert_eq!(k.command(0x02), [ACK]);
        assert_eq!(k.command(0xf0), [ACK]);
        assert_eq!(k.command(0x00), [ACK, 2]);
        assert_eq!(k.command(0xed), [ACK]);
        assert_eq!(k.command(0x07), [ACK], "LEDs");
        assert_eq!(k.command(0xf5), [ACK]);
        assert!(k.key(0x1e, true, true).is_empty(), "disabled: no keys");
        assert_eq!(k.command(0xf4), [ACK]);
        assert_eq!(k.key(0x1e, true, false), [0x1c]);
        assert_eq!(k.key(0x1e, true, true), [0x1e], "translated");
        assert_eq!(k.command(0x42), [RESEND]);
        assert_eq!(k.command(0xfe), [RESEND], "resend repeats the last byte");
        assert_eq!(k.command(0xee), [ECHO]);
    }
}
