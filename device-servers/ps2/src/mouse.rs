//! The PS/2 mouse: its command set, stream mode, and the IntelliMouse
//! wheel (ID 3, after the sample-rate knock 200, 100, 80).

use crate::keyboard::ACK;

const BAT_OK: u8 = 0xaa;
const RESEND: u8 = 0xfe;

/// The most one packet moves (9-bit two's complement, less -256).
const MAX_STEP: i32 = 255;
/// The most packets one motion event becomes.
const MAX_PACKETS: i32 = 32;

pub struct Mouse {
    /// Stream mode reporting on.
    pub enabled: bool,
    id: u8,
    rate: u8,
    resolution: u8,
    scaling21: bool,
    /// The last three sample rates set: the IntelliMouse knock.
    rates: [u8; 3],
    awaiting: Option<u8>,
    buttons: u8,
}

impl Default for Mouse {
    fn default() -> Self {
        Mouse {
            enabled: false,
            id: 0,
            rate: 100,
            resolution: 2,
            scaling21: false,
            rates: [0; 3],
            awaiting: None,
            buttons: 0,
        }
    }
}

impl Mouse {
    /// A byte the guest sent the mouse (through the controller's 0xd4).
    pub fn command(&mut self, byte: u8) -> Vec<u8> {
        if let Some(cmd) = self.awaiting.take() {
            match cmd {
                0xf3 => {
                    self.rate = byte;
                    self.rates = [self.rates[1], self.rates[2], byte];
                    if self.rates == [200, 100, 80] {
                        self.id = 3;
                    }
                }
                _ => self.resolution = byte.min(3),
            }
            return vec![ACK];
        }
        match byte {
            0xff => {
                *self = Mouse::default();
                vec![ACK, BAT_OK, 0]
            }
            0xf6 => {
                let id = self.id;
                *self = Mouse { id, ..Mouse::default() };
                vec![ACK]
            }
            0xf5 => {
                self.enabled = false;
                vec![ACK]
            }
            0xf4 => {
                self.enabled = true;
                vec![ACK]
            }
            0xf3 | 0xe8 => {
                self.awaiting = Some(byte);
                vec![ACK]
            }
            0xf2 => vec![ACK, self.id],
            0xe6 | 0xe7 => {
                self.scaling21 = byte == 0xe7;
                vec![ACK]
            }
            0xe9 => {
                let status = (self.enabled as u8) << 5 | (self.scaling21 as u8) << 4 | self.buttons_bits();
                vec![ACK, status, self.resolution, self.rate]
            }
            0xea | 0xf0 | 0xec | 0xee => vec![ACK],
            0xeb => {
                let mut v = vec![ACK];
                v.extend(self.packet(0, 0, 0));
                v
            }
            _ => vec![RESEND],
        }
    }

    fn buttons_bits(&self) -> u8 {
        // PS/2 order: left, right, middle.
        self.buttons & 7
    }

    /// Motion (screen directions) and buttons: the packets to queue, none
    /// while reporting is off. Large motions are split into packets of at
    /// most 255 counts each way.
    pub fn motion(&mut self, dx: i32, dy: i32, wheel: i32, buttons: u8) -> Vec<u8> {
        let changed = buttons != self.buttons;
        self.buttons = buttons;
        if !self.enabled {
            return Vec::new();
        }
        // At most MAX_PACKETS packets an event: a pointer crossing a 4K
        // screen needs 16; the input record's i32s could ask for millions
        // (found by the i8042 fuzz target: 8 million packets, 25 MB, for
        // one record a compromised VNC server could send).
        let (mut dx, mut dy, mut wheel) = (
            dx.clamp(-MAX_STEP * MAX_PACKETS, MAX_STEP * MAX_PACKETS),
            dy.clamp(-MAX_STEP * MAX_PACKETS, MAX_STEP * MAX_PACKETS),
            wheel.clamp(-8 * MAX_PACKETS, 7 * MAX_PACKETS),
        );
        let mut out = Vec::new();
        loop {
            let (x, y, z) = (dx.clamp(-MAX_STEP, MAX_STEP), dy.clamp(-MAX_STEP, MAX_STEP), wheel.clamp(-8, 7));
            out.extend(self.packet(x, y, z));
            (dx, dy, wheel) = (dx - x, dy - y, wheel - z);
            if dx == 0 && dy == 0 && wheel == 0 {
                break;
            }
        }
        if out.is_empty() && changed {
            out.extend(self.packet(0, 0, 0));
        }
        out
    }

    /// One packet: PS/2's y axis points up.
    fn packet(&self, dx: i32, dy: i32, wheel: i32) -> Vec<u8> {
        let y = -dy;
        let b0 = 0x08 | self.buttons_bits() | ((dx < 0) as u8) << 4 | ((y < 0) as u8) << 5;
        let mut p = vec![b0, dx as u8, y as u8];
        if self.id == 3 {
            p.push(wheel as u8);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_motion_is_a_bounded_number_of_packets() {
        let mut m = Mouse::default();
        m.command(0xf4);
        let out = m.motion(i32::MAX, i32::MIN, i32::MAX, 0);
        assert_eq!(out.len(), 3 * MAX_PACKETS as usize);
        assert_eq!(&out[..3], &[0x08, 255, 255], "right 255, up 255 (a negative dy is up)");
    }

    #[test]
    fn reset_knock_and_packets() {
        let mut m = Mouse::default();
        assert_eq!(m.command(0xff), [ACK, BAT_OK, 0]);
        assert!(m.motion(5, 5, 0, 0).is_empty(), "not reporting yet");
        for r in [200, 100, 80] {
            assert_eq!(m.command(0xf3), [ACK]);
            assert_eq!(m.command(r), [ACK]);
        }
        assert_eq!(m.command(0xf2), [ACK, 3], "IntelliMouse");
        assert_eq!(m.command(0xf4), [ACK]);
        // Right 3, down 2 (PS/2: y -2), wheel down 1, left button.
        assert_eq!(m.motion(3, 2, 1, 1), [0x08 | 1 | 0x20, 3, 0xfe, 1]);
        // 300 left: two packets.
        assert_eq!(m.motion(-300, 0, 0, 0), [0x18, 0x01, 0, 0, 0x18, 0xd3, 0, 0]);
        // A button release alone is a packet too.
        m.motion(0, 0, 0, 2);
        assert_eq!(m.motion(0, 0, 0, 0), [0x08, 0, 0, 0]);
        assert_eq!(m.command(0x99), [RESEND]);
    }
}
