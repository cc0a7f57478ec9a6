//! Checkpoints: a region's whole world in one self-checking file, so a world survives a restart of
//! every process (docs/protocol.md §12).
//!
//! A checkpoint is the same validated snapshot chunks a handoff streams ([`crate::codec`]), taken
//! at a tick boundary, behind a small header that says which region it is, at which tick and
//! ownership epoch it was taken, the world's digest and the registry's schema hash, and an xxh3
//! checksum of everything after the header. Restoring checks, in this order: magic and version,
//! checksum (a torn or corrupted file is refused before rkyv sees a byte), schema hash, every chunk
//! through the codec's checked decoder, and finally that the restored world's digest and tick equal
//! the ones recorded: a checkpoint restores exactly the world that was saved, or not at all.
//!
//! This module does no I/O; `baton-runtime` stores checkpoints (`checkpoint_store`).

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::{self, ChunkConfig, CodecError, DecodeLimits};
use crate::region::{Region, RegionLogic};
use crate::wire::{Epoch, RegionId};

/// The first bytes of every checkpoint.
pub const MAGIC: &[u8; 8] = b"BATONCKP";
/// The layout version this build writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the header: magic, version, region, tick, epoch, digest, schema hash, chunk count,
/// body length, checksum.
pub const HEADER_BYTES: usize = 8 + 2 + 8 + 8 + 8 + 16 + 8 + 4 + 8 + 8;

/// What a checkpoint says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The region.
    pub region: RegionId,
    /// The tick the world had finished when it was taken.
    pub tick: u64,
    /// The ownership epoch of the instance that took it.
    pub epoch: Epoch,
    /// The world's digest at that tick.
    pub digest: u128,
    /// The registry's schema hash.
    pub schema_hash: u64,
    /// Snapshot chunks in the body.
    pub chunks: u32,
}

/// Why a checkpoint could not be made or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The bytes are not a checkpoint of this format.
    #[error("not a baton checkpoint: {0}")]
    Invalid(String),
    /// The body does not match its checksum (torn write or corruption).
    #[error("checkpoint checksum mismatch (the file is damaged)")]
    Checksum,
    /// The checkpoint is of another region.
    #[error("checkpoint is of region {found}, not {expected}")]
    WrongRegion {
        /// The region asked for.
        expected: RegionId,
        /// The region in the file.
        found: RegionId,
    },
    /// The game's component types differ from those the checkpoint was written with.
    #[error("checkpoint schema {found:016x} differs from this build's {expected:016x}")]
    Schema {
        /// This build's schema hash.
        expected: u64,
        /// The checkpoint's.
        found: u64,
    },
    /// A chunk failed the codec's validation.
    #[error("checkpoint chunk {index}: {source}")]
    Chunk {
        /// Which chunk.
        index: u32,
        /// Why.
        source: CodecError,
    },
    /// The restored world is not the world that was saved.
    #[error("restored world digest {found:032x} differs from the checkpoint's {expected:032x}")]
    Digest {
        /// The checkpoint's digest.
        expected: u128,
        /// The restored world's.
        found: u128,
    },
    /// The region into which a checkpoint is restored already holds entities.
    #[error("a checkpoint restores only into an empty region")]
    NotEmpty,
}

/// Encodes `region`'s world, as it is between two ticks, owned at `epoch`: what the checkpoint
/// says about itself, and its bytes.
pub fn encode<L: RegionLogic>(
    region: &mut Region<L>,
    epoch: Epoch,
) -> Result<(CheckpointInfo, Vec<u8>), CheckpointError> {
    let digest = region.world_mut().digest().0;
    let world = region.world();
    let chunks = codec::encode_snapshot(world, ChunkConfig::default())
        .map_err(|source| CheckpointError::Chunk { index: 0, source })?;
    let mut body = Vec::with_capacity(chunks.iter().map(|chunk| chunk.len() + 4).sum());
    for chunk in &chunks {
        body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        body.extend_from_slice(chunk);
    }
    let info = CheckpointInfo {
        region: region.id(),
        tick: world.tick(),
        epoch,
        digest,
        schema_hash: world.registry().schema_hash(),
        chunks: chunks.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&info.region.0.to_le_bytes());
    out.extend_from_slice(&info.tick.to_le_bytes());
    out.extend_from_slice(&info.epoch.0.to_le_bytes());
    out.extend_from_slice(&info.digest.to_le_bytes());
    out.extend_from_slice(&info.schema_hash.to_le_bytes());
    out.extend_from_slice(&info.chunks.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok((info, out))
}

/// Reads a checkpoint's header and checks its checksum (no chunk is decoded).
pub fn inspect(bytes: &[u8]) -> Result<CheckpointInfo, CheckpointError> {
    let invalid = |what: &str| CheckpointError::Invalid(what.to_owned());
    if bytes.len() < HEADER_BYTES {
        return Err(invalid("shorter than its header"));
    }
    if &bytes[..8] != MAGIC {
        return Err(invalid("bad magic"));
    }
    // The length was checked above, so every read stays inside the header.
    let mut header = Header { bytes: &bytes[..HEADER_BYTES], at: 8 };
    let version = u16::from_le_bytes(header.array());
    if version != VERSION {
        return Err(CheckpointError::Invalid(format!("unsupported version {version} (this build reads {VERSION})")));
    }
    let region = u64::from_le_bytes(header.array());
    let tick = u64::from_le_bytes(header.array());
    let epoch = u64::from_le_bytes(header.array());
    let digest = u128::from_le_bytes(header.array());
    let schema_hash = u64::from_le_bytes(header.array());
    let chunks = u32::from_le_bytes(header.array());
    let body_length = u64::from_le_bytes(header.array());
    let checksum = u64::from_le_bytes(header.array());
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != body_length {
        return Err(CheckpointError::Invalid(format!("body is {} bytes, the header says {body_length}", body.len())));
    }
    if xxh3_64(body) != checksum {
        return Err(CheckpointError::Checksum);
    }
    Ok(CheckpointInfo { region: RegionId(region), tick, epoch: Epoch(epoch), digest, schema_hash, chunks })
}

/// Restores a checkpoint into `region`, a freshly made, empty region of the same game, and
/// rebuilds its engines. On error the region must be discarded.
pub fn restore<L: RegionLogic>(region: &mut Region<L>, bytes: &[u8]) -> Result<CheckpointInfo, CheckpointError> {
    let info = inspect(bytes)?;
    if info.region != region.id() {
        return Err(CheckpointError::WrongRegion { expected: region.id(), found: info.region });
    }
    if region.world().entity_count() != 0 {
        return Err(CheckpointError::NotEmpty);
    }
    let expected = region.world().registry().schema_hash();
    if info.schema_hash != expected {
        return Err(CheckpointError::Schema { expected, found: info.schema_hash });
    }
    let mut body = &bytes[HEADER_BYTES..];
    for index in 0..info.chunks {
        if body.len() < 4 {
            return Err(CheckpointError::Invalid(format!("chunk {index} is missing")));
        }
        let length = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if body.len() - 4 < length {
            return Err(CheckpointError::Invalid(format!("chunk {index} is truncated")));
        }
        codec::apply(region.world_mut(), &body[4..4 + length], DecodeLimits::default())
            .map_err(|source| CheckpointError::Chunk { index, source })?;
        body = &body[4 + length..];
    }
    if !body.is_empty() {
        return Err(CheckpointError::Invalid(format!("{} bytes after the last chunk", body.len())));
    }
    let found = region.world_mut().digest().0;
    if found != info.digest {
        return Err(CheckpointError::Digest { expected: info.digest, found });
    }
    // The header is outside the checksum: its tick, which says what the file holds, must be the
    // world's.
    if region.world().tick() != info.tick {
        return Err(CheckpointError::Invalid(format!(
            "the header says tick {}, the world is at tick {}",
            info.tick,
            region.world().tick()
        )));
    }
    region.rebuild_caches();
    Ok(info)
}

/// Reads the fixed-width header fields in order.
struct Header<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Header<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        if let Some(field) = self.bytes.get(self.at..self.at + N) {
            out.copy_from_slice(field);
        }
        self.at += N;
        out
    }
}
