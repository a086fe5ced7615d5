//! The broker's end of its children's seccomp filters: every syscall a
//! child's manifest does not allow is a user notification (the filter says
//! SECCOMP_RET_USER_NOTIF; capvm_policy::enforce), read here from the
//! listener the child handed over. The kernel fills in the call, so what is
//! recorded does not depend on anything the child can still touch.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use capvm_ipc::ViolationRecord;

/// One forbidden call, waiting in the kernel for our answer.
pub struct Notification(libc::seccomp_notif);

/// Takes the next notification. Call it only when poll(2) says the
/// listener is readable: then it does not block. None if the calling
/// thread was interrupted or died before we read it (ENOENT).
pub fn receive(listener: &OwnedFd) -> io::Result<Option<Notification>> {
    // SAFETY: the kernel requires a zeroed seccomp_notif; it is plain data.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: SECCOMP_IOCTL_NOTIF_RECV fills `n`, which outlives the call.
    let rc = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
    if rc == 0 {
        return Ok(Some(Notification(n)));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        e => Err(e),
    }
}

impl Notification {
    /// The call as the audit log records it.
    pub fn record(&self, killed: bool) -> ViolationRecord {
        let d = &self.0.data;
        ViolationRecord { nr: u64::from(d.nr.unsigned_abs()), args: d.args, ip: d.instruction_pointer, killed }
    }

    /// Answers EPERM: the call fails and the child goes on (log mode). A
    /// thread that has gone since is no error.
    pub fn deny(&self, listener: &OwnedFd) {
        let mut resp = libc::seccomp_notif_resp { id: self.0.id, val: 0, error: -libc::EPERM, flags: 0 };
        // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads `resp`, which outlives the call.
        unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}
