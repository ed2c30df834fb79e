//! The durable queue: unacked readings in NOR flash through `sequential-storage`, so a power cut
//! on the node loses nothing it has taken.
//!
//! Flash holds the truth; a RAM mirror of the same readings (loaded at boot) serves the node's
//! reads, so sending and retransmitting never touch flash — only taking a reading (push) and an ack
//! (pop from the front) do. `sequential-storage` is async; on a node the flash driver completes
//! immediately, so each call is driven to completion with `embassy_futures::block_on`.

use embedded_storage_async::nor_flash::MultiwriteNorFlash;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::queue::{QueueConfig, QueueStorage};

use crate::node::{Queue, Stored};

type NoCache = Cache<Uncached, Uncached, Uncached>;

/// Bytes of one stored reading at most (postcard).
const ITEM_MAX: usize = 64;

/// A queue of readings in flash, mirrored in RAM (`N` readings at most).
pub struct FlashQueue<S: MultiwriteNorFlash, const N: usize> {
    storage: QueueStorage<S, NoCache>,
    mirror: heapless::Deque<Stored, N>,
    /// Flash operations that failed (the reading stays in RAM and is still sent).
    pub flash_errors: u32,
}

impl<S: MultiwriteNorFlash, const N: usize> core::fmt::Debug for FlashQueue<S, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FlashQueue")
            .field("len", &self.mirror.len())
            .field("flash_errors", &self.flash_errors)
            .finish()
    }
}

impl<S: MultiwriteNorFlash, const N: usize> FlashQueue<S, N> {
    /// Opens the queue in `range` of `flash` and loads what it holds (readings kept across a
    /// power cut).
    pub fn open(flash: S, range: core::ops::Range<u32>) -> Self {
        let mut storage = QueueStorage::new(flash, QueueConfig::new(range), Cache::new_uncached());
        let mut mirror = heapless::Deque::new();
        let mut flash_errors = 0;
        embassy_futures::block_on(async {
            let mut buf = [0u8; ITEM_MAX];
            match storage.iter().await {
                Ok(mut it) => loop {
                    match it.next(&mut buf).await {
                        Ok(Some(entry)) => {
                            if let Ok(r) = postcard::from_bytes::<Stored>(&entry) {
                                let _ = mirror.push_back(r);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            flash_errors += 1;
                            break;
                        }
                    }
                },
                Err(_) => flash_errors += 1,
            }
        });
        Self {
            storage,
            mirror,
            flash_errors,
        }
    }

    /// Gives the flash back.
    pub fn destroy(self) -> S {
        self.storage.destroy().0
    }
}

impl<S: MultiwriteNorFlash, const N: usize> Queue for FlashQueue<S, N> {
    fn push(&mut self, r: Stored) -> bool {
        if self.mirror.is_full() {
            return false;
        }
        let mut buf = [0u8; ITEM_MAX];
        let Ok(bytes) = postcard::to_slice(&r, &mut buf) else {
            return false;
        };
        // Never overwrite old data: a full flash refuses the new reading (counted by the node).
        match embassy_futures::block_on(self.storage.push(bytes, false)) {
            Ok(()) => {
                let _ = self.mirror.push_back(r);
                true
            }
            Err(_) => {
                self.flash_errors += 1;
                false
            }
        }
    }

    fn get(&self, i: usize) -> Option<Stored> {
        self.mirror.iter().nth(i).copied()
    }

    fn len(&self) -> usize {
        self.mirror.len()
    }

    fn ack(&mut self, boot_id: u32, seq: u32) {
        let mut buf = [0u8; ITEM_MAX];
        while let Some(f) = self.mirror.front() {
            if !(f.boot_id == boot_id && f.seq <= seq) {
                break;
            }
            match embassy_futures::block_on(self.storage.pop(&mut buf)) {
                Ok(_) => {
                    self.mirror.pop_front();
                }
                Err(_) => {
                    // Keep it: it is sent again and re-acked, and popped then.
                    self.flash_errors += 1;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use embedded_storage_async::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
    use heim_shared_types::{Measurement, Quantity, Unit};

    use super::*;

    /// NOR flash in RAM: erase sets 0xFF, writes may only clear bits (as real NOR flash).
    struct RamFlash(Vec<u8>);

    impl ErrorType for RamFlash {
        type Error = core::convert::Infallible;
    }
    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 1;
        async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            let o = offset as usize;
            bytes.copy_from_slice(&self.0[o..o + bytes.len()]);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.0.len()
        }
    }
    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 4;
        const ERASE_SIZE: usize = 1024;
        async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
            self.0[from as usize..to as usize].fill(0xFF);
            Ok(())
        }
        async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            for (i, b) in bytes.iter().enumerate() {
                self.0[offset as usize + i] &= *b;
            }
            Ok(())
        }
    }
    impl MultiwriteNorFlash for RamFlash {}

    fn r(seq: u32) -> Stored {
        Stored {
            boot_id: 1,
            seq,
            node_time_ms: u64::from(seq),
            clock_set: false,
            measurement: Measurement::Spo2(Quantity::new(95, 0, Unit::Percent)),
        }
    }

    #[test]
    fn survives_a_power_cut_and_pops_on_ack() {
        let mut q: FlashQueue<_, 32> = FlashQueue::open(RamFlash(vec![0xFF; 4096]), 0..4096);
        for s in 1..=5 {
            assert!(q.push(r(s)));
        }
        q.ack(1, 2);
        assert_eq!(q.len(), 3);
        // "Power cut": only the flash survives.
        let flash = q.destroy();
        let q: FlashQueue<_, 32> = FlashQueue::open(flash, 0..4096);
        assert_eq!(q.len(), 3);
        assert_eq!(q.get(0), Some(r(3)));
        assert_eq!(q.get(2), Some(r(5)));
        assert_eq!(q.flash_errors, 0);
    }

    #[test]
    fn a_full_flash_refuses_without_losing_what_it_holds() {
        let mut q: FlashQueue<_, 512> = FlashQueue::open(RamFlash(vec![0xFF; 2048]), 0..2048);
        let mut kept = 0;
        for s in 1..=500 {
            if q.push(r(s)) {
                kept += 1;
            }
        }
        assert!(kept > 0 && kept < 500, "kept {kept}");
        let flash = q.destroy();
        let q: FlashQueue<_, 512> = FlashQueue::open(flash, 0..2048);
        assert_eq!(q.len(), kept);
        assert_eq!(q.get(0), Some(r(1)));
    }
}
