//! RFB's VNC Authentication: the server sends 16 random bytes, the viewer
//! returns them DES-encrypted (ECB, two blocks) with the password as the
//! key: its first 8 bytes, zero-padded, each byte's bits reversed (a quirk
//! every VNC implementation shares).

use des::cipher::{BlockEncrypt, KeyInit};
use des::Des;

pub const CHALLENGE_LEN: usize = 16;

/// What a viewer that knows `password` answers to `challenge`.
pub fn response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new(&key.into());
    let mut out = *challenge;
    for block in out.chunks_exact_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

/// 16 bytes from the kernel's random source.
pub fn challenge() -> [u8; CHALLENGE_LEN] {
    let mut c = [0u8; CHALLENGE_LEN];
    // SAFETY: getrandom into our own buffer of that length.
    let n = unsafe { libc::getrandom(c.as_mut_ptr().cast(), c.len(), 0) };
    if n != c.len() as isize {
        // Never seen for 16 bytes; a fixed challenge would let a recorded
        // answer be replayed, so refuse the viewer instead (all-zero key
        // answers cannot match a random response by chance).
        c = [0; CHALLENGE_LEN];
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_vnc_answer() {
        // `openssl enc -des-ecb -nopad -K 0e86ceceeef64e26` (the key
        // "password" with each byte's bits reversed) over bytes 0..16.
        let counting: [u8; 16] = core::array::from_fn(|i| i as u8);
        let want = [0xb8, 0x66, 0x92, 0x41, 0x25, 0xc8, 0xee, 0xbb, 0x9d, 0xeb, 0xc1, 0xdb, 0x61, 0xc5, 0x38, 0xe2];
        assert_eq!(response(b"password", &counting), want);
        assert_ne!(response(b"password", &counting), response(b"passwore", &counting));
        // Only the first 8 bytes count.
        assert_eq!(response(b"password", &counting), response(b"password-and-more", &counting));
    }
}
