//! Counters a child keeps in a shared page for the broker to read at any
//! time (`capvmctl --get-stats`): the data path only bumps an atomic, and
//! no message is needed to read them.
//!
//! The page holds up to [`MAX_COUNTERS`] entries of a 24-byte name and a
//! 64-bit value. The child writes the names once at start-up; the broker
//! treats everything in the page as untrusted text and numbers.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::shm::{SharedPage, PAGE};

const NAME_LEN: usize = 24;
const ENTRY_SIZE: usize = 32;
pub const MAX_COUNTERS: usize = PAGE / ENTRY_SIZE;

#[repr(C, align(8))]
struct Entry {
    name: [AtomicU8; NAME_LEN],
    value: AtomicU64,
}

const _: () = assert!(size_of::<Entry>() == ENTRY_SIZE);

/// Creates an empty stats page (a sealed memfd).
pub fn create() -> Result<OwnedFd, nix::Error> {
    crate::shm::sealed_memfd("capvm-stats", PAGE as u64)
}

/// The child's side: hands out counters by name.
pub struct Stats {
    page: Arc<SharedPage>,
    used: usize,
}

/// One counter in a stats page.
#[derive(Clone)]
pub struct Counter {
    page: Option<Arc<SharedPage>>,
    index: usize,
}

impl Counter {
    /// A counter that counts nowhere (no page, or the page is full).
    pub fn none() -> Counter {
        Counter { page: None, index: 0 }
    }

    pub fn add(&self, n: u64) {
        if let Some(p) = &self.page {
            // SAFETY: index < MAX_COUNTERS, entries are atomics.
            unsafe { p.at::<Entry>(self.index * ENTRY_SIZE) }.value.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn inc(&self) {
        self.add(1)
    }
}

impl Stats {
    pub fn attach(fd: BorrowedFd) -> Result<Stats, nix::Error> {
        Ok(Stats { page: Arc::new(SharedPage::new(fd)?), used: 0 })
    }

    /// Names the next free entry `name` (cut to 24 bytes). Past
    /// [`MAX_COUNTERS`] the counter counts nowhere.
    pub fn counter(&mut self, name: &str) -> Counter {
        if self.used == MAX_COUNTERS {
            return Counter::none();
        }
        let index = self.used;
        self.used += 1;
        // SAFETY: index < MAX_COUNTERS.
        let e = unsafe { self.page.at::<Entry>(index * ENTRY_SIZE) };
        for (slot, b) in e.name.iter().zip(name.bytes().chain(std::iter::repeat(0))) {
            slot.store(b, Ordering::Relaxed);
        }
        Counter { page: Some(self.page.clone()), index }
    }
}

/// A family of counters, one per kind, each named `prefix` + kind
/// ("completed_popcnt"), incremented by kind.
pub struct CountersByKind(Vec<(&'static str, Counter)>);

impl CountersByKind {
    pub fn new(stats: &mut Stats, prefix: &str, kinds: impl IntoIterator<Item = &'static str>) -> CountersByKind {
        CountersByKind(kinds.into_iter().map(|k| (k, stats.counter(&format!("{prefix}{k}")))).collect())
    }

    /// Adds one to `kind`'s counter; a kind the family lacks counts nowhere.
    pub fn inc(&self, kind: &str) {
        self.add(kind, 1);
    }

    /// Adds `n` to `kind`'s counter, as `inc` does one.
    pub fn add(&self, kind: &str, n: u64) {
        if let Some((_, c)) = self.0.iter().find(|(k, _)| *k == kind) {
            c.add(n);
        }
    }
}

/// The broker's side: every named counter, in order. Names are cut at the
/// first NUL and anything not printable ASCII becomes '?'.
pub fn read(fd: impl AsFd) -> Result<Vec<(String, u64)>, nix::Error> {
    let page = SharedPage::new(fd.as_fd())?;
    let mut out = Vec::new();
    for i in 0..MAX_COUNTERS {
        // SAFETY: i < MAX_COUNTERS.
        let e = unsafe { page.at::<Entry>(i * ENTRY_SIZE) };
        let name: String = e
            .name
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .take_while(|&b| b != 0)
            .map(|b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect();
        if name.is_empty() {
            break;
        }
        out.push((name, e.value.load(Ordering::Relaxed)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_written_by_one_mapping_are_read_through_another() {
        let fd = create().unwrap();
        let mut s = Stats::attach(fd.as_fd()).unwrap();
        let a = s.counter("pio_exits");
        let b = s.counter("a_name_longer_than_twenty_four_bytes");
        a.add(3);
        b.inc();
        a.inc();
        assert_eq!(read(&fd).unwrap(), vec![("pio_exits".into(), 4), ("a_name_longer_than_twent".into(), 1)]);
    }

    #[test]
    fn a_full_page_hands_out_counters_that_count_nowhere() {
        let fd = create().unwrap();
        let mut s = Stats::attach(fd.as_fd()).unwrap();
        for i in 0..MAX_COUNTERS {
            s.counter(&format!("c{i}")).inc();
        }
        s.counter("one_too_many").inc();
        let all = read(&fd).unwrap();
        assert_eq!(all.len(), MAX_COUNTERS);
        assert!(all.iter().all(|(_, v)| *v == 1));
    }
}
