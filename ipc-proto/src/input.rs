//! Input from a display's viewers to the PS/2 devices: fixed 8-byte
//! records on a SOCK_SEQPACKET pair, written by the VNC server (which
//! turned what viewers sent into PC keys and pointer motion) and read by
//! the i8042 server. Anything but a whole, valid record is dropped by the
//! reader: the VNC server faces the network and is not trusted.

/// One input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    /// A PC key by its scancode-set-1 code; 0x80 set means the E0 prefix
    /// (QEMU's "qnum" numbering). Pause is 0xc6 (E1 1D 45 on the wire).
    Key { qnum: u8, down: bool },
    /// Relative motion (x right, y down, as the screen has them) and the
    /// buttons held (bit 0 left, 1 right, 2 middle); `wheel` up is negative.
    Mouse { dx: i16, dy: i16, wheel: i8, buttons: u8 },
}

pub const RECORD: usize = 8;
const KEY: u8 = 1;
const MOUSE: u8 = 2;

impl InputEvent {
    pub fn encode(&self) -> [u8; RECORD] {
        match *self {
            InputEvent::Key { qnum, down } => [KEY, qnum, down as u8, 0, 0, 0, 0, 0],
            InputEvent::Mouse { dx, dy, wheel, buttons } => {
                let (x, y) = (dx.to_le_bytes(), dy.to_le_bytes());
                [MOUSE, buttons & 7, wheel as u8, 0, x[0], x[1], y[0], y[1]]
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<InputEvent> {
        if b.len() != RECORD || b[3] != 0 {
            return None;
        }
        match b[0] {
            KEY if b[2] <= 1 && b[4..] == [0; 4] => Some(InputEvent::Key { qnum: b[1], down: b[2] == 1 }),
            MOUSE if b[1] <= 7 => Some(InputEvent::Mouse {
                dx: i16::from_le_bytes([b[4], b[5]]),
                dy: i16::from_le_bytes([b[6], b[7]]),
                wheel: b[2] as i8,
                buttons: b[1],
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        for e in [
            InputEvent::Key { qnum: 0x1e, down: true },
            InputEvent::Key { qnum: 0xc8, down: false },
            InputEvent::Mouse { dx: -300, dy: 7, wheel: -1, buttons: 5 },
        ] {
            assert_eq!(InputEvent::decode(&e.encode()), Some(e));
        }
        assert_eq!(InputEvent::decode(&[1, 0x1e, 2, 0, 0, 0, 0, 0]), None, "down is 0 or 1");
        assert_eq!(InputEvent::decode(&[2, 8, 0, 0, 0, 0, 0, 0]), None, "three buttons");
        assert_eq!(InputEvent::decode(&[9, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(InputEvent::decode(&[1, 0x1e, 1]), None, "short");
    }
}
