//! The ownership authority: who owns each region, at which epoch.
//!
//! The commit point of a handoff is one compare-and-swap here: the target asks to move the region
//! from epoch `e` (owned by the source) to `e + 1` (owned by itself). A source that lost contact
//! with its target after freezing may only resume by winning the same swap for itself, so exactly
//! one of them can win — invariant 1 (single authority) rests on this and nothing else.
//!
//! This module holds the trait and two implementations: in-process (tests, one-process clusters)
//! and file-backed (one record file per region under a directory, written in place with one
//! `fdatasync` a swap, for several processes on one host). The coordinator implements it with its
//! persistent region directory.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Epoch, RegionId};

/// Who owns a region: an opaque instance name (e.g. `host-a/pid-4242`) and the epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ownership {
    /// The owning instance.
    pub owner: String,
    /// The ownership epoch.
    pub epoch: Epoch,
}

/// Errors from an authority.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthorityError {
    /// The region's current ownership is not the expected one; nothing changed.
    #[error("region {region} is at {actual_owner}@{actual_epoch}, not {expected_epoch}")]
    Conflict {
        /// The region.
        region: RegionId,
        /// The epoch the caller expected.
        expected_epoch: Epoch,
        /// The epoch it is at.
        actual_epoch: Epoch,
        /// Who owns it now.
        actual_owner: String,
    },
    /// The region is not known to the authority.
    #[error("region {0} is not registered with the authority")]
    UnknownRegion(RegionId),
    /// The authority could not be reached or could not persist the change; nothing is known to
    /// have changed, and the caller must ask again before acting.
    #[error("authority unavailable: {0}")]
    Unavailable(String),
    /// The authority cannot keep this owner name (see [`check_owner_name`]); nothing changed, and
    /// asking again with the same name will not help. The last variant, so the others keep their
    /// tags on the wire.
    #[error(
        "the authority cannot keep owner name {0:?}: owner names are one non-empty line of at most {MAX_OWNER_BYTES} bytes"
    )]
    BadOwner(String),
}

/// A store of region ownership with compare-and-swap on the epoch.
pub trait OwnershipAuthority: Send + Sync {
    /// The current ownership of `region`.
    fn current(&self, region: RegionId) -> Result<Ownership, AuthorityError>;
    /// Moves `region` from `expected` to `next` (whose epoch must be `expected.epoch + 1`) if and
    /// only if it is at `expected` now. Durable when it returns `Ok`.
    fn compare_and_swap(&self, region: RegionId, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError>;
    /// Registers a new region at epoch 1 owned by `owner`; a no-op if it is registered already.
    fn register(&self, region: RegionId, owner: &str) -> Result<Ownership, AuthorityError>;
}

/// ALPN of the authority protocol (region servers to the coordinator).
pub const ALPN_AUTHORITY: &[u8] = b"baton-authority/1";
/// Largest authority request or reply, in bytes.
pub const MAX_AUTHORITY_FRAME: usize = 64 * 1024;

/// A question to a remote authority (one per QUIC stream, postcard, `u32`-length framed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthorityRequest {
    /// [`OwnershipAuthority::current`].
    Current {
        /// The region.
        region: RegionId,
    },
    /// [`OwnershipAuthority::compare_and_swap`].
    CompareAndSwap {
        /// The region.
        region: RegionId,
        /// What it must be at.
        expected: Ownership,
        /// What it becomes.
        next: Ownership,
    },
    /// [`OwnershipAuthority::register`].
    Register {
        /// The region.
        region: RegionId,
        /// Its first owner.
        owner: String,
    },
}

/// A remote authority's answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthorityReply {
    /// The ownership asked for (or registered).
    Ownership(Ownership),
    /// The swap was made, durably.
    Swapped,
    /// The request failed.
    Error(AuthorityError),
}

impl AuthorityRequest {
    /// Answers the request from `authority` (the serving side).
    pub fn answer(&self, authority: &dyn OwnershipAuthority) -> AuthorityReply {
        let result = match self {
            AuthorityRequest::Current { region } => authority.current(*region).map(AuthorityReply::Ownership),
            AuthorityRequest::CompareAndSwap { region, expected, next } => {
                authority.compare_and_swap(*region, expected, next).map(|()| AuthorityReply::Swapped)
            }
            AuthorityRequest::Register { region, owner } => {
                authority.register(*region, owner).map(AuthorityReply::Ownership)
            }
        };
        result.unwrap_or_else(AuthorityReply::Error)
    }
}

/// An authority in this process's memory.
#[derive(Clone, Debug, Default)]
pub struct InMemoryAuthority {
    regions: Arc<Mutex<HashMap<RegionId, Ownership>>>,
}

impl InMemoryAuthority {
    /// An empty authority.
    #[must_use]
    pub fn new() -> InMemoryAuthority {
        InMemoryAuthority::default()
    }
}

fn check_next(region: RegionId, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError> {
    if next.epoch != expected.epoch.next() {
        return Err(AuthorityError::Conflict {
            region,
            expected_epoch: expected.epoch,
            actual_epoch: next.epoch,
            actual_owner: format!("(refused: the next epoch must be {})", expected.epoch.next()),
        });
    }
    Ok(())
}

impl OwnershipAuthority for InMemoryAuthority {
    fn current(&self, region: RegionId) -> Result<Ownership, AuthorityError> {
        let regions = self.regions.lock().map_err(|_| AuthorityError::Unavailable("lock poisoned".to_owned()))?;
        regions.get(&region).cloned().ok_or(AuthorityError::UnknownRegion(region))
    }

    fn compare_and_swap(&self, region: RegionId, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError> {
        check_next(region, expected, next)?;
        let mut regions = self.regions.lock().map_err(|_| AuthorityError::Unavailable("lock poisoned".to_owned()))?;
        let current = regions.get_mut(&region).ok_or(AuthorityError::UnknownRegion(region))?;
        if current != expected {
            return Err(AuthorityError::Conflict {
                region,
                expected_epoch: expected.epoch,
                actual_epoch: current.epoch,
                actual_owner: current.owner.clone(),
            });
        }
        *current = next.clone();
        Ok(())
    }

    fn register(&self, region: RegionId, owner: &str) -> Result<Ownership, AuthorityError> {
        let mut regions = self.regions.lock().map_err(|_| AuthorityError::Unavailable("lock poisoned".to_owned()))?;
        Ok(regions.entry(region).or_insert_with(|| Ownership { owner: owner.to_owned(), epoch: Epoch(1) }).clone())
    }
}

/// An authority kept in a directory, one record file per region, shared by processes on one host.
///
/// Each compare-and-swap takes the region's lock (an advisory `flock` on `region-N.flock`, which
/// the kernel releases when its holder dies, so a crashed holder never blocks the region), reads
/// the record, and writes the new one in place. The record file `region-N.own` holds two slots
/// [`SLOT_STRIDE`] bytes apart (on separate pages and disk blocks), each a whole record with a
/// sequence number and a checksum; a write goes to the slot not holding the newest record and is
/// made durable with one `fdatasync` (the file's size never changes after it is made, so no
/// metadata need reach the disk). A read takes the valid slot with the higher sequence number, so
/// a write torn by a crash leaves the record before it, whole; a file of another size, or with no
/// valid slot, is refused ("unavailable"), never guessed at. Should the `fdatasync` fail, the slot
/// is written back as it was before the answer "unavailable". A swap that waits longer than
/// [`FileAuthority::LOCK_WAIT`] (or [`FileAuthority::with_lock_wait`]) for the lock answers
/// "unavailable".
///
/// The record of a region written by an earlier version (`region-N.owner`, one line
/// `epoch owner`) is read when no `.own` record exists, and removed once the first swap made the
/// new record durable. Earlier versions lock differently: stop every process of an earlier version
/// that uses the directory before starting this one on it.
#[derive(Clone, Debug)]
pub struct FileAuthority {
    directory: PathBuf,
    lock_wait: std::time::Duration,
}

/// Bytes of one slot's record in a [`FileAuthority`] record file.
pub const SLOT_BYTES: usize = 512;
/// Distance between the two slots of a record file, bytes; the file is twice this.
pub const SLOT_STRIDE: usize = 4096;
const RECORD_FILE_BYTES: usize = 2 * SLOT_STRIDE;
const SLOT_MAGIC: &[u8; 8] = b"BATONOWN";
/// Magic, sequence number, epoch, owner length; then the owner, then the checksum.
const SLOT_HEADER: usize = 8 + 8 + 8 + 2;
const SLOT_CHECKSUM: usize = 8;
/// The longest owner name a [`FileAuthority`] keeps, in bytes.
pub const MAX_OWNER_BYTES: usize = SLOT_BYTES - SLOT_HEADER - SLOT_CHECKSUM;

/// One slot: the record and its sequence number.
fn encode_slot(sequence: u64, ownership: &Ownership) -> [u8; SLOT_BYTES] {
    let owner = ownership.owner.as_bytes();
    let mut slot = [0u8; SLOT_BYTES];
    slot[..8].copy_from_slice(SLOT_MAGIC);
    slot[8..16].copy_from_slice(&sequence.to_le_bytes());
    slot[16..24].copy_from_slice(&ownership.epoch.0.to_le_bytes());
    slot[24..26].copy_from_slice(&(owner.len() as u16).to_le_bytes());
    let end = SLOT_HEADER + owner.len();
    slot[SLOT_HEADER..end].copy_from_slice(owner);
    let checksum = slot_checksum(&slot[..end]);
    slot[end..end + SLOT_CHECKSUM].copy_from_slice(&checksum);
    slot
}

/// The record in a slot and its sequence number; `None` for a slot never written or torn.
fn decode_slot(slot: &[u8]) -> Option<(u64, Ownership)> {
    if slot.len() != SLOT_BYTES || &slot[..8] != SLOT_MAGIC {
        return None;
    }
    let length = u16::from_le_bytes([slot[24], slot[25]]) as usize;
    if length > MAX_OWNER_BYTES {
        return None;
    }
    let end = SLOT_HEADER + length;
    if slot[end..end + SLOT_CHECKSUM] != slot_checksum(&slot[..end]) {
        return None;
    }
    let sequence = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let epoch = u64::from_le_bytes(slot[16..24].try_into().ok()?);
    let owner = std::str::from_utf8(&slot[SLOT_HEADER..end]).ok()?.to_owned();
    Some((sequence, Ownership { owner, epoch: Epoch(epoch) }))
}

fn slot_checksum(bytes: &[u8]) -> [u8; SLOT_CHECKSUM] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut checksum = [0u8; SLOT_CHECKSUM];
    checksum.copy_from_slice(&digest[..SLOT_CHECKSUM]);
    checksum
}

/// A region's record as read under its lock.
enum Record {
    Missing,
    /// The newest record, its sequence number, the slot (0 or 1) it is in, and the other slot's
    /// bytes as they are (what the next write replaces).
    Slotted {
        ownership: Ownership,
        sequence: u64,
        slot: usize,
        other: Vec<u8>,
    },
    /// The earlier version's record.
    Legacy(Ownership),
}

impl Record {
    fn ownership(&self) -> Option<&Ownership> {
        match self {
            Record::Missing => None,
            Record::Slotted { ownership, .. } | Record::Legacy(ownership) => Some(ownership),
        }
    }
}

impl FileAuthority {
    /// How long a swap waits for a region's lock before answering "unavailable", by default.
    pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

    /// An authority in `directory` (created if missing).
    pub fn open(directory: impl AsRef<Path>) -> Result<FileAuthority, AuthorityError> {
        let directory = directory.as_ref().to_path_buf();
        fs::create_dir_all(&directory).map_err(|error| unavailable(&directory, &error))?;
        Ok(FileAuthority { directory, lock_wait: Self::LOCK_WAIT })
    }

    /// The same authority, waiting at most `wait` for a region's lock.
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> FileAuthority {
        self.lock_wait = wait;
        self
    }

    fn record_path(&self, region: RegionId) -> PathBuf {
        self.directory.join(format!("region-{}.own", region.0))
    }

    fn legacy_path(&self, region: RegionId) -> PathBuf {
        self.directory.join(format!("region-{}.owner", region.0))
    }

    /// The path of `region`'s lock file (a test holds it to make the authority slow).
    #[must_use]
    pub fn lock_path(&self, region: RegionId) -> PathBuf {
        self.directory.join(format!("region-{}.flock", region.0))
    }

    fn read(&self, region: RegionId) -> Result<Record, AuthorityError> {
        let path = self.record_path(region);
        match fs::read(&path) {
            Ok(bytes) => return Self::slotted(&path, &bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(unavailable(&path, &error)),
        }
        let legacy = self.legacy_path(region);
        let text = match fs::read_to_string(&legacy) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Record::Missing),
            Err(error) => return Err(unavailable(&legacy, &error)),
        };
        let (epoch, owner) = text
            .trim_end()
            .split_once(' ')
            .ok_or_else(|| AuthorityError::Unavailable(format!("{} is malformed", legacy.display())))?;
        let epoch =
            epoch.parse().map_err(|_| AuthorityError::Unavailable(format!("{} has a bad epoch", legacy.display())))?;
        Ok(Record::Legacy(Ownership { owner: owner.to_owned(), epoch: Epoch(epoch) }))
    }

    /// The newest record of a record file's `bytes`.
    fn slotted(path: &Path, bytes: &[u8]) -> Result<Record, AuthorityError> {
        if bytes.len() != RECORD_FILE_BYTES {
            return Err(AuthorityError::Unavailable(format!(
                "{} is {} bytes, not {RECORD_FILE_BYTES}",
                path.display(),
                bytes.len()
            )));
        }
        let slot = |index: usize| &bytes[index * SLOT_STRIDE..index * SLOT_STRIDE + SLOT_BYTES];
        let newest = (0..2)
            .filter_map(|index| decode_slot(slot(index)).map(|(sequence, ownership)| (sequence, index, ownership)))
            .max_by_key(|(sequence, ..)| *sequence);
        match newest {
            Some((sequence, index, ownership)) => {
                Ok(Record::Slotted { ownership, sequence, slot: index, other: slot(1 - index).to_vec() })
            }
            None => Err(AuthorityError::Unavailable(format!("{} holds no whole record", path.display()))),
        }
    }

    /// Writes `ownership` over `record` (as read under the lock), durably.
    fn write(&self, region: RegionId, record: &Record, ownership: &Ownership) -> Result<(), AuthorityError> {
        use std::io::{Seek, SeekFrom};
        let path = self.record_path(region);
        match record {
            Record::Slotted { sequence, slot, other, .. } => {
                let offset = ((1 - slot) * SLOT_STRIDE) as u64;
                let failed = |error: std::io::Error| unavailable(&path, &error);
                let mut file = fs::OpenOptions::new().write(true).open(&path).map_err(failed)?;
                let mut put = |bytes: &[u8]| {
                    file.seek(SeekFrom::Start(offset))?;
                    file.write_all(bytes)?;
                    file.sync_data()
                };
                if let Err(error) = put(&encode_slot(sequence + 1, ownership)) {
                    // What failed to reach the disk must not be read as the record either: the
                    // caller hears "unavailable", that nothing is known to have changed.
                    let _ = put(other);
                    return Err(failed(error));
                }
                Ok(())
            }
            Record::Missing | Record::Legacy(_) => {
                // A new record file: made whole under a temporary name (the first slot written,
                // the second empty) and renamed into place, so a crash never leaves a short one.
                let temporary = path.with_extension("own.tmp");
                let mut bytes = encode_slot(0, ownership).to_vec();
                bytes.resize(RECORD_FILE_BYTES, 0);
                let mut file = fs::File::create(&temporary).map_err(|error| unavailable(&temporary, &error))?;
                file.write_all(&bytes).map_err(|error| unavailable(&temporary, &error))?;
                file.sync_all().map_err(|error| unavailable(&temporary, &error))?;
                fs::rename(&temporary, &path).map_err(|error| unavailable(&path, &error))?;
                fs::File::open(&self.directory)
                    .and_then(|directory| directory.sync_all())
                    .map_err(|error| unavailable(&self.directory, &error))?;
                if matches!(record, Record::Legacy(_)) {
                    // The new record is durable and read first; the old one is no longer needed.
                    let _ = fs::remove_file(self.legacy_path(region));
                }
                Ok(())
            }
        }
    }

    fn locked<T>(
        &self,
        region: RegionId,
        action: impl FnOnce() -> Result<T, AuthorityError>,
    ) -> Result<T, AuthorityError> {
        let path = self.lock_path(region);
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| unavailable(&path, &error))?;
        let started = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= self.lock_wait {
                        return Err(AuthorityError::Unavailable(format!("{} is held", path.display())));
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(fs::TryLockError::Error(error)) => return Err(unavailable(&path, &error)),
            }
        }
        // The lock is released when `lock` is closed, below (or by the kernel, should this
        // process die holding it).
        action()
    }
}

fn unavailable(path: &Path, error: &std::io::Error) -> AuthorityError {
    AuthorityError::Unavailable(format!("{}: {error}", path.display()))
}

/// Whether an authority can keep `owner` as an owner name: one non-empty line of at most
/// [`MAX_OWNER_BYTES`] bytes (what a [`FileAuthority`] record holds). A region server checks its
/// name with it before it starts.
pub fn check_owner_name(owner: &str) -> Result<(), AuthorityError> {
    if owner.contains(['\n', '\r']) || owner.is_empty() || owner.len() > MAX_OWNER_BYTES {
        return Err(AuthorityError::BadOwner(owner.chars().take(80).collect()));
    }
    Ok(())
}

impl OwnershipAuthority for FileAuthority {
    fn current(&self, region: RegionId) -> Result<Ownership, AuthorityError> {
        self.read(region)?.ownership().cloned().ok_or(AuthorityError::UnknownRegion(region))
    }

    fn compare_and_swap(&self, region: RegionId, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError> {
        check_next(region, expected, next)?;
        check_owner_name(&next.owner)?;
        self.locked(region, || {
            let record = self.read(region)?;
            let Some(current) = record.ownership() else {
                return Err(AuthorityError::UnknownRegion(region));
            };
            if current != expected {
                return Err(AuthorityError::Conflict {
                    region,
                    expected_epoch: expected.epoch,
                    actual_epoch: current.epoch,
                    actual_owner: current.owner.clone(),
                });
            }
            self.write(region, &record, next)
        })
    }

    fn register(&self, region: RegionId, owner: &str) -> Result<Ownership, AuthorityError> {
        check_owner_name(owner)?;
        self.locked(region, || {
            let record = self.read(region)?;
            if let Some(current) = record.ownership() {
                return Ok(current.clone());
            }
            let ownership = Ownership { owner: owner.to_owned(), epoch: Epoch(1) };
            self.write(region, &Record::Missing, &ownership)?;
            Ok(ownership)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_cas(authority: &dyn OwnershipAuthority) {
        let region = RegionId(7);
        let first = authority.register(region, "source").unwrap();
        assert_eq!(first, Ownership { owner: "source".to_owned(), epoch: Epoch(1) });
        assert_eq!(authority.register(region, "someone-else").unwrap(), first, "register is idempotent");
        let target = Ownership { owner: "target".to_owned(), epoch: Epoch(2) };
        let reclaim = Ownership { owner: "source".to_owned(), epoch: Epoch(2) };
        authority.compare_and_swap(region, &first, &target).unwrap();
        // The source's reclaim of the same epoch loses: exactly one side wins.
        assert!(matches!(authority.compare_and_swap(region, &first, &reclaim), Err(AuthorityError::Conflict { .. })));
        assert_eq!(authority.current(region).unwrap(), target);
        // Skipping an epoch is refused.
        let skip = Ownership { owner: "x".to_owned(), epoch: Epoch(9) };
        assert!(authority.compare_and_swap(region, &target, &skip).is_err());
        assert!(matches!(authority.current(RegionId(99)), Err(AuthorityError::UnknownRegion(_))));
    }

    #[test]
    fn in_memory_authority_is_a_compare_and_swap() {
        check_cas(&InMemoryAuthority::new());
    }

    #[test]
    fn file_authority_is_a_compare_and_swap_and_survives_reopening() {
        let directory = scratch();
        let authority = FileAuthority::open(&directory).unwrap();
        check_cas(&authority);
        let reopened = FileAuthority::open(&directory).unwrap();
        assert_eq!(reopened.current(RegionId(7)).unwrap().epoch, Epoch(2));
        let _ = fs::remove_dir_all(&directory);
    }

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("baton-authority-{}-{}", std::process::id(), fastrand::u64(..)))
    }

    fn at(owner: &str, epoch: u64) -> Ownership {
        Ownership { owner: owner.to_owned(), epoch: Epoch(epoch) }
    }

    #[test]
    fn a_torn_write_of_the_newest_slot_leaves_the_record_before_it() {
        let directory = scratch();
        let authority = FileAuthority::open(&directory).unwrap();
        let region = RegionId(3);
        authority.register(region, "a").unwrap();
        authority.compare_and_swap(region, &at("a", 1), &at("b", 2)).unwrap();
        authority.compare_and_swap(region, &at("b", 2), &at("c", 3)).unwrap();
        let path = directory.join("region-3.own");
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 * SLOT_STRIDE, "the file keeps its size");
        // Sequence 0 (epoch 1) went to slot 0, 1 (epoch 2) to slot 1, 2 (epoch 3) to slot 0.
        assert_eq!(decode_slot(&bytes[..SLOT_BYTES]).map(|(sequence, _)| sequence), Some(2));
        bytes[SLOT_HEADER] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(authority.current(region).unwrap(), at("b", 2));
        // The next swap goes on from there, into the torn slot, and is read back.
        authority.compare_and_swap(region, &at("b", 2), &at("d", 3)).unwrap();
        assert_eq!(FileAuthority::open(&directory).unwrap().current(region).unwrap(), at("d", 3));
        // Both slots torn: no record is known, and nothing is guessed.
        fs::write(&path, vec![0xAB; 2 * SLOT_BYTES]).unwrap();
        assert!(matches!(authority.current(region), Err(AuthorityError::Unavailable(_))));
        assert!(matches!(
            authority.compare_and_swap(region, &at("d", 3), &at("e", 4)),
            Err(AuthorityError::Unavailable(_))
        ));
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn slots_refuse_what_they_did_not_write() {
        let slot = encode_slot(5, &at("owner", 9));
        assert_eq!(decode_slot(&slot), Some((5, at("owner", 9))));
        assert_eq!(decode_slot(&slot[..SLOT_BYTES - 1]), None, "short");
        let mut wrong_magic = slot;
        wrong_magic[0] = b'X';
        assert_eq!(decode_slot(&wrong_magic), None);
        let mut too_long = slot;
        too_long[24..26].copy_from_slice(&((MAX_OWNER_BYTES + 1) as u16).to_le_bytes());
        assert_eq!(decode_slot(&too_long), None);
        let mut epoch_changed = slot;
        epoch_changed[16] ^= 1;
        assert_eq!(decode_slot(&epoch_changed), None, "the checksum covers the epoch");
        let longest = "x".repeat(MAX_OWNER_BYTES);
        assert_eq!(decode_slot(&encode_slot(1, &at(&longest, 2))), Some((1, at(&longest, 2))));
    }

    #[test]
    fn a_record_of_the_earlier_version_is_read_and_replaced_at_the_first_swap() {
        let directory = scratch();
        fs::create_dir_all(&directory).unwrap();
        fs::write(directory.join("region-4.owner"), "6 old-host/pid-1\n").unwrap();
        let authority = FileAuthority::open(&directory).unwrap();
        let region = RegionId(4);
        assert_eq!(authority.current(region).unwrap(), at("old-host/pid-1", 6));
        assert_eq!(authority.register(region, "someone").unwrap(), at("old-host/pid-1", 6));
        assert!(matches!(
            authority.compare_and_swap(region, &at("x", 6), &at("y", 7)),
            Err(AuthorityError::Conflict { .. })
        ));
        authority.compare_and_swap(region, &at("old-host/pid-1", 6), &at("new", 7)).unwrap();
        assert!(!directory.join("region-4.owner").exists());
        assert_eq!(authority.current(region).unwrap(), at("new", 7));
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_held_lock_makes_the_swap_unavailable_and_a_closed_one_frees_it() {
        let directory = scratch();
        let authority = FileAuthority::open(&directory).unwrap().with_lock_wait(std::time::Duration::ZERO);
        let region = RegionId(5);
        authority.register(region, "a").unwrap();
        let holder =
            fs::OpenOptions::new().write(true).create(true).truncate(false).open(authority.lock_path(region)).unwrap();
        holder.lock().unwrap();
        let swap = authority.compare_and_swap(region, &at("a", 1), &at("b", 2));
        assert!(matches!(swap, Err(AuthorityError::Unavailable(ref reason)) if reason.contains("is held")), "{swap:?}");
        assert_eq!(authority.current(region).unwrap(), at("a", 1), "reading needs no lock");
        // A holder that dies (here: closes its file) releases the lock; nothing stale is left.
        drop(holder);
        authority.compare_and_swap(region, &at("a", 1), &at("b", 2)).unwrap();
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_record_that_cannot_be_read_is_unavailable_not_unknown() {
        let directory = scratch();
        let authority = FileAuthority::open(&directory).unwrap();
        // A directory where a record file should be: reading it fails, which is not "missing".
        fs::create_dir_all(directory.join("region-10.own")).unwrap();
        assert!(matches!(authority.current(RegionId(10)), Err(AuthorityError::Unavailable(_))));
        assert!(matches!(authority.register(RegionId(10), "a"), Err(AuthorityError::Unavailable(_))));
        fs::create_dir_all(directory.join("region-11.owner")).unwrap();
        assert!(matches!(authority.current(RegionId(11)), Err(AuthorityError::Unavailable(_))));
        assert!(matches!(authority.current(RegionId(12)), Err(AuthorityError::UnknownRegion(_))));
        let _ = fs::remove_dir_all(&directory);
    }

    /// Invariant 1 across processes rests on the lock: swaps racing from threads that each open
    /// the files themselves (as separate processes do) never lose an update, and from one epoch
    /// exactly one wins.
    #[test]
    fn racing_swaps_have_one_winner_per_epoch_and_lose_no_update() {
        let directory = scratch();
        let region = RegionId(8);
        FileAuthority::open(&directory).unwrap().register(region, "first").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let directory = directory.clone();
                std::thread::spawn(move || {
                    let authority = FileAuthority::open(&directory).unwrap();
                    let mut won = Vec::new();
                    for _ in 0..25 {
                        let current = authority.current(region).unwrap();
                        let next = at(&format!("t{thread}"), current.epoch.0 + 1);
                        if authority.compare_and_swap(region, &current, &next).is_ok() {
                            won.push(next.epoch.0);
                        }
                    }
                    won
                })
            })
            .collect();
        let mut won: Vec<u64> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
        won.sort_unstable();
        let last = FileAuthority::open(&directory).unwrap().current(region).unwrap().epoch.0;
        assert_eq!(won, (2..=last).collect::<Vec<_>>(), "every epoch won exactly once, none skipped");
        // A swap fails only when another won since its read, so some swap won.
        assert!(!won.is_empty());
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn owner_names_are_one_line_that_fits_a_slot() {
        let directory = scratch();
        let authority = FileAuthority::open(&directory).unwrap();
        let region = RegionId(6);
        fn bad<T>(result: Result<T, AuthorityError>) -> bool {
            matches!(result, Err(AuthorityError::BadOwner(_)))
        }
        assert!(bad(authority.register(region, "")));
        assert!(bad(authority.register(region, &"x".repeat(MAX_OWNER_BYTES + 1))));
        let longest = "x".repeat(MAX_OWNER_BYTES);
        assert_eq!(authority.register(RegionId(60), &longest).unwrap(), at(&longest, 1), "the longest name fits");
        authority.register(region, "a").unwrap();
        assert!(bad(authority.compare_and_swap(region, &at("a", 1), &at("two\nlines", 2))));
        assert!(bad(authority.compare_and_swap(region, &at("a", 1), &at(&"x".repeat(MAX_OWNER_BYTES + 1), 2))));
        assert!(bad(authority.compare_and_swap(region, &at("a", 1), &at("carriage\rreturn", 2))));
        // The error names the refused name (its first 80 characters) and the rule.
        let error = check_owner_name(&"y".repeat(500)).unwrap_err().to_string();
        assert!(error.contains(&"y".repeat(80)) && !error.contains(&"y".repeat(81)), "{error}");
        assert!(error.contains(&MAX_OWNER_BYTES.to_string()), "{error}");
        assert_eq!(check_owner_name("h1-p2"), Ok(()));
        assert_eq!(authority.current(region).unwrap(), at("a", 1));
        let _ = fs::remove_dir_all(&directory);
    }
}
