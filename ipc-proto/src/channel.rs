//! Typed messages over a unix seqpacket socket, with fd passing.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

/// Largest message either side sends; a larger one is a protocol error.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds one message may carry: the kernel's own limit (SCM_MAX_FD).
/// The runner's start message carries every device's eventfds; a VM with
/// two COM ports, a disk, a NIC, an AHCI controller and a display needs 33.
pub const MAX_FDS: usize = 253;

/// A failure to send or receive a control message.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed its end.
    #[error("peer closed the control socket")]
    Closed,
    /// The socket itself failed.
    #[error("control socket: {0}")]
    Io(#[from] nix::Error),
    /// The peer sent bytes that are not a message of the expected type.
    #[error("malformed control message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// Our own message could not be encoded.
    #[error("cannot encode control message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The message was cut (longer than MAX_MESSAGE or too many fds).
    #[error("control message truncated")]
    Truncated,
}

pub(crate) fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

/// One end of a seqpacket control socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an fd that is a connected seqpacket socket.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Takes over an inherited fd number (the child's end, passed through exec).
    ///
    /// # Safety
    /// `fd` must be an open fd that nothing else owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Channel {
        // SAFETY: the caller guarantees exclusive ownership of an open fd.
        Channel { fd: unsafe { OwnedFd::from_raw_fd(fd) } }
    }

    /// Sends one message with `fds` attached.
    pub fn send<T: bincode::Encode>(&self, msg: &T, fds: &[BorrowedFd]) -> Result<(), ChannelError> {
        let bytes = bincode::encode_to_vec(msg, config())?;
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(ChannelError::Truncated);
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
        let iov = [IoSlice::new(&bytes)];
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message and the fds that came with it (close-on-exec).
    pub fn recv<T: bincode::Decode<()>>(&self) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these fds for us.
                            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                        }
                    }
                    let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, fds, truncated);
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            }
        };
        if len == 0 && fds.is_empty() {
            return Err(ChannelError::Closed);
        }
        if truncated {
            return Err(ChannelError::Truncated);
        }
        Ok((decode(&buf[..len])?, fds))
    }
}

/// One message from the bytes of one datagram: the whole of them, within
/// the size limit (the fuzz target `ipc_decode` calls this too).
pub fn decode<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, ChannelError> {
    let (msg, used) = bincode::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(ChannelError::Truncated);
    }
    Ok(msg)
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[derive(bincode::Encode, bincode::Decode, Debug, PartialEq)]
    enum Msg {
        Hello { version: u32 },
        Text(String),
    }

    #[test]
    fn channel_roundtrip_carries_message_and_fds() {
        let (a, b) = Channel::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        a.send(&Msg::Hello { version: 7 }, &[w.as_fd()]).unwrap();
        drop(w);
        let (msg, mut fds): (Msg, _) = b.recv().unwrap();
        assert_eq!(msg, Msg::Hello { version: 7 });
        assert_eq!(fds.len(), 1);
        let mut wf = std::fs::File::from(fds.remove(0));
        wf.write_all(b"x").unwrap();
        drop(wf);
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
    }

    #[test]
    fn a_message_carries_many_fds() {
        // A runner start message for a VM with many devices: more than 32.
        let (a, b) = Channel::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..64).map(|_| nix::sys::eventfd::EventFd::new().unwrap().into()).collect();
        let borrowed: Vec<BorrowedFd> = fds.iter().map(|f| f.as_fd()).collect();
        a.send(&Msg::Text("many".into()), &borrowed).unwrap();
        let (_, got): (Msg, _) = b.recv().unwrap();
        assert_eq!(got.len(), 64);
    }

    #[test]
    fn channel_garbage_is_a_decode_error() {
        let (a, b) = Channel::pair().unwrap();
        nix::unistd::write(a.fd.as_fd(), &[0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let r: Result<(Msg, _), _> = b.recv();
        assert!(matches!(r, Err(ChannelError::Decode(_))), "{r:?}");
    }

    #[test]
    fn channel_trailing_bytes_are_rejected() {
        let (a, b) = Channel::pair().unwrap();
        let mut bytes = bincode::encode_to_vec(Msg::Text("hi".into()), config()).unwrap();
        bytes.push(0);
        nix::unistd::write(a.fd.as_fd(), &bytes).unwrap();
        let r: Result<(Msg, _), _> = b.recv();
        assert!(matches!(r, Err(ChannelError::Truncated)), "{r:?}");
    }

    #[test]
    fn channel_closed_peer_is_reported() {
        let (a, b) = Channel::pair().unwrap();
        drop(a);
        let r: Result<(Msg, _), _> = b.recv();
        assert!(matches!(r, Err(ChannelError::Closed)), "{r:?}");
    }

    #[test]
    fn channel_random_bytes_never_panic() {
        // A cheap property test: any byte string decodes to a value or an error.
        let (a, b) = Channel::pair().unwrap();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 1..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                })
                .collect();
            nix::unistd::write(a.fd.as_fd(), &bytes).unwrap();
            let _ = b.recv::<crate::messages::ToBroker>();
            nix::unistd::write(a.fd.as_fd(), &bytes).unwrap();
            let _ = b.recv::<crate::messages::ToChild>();
        }
    }
}
