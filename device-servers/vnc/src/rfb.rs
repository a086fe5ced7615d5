//! One viewer's RFB session (RFC 6143; versions 3.3, 3.7 and 3.8), as a
//! state machine over bytes: what the viewer sent goes in, what to send
//! comes out. No I/O here, so every hostile input can be tried in a test.
//!
//! Encodings: Raw, Zlib and ZRLE ([`encode`]; the first the viewer lists),
//! and the DesktopSize pseudo-encoding (a mode change reaches the viewer). Key and pointer events are parsed and handed on.
//! A viewer that breaks the protocol, sends a message this server cannot
//! size, asks for a colour map or sends an oversized cut-text is closed:
//! it affects no one else.

use crate::auth;
use crate::encode::{self, Encoder};
use crate::screen::Screen;

/// What the server speaks.
const VERSION: &[u8; 12] = b"RFB 003.008\n";
const SECURITY_NONE: u8 = 1;
const SECURITY_VNC: u8 = 2;
const ENCODING_DESKTOP_SIZE: i32 = -223;
const ENCODING_QEMU_EXTENDED_KEY: i32 = -258;
/// Cut text larger than this closes the viewer (the guest has no clipboard
/// to give it to; this only bounds what a viewer can make us skip).
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// SetEncodings with more than this many entries closes the viewer.
const MAX_ENCODINGS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the viewer's 12-byte version.
    Version,
    /// 3.7/3.8: waiting for the security type it picks.
    Security,
    /// Waiting for its 16-byte answer to the challenge.
    Auth,
    /// Waiting for ClientInit.
    Init,
    Normal,
    Closed,
}

/// How the viewer wants pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub true_colour: bool,
    pub max: [u16; 3],
    pub shift: [u8; 3],
}

/// The server's own format: the framebuffer's XRGB, little-endian.
pub const NATIVE: PixelFormat = PixelFormat {
    bits_per_pixel: 32,
    depth: 24,
    big_endian: false,
    true_colour: true,
    max: [255; 3],
    shift: [16, 8, 0],
};

impl PixelFormat {
    fn parse(b: &[u8]) -> PixelFormat {
        PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            max: [u16::from_be_bytes([b[4], b[5]]), u16::from_be_bytes([b[6], b[7]]), u16::from_be_bytes([b[8], b[9]])],
            shift: [b[10], b[11], b[12]],
        }
    }

    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = self.big_endian as u8;
        b[3] = self.true_colour as u8;
        for i in 0..3 {
            b[4 + 2 * i..6 + 2 * i].copy_from_slice(&self.max[i].to_be_bytes());
        }
        b[10..13].copy_from_slice(&self.shift);
        b
    }

    /// A format this server can produce: true colour, 8, 16 or 32 bits,
    /// each channel inside the pixel.
    fn usable(&self) -> bool {
        matches!(self.bits_per_pixel, 8 | 16 | 32)
            && self.true_colour
            && (0..3).all(|i| {
                let bits = 16 - self.max[i].leading_zeros();
                self.max[i] > 0 && self.shift[i] as u32 + bits <= self.bits_per_pixel as u32
            })
    }

    /// Appends one framebuffer pixel (B, G, R, X) in this format. The
    /// bits of a 32-bit pixel that carry no colour are sent as ones, not
    /// as the guest left them: RFB leaves them unused, but noVNC 1.3
    /// (Debian 12's) draws them as alpha, and its Raw decoder sets alpha
    /// only where the receive queue starts at 0, so a zero there made most
    /// rectangles transparent.
    pub(crate) fn put(&self, px: &[u8], out: &mut Vec<u8>) {
        if *self == NATIVE {
            out.extend_from_slice(&[px[0], px[1], px[2], 0xff]);
            return;
        }
        let rgb = [px[2], px[1], px[0]];
        let mut v = 0u32;
        let mut colour_bits = 0u32;
        for (i, c) in rgb.into_iter().enumerate() {
            v |= (c as u32 * self.max[i] as u32 / 255) << self.shift[i];
            colour_bits |= (self.max[i] as u32) << self.shift[i];
        }
        if self.bits_per_pixel == 32 {
            v |= !colour_bits;
        }
        match (self.bits_per_pixel, self.big_endian) {
            (8, _) => out.push(v as u8),
            (16, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
            (_, false) => out.extend_from_slice(&v.to_le_bytes()),
            (_, true) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }
}

/// Input from the viewer, for the keyboard and pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An X keysym, pressed or released.
    Key { down: bool, keysym: u32 },
    /// QEMU's extended key event: the keysym and the key's XT scancode.
    ExtendedKey { down: bool, keysym: u32, keycode: u32 },
    /// Buttons (bit 0 left) and position.
    Pointer { buttons: u8, x: u16, y: u16 },
}

/// Why a viewer was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    BadVersion,
    BadSecurityType,
    AuthFailed,
    BadPixelFormat,
    TooManyEncodings,
    CutTextTooLong,
    UnknownMessage(u8),
}

impl Closed {
    pub const KINDS: [&'static str; 7] = [
        "closed_bad_version",
        "closed_bad_security_type",
        "closed_auth_failed",
        "closed_bad_pixel_format",
        "closed_many_encodings",
        "closed_cut_text_too_long",
        "closed_unknown_message",
    ];

    pub fn counter(self) -> &'static str {
        match self {
            Closed::BadVersion => Self::KINDS[0],
            Closed::BadSecurityType => Self::KINDS[1],
            Closed::AuthFailed => Self::KINDS[2],
            Closed::BadPixelFormat => Self::KINDS[3],
            Closed::TooManyEncodings => Self::KINDS[4],
            Closed::CutTextTooLong => Self::KINDS[5],
            Closed::UnknownMessage(_) => Self::KINDS[6],
        }
    }
}

/// A FramebufferUpdateRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    incremental: bool,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

pub struct Client {
    phase: Phase,
    minor: u8,
    password: Option<Vec<u8>>,
    challenge: [u8; auth::CHALLENGE_LEN],
    name: String,
    input: Vec<u8>,
    /// Cut text still to be skipped.
    skip: u32,
    /// Bytes to send.
    pub output: Vec<u8>,
    format: PixelFormat,
    desktop_size: bool,
    pub extended_keys: bool,
    /// The encoding for pixel data, and its zlib streams.
    encoding: i32,
    encoder: Encoder,
    pending: Option<Request>,
    /// The size the viewer was last told.
    size: (u32, u32),
    /// Tiles of the current screen the viewer has not seen.
    dirty: Vec<bool>,
    pub closed: Option<Closed>,
    /// What the viewer typed and pointed at, to be taken by the caller.
    pub input_events: Vec<Input>,
}

impl Client {
    /// A new connection: the server speaks first. `password`: VNC
    /// Authentication with it; None: no authentication.
    pub fn new(name: &str, password: Option<&str>, screen: &Screen) -> Client {
        Client {
            phase: Phase::Version,
            minor: 8,
            password: password.map(|p| p.as_bytes().to_vec()),
            challenge: [0; auth::CHALLENGE_LEN],
            name: name.to_string(),
            input: Vec::new(),
            skip: 0,
            output: VERSION.to_vec(),
            format: NATIVE,
            desktop_size: false,
            extended_keys: false,
            encoding: encode::RAW,
            encoder: Encoder::default(),
            pending: None,
            size: (screen.width, screen.height),
            dirty: vec![true; screen.tile_count()],
            closed: None,
            input_events: Vec::new(),
        }
    }

    /// It asked for an update that has not been sent yet.
    pub fn wants_update(&self) -> bool {
        self.phase == Phase::Normal && self.pending.is_some()
    }

    /// The handshake is over (a viewer that never finishes it is dropped
    /// by the caller after a while).
    pub fn ready(&self) -> bool {
        self.phase == Phase::Normal
    }

    fn close(&mut self, why: Closed) {
        self.phase = Phase::Closed;
        self.closed = Some(why);
    }

    /// Takes bytes the viewer sent.
    pub fn receive(&mut self, bytes: &[u8], screen: &Screen) {
        let mut bytes = bytes;
        if self.skip > 0 {
            let n = (self.skip as usize).min(bytes.len());
            self.skip -= n as u32;
            bytes = &bytes[n..];
        }
        self.input.extend_from_slice(bytes);
        while self.phase != Phase::Closed {
            let used = self.step(screen);
            if used == 0 {
                break;
            }
            self.input.drain(..used);
        }
        if self.phase == Phase::Closed {
            self.input.clear();
        }
    }

    /// Handles one message at the front of the input; how many bytes it
    /// took (0: it is not whole yet).
    fn step(&mut self, screen: &Screen) -> usize {
        let b = &self.input;
        match self.phase {
            Phase::Version => {
                if b.len() < 12 {
                    return 0;
                }
                let minor = match &b[..12] {
                    b"RFB 003.003\n" => 3,
                    // 3.5 was never published; clients that say so speak 3.3.
                    b"RFB 003.005\n" => 3,
                    b"RFB 003.007\n" => 7,
                    v if v.starts_with(b"RFB 003.") && v[11] == b'\n' && v[8..11] >= b"008"[..] => 8,
                    _ => {
                        self.close(Closed::BadVersion);
                        return 12;
                    }
                };
                self.minor = minor;
                let kind = if self.password.is_some() { SECURITY_VNC } else { SECURITY_NONE };
                if minor == 3 {
                    // 3.3: the server decides.
                    self.output.extend_from_slice(&(kind as u32).to_be_bytes());
                    self.after_security_type(kind);
                } else {
                    self.output.extend_from_slice(&[1, kind]);
                    self.phase = Phase::Security;
                }
                12
            }
            Phase::Security => {
                let Some(&kind) = b.first() else { return 0 };
                let offered = if self.password.is_some() { SECURITY_VNC } else { SECURITY_NONE };
                if kind != offered {
                    if self.minor == 8 {
                        self.security_result(false, "security type not offered");
                    }
                    self.close(Closed::BadSecurityType);
                    return 1;
                }
                self.after_security_type(kind);
                1
            }
            Phase::Auth => {
                if b.len() < auth::CHALLENGE_LEN {
                    return 0;
                }
                let answer = &b[..auth::CHALLENGE_LEN];
                let right = self.password.as_ref().is_some_and(|p| {
                    self.challenge != [0; auth::CHALLENGE_LEN] && auth::response(p, &self.challenge) == answer
                });
                self.security_result(right, "authentication failed");
                if right {
                    self.phase = Phase::Init;
                } else {
                    self.close(Closed::AuthFailed);
                }
                auth::CHALLENGE_LEN
            }
            Phase::Init => {
                if b.is_empty() {
                    return 0;
                }
                // ClientInit's shared flag: every viewer shares this screen.
                self.server_init(screen);
                self.phase = Phase::Normal;
                1
            }
            Phase::Normal => self.message(screen),
            Phase::Closed => 0,
        }
    }

    fn after_security_type(&mut self, kind: u8) {
        if kind == SECURITY_VNC {
            self.challenge = auth::challenge();
            self.output.extend_from_slice(&self.challenge);
            self.phase = Phase::Auth;
        } else {
            // 3.8 reports the result of None too; 3.3 and 3.7 do not.
            if self.minor == 8 {
                self.security_result(true, "");
            }
            self.phase = Phase::Init;
        }
    }

    fn security_result(&mut self, ok: bool, reason: &str) {
        self.output.extend_from_slice(&(!ok as u32).to_be_bytes());
        if !ok && self.minor == 8 {
            self.output.extend_from_slice(&(reason.len() as u32).to_be_bytes());
            self.output.extend_from_slice(reason.as_bytes());
        }
    }

    fn server_init(&mut self, screen: &Screen) {
        self.size = (screen.width, screen.height);
        self.dirty = vec![true; screen.tile_count()];
        self.output.extend_from_slice(&(screen.width as u16).to_be_bytes());
        self.output.extend_from_slice(&(screen.height as u16).to_be_bytes());
        self.output.extend_from_slice(&NATIVE.bytes());
        let name = format!("capvm {}", self.name);
        self.output.extend_from_slice(&(name.len() as u32).to_be_bytes());
        self.output.extend_from_slice(name.as_bytes());
    }

    /// One client-to-server message; bytes taken, or 0 if not whole.
    fn message(&mut self, screen: &Screen) -> usize {
        let b = &self.input;
        let Some(&kind) = b.first() else { return 0 };
        let need = |n: usize| b.len() >= n;
        match kind {
            // SetPixelFormat
            0 => {
                if !need(20) {
                    return 0;
                }
                let f = PixelFormat::parse(&b[4..20]);
                if !f.usable() {
                    self.close(Closed::BadPixelFormat);
                } else {
                    self.format = f;
                }
                20
            }
            // SetEncodings
            2 => {
                if !need(4) {
                    return 0;
                }
                let n = u16::from_be_bytes([b[2], b[3]]) as usize;
                if n > MAX_ENCODINGS {
                    self.close(Closed::TooManyEncodings);
                    return 4;
                }
                if !need(4 + 4 * n) {
                    return 0;
                }
                let encodings: Vec<i32> =
                    b[4..4 + 4 * n].chunks(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
                self.desktop_size = encodings.contains(&ENCODING_DESKTOP_SIZE);
                self.encoding = encode::choose(&encodings);
                self.extended_keys = encodings.contains(&ENCODING_QEMU_EXTENDED_KEY);
                if self.extended_keys {
                    // Acknowledge with an empty rectangle of that encoding.
                    self.output.extend_from_slice(&[0, 0, 0, 1]);
                    self.rect_header(0, 0, 0, 0, ENCODING_QEMU_EXTENDED_KEY);
                }
                4 + 4 * n
            }
            // FramebufferUpdateRequest
            3 => {
                if !need(10) {
                    return 0;
                }
                let u = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as u32;
                let r = Request { incremental: b[1] != 0, x: u(2), y: u(4), w: u(6), h: u(8) };
                if !r.incremental {
                    self.mark(screen, &r);
                }
                self.pending = Some(r);
                10
            }
            // KeyEvent
            4 => {
                if !need(8) {
                    return 0;
                }
                let keysym = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                self.input_events.push(Input::Key { down: b[1] != 0, keysym });
                8
            }
            // PointerEvent
            5 => {
                if !need(6) {
                    return 0;
                }
                let (x, y) = (u16::from_be_bytes([b[2], b[3]]), u16::from_be_bytes([b[4], b[5]]));
                self.input_events.push(Input::Pointer { buttons: b[1], x, y });
                6
            }
            // ClientCutText: skipped (the guest has no clipboard channel).
            6 => {
                if !need(8) {
                    return 0;
                }
                let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                if len > MAX_CUT_TEXT {
                    self.close(Closed::CutTextTooLong);
                    return 8;
                }
                let here = (b.len() - 8).min(len as usize);
                self.skip = len - here as u32;
                8 + here
            }
            // QEMU's client message; sub-type 0 is the extended key event.
            255 => {
                if !need(2) {
                    return 0;
                }
                if b[1] != 0 {
                    self.close(Closed::UnknownMessage(255));
                    return 2;
                }
                if !need(12) {
                    return 0;
                }
                let down = u16::from_be_bytes([b[2], b[3]]) != 0;
                let keysym = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                let keycode = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                self.input_events.push(Input::ExtendedKey { down, keysym, keycode });
                12
            }
            other => {
                let all = b.len();
                self.close(Closed::UnknownMessage(other));
                all
            }
        }
    }

    /// Marks the tiles `r` covers as unseen.
    fn mark(&mut self, screen: &Screen, r: &Request) {
        for t in 0..self.dirty.len() {
            let (x, y, w, h) = screen.tile_rect(t);
            if x < r.x.saturating_add(r.w) && r.x < x + w && y < r.y.saturating_add(r.h) && r.y < y + h {
                self.dirty[t] = true;
            }
        }
    }

    /// The screen changed: these tiles (or all, with None) are new.
    pub fn changed(&mut self, screen: &Screen, tiles: Option<&[usize]>) {
        match tiles {
            None => self.dirty = vec![true; screen.tile_count()],
            Some(t) => {
                for &i in t {
                    if let Some(d) = self.dirty.get_mut(i) {
                        *d = true;
                    }
                }
            }
        }
    }

    /// Answers a pending update request, if there is something to send;
    /// the encoding its pixels went in, if it had any.
    pub fn update(&mut self, screen: &Screen) -> Option<&'static str> {
        if self.phase != Phase::Normal {
            return None;
        }
        let req = self.pending?;
        let resized = self.size != (screen.width, screen.height);
        let tell = resized && self.desktop_size;
        if resized && !self.desktop_size {
            // The viewer cannot be told: it keeps its size and gets what
            // of the picture falls inside it.
            self.dirty = vec![true; screen.tile_count()];
        }
        if tell {
            self.size = (screen.width, screen.height);
        }
        let (vw, vh) = self.size;
        // Dirty tiles the viewer can show, merged into runs along each row
        // of tiles: (x, y, w, h) clipped to its size.
        let across = screen.tiles_across() as usize;
        let mut rects: Vec<(u32, u32, u32, u32)> = Vec::new();
        for t in 0..screen.tile_count() {
            let (x, y, w, h) = screen.tile_rect(t);
            if !self.dirty.get(t).copied().unwrap_or(true) || x >= vw || y >= vh {
                continue;
            }
            let (w, h) = (w.min(vw - x), h.min(vh - y));
            match rects.last_mut() {
                Some(r) if t % across != 0 && r.1 == y && r.0 + r.2 == x => r.2 += w,
                _ => rects.push((x, y, w, h)),
            }
        }
        if rects.is_empty() && !tell && req.incremental {
            return None;
        }
        self.pending = None;
        let count = rects.len() + usize::from(tell);
        self.output.extend_from_slice(&[0, 0]);
        self.output.extend_from_slice(&(count as u16).to_be_bytes());
        if tell {
            self.rect_header(0, 0, screen.width, screen.height, ENCODING_DESKTOP_SIZE);
        }
        let sent = (!rects.is_empty()).then(|| encode::name(self.encoding));
        for (x, y, w, h) in rects {
            self.rect_header(x, y, w, h, self.encoding);
            self.encoder.rect(self.encoding, &self.format, screen, (x, y, w, h), &mut self.output);
        }
        self.dirty = vec![false; screen.tile_count()];
        sent
    }

    fn rect_header(&mut self, x: u32, y: u32, w: u32, h: u32, encoding: i32) {
        for v in [x, y, w, h] {
            self.output.extend_from_slice(&(v as u16).to_be_bytes());
        }
        self.output.extend_from_slice(&encoding.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(w: u32, h: u32) -> Screen {
        let mut s = Screen::blank(w, h);
        for (i, px) in s.pixels.chunks_mut(4).enumerate() {
            px.copy_from_slice(&[i as u8, (i >> 8) as u8, 0x80, 0]);
        }
        s
    }

    /// A 3.8 viewer without a password, through ServerInit.
    fn connected(s: &Screen) -> Client {
        let mut c = Client::new("t", None, s);
        c.receive(b"RFB 003.008\n", s);
        c.receive(&[SECURITY_NONE], s);
        c.receive(&[1], s);
        assert!(c.ready());
        c.output.clear();
        c
    }

    fn request(incremental: bool, w: u16, h: u16) -> Vec<u8> {
        let mut m = vec![3, incremental as u8, 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m
    }

    #[test]
    fn handshake_3_8_without_a_password() {
        let s = screen(100, 50);
        let mut c = Client::new("vm1", None, &s);
        assert_eq!(c.output, b"RFB 003.008\n");
        c.output.clear();
        c.receive(b"RFB 003.008\n", &s);
        assert_eq!(c.output, [1, SECURITY_NONE]);
        c.output.clear();
        c.receive(&[SECURITY_NONE, 1], &s);
        let mut want = vec![0, 0, 0, 0, 0, 100, 0, 50];
        want.extend_from_slice(&NATIVE.bytes());
        want.extend_from_slice(&[0, 0, 0, 9]);
        want.extend_from_slice(b"capvm vm1");
        assert_eq!(c.output, want);
        assert!(c.ready());
    }

    #[test]
    fn handshake_3_3_and_3_7_and_vnc_authentication() {
        let s = screen(64, 64);
        // 3.3: the server names the type, no SecurityResult for None.
        let mut c = Client::new("x", None, &s);
        c.output.clear();
        c.receive(b"RFB 003.003\n", &s);
        assert_eq!(c.output, [0, 0, 0, 1]);
        c.receive(&[0], &s);
        assert!(c.ready());
        // 3.7 with a password: the right answer opens, SecurityResult 0.
        let mut c = Client::new("x", Some("secret"), &s);
        c.output.clear();
        c.receive(b"RFB 003.007\n", &s);
        assert_eq!(c.output, [1, SECURITY_VNC]);
        c.output.clear();
        c.receive(&[SECURITY_VNC], &s);
        let challenge: [u8; 16] = c.output[..16].try_into().unwrap();
        c.output.clear();
        c.receive(&auth::response(b"secret", &challenge), &s);
        assert_eq!(&c.output[..4], &[0, 0, 0, 0]);
        c.receive(&[0], &s);
        assert!(c.ready());
        // 3.8, the wrong password: SecurityResult 1 with a reason, closed.
        let mut c = Client::new("x", Some("secret"), &s);
        c.receive(b"RFB 003.008\n", &s);
        c.receive(&[SECURITY_VNC], &s);
        c.output.clear();
        c.receive(&auth::response(b"wrong", &c.challenge.clone()), &s);
        assert_eq!(&c.output[..4], &[0, 0, 0, 1]);
        assert!(c.output.ends_with(b"authentication failed"));
        assert_eq!(c.closed, Some(Closed::AuthFailed));
        // None where VNC is required.
        let mut c = Client::new("x", Some("secret"), &s);
        c.receive(b"RFB 003.008\n", &s);
        c.receive(&[SECURITY_NONE], &s);
        assert_eq!(c.closed, Some(Closed::BadSecurityType));
    }

    #[test]
    fn updates_send_what_the_viewer_has_not_seen() {
        let mut s = screen(100, 70);
        let mut c = connected(&s);
        // Nothing asked, nothing sent.
        c.update(&s);
        assert!(c.output.is_empty());
        // A full request: 2 x 2 tiles, sent as one run per row of tiles.
        c.receive(&request(false, 100, 70), &s);
        c.update(&s);
        assert_eq!(&c.output[..4], &[0, 0, 0, 2]);
        let header = |x: u16, y: u16, w: u16, h: u16| {
            let mut v = Vec::new();
            for n in [x, y, w, h] {
                v.extend_from_slice(&n.to_be_bytes());
            }
            v.extend_from_slice(&encode::RAW.to_be_bytes());
            v
        };
        assert_eq!(&c.output[4..16], &header(0, 0, 100, 64)[..]);
        // The pixel as the guest wrote it, its unused byte all ones.
        assert_eq!(&c.output[16..20], &[s.pixels[0], s.pixels[1], s.pixels[2], 0xff]);
        let total = 4 + 2 * 12 + 100 * 70 * 4;
        assert_eq!(c.output.len(), total);
        c.output.clear();
        // Incremental with nothing new: held until something changes.
        c.receive(&request(true, 100, 70), &s);
        c.update(&s);
        assert!(c.output.is_empty());
        s.pixels[(65 * 100 + 70) * 4] = 0xff;
        c.changed(&s, Some(&[3]));
        c.update(&s);
        assert_eq!(&c.output[..4], &[0, 0, 0, 1]);
        assert_eq!(&c.output[4..16], &header(64, 64, 36, 6)[..]);
    }

    #[test]
    fn a_mode_change_reaches_viewers_that_take_desktop_size() {
        let s = screen(100, 70);
        let mut c = connected(&s);
        let mut enc = vec![2, 0, 0, 2];
        enc.extend_from_slice(&encode::RAW.to_be_bytes());
        enc.extend_from_slice(&ENCODING_DESKTOP_SIZE.to_be_bytes());
        c.receive(&enc, &s);
        c.receive(&request(true, 100, 70), &s);
        let bigger = screen(130, 70);
        c.changed(&bigger, None);
        c.update(&bigger);
        // DesktopSize first, then the new size's two rows of tiles.
        assert_eq!(&c.output[..4], &[0, 0, 0, 3]);
        assert_eq!(&c.output[4..16], &[0, 0, 0, 0, 0, 130, 0, 70, 0xff, 0xff, 0xff, 0x21]);
    }

    #[test]
    fn other_pixel_formats_are_converted() {
        let s = screen(2, 1);
        let mut c = connected(&s);
        // 16-bit RGB565, big-endian.
        let f = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            true_colour: true,
            max: [31, 63, 31],
            shift: [11, 5, 0],
        };
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&f.bytes());
        c.receive(&m, &s);
        c.receive(&request(false, 2, 1), &s);
        c.update(&s);
        // Pixel 0: B=0, G=0, R=0x80 -> r=15 -> 0x7800.
        assert_eq!(&c.output[16..18], &[0x78, 0x00]);
        // A colour map or a channel wider than the pixel is refused.
        let mut c = connected(&s);
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&PixelFormat { true_colour: false, ..NATIVE }.bytes());
        c.receive(&m, &s);
        assert_eq!(c.closed, Some(Closed::BadPixelFormat));
    }

    #[test]
    fn input_events_and_hostile_messages() {
        let s = screen(64, 64);
        let mut c = connected(&s);
        c.receive(&[4, 1, 0, 0, 0, 0, 0xff, 0x0d], &s);
        c.receive(&[5, 1, 0, 10, 0, 20], &s);
        c.receive(&[255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e], &s);
        assert_eq!(
            c.input_events,
            [
                Input::Key { down: true, keysym: 0xff0d },
                Input::Pointer { buttons: 1, x: 10, y: 20 },
                Input::ExtendedKey { down: true, keysym: 0x61, keycode: 0x1e },
            ]
        );
        // Cut text in pieces is skipped whole; the next message still parses.
        c.receive(&[6, 0, 0, 0, 0, 0, 0, 10, b'a', b'b'], &s);
        c.receive(b"cdefghij", &s);
        c.receive(&[5, 0, 0, 1, 0, 2], &s);
        assert_eq!(c.input_events.last(), Some(&Input::Pointer { buttons: 0, x: 1, y: 2 }));
        assert!(c.closed.is_none());
        // An oversized cut text, an unknown message, a bad version.
        let mut c = connected(&s);
        c.receive(&[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff], &s);
        assert_eq!(c.closed, Some(Closed::CutTextTooLong));
        let mut c = connected(&s);
        c.receive(&[9, 9, 9], &s);
        assert_eq!(c.closed, Some(Closed::UnknownMessage(9)));
        let mut c = Client::new("x", None, &s);
        c.receive(b"HTTP/1.1 200", &s);
        assert_eq!(c.closed, Some(Closed::BadVersion));
        // Absurd rectangles are clipped to the screen, not trusted.
        let mut c = connected(&s);
        c.receive(&[3, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &s);
        c.update(&s);
        assert!(c.closed.is_none());
    }

    #[test]
    fn random_messages_never_panic() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut s = screen(130, 70);
        for round in 0..2000 {
            let mut c = connected(&s);
            for _ in 0..50 {
                let kinds = [0u8, 2, 3, 4, 5, 6, 255, next() as u8];
                let mut m = vec![kinds[(next() % kinds.len() as u64) as usize]];
                for _ in 0..next() % 24 {
                    m.push(next() as u8);
                }
                c.receive(&m, &s);
                if round % 3 == 0 {
                    c.update(&s);
                }
                c.output.clear();
            }
            if round % 100 == 0 {
                // The screen changes size under the viewers too.
                s = screen(64 + (next() % 200) as u32, 1 + (next() % 150) as u32);
                c.changed(&s, None);
                c.update(&s);
            }
        }
    }
}
