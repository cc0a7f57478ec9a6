//! The checkpoint store: region checkpoints (`baton_sdk::checkpoint`) as files in a folder.
//!
//! Each checkpoint is its own file, `region-<R>-e<EPOCH>-t<TICK>.ckpt` (numbers zero-padded), so
//! writers never overwrite each other: the newest is the one with the highest (epoch, tick), which
//! means a copy that was handed away (a lower epoch) can never shadow its successor's checkpoint,
//! whatever its tick. A file is written under a temporary name, synced, renamed into place and the
//! folder synced, so a crash leaves either the whole file or none. After each save the store keeps
//! only the newest [`CheckpointStore::keep`] checkpoints of that region.
//!
//! On one machine the folder is local; a cluster whose hosts should restore each other's regions
//! points every host at the same shared folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use baton_sdk::checkpoint::CheckpointInfo;
use baton_sdk::wire::RegionId;

/// A folder of checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    directory: PathBuf,
    keep: usize,
}

/// A checkpoint file the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Its path.
    pub path: PathBuf,
    /// The region.
    pub region: RegionId,
    /// The epoch of the instance that wrote it.
    pub epoch: u64,
    /// Its tick.
    pub tick: u64,
}

impl CheckpointStore {
    /// Opens (creating it if needed) the store in `directory`, keeping `keep` (at least 1)
    /// checkpoints per region.
    pub fn open(directory: &Path, keep: usize) -> std::io::Result<CheckpointStore> {
        fs::create_dir_all(directory)?;
        Ok(CheckpointStore { directory: directory.to_owned(), keep: keep.max(1) })
    }

    /// The folder.
    #[must_use]
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// How many checkpoints per region are kept.
    #[must_use]
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Durably stores `bytes`, the checkpoint `info` describes; returns its path.
    pub fn save(&self, info: &CheckpointInfo, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let name = format!("region-{:020}-e{:020}-t{:020}.ckpt", info.region.0, info.epoch.0, info.tick);
        let path = self.directory.join(&name);
        // Unique per save: two saves of the same tick (a stop's save right after a checkpoint of
        // that tick) must not write, and rename away, each other's temporary file.
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let save = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = self.directory.join(format!(".{name}.{}.{save}.tmp", std::process::id()));
        {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&temporary, &path)?;
        fs::File::open(&self.directory)?.sync_all()?;
        let mut stored = self.list(info.region)?;
        while stored.len() > self.keep {
            let oldest = stored.remove(0);
            let _ = fs::remove_file(oldest.path);
        }
        Ok(path)
    }

    /// The checkpoints of `region`, oldest first (by epoch, then tick).
    pub fn list(&self, region: RegionId) -> std::io::Result<Vec<StoredCheckpoint>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.directory)? {
            let entry = entry?;
            if let Some(stored) = parse_name(&entry.path())
                && stored.region == region
            {
                found.push(stored);
            }
        }
        found.sort_by_key(|stored| (stored.epoch, stored.tick));
        Ok(found)
    }

    /// The newest checkpoint of `region`, if any.
    pub fn latest(&self, region: RegionId) -> std::io::Result<Option<StoredCheckpoint>> {
        Ok(self.list(region)?.pop())
    }
}

/// Reads region, epoch and tick from a checkpoint file's name.
fn parse_name(path: &Path) -> Option<StoredCheckpoint> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("region-")?.strip_suffix(".ckpt")?;
    let mut parts = rest.split('-');
    let region = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.strip_prefix('e')?.parse().ok()?;
    let tick = parts.next()?.strip_prefix('t')?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(StoredCheckpoint { path: path.to_owned(), region: RegionId(region), epoch, tick })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use baton_sdk::wire::Epoch;

    fn info(region: u64, epoch: u64, tick: u64) -> CheckpointInfo {
        CheckpointInfo { region: RegionId(region), tick, epoch: Epoch(epoch), digest: 0, schema_hash: 0, chunks: 0 }
    }

    #[test]
    fn the_newest_epoch_wins_and_old_checkpoints_are_pruned() {
        let directory = std::env::temp_dir().join(format!("baton-ckpt-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        let store = CheckpointStore::open(&directory, 2).unwrap();
        store.save(&info(1, 1, 100), b"a").unwrap();
        store.save(&info(1, 1, 200), b"b").unwrap();
        // The handed-away copy at epoch 1 writes a late checkpoint with a higher tick: the new
        // owner's epoch-2 checkpoint still wins.
        store.save(&info(1, 2, 150), b"c").unwrap();
        store.save(&info(2, 1, 999), b"other region").unwrap();
        let latest = store.latest(RegionId(1)).unwrap().unwrap();
        assert_eq!((latest.epoch, latest.tick), (2, 150));
        assert_eq!(fs::read(&latest.path).unwrap(), b"c");
        let kept: Vec<(u64, u64)> =
            store.list(RegionId(1)).unwrap().iter().map(|stored| (stored.epoch, stored.tick)).collect();
        assert_eq!(kept, vec![(1, 200), (2, 150)], "only the newest two are kept");
        assert!(store.latest(RegionId(3)).unwrap().is_none());
        fs::write(directory.join("region-garbage.ckpt"), b"x").unwrap();
        assert_eq!(store.list(RegionId(1)).unwrap().len(), 2, "foreign names are ignored");
        let _ = fs::remove_dir_all(&directory);
    }

    /// A region's stop saves it at the tick a checkpoint of it may be being stored at: saves of
    /// the same tick at once all succeed, and one whole file is left.
    #[test]
    fn saves_of_the_same_tick_at_once_all_succeed() {
        let directory = std::env::temp_dir().join(format!("baton-ckpt-same-tick-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        let store = CheckpointStore::open(&directory, 3).unwrap();
        let savers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..25).map(|_| store.save(&info(1, 1, 7), &[7; 4096]).map(|_| ())).collect::<Vec<_>>()
                })
            })
            .collect();
        for saver in savers {
            for saved in saver.join().unwrap() {
                saved.unwrap();
            }
        }
        let stored = store.list(RegionId(1)).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(fs::read(&stored[0].path).unwrap(), vec![7; 4096]);
        let _ = fs::remove_dir_all(&directory);
    }
}
