//! What a viewer's key and pointer events mean to a PC: X keysyms to PC
//! keys (set-1 codes, 0x80 for E0: QEMU's "qnum"), for viewers that send
//! only keysyms (vncdotool, most others); extended key events carry the
//! key itself. Shifted symbols map to their key: the viewer sends Shift
//! as a key of its own.

/// The PC key an X keysym names, if the PC keyboard has one.
pub fn qnum(keysym: u32) -> Option<u8> {
    let k = keysym;
    Some(match k {
        // Letters, either case.
        0x41..=0x5a | 0x61..=0x7a => LETTERS[((k | 0x20) - 0x61) as usize],
        0x31..=0x39 => (k - 0x31 + 0x02) as u8,
        0x30 => 0x0b,
        _ => match symbol(k) {
            Some(q) => q,
            None => return special(k),
        },
    })
}

/// a..z in order.
const LETTERS: [u8; 26] = [
    0x1e, 0x30, 0x2e, 0x20, 0x12, 0x21, 0x22, 0x23, 0x17, 0x24, 0x25, 0x26, 0x32, 0x31, 0x18, 0x19, 0x10, 0x13, 0x1f,
    0x14, 0x16, 0x2f, 0x11, 0x2d, 0x15, 0x2c,
];

/// Printable symbols of the US layout, shifted or not.
fn symbol(k: u32) -> Option<u8> {
    let c = char::from_u32(k)?;
    Some(match c {
        ' ' => 0x39,
        '!' => 0x02,
        '@' => 0x03,
        '#' => 0x04,
        '$' => 0x05,
        '%' => 0x06,
        '^' => 0x07,
        '&' => 0x08,
        '*' => 0x09,
        '(' => 0x0a,
        ')' => 0x0b,
        '-' | '_' => 0x0c,
        '=' | '+' => 0x0d,
        '[' | '{' => 0x1a,
        ']' | '}' => 0x1b,
        ';' | ':' => 0x27,
        '\'' | '"' => 0x28,
        '`' | '~' => 0x29,
        '\\' | '|' => 0x2b,
        ',' | '<' => 0x33,
        '.' | '>' => 0x34,
        '/' | '?' => 0x35,
        _ => return None,
    })
}

/// Function, editing, modifier and keypad keysyms (0xfexx, 0xffxx).
fn special(k: u32) -> Option<u8> {
    Some(match k {
        0xff08 => 0x0e,          // BackSpace
        0xff09 => 0x0f,          // Tab
        0xff0d => 0x1c,          // Return
        0xff13 => 0xc6,          // Pause
        0xff14 => 0x46,          // Scroll_Lock
        0xff15 => 0x54,          // Sys_Req (Alt+Print Screen)
        0xff1b => 0x01,          // Escape
        0xff50 => 0xc7,          // Home
        0xff51 => 0xcb,          // Left
        0xff52 => 0xc8,          // Up
        0xff53 => 0xcd,          // Right
        0xff54 => 0xd0,          // Down
        0xff55 => 0xc9,          // Prior
        0xff56 => 0xd1,          // Next
        0xff57 => 0xcf,          // End
        0xff61 => 0xb7,          // Print
        0xff63 => 0xd2,          // Insert
        0xff67 => 0xdd,          // Menu
        0xff7e | 0xfe03 => 0xb8, // Mode_switch, ISO_Level3_Shift: Alt Gr
        0xff7f => 0x45,          // Num_Lock
        0xff8d => 0x9c,          // KP_Enter
        0xff95 => 0x47,          // KP_Home
        0xff96 => 0x4b,          // KP_Left
        0xff97 => 0x48,          // KP_Up
        0xff98 => 0x4d,          // KP_Right
        0xff99 => 0x50,          // KP_Down
        0xff9a => 0x49,          // KP_Prior
        0xff9b => 0x51,          // KP_Next
        0xff9c => 0x4f,          // KP_End
        0xff9d => 0x4c,          // KP_Begin
        0xff9e => 0x52,          // KP_Insert
        0xff9f => 0x53,          // KP_Delete
        0xffaa => 0x37,          // KP_Multiply
        0xffab => 0x4e,          // KP_Add
        0xffad => 0x4a,          // KP_Subtract
        0xffae => 0x53,          // KP_Decimal
        0xffaf => 0xb5,          // KP_Divide
        0xffb0 => 0x52,          // KP_0
        0xffb1..=0xffb3 => (k - 0xffb1 + 0x4f) as u8,
        0xffb4..=0xffb6 => (k - 0xffb4 + 0x4b) as u8,
        0xffb7..=0xffb9 => (k - 0xffb7 + 0x47) as u8,
        0xffbe..=0xffc7 => (k - 0xffbe + 0x3b) as u8, // F1-F10
        0xffc8 => 0x57,                               // F11
        0xffc9 => 0x58,                               // F12
        0xffe1 => 0x2a,                               // Shift_L
        0xffe2 => 0x36,                               // Shift_R
        0xffe3 => 0x1d,                               // Control_L
        0xffe4 => 0x9d,                               // Control_R
        0xffe5 => 0x3a,                               // Caps_Lock
        0xffe7 | 0xffe9 => 0x38,                      // Meta_L, Alt_L
        0xffe8 | 0xffea => 0xb8,                      // Meta_R, Alt_R
        0xffeb => 0xdb,                               // Super_L
        0xffec => 0xdc,                               // Super_R
        0xffff => 0xd3,                               // Delete
        _ => return None,
    })
}

/// A QEMU extended key event's keycode (XT: E0 keys as 0xe0xx or with
/// 0x80 set) as a qnum.
pub fn from_keycode(keycode: u32) -> Option<u8> {
    match keycode {
        0x01..=0xff => Some(keycode as u8),
        0xe001..=0xe07f => Some(0x80 | (keycode & 0x7f) as u8),
        _ => None,
    }
}

/// RFB's button mask (1 left, 2 middle, 4 right, 8 wheel up, 16 wheel
/// down) as PS/2 buttons (1 left, 2 right, 4 middle) and a wheel step.
pub fn buttons(mask: u8) -> (u8, i8) {
    let ps2 = (mask & 1) | (mask & 4) >> 1 | (mask & 2) << 1;
    let wheel = if mask & 8 != 0 {
        -1
    } else if mask & 16 != 0 {
        1
    } else {
        0
    };
    (ps2, wheel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_pc_keyboard() {
        assert_eq!(qnum(b'a' as u32), Some(0x1e));
        assert_eq!(qnum(b'A' as u32), Some(0x1e));
        assert_eq!(qnum(b'z' as u32), Some(0x2c));
        assert_eq!(qnum(b'1' as u32), Some(0x02));
        assert_eq!(qnum(b'0' as u32), Some(0x0b));
        assert_eq!(qnum(b'?' as u32), Some(0x35));
        assert_eq!(qnum(0xffbe), Some(0x3b), "F1");
        assert_eq!(qnum(0xffc7), Some(0x44), "F10");
        assert_eq!(qnum(0xffc9), Some(0x58), "F12");
        assert_eq!(qnum(0xffb0), Some(0x52), "KP_0");
        assert_eq!(qnum(0xffb1), Some(0x4f), "KP_1");
        assert_eq!(qnum(0xffb5), Some(0x4c), "KP_5");
        assert_eq!(qnum(0xffb9), Some(0x49), "KP_9");
        assert_eq!(qnum(0xffeb), Some(0xdb), "Super_L");
        assert_eq!(qnum(0xff13), Some(0xc6), "Pause");
        assert_eq!(qnum(0xff15), Some(0x54), "Sys_Req");
        assert_eq!(qnum(0xff61), Some(0xb7), "Print");
        assert_eq!(qnum(0xfe03), Some(0xb8), "Alt Gr");
        assert_eq!(qnum(0x20ac), None, "the euro sign has no key of its own");
        // Every keysym here names a key the i8042 side knows.
        for k in (0x20..0x7f).chain(0xfe00..=0xffff) {
            if let Some(q) = qnum(k) {
                assert!(capvm_ps2::scancodes::known(q), "{k:#x} -> {q:#x}");
            }
        }
        assert_eq!(from_keycode(0x1e), Some(0x1e));
        assert_eq!(from_keycode(0xe048), Some(0xc8));
        assert_eq!(from_keycode(0x1_0000), None);
        assert_eq!(buttons(1 | 4), (1 | 2, 0));
        assert_eq!(buttons(2 | 8), (4, -1));
        assert_eq!(buttons(16), (0, 1));
    }
}
