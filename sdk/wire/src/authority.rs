//! The ownership authority: who owns each region, at which epoch.
//!
//! The commit point of a handoff is one compare-and-swap here: the target asks to move the region
//! from epoch `e` (owned by the source) to `e + 1` (owned by itself). A source that lost contact
//! with its target after freezing may only resume by winning the same swap for itself, so exactly
//! one of them can win — invariant 1 (single authority) rests on this and nothing else.
//!
//! This module holds the trait and two implementations: in-process (tests, one-process clusters)
//! and file-backed (one JSON-free, fsynced record per region under a directory, for several
//! processes on one host). The coordinator implements it with its persistent region directory.

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

/// An authority kept in a directory, one file per region, shared by processes on one host.
///
/// Each compare-and-swap takes an exclusive lock file (created with `create_new`, so only one
/// process holds it), reads the record, writes the new record to a temporary file, fsyncs it and
/// renames it over the old one, then removes the lock. A lock older than `stale_lock_ms` (a crashed
/// holder) is broken. Record format: one line `epoch owner`.
#[derive(Clone, Debug)]
pub struct FileAuthority {
    directory: PathBuf,
    stale_lock_ms: u64,
}

impl FileAuthority {
    /// An authority in `directory` (created if missing).
    pub fn open(directory: impl AsRef<Path>) -> Result<FileAuthority, AuthorityError> {
        let directory = directory.as_ref().to_path_buf();
        fs::create_dir_all(&directory).map_err(|error| unavailable(&directory, &error))?;
        Ok(FileAuthority { directory, stale_lock_ms: 2_000 })
    }

    fn record_path(&self, region: RegionId) -> PathBuf {
        self.directory.join(format!("region-{}.owner", region.0))
    }

    fn read(&self, region: RegionId) -> Result<Option<Ownership>, AuthorityError> {
        let path = self.record_path(region);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(unavailable(&path, &error)),
        };
        let (epoch, owner) = text
            .trim_end()
            .split_once(' ')
            .ok_or_else(|| AuthorityError::Unavailable(format!("{} is malformed", path.display())))?;
        let epoch =
            epoch.parse().map_err(|_| AuthorityError::Unavailable(format!("{} has a bad epoch", path.display())))?;
        Ok(Some(Ownership { owner: owner.to_owned(), epoch: Epoch(epoch) }))
    }

    fn write(&self, region: RegionId, ownership: &Ownership) -> Result<(), AuthorityError> {
        let path = self.record_path(region);
        let temporary = path.with_extension("tmp");
        let mut file = fs::File::create(&temporary).map_err(|error| unavailable(&temporary, &error))?;
        writeln!(file, "{} {}", ownership.epoch.0, ownership.owner).map_err(|error| unavailable(&temporary, &error))?;
        file.sync_all().map_err(|error| unavailable(&temporary, &error))?;
        fs::rename(&temporary, &path).map_err(|error| unavailable(&path, &error))?;
        if let Ok(directory) = fs::File::open(&self.directory) {
            // Make the rename durable too; a failure here leaves the old or the new record, both whole.
            let _ = directory.sync_all();
        }
        Ok(())
    }

    fn locked<T>(
        &self,
        region: RegionId,
        action: impl FnOnce() -> Result<T, AuthorityError>,
    ) -> Result<T, AuthorityError> {
        let lock = self.directory.join(format!("region-{}.lock", region.0));
        let started = std::time::Instant::now();
        loop {
            match fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => break,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&lock)
                        .and_then(|metadata| metadata.modified())
                        .ok()
                        .and_then(|modified| modified.elapsed().ok())
                        .is_some_and(|age| age.as_millis() as u64 > self.stale_lock_ms);
                    if stale {
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    if started.elapsed().as_millis() as u64 > self.stale_lock_ms * 2 {
                        return Err(AuthorityError::Unavailable(format!("{} is held", lock.display())));
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Err(error) => return Err(unavailable(&lock, &error)),
            }
        }
        let result = action();
        let _ = fs::remove_file(&lock);
        result
    }
}

fn unavailable(path: &Path, error: &std::io::Error) -> AuthorityError {
    AuthorityError::Unavailable(format!("{}: {error}", path.display()))
}

impl OwnershipAuthority for FileAuthority {
    fn current(&self, region: RegionId) -> Result<Ownership, AuthorityError> {
        self.read(region)?.ok_or(AuthorityError::UnknownRegion(region))
    }

    fn compare_and_swap(&self, region: RegionId, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError> {
        check_next(region, expected, next)?;
        if next.owner.contains(['\n', '\r']) || next.owner.is_empty() {
            return Err(AuthorityError::Unavailable("owner names must be one non-empty line".to_owned()));
        }
        self.locked(region, || {
            let current = self.read(region)?.ok_or(AuthorityError::UnknownRegion(region))?;
            if &current != expected {
                return Err(AuthorityError::Conflict {
                    region,
                    expected_epoch: expected.epoch,
                    actual_epoch: current.epoch,
                    actual_owner: current.owner,
                });
            }
            self.write(region, next)
        })
    }

    fn register(&self, region: RegionId, owner: &str) -> Result<Ownership, AuthorityError> {
        self.locked(region, || {
            if let Some(current) = self.read(region)? {
                return Ok(current);
            }
            let ownership = Ownership { owner: owner.to_owned(), epoch: Epoch(1) };
            self.write(region, &ownership)?;
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
        let directory =
            std::env::temp_dir().join(format!("baton-authority-{}-{}", std::process::id(), fastrand::u64(..)));
        let authority = FileAuthority::open(&directory).unwrap();
        check_cas(&authority);
        let reopened = FileAuthority::open(&directory).unwrap();
        assert_eq!(reopened.current(RegionId(7)).unwrap().epoch, Epoch(2));
        let _ = fs::remove_dir_all(&directory);
    }
}
