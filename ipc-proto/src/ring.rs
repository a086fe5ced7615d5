//! The exit ring: one page of shared memory between the vCPU runner and one
//! device server, a slot per vCPU.
//!
//! A vCPU thread that exits on a device register writes the access into its
//! slot, marks it `REQUEST` and rings the doorbell (an eventfd the server
//! polls). The server answers in the slot, marks it `DONE` and wakes the
//! vCPU with a futex on the state word. A vCPU has at most one access in
//! flight, so a slot needs no queue.
//!
//! The hand-off spins only where spinning can pay: the server polls the
//! slots after a request only if that request's vCPU runs on another CPU,
//! and a vCPU does not spin for a server that polls on the vCPU's own CPU;
//! both then sleep at once (spinning there only keeps the peer from
//! running: on a host with its other core busy, that made the hop 160 µs,
//! 4.5 times the exit; docs/benchmarks.md). Each side says where it is: the
//! vCPU writes its CPU into its slot with each request, the server
//! publishes in the header whether it is polling and on which CPU. The same flags let both skip the syscalls nobody needs: no
//! doorbell write while the server polls, no futex wake for a vCPU that
//! has not gone to sleep. Both are Dekker-style handshakes (publish, full
//! fence, read the peer's flag), so neither side can miss the other.
//!
//! The broker creates the page and writes the header; each side checks the
//! header's magic and version when it attaches (the version handshake). All
//! fields are atomics: the peer is untrusted and may scribble at any time.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::messages::PROTO_VERSION;
use crate::shm::SharedPage as Mapping;

const MAGIC: u32 = u32::from_le_bytes(*b"cvmR");
/// The ring is one page.
pub const RING_SIZE: usize = crate::shm::PAGE;
const SLOT_SIZE: usize = 64;
/// Most slots (and so vCPUs) one ring serves: the page less the header.
#[allow(clippy::cast_possible_truncation, reason = "63 fits any integer")]
pub const MAX_SLOTS: u32 = (RING_SIZE / SLOT_SIZE) as u32 - 1;

const IDLE: u32 = 0;
const REQUEST: u32 = 1;
const DONE: u32 = 2;

/// How long a waiting vCPU polls its slot before sleeping on the futex,
/// unless the server is known to be on the vCPU's own CPU.
const CLIENT_SPIN: Duration = Duration::from_micros(20);
/// How long a server keeps polling after a request from a vCPU on another
/// CPU: the next access usually follows at once (a driver's register
/// sequence, a loop), and a wake-up from poll(2) costs more than the exit
/// itself on small hosts.
const SERVER_POLL: Duration = Duration::from_micros(100);
/// `client_cpu` when unknown.
const NO_CPU: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("exit ring: {0}")]
    Io(#[from] nix::Error),
    #[error("exit ring has bad magic {0:#x}: not a capvm ring")]
    BadMagic(u32),
    #[error("exit ring speaks version {found}, this binary speaks {expected}: mixed capvm builds")]
    VersionMismatch { found: u32, expected: u32 },
    #[error("exit ring has {0} slots; at most {MAX_SLOTS} fit")]
    TooManySlots(u32),
}

#[repr(C)]
struct Header {
    magic: AtomicU32,
    version: AtomicU32,
    slots: AtomicU32,
    /// The server is polling the slots (not asleep in poll(2)): a request
    /// needs no doorbell.
    server_polling: AtomicU32,
    /// The CPU the server polls on.
    server_cpu: AtomicU32,
}

#[repr(C, align(64))]
struct Slot {
    state: AtomicU32,
    op: AtomicU32,
    size: AtomicU32,
    /// Which of the server's regions `addr` is in: the BAR for MMIO.
    region: AtomicU32,
    addr: AtomicU64,
    data: AtomicU64,
    /// The CPU the vCPU made the request on.
    client_cpu: AtomicU32,
    /// The vCPU sleeps (or is about to) on `state`: the answer needs a wake.
    client_sleeping: AtomicU32,
}

const _: () = assert!(size_of::<Slot>() == SLOT_SIZE);
const _: () = assert!(size_of::<Header>() <= SLOT_SIZE);

/// The kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    PioRead = 1,
    PioWrite = 2,
    MmioRead = 3,
    MmioWrite = 4,
    /// PCI configuration space of the server's function; `addr` is the
    /// register offset (0-4095).
    ConfigRead = 5,
    ConfigWrite = 6,
}

impl Op {
    fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            1 => Op::PioRead,
            2 => Op::PioWrite,
            3 => Op::MmioRead,
            4 => Op::MmioWrite,
            5 => Op::ConfigRead,
            6 => Op::ConfigWrite,
            _ => return None,
        })
    }
}

/// One access, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// For MMIO: the BAR index; `addr` is then the offset into that BAR.
    pub region: u8,
    pub addr: u64,
    /// 1, 2, 4 or 8 bytes.
    pub size: u8,
    /// The value written (for writes).
    pub data: u64,
}

/// A mapped exit ring plus its doorbell.
pub struct ExitRing {
    map: Mapping,
    slots: u32,
    doorbell: OwnedFd,
    /// Client side, in our own memory (the peer cannot touch it): per
    /// slot, when its call started (nanoseconds since `epoch`, plus one;
    /// 0 while no call waits), so a watchdog can name a server that does
    /// not answer.
    calls: Box<[AtomicU64]>,
    epoch: Instant,
    /// The first state word the server left that was neither REQUEST nor
    /// DONE (plus one; 0: none): the call returned all-ones instead of
    /// spinning on it.
    bad_state: AtomicU64,
}

impl ExitRing {
    /// Creates the ring page (a sealed memfd) and writes its header.
    /// Returns the memfd; the broker hands it to both sides.
    pub fn create(slots: u32) -> Result<OwnedFd, RingError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(RingError::TooManySlots(slots));
        }
        let fd = crate::shm::sealed_memfd("capvm-exit-ring", RING_SIZE as u64)?;
        let ring = Mapping::new(fd.as_fd())?;
        // SAFETY: the page is at least as large and aligned as Header.
        let header: &Header = unsafe { ring.at(0) };
        header.slots.store(slots, Ordering::Relaxed);
        header.version.store(PROTO_VERSION, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
        Ok(fd)
    }

    /// Maps a ring made by [`ExitRing::create`] and checks its header.
    pub fn attach(memfd: BorrowedFd, doorbell: OwnedFd) -> Result<ExitRing, RingError> {
        let map = Mapping::new(memfd)?;
        // SAFETY: as in create.
        let header: &Header = unsafe { map.at(0) };
        let magic = header.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(RingError::BadMagic(magic));
        }
        let version = header.version.load(Ordering::Relaxed);
        if version != PROTO_VERSION {
            return Err(RingError::VersionMismatch { found: version, expected: PROTO_VERSION });
        }
        // Read once: the peer could change the header later, we never reread it.
        let slots = header.slots.load(Ordering::Relaxed);
        if slots == 0 || slots > MAX_SLOTS {
            return Err(RingError::TooManySlots(slots));
        }
        // serve() drains the doorbell and must never block on an empty one.
        let fl = nix::fcntl::fcntl(&doorbell, nix::fcntl::FcntlArg::F_GETFL)?;
        let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&doorbell, nix::fcntl::FcntlArg::F_SETFL(fl))?;
        let calls = (0..slots).map(|_| AtomicU64::new(0)).collect();
        Ok(ExitRing { map, slots, doorbell, calls, epoch: Instant::now(), bad_state: AtomicU64::new(0) })
    }

    /// Client side: how long the call in `slot` has waited for its answer,
    /// if one is waiting.
    pub fn waiting(&self, slot: u32) -> Option<Duration> {
        let started = self.calls.get(slot as usize)?.load(Ordering::Relaxed);
        let now = self.since_epoch();
        (started != 0).then(|| Duration::from_nanos(now.saturating_sub(started)))
    }

    /// Nanoseconds since the ring was attached, plus one (never 0): 584
    /// years fit.
    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Client side: the unexpected state word a server left in a slot, if
    /// it ever did (a broken or hostile server).
    pub fn bad_state(&self) -> Option<u32> {
        #[allow(clippy::cast_possible_truncation, reason = "stored from a u32 plus one")]
        self.bad_state.load(Ordering::Relaxed).checked_sub(1).map(|v| v as u32)
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The eventfd the server polls.
    pub fn doorbell(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    fn slot(&self, i: u32) -> &Slot {
        assert!(i < self.slots, "slot {i} out of range");
        // SAFETY: the page holds the header then `slots` slots; i < slots.
        unsafe { self.map.at(SLOT_SIZE * (1 + i as usize)) }
    }

    fn header(&self) -> &Header {
        // SAFETY: the page starts with the header (checked at attach).
        unsafe { self.map.at(0) }
    }

    /// Client side: hands `req` to the server through slot `slot` and waits
    /// for the answer (the value read, for reads). It waits as long as the
    /// server takes: the runner's watchdog reads `waiting` and stops the VM
    /// past its deadline. A state word that is neither the request nor the
    /// answer ends the wait with all-ones and is kept for `bad_state`.
    pub fn call(&self, slot: u32, req: Request) -> u64 {
        let s = self.slot(slot);
        let me = current_cpu();
        let started = &self.calls[slot as usize];
        started.store(self.since_epoch(), Ordering::Relaxed);
        s.op.store(req.op as u32, Ordering::Relaxed);
        s.size.store(req.size as u32, Ordering::Relaxed);
        s.region.store(req.region as u32, Ordering::Relaxed);
        s.addr.store(req.addr, Ordering::Relaxed);
        s.data.store(req.data, Ordering::Relaxed);
        s.client_cpu.store(me, Ordering::Relaxed);
        s.state.store(REQUEST, Ordering::Release);
        // Publish, then read the server's flag (it clears the flag, then
        // reads the slots): a server that stops polling sees the request.
        fence(Ordering::SeqCst);
        let header = self.header();
        if header.server_polling.load(Ordering::Relaxed) == 0 {
            ring_eventfd(self.doorbell.as_fd());
        }
        let spin_until = Instant::now() + CLIENT_SPIN;
        loop {
            match s.state.load(Ordering::Acquire) {
                DONE => break,
                REQUEST => {}
                other => {
                    let _ =
                        self.bad_state.compare_exchange(0, u64::from(other) + 1, Ordering::Relaxed, Ordering::Relaxed);
                    started.store(0, Ordering::Relaxed);
                    return u64::MAX;
                }
            }
            // A server polling on this very CPU is not running while we
            // spin; one we just woke may well get a CPU of its own.
            let server_here =
                header.server_polling.load(Ordering::Relaxed) != 0 && header.server_cpu.load(Ordering::Relaxed) == me;
            if !server_here && Instant::now() < spin_until {
                std::hint::spin_loop();
                continue;
            }
            // Sleep: say so, then look once more (the server marks DONE,
            // then reads the flag), then wait while the state is REQUEST.
            s.client_sleeping.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if s.state.load(Ordering::Acquire) != DONE {
                futex_wait(&s.state, REQUEST);
            }
            s.client_sleeping.store(0, Ordering::Relaxed);
        }
        let data = s.data.load(Ordering::Relaxed);
        s.state.store(IDLE, Ordering::Relaxed);
        started.store(0, Ordering::Relaxed);
        data
    }

    /// Server side: whether any slot holds a request.
    pub fn pending(&self) -> bool {
        (0..self.slots).any(|i| self.slot(i).state.load(Ordering::Acquire) == REQUEST)
    }

    /// Server side: [`serve`](Self::serve), then, while the vCPUs it serves
    /// run on other CPUs, keep polling the slots for `SERVER_POLL` after
    /// the last request before going back to the doorbell (measured here:
    /// 100 000 exits to the uart took 4.9 s without polling and 2.7 s with
    /// it, against 2.65 s for an exit the runner answers in-process;
    /// docs/kvm-pvm.md). A vCPU on this server's own CPU cannot run while
    /// the server spins, so then it returns at once.
    pub fn serve_polling(&self, mut handle: impl FnMut(u32, Request) -> u64) {
        let header = self.header();
        let me = current_cpu();
        header.server_cpu.store(me, Ordering::Relaxed);
        // Whether the last client runs elsewhere (its next request may come
        // while we poll), and since when nothing came.
        let mut worth_polling = self.serve(&mut handle).is_some_and(|cpu| cpu != me);
        let mut last = Instant::now();
        loop {
            let polling = worth_polling && last.elapsed() < SERVER_POLL;
            header.server_polling.store(u32::from(polling), Ordering::Relaxed);
            if !polling {
                // Stopped polling: look once more, as a vCPU that saw the
                // flag set skipped the doorbell.
                fence(Ordering::SeqCst);
            }
            if self.pending() {
                worth_polling = self.serve(&mut handle).is_some_and(|cpu| cpu != me);
                last = Instant::now();
            } else if polling {
                std::hint::spin_loop();
            } else {
                return;
            }
        }
    }

    /// Server side: clears the doorbell, then answers every pending request
    /// with `handle`. Malformed requests are answered with all-ones without
    /// calling `handle`. Returns the CPU of the last request's vCPU, if any
    /// was served.
    pub fn serve(&self, handle: &mut impl FnMut(u32, Request) -> u64) -> Option<u32> {
        // The doorbell may ring for a request an earlier round already
        // served (the vCPU rings after publishing, the server may see the
        // request first): clear it every time, or poll(2) would wake us forever.
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(&self.doorbell, &mut buf);
        let mut client = None;
        for i in 0..self.slots {
            let s = self.slot(i);
            if s.state.load(Ordering::Acquire) != REQUEST {
                continue;
            }
            let op = Op::from_u32(s.op.load(Ordering::Relaxed));
            let size = s.size.load(Ordering::Relaxed);
            let region = s.region.load(Ordering::Relaxed);
            let answer = match (op, size, u8::try_from(region)) {
                (Some(op), 1 | 2 | 4 | 8, Ok(region)) => handle(
                    i,
                    Request {
                        op,
                        region,
                        addr: s.addr.load(Ordering::Relaxed),
                        #[allow(clippy::cast_possible_truncation, reason = "matched to 1, 2, 4 or 8 above")]
                        size: size as u8,
                        data: s.data.load(Ordering::Relaxed),
                    },
                ),
                _ => u64::MAX,
            };
            client = Some(s.client_cpu.load(Ordering::Relaxed));
            s.data.store(answer, Ordering::Relaxed);
            s.state.store(DONE, Ordering::Release);
            // Mark DONE, then read the vCPU's flag (it sets the flag, then
            // reads the state): a vCPU going to sleep is always woken.
            fence(Ordering::SeqCst);
            if s.client_sleeping.load(Ordering::Relaxed) != 0 {
                futex_wake(&s.state);
            }
        }
        client
    }
}

/// The CPU this thread runs on now (a hint: it may move), or NO_CPU.
fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu takes no arguments; glibc answers from rseq or
    // the vDSO, without a system call.
    u32::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(NO_CPU)
}

/// Adds 1 to an eventfd.
pub fn ring_eventfd(fd: BorrowedFd) {
    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in shared memory; a spurious
    // return (EINTR, EAGAIN) is handled by the caller's loop.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, std::ptr::null::<libc::timespec>());
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32; waking nobody is fine.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    /// Non-blocking, as the broker makes them.
    fn doorbell() -> OwnedFd {
        OwnedFd::from(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn a_doorbell_for_an_already_served_request_does_not_stay_rung() {
        // The vCPU publishes, the server serves while spinning, then the
        // vCPU's doorbell write lands: the next wake-up finds nothing to do
        // and must still clear the doorbell, or poll(2) spins forever.
        let fd = ExitRing::create(1).unwrap();
        let server = ExitRing::attach(fd.as_fd(), doorbell()).unwrap();
        ring_eventfd(server.doorbell());
        server.serve_polling(|_, _| unreachable!("no request is pending"));
        let mut pfd = [nix::poll::PollFd::new(server.doorbell(), nix::poll::PollFlags::POLLIN)];
        assert_eq!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).unwrap(), 0, "the doorbell is still rung");
    }

    #[test]
    fn ring_call_is_answered_by_serve_in_another_thread() {
        let fd = ExitRing::create(2).unwrap();
        let bell = doorbell();
        let client = ExitRing::attach(fd.as_fd(), bell.try_clone().unwrap()).unwrap();
        let server = ExitRing::attach(fd.as_fd(), bell).unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..100 {
                nix::poll::poll(
                    &mut [nix::poll::PollFd::new(server.doorbell(), nix::poll::PollFlags::POLLIN)],
                    nix::poll::PollTimeout::NONE,
                )
                .unwrap();
                server.serve_polling(|_, r| r.addr + r.data);
            }
        });
        for i in 0..50u64 {
            let v = client.call(1, Request { op: Op::PioWrite, region: 0, addr: 0x3f8, size: 1, data: i });
            assert_eq!(v, 0x3f8 + i);
        }
        drop(client);
        drop(t);
    }

    /// Two vCPUs and a server on a host whose every core is also kept busy:
    /// each call gets its own answer, in order, none lost, none stuck.
    #[test]
    fn ring_answers_every_call_in_order_with_every_core_busy() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        const CALLS: u64 = 3000;
        let fd = ExitRing::create(2).unwrap();
        let bell = doorbell();
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hogs: Vec<_> = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let server = ExitRing::attach(fd.as_fd(), bell.try_clone().unwrap()).unwrap();
        let server_stop = stop.clone();
        let served = std::thread::spawn(move || {
            let mut answered = 0u64;
            while !server_stop.load(Ordering::Relaxed) {
                let mut pfd = [nix::poll::PollFd::new(server.doorbell(), nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(10u8));
                server.serve_polling(|slot, r| {
                    answered += 1;
                    r.data * 2 + slot as u64
                });
            }
            answered
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for slot in 0..2u32 {
            let client = ExitRing::attach(fd.as_fd(), bell.try_clone().unwrap()).unwrap();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    let v = client.call(slot, Request { op: Op::PioWrite, region: 0, addr: 0x3f8, size: 1, data: i });
                    assert_eq!(v, i * 2 + slot as u64, "slot {slot} call {i} got another call's answer");
                }
                done.send(slot).unwrap();
            });
        }
        for _ in 0..2 {
            done_rx.recv_timeout(Duration::from_secs(60)).expect("a vCPU is stuck in its call");
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(served.join().unwrap(), 2 * CALLS, "every call answered exactly once");
        for h in hogs {
            h.join().unwrap();
        }
    }

    #[test]
    fn ring_garbage_request_gets_all_ones() {
        let fd = ExitRing::create(1).unwrap();
        let ring = ExitRing::attach(fd.as_fd(), doorbell()).unwrap();
        let s = ring.slot(0);
        s.op.store(99, Ordering::Relaxed);
        s.size.store(3, Ordering::Relaxed);
        s.state.store(REQUEST, Ordering::Release);
        let mut called = false;
        ring.serve(&mut |_, _| {
            called = true;
            0
        });
        assert!(!called);
        assert_eq!(s.state.load(Ordering::Acquire), DONE);
        assert_eq!(s.data.load(Ordering::Relaxed), u64::MAX);
    }

    #[test]
    fn ring_attach_rejects_other_versions_and_non_rings() {
        let fd = ExitRing::create(1).unwrap();
        {
            let m = Mapping::new(fd.as_fd()).unwrap();
            // SAFETY: test; the ring page starts with its header.
            unsafe { m.at::<Header>(0) }.version.store(PROTO_VERSION + 1, Ordering::Relaxed);
        }
        assert!(matches!(ExitRing::attach(fd.as_fd(), doorbell()), Err(RingError::VersionMismatch { .. })));
        let blank = crate::shm::sealed_memfd("blank", RING_SIZE as u64).unwrap();
        assert!(matches!(ExitRing::attach(blank.as_fd(), doorbell()), Err(RingError::BadMagic(0))));
    }

    #[test]
    fn ring_create_rejects_bad_slot_counts() {
        assert!(ExitRing::create(0).is_err());
        assert!(ExitRing::create(MAX_SLOTS + 1).is_err());
    }

    #[test]
    fn a_server_that_scribbles_a_state_ends_the_call_instead_of_a_spin() {
        let fd = ExitRing::create(1).unwrap();
        let bell = doorbell();
        let client = ExitRing::attach(fd.as_fd(), bell.try_clone().unwrap()).unwrap();
        let server = ExitRing::attach(fd.as_fd(), bell).unwrap();
        let t = std::thread::spawn(move || {
            while !server.pending() {
                std::thread::yield_now();
            }
            server.slot(0).state.store(7, Ordering::Release);
            futex_wake(&server.slot(0).state);
        });
        let v = client.call(0, Request { op: Op::PioRead, region: 0, addr: 0x3f8, size: 1, data: 0 });
        t.join().unwrap();
        assert_eq!((v, client.bad_state()), (u64::MAX, Some(7)));
        assert_eq!(client.waiting(0), None);
    }

    #[test]
    fn a_call_that_waits_says_since_when() {
        let fd = ExitRing::create(2).unwrap();
        let bell = doorbell();
        let client = std::sync::Arc::new(ExitRing::attach(fd.as_fd(), bell.try_clone().unwrap()).unwrap());
        let server = ExitRing::attach(fd.as_fd(), bell).unwrap();
        assert_eq!(client.waiting(1), None);
        let c = client.clone();
        let t =
            std::thread::spawn(move || c.call(1, Request { op: Op::PioRead, region: 0, addr: 0x60, size: 1, data: 0 }));
        while !server.pending() {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        let waited = client.waiting(1).expect("a call is waiting");
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert_eq!(client.waiting(0), None);
        server.serve(&mut |_, _| 0x42);
        assert_eq!(t.join().unwrap(), 0x42);
        assert_eq!((client.waiting(1), client.bad_state()), (None, None));
    }
}
