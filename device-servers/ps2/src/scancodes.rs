//! A PC key's bytes in scancode set 1 (what the guest reads when the
//! i8042 translates, Linux's default) and set 2 (what the keyboard itself
//! sends). Keys are named by their set-1 code, 0x80 set for an E0 prefix
//! (QEMU's "qnum"), as viewers' extended key events name them.

/// Pause: no break code, its own sequences.
pub const PAUSE: u8 = 0xc6;
/// Print Screen (E0 37): sent with its fake shift (E0 2A) as keyboards do.
pub const PRINT_SCREEN: u8 = 0xb7;

/// Set 2 make codes by set-1 code, for 0x01..=0x58 (0: no such key).
const SET2: [u8; 0x59] = [
    0x00, 0x76, 0x16, 0x1e, 0x26, 0x25, 0x2e, 0x36, 0x3d, 0x3e, 0x46, 0x45, 0x4e, 0x55, 0x66, 0x0d, // 00-0f
    0x15, 0x1d, 0x24, 0x2d, 0x2c, 0x35, 0x3c, 0x43, 0x44, 0x4d, 0x54, 0x5b, 0x5a, 0x14, 0x1c, 0x1b, // 10-1f
    0x23, 0x2b, 0x34, 0x33, 0x3b, 0x42, 0x4b, 0x4c, 0x52, 0x0e, 0x12, 0x5d, 0x1a, 0x22, 0x21, 0x2a, // 20-2f
    0x32, 0x31, 0x3a, 0x41, 0x49, 0x4a, 0x59, 0x7c, 0x11, 0x29, 0x58, 0x05, 0x06, 0x04, 0x0c, 0x03, // 30-3f
    0x0b, 0x83, 0x0a, 0x01, 0x09, 0x77, 0x7e, 0x6c, 0x75, 0x7d, 0x7b, 0x6b, 0x73, 0x74, 0x79, 0x69, // 40-4f
    0x72, 0x7a, 0x70, 0x71, 0x84, 0x00, 0x61, 0x78, 0x07, // 50-58
];

/// E0-prefixed keys: (set-1 code without the prefix, set-2 code).
const EXTENDED: [(u8, u8); 18] = [
    (0x1c, 0x5a), // keypad Enter
    (0x1d, 0x14), // right Ctrl
    (0x35, 0x4a), // keypad /
    (0x37, 0x7c), // Print Screen
    (0x38, 0x11), // right Alt (Alt Gr)
    (0x47, 0x6c), // Home
    (0x48, 0x75), // Up
    (0x49, 0x7d), // Page Up
    (0x4b, 0x6b), // Left
    (0x4d, 0x74), // Right
    (0x4f, 0x69), // End
    (0x50, 0x72), // Down
    (0x51, 0x7a), // Page Down
    (0x52, 0x70), // Insert
    (0x53, 0x71), // Delete
    (0x5b, 0x1f), // left Windows
    (0x5c, 0x27), // right Windows
    (0x5d, 0x2f), // Menu
];

/// Whether `qnum` names a key this keyboard has.
pub fn known(qnum: u8) -> bool {
    qnum == PAUSE || set2(qnum).is_some()
}

fn set2(qnum: u8) -> Option<u8> {
    if qnum & 0x80 == 0 {
        SET2.get(qnum as usize).copied().filter(|&c| c != 0)
    } else {
        EXTENDED.iter().find(|(s1, _)| *s1 == qnum & 0x7f).map(|&(_, s2)| s2)
    }
}

/// The bytes a press (`down`) or release of `qnum` sends in set 1 or 2;
/// empty for a key the keyboard lacks (and for Pause's release).
pub fn bytes(qnum: u8, down: bool, set1: bool) -> Vec<u8> {
    if qnum == PAUSE {
        return match (down, set1) {
            (false, _) => Vec::new(),
            (true, true) => vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5],
            (true, false) => vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77],
        };
    }
    let Some(code2) = set2(qnum) else { return Vec::new() };
    let extended = qnum & 0x80 != 0;
    let code1 = qnum & 0x7f;
    let one = |v: &mut Vec<u8>, c1: u8, c2: u8| {
        if extended {
            v.push(0xe0);
        }
        match (set1, down) {
            (true, true) => v.push(c1),
            (true, false) => v.push(c1 | 0x80),
            (false, true) => v.push(c2),
            (false, false) => v.extend([0xf0, c2]),
        }
    };
    let mut v = Vec::new();
    if qnum == PRINT_SCREEN {
        // Make: fake left shift, then the key; break in the reverse order.
        if down {
            one(&mut v, 0x2a, 0x12);
            one(&mut v, code1, code2);
        } else {
            one(&mut v, code1, code2);
            one(&mut v, 0x2a, 0x12);
        }
        return v;
    }
    one(&mut v, code1, code2);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_1_and_set_2_of_a_whole_keyboard() {
        // 'a', Enter, F12, right Ctrl, left Windows, keypad 5.
        assert_eq!(bytes(0x1e, true, true), [0x1e]);
        assert_eq!(bytes(0x1e, false, true), [0x9e]);
        assert_eq!(bytes(0x1e, true, false), [0x1c]);
        assert_eq!(bytes(0x1e, false, false), [0xf0, 0x1c]);
        assert_eq!(bytes(0x58, true, false), [0x07]);
        assert_eq!(bytes(0x9d, false, false), [0xe0, 0xf0, 0x14]);
        assert_eq!(bytes(0xdb, true, true), [0xe0, 0x5b]);
        assert_eq!(bytes(0x4c, true, false), [0x73]);
        // Alt+SysRq is its own code; Print Screen and Pause their sequences.
        assert_eq!(bytes(0x54, true, false), [0x84]);
        assert_eq!(bytes(PRINT_SCREEN, true, false), [0xe0, 0x12, 0xe0, 0x7c]);
        assert_eq!(bytes(PRINT_SCREEN, false, true), [0xe0, 0xb7, 0xe0, 0xaa]);
        assert_eq!(bytes(PAUSE, true, true), [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]);
        assert!(bytes(PAUSE, false, true).is_empty());
        // No such keys.
        assert!(bytes(0x55, true, true).is_empty() && bytes(0x7f, true, false).is_empty());
        assert!(bytes(0xff, true, true).is_empty() && !known(0x80));
        // Every key in the table has distinct set-2 codes.
        let mut seen = std::collections::BTreeSet::new();
        for q in (0..=0xffu8).filter(|&q| known(q) && q != PAUSE) {
            assert!(seen.insert(bytes(q, true, false)), "{q:#x} twice");
        }
        assert_eq!(seen.len(), 0x57 + EXTENDED.len());
    }
}
