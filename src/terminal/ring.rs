//! A terminal's replay ring: the newest output of a session, addressed by absolute offsets since it began, so a
//! client that reconnects reads on from where it was.

use std::collections::VecDeque;

use bytes::Bytes;

/// A bounded byte ring addressed by absolute offsets since the session began.
#[derive(Debug)]
pub(super) struct Ring {
    buf: VecDeque<u8>,
    start: u64,
    cap: usize,
}

impl Ring {
    /// An empty ring that holds at most `cap` bytes (at least one).
    pub(super) fn new(cap: usize) -> Self {
        Self { buf: VecDeque::new(), start: 0, cap: cap.max(1) }
    }

    /// The offset of the oldest byte held.
    pub(super) fn start(&self) -> u64 {
        self.start
    }

    /// The most bytes it holds.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// The bytes it holds now.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The offset one past the newest byte.
    pub(super) fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Appends `data`, dropping the oldest bytes first so the buffer never holds more than `cap`: its
    /// allocation then never grows past the bound (growing first and trimming after would double it).
    pub(super) fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            let skip = data.len() - self.cap;
            self.start += (self.buf.len() + skip) as u64;
            self.buf.clear();
            &data[skip..]
        } else {
            data
        };
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
        if self.buf.capacity() < self.buf.len() + data.len() {
            // Grow straight to the bound at most, never to the next power of two beyond it.
            let want = (self.buf.len() + data.len()).max(self.buf.capacity() * 2).min(self.cap);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend(data);
    }

    /// Up to `max` bytes from `from` (clamped into the ring).
    pub(super) fn read(&self, from: u64, max: usize) -> Bytes {
        let from = from.clamp(self.start, self.end());
        let skip = usize::try_from(from - self.start).unwrap_or(usize::MAX);
        let n = (self.buf.len() - skip).min(max);
        self.buf.range(skip..skip + n).copied().collect::<Vec<u8>>().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_allocation_never_grows_past_its_bound() {
        let mut r = Ring::new(256 << 10);
        for _ in 0..100 {
            r.push(&[b'x'; 30_000]);
        }
        r.push(&vec![b'y'; 300_000]);
        assert_eq!(r.buf.len(), 256 << 10);
        assert!(r.buf.capacity() <= (256 << 10) + 64, "capacity {}", r.buf.capacity());
        assert_eq!(r.end(), 100 * 30_000 + 300_000);
        assert_eq!(r.read(r.end() - 1, 1)[0], b'y');
    }

    #[test]
    fn ring_keeps_only_the_newest_bytes_and_reads_by_offset() {
        let mut r = Ring::new(8);
        r.push(b"hello ");
        r.push(b"world!");
        assert_eq!(r.start, 4);
        assert_eq!(r.end(), 12);
        assert_eq!(&r.read(0, 100)[..], b"o world!");
        assert_eq!(&r.read(10, 100)[..], b"d!");
        assert_eq!(&r.read(6, 3)[..], b"wor");
        assert_eq!(&r.read(12, 3)[..], b"");
    }
}
