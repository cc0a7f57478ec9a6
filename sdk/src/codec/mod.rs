//! Snapshot and delta archives: how world state travels between region servers.
//!
//! # Format (version 1)
//! An archive is a hand-written frame around rkyv sections, so that the frame can be checked with
//! plain bounds checks and every section starts 16-byte aligned (rkyv's checked access rejects
//! unaligned input):
//!
//! ```text
//! 0   magic "BTNA" | u16 format version | u8 kind | u8 reserved | u32 section count | u32 total length
//! 16  16 reserved bytes (zero)
//! 32  section table: per section { u32 offset, u32 length, u64 reserved }
//!     sections, each at a 16-byte aligned offset:
//!       section 0: the manifest (rkyv): tick, entity allocator, the archive's component table
//!                  (name + schema per type), entity lists, tombstones, one descriptor per column
//!       section i: column i-1 (rkyv `Vec<T::Archived>`), values in the descriptor's entity order
//! ```
//! All integers are little-endian. A receiver validates the frame, then every section with
//! bytecheck, then maps every component name to its own registry (unknown name or different schema:
//! error), and only then touches its world, so a bad archive never half-applies.
//!
//! # Snapshot chunks and deltas
//! A snapshot is a series of chunks, each covering a contiguous range of entity ids; the ranges of
//! one snapshot tile the whole id space, so applying a chunk makes that id range of the receiver
//! equal to the source's at the time the chunk was encoded (entities missing from the chunk are
//! despawned, components missing from an entity are removed). Chunks are encoded one at a time
//! while the source keeps ticking ([`SnapshotWriter`]); what changes under a finished chunk is
//! caught by the next delta, because the handoff creates its change tracker before the first
//! chunk. A delta carries spawns, despawns, component removals and the full new value of every
//! changed component; applying it twice is harmless.
//!
//! # What it does not do
//! No compression, no transport, no authentication: archives travel only on authenticated
//! region-to-region links. Player bytes never reach this decoder.

pub mod column;

use std::any::Any;
use std::sync::Arc;

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use crate::component::{ComponentId, Registry};
use crate::world::{ChangeSet, EntityId, World};

/// The archive format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// The first four bytes of every archive.
pub const MAGIC: [u8; 4] = *b"BTNA";
const HEADER_LEN: usize = 32;
const SECTION_ENTRY_LEN: usize = 16;
const ALIGN: usize = 16;

/// Errors from encoding or decoding archives.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input ends before the frame says it should.
    #[error("archive truncated: {0}")]
    Truncated(&'static str),
    /// The input does not start with the archive magic.
    #[error("not a baton archive (bad magic)")]
    BadMagic,
    /// The archive was written by an incompatible format version.
    #[error("unsupported archive format version {found} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
    },
    /// The input is larger than the receiver accepts.
    #[error("archive of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        length: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The frame or a section is malformed (bad length, offset, kind, or failed validation).
    #[error("invalid archive: {0}")]
    Invalid(String),
    /// The archive holds a component type the receiver does not have.
    #[error("archive holds unknown component type {name:?}")]
    UnknownComponent {
        /// The name in the archive.
        name: String,
    },
    /// Sender and receiver define a component type differently.
    #[error("component type {name:?} has schema {remote:016x} in the archive but {local:016x} here")]
    SchemaMismatch {
        /// The component name.
        name: String,
        /// The receiver's schema fingerprint.
        local: u64,
        /// The archive's schema fingerprint.
        remote: u64,
    },
    /// Encoding failed (a serializer error or an entity too large for a chunk).
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// What an archive is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    /// Chunk `index` of a snapshot; `last` marks the final chunk.
    SnapshotChunk {
        /// Position in the snapshot, from 0.
        index: u32,
        /// Whether this chunk ends the snapshot.
        last: bool,
    },
    /// Part `part` of delta round `round`.
    Delta {
        /// The delta round, from 1.
        round: u32,
        /// Which part of the round (a large round is split), from 0.
        part: u32,
    },
}

/// Limits a receiver enforces before decoding anything.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest archive accepted, in bytes.
    pub max_archive_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_archive_bytes: 64 * 1024 * 1024 }
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Manifest {
    kind: u8,
    /// Snapshot chunk index, or delta round.
    sequence: u32,
    /// Delta part within its round (0 for snapshot chunks).
    part: u32,
    last: bool,
    tick: u64,
    next_entity: u64,
    /// For snapshot chunks, the id range (inclusive) this chunk is authoritative for.
    range_first: u64,
    range_last: u64,
    components: Vec<ComponentDecl>,
    /// Snapshot chunk: every live entity in the range. Delta: spawned entities.
    entities: Vec<u64>,
    despawned: Vec<u64>,
    /// (entity, index into `components`).
    removed: Vec<(u64, u16)>,
    columns: Vec<ColumnDesc>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ComponentDecl {
    name: String,
    schema: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ColumnDesc {
    /// Index into `components`.
    component: u16,
    entities: Vec<u64>,
}

const KIND_SNAPSHOT: u8 = 1;
const KIND_DELTA: u8 = 2;

/// Settings of snapshot chunking.
#[derive(Clone, Copy, Debug)]
pub struct ChunkConfig {
    /// Chunks aim at this size; the number of entities per chunk adapts to it.
    pub target_chunk_bytes: usize,
    /// No chunk or delta part is larger than this (an entity that alone exceeds it is an error).
    pub max_chunk_bytes: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig { target_chunk_bytes: 256 * 1024, max_chunk_bytes: 1024 * 1024 }
    }
}

/// Encodes a snapshot of a world chunk by chunk, so a large world is snapshotted in slices across
/// ticks instead of stalling one tick (see the module documentation for why this is consistent).
#[derive(Debug)]
pub struct SnapshotWriter {
    config: ChunkConfig,
    next_from: EntityId,
    index: u32,
    entities_per_chunk: usize,
    done: bool,
}

impl SnapshotWriter {
    /// A writer starting at the lowest entity id.
    #[must_use]
    pub fn new(config: ChunkConfig) -> SnapshotWriter {
        SnapshotWriter { config, next_from: EntityId(0), index: 0, entities_per_chunk: 512, done: false }
    }

    /// Whether the last chunk was produced.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Encodes the next chunk from the world as it is now, or `None` when the snapshot is complete.
    pub fn next_chunk(&mut self, world: &World) -> Result<Option<AlignedVec>, CodecError> {
        if self.done {
            return Ok(None);
        }
        let mut count = self.entities_per_chunk.max(1);
        loop {
            let entities: Vec<(EntityId, u128)> = world.entities_from(self.next_from).take(count + 1).collect();
            let last = entities.len() <= count;
            let taken = &entities[..entities.len().min(count)];
            let range_last = if last { EntityId(u64::MAX) } else { taken[taken.len() - 1].0 };
            let kind = ArchiveKind::SnapshotChunk { index: self.index, last };
            let bytes = encode_snapshot_range(world, kind, self.next_from, range_last, taken)?;
            if bytes.len() > self.config.max_chunk_bytes && taken.len() > 1 {
                count = taken.len() / 2;
                continue;
            }
            if bytes.len() > self.config.max_chunk_bytes {
                return Err(CodecError::Encode(format!(
                    "entity {} alone needs {} bytes, over the chunk limit of {}",
                    taken[0].0,
                    bytes.len(),
                    self.config.max_chunk_bytes
                )));
            }
            // Aim the next chunk at the target size from what this one weighed per entity.
            if !taken.is_empty() {
                let per_entity = (bytes.len() / taken.len()).max(1);
                self.entities_per_chunk = (self.config.target_chunk_bytes / per_entity).clamp(1, 1 << 20);
            }
            self.index += 1;
            if last {
                self.done = true;
            } else {
                self.next_from = EntityId(range_last.0 + 1);
            }
            return Ok(Some(bytes));
        }
    }
}

/// Encodes a whole snapshot at once (tests, checkpoints, small worlds).
pub fn encode_snapshot(world: &World, config: ChunkConfig) -> Result<Vec<AlignedVec>, CodecError> {
    let mut writer = SnapshotWriter::new(config);
    let mut chunks = Vec::new();
    while let Some(chunk) = writer.next_chunk(world)? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

fn encode_snapshot_range(
    world: &World,
    kind: ArchiveKind,
    first: EntityId,
    last: EntityId,
    entities: &[(EntityId, u128)],
) -> Result<AlignedVec, CodecError> {
    let registry = world.registry();
    let mut columns: Vec<(ComponentId, Vec<EntityId>)> = Vec::new();
    if let (Some(lowest), Some(highest)) = (entities.first(), entities.last()) {
        for (id, _) in registry.infos() {
            let holders = world.store(id).entities_in(lowest.0, highest.0);
            if !holders.is_empty() {
                columns.push((id, holders));
            }
        }
    }
    let listed: Vec<EntityId> = entities.iter().map(|(entity, _)| *entity).collect();
    write_archive_of(world, kind, (first, last), &listed, &[], &[], &columns)
}

/// Encodes the changes in `changes` as one or more delta archives, each at most
/// `config.max_chunk_bytes` (all records of one entity stay in one archive).
pub fn encode_delta(
    world: &World,
    changes: &ChangeSet,
    round: u32,
    config: ChunkConfig,
) -> Result<Vec<AlignedVec>, CodecError> {
    let records = DeltaRecords::of(changes.clone());
    records.encode(world.registry(), round, (world.tick(), world.next_entity_id()), config, world)
}

/// A delta round's (or a piece's) records as archives list them: the entity lists, and per
/// component type (ascending) its holders (ascending).
struct DeltaRecords {
    spawned: Vec<EntityId>,
    despawned: Vec<EntityId>,
    removed: Vec<(EntityId, ComponentId)>,
    columns: Vec<(ComponentId, Vec<EntityId>)>,
}

/// What every archive of one delta round is made with.
struct Encoding<'a, S> {
    registry: &'a Registry,
    round: u32,
    tick: u64,
    next_entity: u64,
    config: ChunkConfig,
    source: &'a S,
}

/// One column's holders within a span of entities, and where they sit in the round's column.
struct ColumnSlice<'a> {
    column: usize,
    range: std::ops::Range<usize>,
    holders: &'a [EntityId],
}

impl AsRef<[EntityId]> for ColumnSlice<'_> {
    fn as_ref(&self) -> &[EntityId] {
        self.holders
    }
}

impl DeltaRecords {
    fn of(changes: ChangeSet) -> DeltaRecords {
        let ChangeSet { spawned, set, removed, despawned } = changes;
        DeltaRecords { spawned, despawned, removed, columns: columns_of(set) }
    }

    fn records(&self) -> usize {
        self.spawned.len()
            + self.despawned.len()
            + self.removed.len()
            + self.columns.iter().map(|(_, holders)| holders.len()).sum::<usize>()
    }

    /// Every entity with a record, ascending, once.
    fn touched(&self) -> Vec<EntityId> {
        let holders = self.columns.iter().flat_map(|(_, holders)| holders.iter().copied());
        touched_entities(&self.spawned, &self.despawned, holders, &self.removed)
    }

    /// Encodes them as the archives of delta round `round` (parts numbered from 0) of a world at
    /// `(tick, next_entity)`, each at most `config.max_chunk_bytes`, with values from `source`.
    fn encode(
        &self,
        registry: &Registry,
        round: u32,
        (tick, next_entity): (u64, u64),
        config: ChunkConfig,
        source: &impl for<'a> ColumnSource<ColumnSlice<'a>>,
    ) -> Result<Vec<AlignedVec>, CodecError> {
        let mut spans = Spans::of(self.touched());
        let encoding = Encoding { registry, round, tick, next_entity, config, source };
        let mut parts = Vec::new();
        while let Some(part) = self.next_part(&mut spans, &encoding)? {
            parts.push(part);
        }
        Ok(parts)
    }

    /// The next archive of the records of the spans of touched entities still to encode, all
    /// records of one entity in one archive; `None` when there are none left.
    ///
    /// Records reckoned ([`DeltaRecords::reckon`]) at over one and a half target-sized chunks are
    /// split before anything is encoded, into as many spans of touched entities as they hold
    /// target-sized chunks: a round is encoded once, and its parts can be applied one by one as
    /// they arrive (protocol.md §4). An archive still over the chunk limit (values holding more
    /// than their size in memory) is split the same way by its encoded size (halving instead would
    /// encode a large round once per halving: a 56 MB round six times), and a span still over the
    /// limit is split again. The first split's spans are those of [`split_round`].
    fn next_part<S: for<'a> ColumnSource<ColumnSlice<'a>>>(
        &self,
        spans: &mut Spans,
        encoding: &Encoding<'_, S>,
    ) -> Result<Option<AlignedVec>, CodecError> {
        while let Some(range) = spans.pending.pop() {
            let touched = &spans.touched[range.clone()];
            let pieces = match self.encode_span(touched, encoding, spans.parts)? {
                Ok(part) => {
                    spans.parts += 1;
                    return Ok(Some(part));
                }
                Err(pieces) => pieces,
            };
            // Depth first, in entity order: the first piece is taken next.
            for piece in (0..pieces).rev() {
                let within = span(touched.len(), pieces, piece);
                spans.pending.push(range.start + within.start..range.start + within.end);
            }
        }
        Ok(None)
    }

    /// The archive (part `part` of the round) of the records of the entities from `touched`'s
    /// first to its last (all records when `touched` is empty), or the number of pieces to split
    /// them into first ([`DeltaRecords::next_part`]).
    fn encode_span<S: for<'a> ColumnSource<ColumnSlice<'a>>>(
        &self,
        touched: &[EntityId],
        encoding: &Encoding<'_, S>,
        part: u32,
    ) -> Result<Result<AlignedVec, usize>, CodecError> {
        let (low, high) = match (touched.first(), touched.last()) {
            (Some(low), Some(high)) => (*low, *high),
            _ => (EntityId(0), EntityId(u64::MAX)),
        };
        let within = |entity: &EntityId| low <= *entity && *entity <= high;
        let spawned: Vec<EntityId> = self.spawned.iter().copied().filter(within).collect();
        let despawned: Vec<EntityId> = self.despawned.iter().copied().filter(within).collect();
        let removed: Vec<(EntityId, ComponentId)> =
            self.removed.iter().copied().filter(|(entity, _)| within(entity)).collect();
        let columns: Vec<(ComponentId, ColumnSlice<'_>)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(column, (id, holders))| {
                let range =
                    holders.partition_point(|entity| *entity < low)..holders.partition_point(|entity| *entity <= high);
                (!range.is_empty()).then(|| (*id, ColumnSlice { column, holders: &holders[range.clone()], range }))
            })
            .collect();
        let config = encoding.config;
        let target = config.target_chunk_bytes.max(1);
        let listed = spawned.len() + despawned.len() + removed.len();
        let sizes = columns.iter().map(|(id, slice)| (*id, slice.holders.len()));
        let reckoned = Self::reckon(encoding.registry, listed, sizes);
        if reckoned > target.saturating_add(target / 2) && touched.len() > 1 {
            return Ok(Err(reckoned.div_ceil(target).clamp(2, touched.len())));
        }
        let stamp = Stamp {
            kind: ArchiveKind::Delta { round: encoding.round, part },
            range: (EntityId(0), EntityId(0)),
            tick: encoding.tick,
            next_entity: encoding.next_entity,
        };
        let contents = Contents { entities: &spawned, despawned: &despawned, removed: &removed, columns: &columns };
        let bytes = write_archive(encoding.registry, stamp, contents, encoding.source)?;
        if bytes.len() <= config.max_chunk_bytes {
            return Ok(Ok(bytes));
        }
        let pieces = bytes.len().div_ceil(target).max(2).clamp(1, touched.len().max(1));
        if pieces < 2 {
            return Err(CodecError::Encode(format!(
                "changes of one entity need {} bytes, over the chunk limit of {}",
                bytes.len(),
                config.max_chunk_bytes
            )));
        }
        Ok(Err(pieces))
    }

    /// What an archive of these records takes, reckoned before encoding: eight bytes per entity
    /// id listed and each value its type's size in memory ([`ComponentInfo`](crate::component::ComponentInfo)).
    /// `listed` is the number of entities in the entity lists; `columns` gives each column's type
    /// and number of holders.
    fn reckon(registry: &Registry, listed: usize, columns: impl Iterator<Item = (ComponentId, usize)>) -> usize {
        columns.fold(listed * 8, |bytes, (id, holders)| {
            let value = registry.info(id).map_or(0, |info| info.value_bytes);
            bytes + holders * (8 + value)
        })
    }
}

/// Where the encoding of a round's records is: its touched entities, and the ranges of them
/// still to encode, the next one last.
#[derive(Debug)]
struct Spans {
    touched: Vec<EntityId>,
    pending: Vec<std::ops::Range<usize>>,
    /// Parts made so far.
    parts: u32,
}

impl Spans {
    fn of(touched: Vec<EntityId>) -> Spans {
        // One range, the whole list: the encoding starts with all records.
        #[allow(clippy::single_range_in_vec_init)]
        let pending = vec![0..touched.len()];
        Spans { touched, pending, parts: 0 }
    }
}

/// A delta round encoded a part at a time from the world it was read from, as the parts are
/// wanted: a round read at a tick boundary, each part sent as soon as it is made (protocol.md §4).
/// The world must not change until the last part is made. The parts are, byte for byte, those
/// [`encode_delta`] gives for the same changes.
#[derive(Debug)]
pub struct DeltaEncoder {
    records: DeltaRecords,
    spans: Spans,
    round: u32,
    tick: u64,
    next_entity: u64,
    config: ChunkConfig,
}

impl std::fmt::Debug for DeltaRecords {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DeltaRecords").field("records", &self.records()).finish_non_exhaustive()
    }
}

impl DeltaEncoder {
    /// An encoder of `changes`, read from `world`, as delta round `round`.
    #[must_use]
    pub fn new(world: &World, changes: ChangeSet, round: u32, config: ChunkConfig) -> DeltaEncoder {
        let records = DeltaRecords::of(changes);
        let spans = Spans::of(records.touched());
        DeltaEncoder { records, spans, round, tick: world.tick(), next_entity: world.next_entity_id(), config }
    }

    /// The next part, from `world` as it was read; `None` once every part is made.
    pub fn next_part(&mut self, world: &World) -> Result<Option<AlignedVec>, CodecError> {
        let encoding = Encoding {
            registry: world.registry(),
            round: self.round,
            tick: self.tick,
            next_entity: self.next_entity,
            config: self.config,
            source: world,
        };
        self.records.next_part(&mut self.spans, &encoding)
    }

    /// Whether every part is made.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.spans.pending.is_empty()
    }

    /// Parts made so far.
    #[must_use]
    pub fn parts(&self) -> u32 {
        self.spans.parts
    }
}

/// A delta round (or a piece of one) read out of a world, its changed values copied, so that it
/// can be encoded on another thread while the world goes on ticking (protocol.md §4). Encoding it
/// gives, byte for byte, what [`encode_delta`] gave for the same changes at the moment of the
/// capture.
pub struct CapturedDelta {
    registry: Arc<Registry>,
    round: u32,
    tick: u64,
    next_entity: u64,
    records: DeltaRecords,
    /// Per column of `records`, its values in the holders' order.
    values: Vec<Box<dyn column::CapturedColumn>>,
}

impl std::fmt::Debug for CapturedDelta {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CapturedDelta")
            .field("round", &self.round)
            .field("tick", &self.tick)
            .field("records", &self.records())
            .finish_non_exhaustive()
    }
}

/// Reads the values of `changes` (each must be present: see [`retain_present`]) out of `world`
/// for delta round `round`, to be encoded with [`CapturedDelta::encode`] elsewhere. Costs a copy of
/// each changed value; the encoding is left to the caller's thread.
pub fn capture_delta(world: &World, changes: ChangeSet, round: u32) -> Result<CapturedDelta, CodecError> {
    let records = DeltaRecords::of(changes);
    let values =
        records.columns.iter().map(|(id, holders)| world.store(*id).capture(holders)).collect::<Result<Vec<_>, _>>()?;
    Ok(CapturedDelta {
        registry: Arc::clone(world.registry()),
        round,
        tick: world.tick(),
        next_entity: world.next_entity_id(),
        records,
        values,
    })
}

/// A change set's values grouped by component type (ascending), each type's holders ascending.
///
/// Grouped first, then each type's holders sorted: the journal lists a type's changes in the
/// order the game made them, mostly ascending runs (a system visiting entities in order, once a
/// tick), which the run-adaptive sort merges in about one pass. Sorting the whole set by (type,
/// entity) at once, with the types interleaved, and the touched entities from scratch were 37% of
/// encoding a round.
fn columns_of(set: Vec<(EntityId, ComponentId)>) -> Vec<(ComponentId, Vec<EntityId>)> {
    let mut columns: Vec<(ComponentId, Vec<EntityId>)> = Vec::new();
    // Where the previous record's type is in `columns`: the next record's type is usually the
    // same, or one of a handful.
    let mut last_column = 0;
    for (entity, id) in set {
        if columns.get(last_column).is_none_or(|(current, _)| *current != id) {
            last_column = match columns.binary_search_by_key(&id, |(current, _)| *current) {
                Ok(found) => found,
                Err(at) => {
                    columns.insert(at, (id, Vec::new()));
                    at
                }
            };
        }
        columns[last_column].1.push(entity);
    }
    for (_, holders) in &mut columns {
        holders.sort();
    }
    columns
}

/// The captured values, by the column of the round they came from.
struct CapturedValues<'a>(&'a [Box<dyn column::CapturedColumn>]);

impl ColumnSource<ColumnSlice<'_>> for CapturedValues<'_> {
    fn encode_column(
        &self,
        column: &(ComponentId, ColumnSlice<'_>),
        out: AlignedVec,
    ) -> Result<AlignedVec, CodecError> {
        let slice = &column.1;
        match self.0.get(slice.column) {
            Some(values) => values.encode(slice.range.clone(), out),
            None => Err(CodecError::Encode(format!("no captured column {}", slice.column))),
        }
    }
}

impl CapturedDelta {
    /// The round it belongs to.
    #[must_use]
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Number of change records it holds.
    #[must_use]
    pub fn records(&self) -> usize {
        self.records.records()
    }

    /// Encodes it as one or more delta archives, each at most `config.max_chunk_bytes` (all
    /// records of one entity in one archive), split as [`encode_delta`] splits.
    pub fn encode(&self, config: ChunkConfig) -> Result<Vec<AlignedVec>, CodecError> {
        self.records.encode(
            &self.registry,
            self.round,
            (self.tick, self.next_entity),
            config,
            &CapturedValues(&self.values),
        )
    }
}

/// Splits a round's `changes` into `pieces` ranges of about as many touched entities each (fewer
/// when fewer entities changed), all records of one entity in one piece, in entity order.
pub(crate) fn split_round(changes: &ChangeSet, pieces: usize) -> Vec<ChangeSet> {
    let holders = changes.set.iter().map(|(entity, _)| *entity);
    let touched = touched_entities(&changes.spawned, &changes.despawned, holders, &changes.removed);
    let pieces = pieces.clamp(1, touched.len().max(1));
    let bounds: Vec<EntityId> = (1..pieces).map(|piece| touched[span(touched.len(), pieces, piece).start]).collect();
    split_changes(changes, &bounds)
}

/// Every entity with a record of a round, ascending, once.
fn touched_entities(
    spawned: &[EntityId],
    despawned: &[EntityId],
    holders: impl Iterator<Item = EntityId>,
    removed: &[(EntityId, ComponentId)],
) -> Vec<EntityId> {
    let mut touched: Vec<EntityId> = spawned
        .iter()
        .chain(despawned)
        .copied()
        .chain(holders)
        .chain(removed.iter().map(|(entity, _)| *entity))
        .collect();
    // From a round's columns the holders come as ascending runs, one per type: the run-adaptive
    // sort merges them rather than sorting from scratch (from a raw change set, as `split_round`
    // passes, it sorts as any sort would).
    touched.sort();
    touched.dedup();
    touched
}

/// Where piece `piece` of `pieces` (at most `len`) lies among `len` touched entities: as many in
/// each as can be, all of them in one of them.
fn span(len: usize, pieces: usize, piece: usize) -> std::ops::Range<usize> {
    piece * len / pieces..(piece + 1) * len / pieces
}

/// Drops from `changes` the values no longer in `world` (a component removed or an entity
/// despawned since the changes were read): they cannot be encoded, and their removal is in the
/// changes read next.
pub(crate) fn retain_present(world: &World, changes: &mut ChangeSet) {
    changes.set.retain(|(entity, id)| world.store(*id).contains(*entity));
}

/// Splits `changes` at the ascending entity ids `bounds`: piece `i` holds every record of the
/// entities from `bounds[i - 1]` (from the lowest for the first) up to, not including, `bounds[i]`
/// (to the highest for the last), so all records of one entity stay in one piece.
fn split_changes(changes: &ChangeSet, bounds: &[EntityId]) -> Vec<ChangeSet> {
    let mut pieces = vec![ChangeSet::default(); bounds.len() + 1];
    let piece_of = |entity: EntityId| bounds.partition_point(|bound| *bound <= entity);
    for entity in &changes.spawned {
        pieces[piece_of(*entity)].spawned.push(*entity);
    }
    for entity in &changes.despawned {
        pieces[piece_of(*entity)].despawned.push(*entity);
    }
    for record in &changes.set {
        pieces[piece_of(record.0)].set.push(*record);
    }
    for record in &changes.removed {
        pieces[piece_of(record.0)].removed.push(*record);
    }
    pieces
}

/// An archive's entity lists and columns (each a component type and its holders, ascending).
struct Contents<'a, C> {
    entities: &'a [EntityId],
    despawned: &'a [EntityId],
    removed: &'a [(EntityId, ComponentId)],
    columns: &'a [(ComponentId, C)],
}

/// Where an archive's values come from: the world, or values captured out of it.
trait ColumnSource<C> {
    /// Appends the column archive of `column`'s values to `out`.
    fn encode_column(&self, column: &(ComponentId, C), out: AlignedVec) -> Result<AlignedVec, CodecError>;
}

impl<C: AsRef<[EntityId]>> ColumnSource<C> for World {
    fn encode_column(&self, column: &(ComponentId, C), out: AlignedVec) -> Result<AlignedVec, CodecError> {
        self.store(column.0).encode_entities(column.1.as_ref(), out)
    }
}

fn write_archive_of(
    world: &World,
    kind: ArchiveKind,
    range: (EntityId, EntityId),
    entities: &[EntityId],
    despawned: &[EntityId],
    removed: &[(EntityId, ComponentId)],
    columns: &[(ComponentId, Vec<EntityId>)],
) -> Result<AlignedVec, CodecError> {
    let stamp = Stamp { kind, range, tick: world.tick(), next_entity: world.next_entity_id() };
    write_archive(world.registry(), stamp, Contents { entities, despawned, removed, columns }, world)
}

/// What an archive says about itself and its source world.
#[derive(Clone, Copy)]
struct Stamp {
    kind: ArchiveKind,
    range: (EntityId, EntityId),
    tick: u64,
    next_entity: u64,
}

fn write_archive<C: AsRef<[EntityId]>>(
    registry: &Registry,
    stamp: Stamp,
    contents: Contents<'_, C>,
    source: &impl ColumnSource<C>,
) -> Result<AlignedVec, CodecError> {
    let Stamp { kind, range, tick, next_entity } = stamp;
    let Contents { entities, despawned, removed, columns } = contents;
    // The archive's own component table lists only the types it uses, by name.
    let mut used: Vec<ComponentId> =
        columns.iter().map(|(id, _)| *id).chain(removed.iter().map(|(_, id)| *id)).collect();
    used.sort_unstable();
    used.dedup();
    let local_index = |id: ComponentId| used.binary_search(&id).unwrap_or(0) as u16;
    let mut components = Vec::with_capacity(used.len());
    for id in &used {
        let Some(info) = registry.info(*id) else {
            return Err(CodecError::Encode(format!("component id {} is not registered", id.0)));
        };
        components.push(ComponentDecl { name: info.name.to_owned(), schema: info.schema });
    }
    let (kind_byte, sequence, part, last) = match kind {
        ArchiveKind::SnapshotChunk { index, last } => (KIND_SNAPSHOT, index, 0, last),
        ArchiveKind::Delta { round, part } => (KIND_DELTA, round, part, false),
    };
    let manifest = Manifest {
        kind: kind_byte,
        sequence,
        part,
        last,
        tick,
        next_entity,
        range_first: range.0.0,
        range_last: range.1.0,
        components,
        entities: entities.iter().map(|entity| entity.0).collect(),
        despawned: despawned.iter().map(|entity| entity.0).collect(),
        removed: removed.iter().map(|(entity, id)| (entity.0, local_index(*id))).collect(),
        columns: columns
            .iter()
            .map(|(id, holders)| ColumnDesc {
                component: local_index(*id),
                entities: holders.as_ref().iter().map(|entity| entity.0).collect(),
            })
            .collect(),
    };

    let section_count = 1 + columns.len();
    let table_end = HEADER_LEN + section_count * SECTION_ENTRY_LEN;
    let mut buffer = AlignedVec::with_capacity(align_up(table_end) + 4096);
    buffer.resize(align_up(table_end), 0);
    let mut sections = Vec::with_capacity(section_count);

    let start = buffer.len();
    buffer = rkyv::api::high::to_bytes_in::<_, BoxedError>(&manifest, buffer)
        .map_err(|error| CodecError::Encode(error.to_string()))?;
    sections.push((start, buffer.len() - start));
    for column in columns {
        pad_to_alignment(&mut buffer);
        let start = buffer.len();
        buffer = source.encode_column(column, buffer)?;
        sections.push((start, buffer.len() - start));
    }

    let total = buffer.len();
    let total_u32 = u32::try_from(total)
        .map_err(|_| CodecError::Encode(format!("archive of {total} bytes exceeds the 4 GiB format limit")))?;
    buffer[0..4].copy_from_slice(&MAGIC);
    buffer[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    buffer[6] = kind_byte;
    buffer[8..12].copy_from_slice(&(section_count as u32).to_le_bytes());
    buffer[12..16].copy_from_slice(&total_u32.to_le_bytes());
    for (index, (offset, length)) in sections.iter().enumerate() {
        let entry = HEADER_LEN + index * SECTION_ENTRY_LEN;
        buffer[entry..entry + 4].copy_from_slice(&(*offset as u32).to_le_bytes());
        buffer[entry + 4..entry + 8].copy_from_slice(&(*length as u32).to_le_bytes());
    }
    Ok(buffer)
}

fn align_up(value: usize) -> usize {
    value.div_ceil(ALIGN) * ALIGN
}

fn pad_to_alignment(buffer: &mut AlignedVec) {
    let padded = align_up(buffer.len());
    buffer.resize(padded, 0);
}

/// An archive that passed every check and is ready to apply; holds decoded values.
pub struct DecodedArchive {
    /// What the archive is.
    pub kind: ArchiveKind,
    /// The source world's tick when the archive was encoded.
    pub tick: u64,
    /// The source world's entity allocator.
    pub next_entity: u64,
    /// Size of the archive in bytes.
    pub byte_len: usize,
    range: (EntityId, EntityId),
    entities: Vec<EntityId>,
    despawned: Vec<EntityId>,
    removed: Vec<(EntityId, ComponentId)>,
    columns: Vec<DecodedColumn>,
    /// Every component the archive declares (its columns' and its removals'), by the id it was
    /// decoded with and its Rust type: what [`DecodedArchive::fits`] checks.
    declared: Vec<(ComponentId, std::any::TypeId)>,
}

/// One component's values in a decoded archive.
struct DecodedColumn {
    id: ComponentId,
    /// A value's size in memory.
    value_bytes: usize,
    holders: Vec<EntityId>,
    /// A `Vec<T>` of the component's type.
    values: Box<dyn Any + Send>,
    /// The digest's hash of each value, once [`DecodedArchive::hash_values`] made them.
    hashes: Option<Vec<u128>>,
}

impl std::fmt::Debug for DecodedArchive {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DecodedArchive")
            .field("kind", &self.kind)
            .field("tick", &self.tick)
            .field("entities", &self.entities.len())
            .field("columns", &self.columns.len())
            .finish_non_exhaustive()
    }
}

/// Counts of what applying an archive did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Component values written.
    pub values: usize,
    /// Entities despawned.
    pub despawned: usize,
    /// Components removed.
    pub removed: usize,
}

/// Checks `bytes` completely and decodes it against `registry`. Never panics on any input.
pub fn decode(registry: &Registry, bytes: &[u8], limits: DecodeLimits) -> Result<DecodedArchive, CodecError> {
    if bytes.len() > limits.max_archive_bytes {
        return Err(CodecError::TooLarge { length: bytes.len(), limit: limits.max_archive_bytes });
    }
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated("shorter than the header"));
    }
    if bytes[0..4] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let version = read_u16(bytes, 4);
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    let kind_byte = bytes[6];
    if kind_byte != KIND_SNAPSHOT && kind_byte != KIND_DELTA {
        return Err(CodecError::Invalid(format!("unknown archive kind {kind_byte}")));
    }
    let section_count = read_u32(bytes, 8) as usize;
    let total = read_u32(bytes, 12) as usize;
    match total.cmp(&bytes.len()) {
        std::cmp::Ordering::Greater => return Err(CodecError::Truncated("shorter than its declared length")),
        std::cmp::Ordering::Less => {
            return Err(CodecError::Invalid(format!("declared length {total} but {} bytes given", bytes.len())));
        }
        std::cmp::Ordering::Equal => {}
    }
    if section_count == 0 {
        return Err(CodecError::Invalid("no manifest section".to_owned()));
    }
    let table_end = section_count
        .checked_mul(SECTION_ENTRY_LEN)
        .and_then(|table| table.checked_add(HEADER_LEN))
        .filter(|end| *end <= bytes.len())
        .ok_or(CodecError::Truncated("section table runs past the end"))?;
    let mut sections = Vec::with_capacity(section_count);
    for index in 0..section_count {
        let entry = HEADER_LEN + index * SECTION_ENTRY_LEN;
        let offset = read_u32(bytes, entry) as usize;
        let length = read_u32(bytes, entry + 4) as usize;
        if !offset.is_multiple_of(ALIGN) || offset < table_end || offset.saturating_add(length) > bytes.len() {
            return Err(CodecError::Invalid(format!("section {index} at {offset}+{length} is out of bounds")));
        }
        sections.push(offset..offset + length);
    }

    // rkyv's checked access needs 16-byte aligned input; copy only when the caller's buffer is not.
    let aligned_copy;
    let bytes: &[u8] = if (bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
        bytes
    } else {
        let mut copy = AlignedVec::<ALIGN>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        aligned_copy = copy;
        &aligned_copy
    };

    let manifest = rkyv::access::<ArchivedManifest, BoxedError>(&bytes[sections[0].clone()])
        .map_err(|error| CodecError::Invalid(format!("manifest: {error}")))?;
    if manifest.kind != kind_byte {
        return Err(CodecError::Invalid("manifest kind differs from the header".to_owned()));
    }
    if manifest.columns.len() != section_count - 1 {
        return Err(CodecError::Invalid(format!(
            "{} columns described but {} column sections present",
            manifest.columns.len(),
            section_count - 1
        )));
    }

    let mut local_ids = Vec::with_capacity(manifest.components.len());
    let mut declared = Vec::with_capacity(manifest.components.len());
    for component in manifest.components.iter() {
        let name = component.name.as_str();
        let Some(id) = registry.id_by_name(name) else {
            return Err(CodecError::UnknownComponent { name: name.to_owned() });
        };
        let Some(info) = registry.info(id) else {
            return Err(CodecError::UnknownComponent { name: name.to_owned() });
        };
        let remote = component.schema.to_native();
        if info.schema != remote {
            return Err(CodecError::SchemaMismatch { name: name.to_owned(), local: info.schema, remote });
        }
        if local_ids.contains(&id) {
            return Err(CodecError::Invalid(format!("component {name:?} declared twice")));
        }
        local_ids.push(id);
        declared.push((id, info.type_id));
    }
    let map_component = |index: u16| -> Result<ComponentId, CodecError> {
        local_ids
            .get(usize::from(index))
            .copied()
            .ok_or_else(|| CodecError::Invalid(format!("component index {index} is not declared")))
    };

    let mut columns = Vec::with_capacity(manifest.columns.len());
    let mut column_components = Vec::with_capacity(manifest.columns.len());
    for (position, column) in manifest.columns.iter().enumerate() {
        let id = map_component(column.component.to_native())?;
        if column_components.contains(&id) {
            return Err(CodecError::Invalid("a component has two columns".to_owned()));
        }
        column_components.push(id);
        let holders = strictly_increasing(column.entities.iter().map(|entity| entity.to_native()), "column")?;
        let Some(info) = registry.info(id) else {
            return Err(CodecError::Invalid(format!("component index {} is not declared", id.0)));
        };
        let values = (info.decode)(&bytes[sections[position + 1].clone()], holders.len())?;
        columns.push(DecodedColumn { id, value_bytes: info.value_bytes, holders, values, hashes: None });
    }
    let mut removed = Vec::with_capacity(manifest.removed.len());
    for record in manifest.removed.iter() {
        removed.push((EntityId(record.0.to_native()), map_component(record.1.to_native())?));
    }
    let entities = strictly_increasing(manifest.entities.iter().map(|entity| entity.to_native()), "entity list")?;
    let despawned: Vec<EntityId> = manifest.despawned.iter().map(|entity| EntityId(entity.to_native())).collect();
    let range = (EntityId(manifest.range_first.to_native()), EntityId(manifest.range_last.to_native()));
    let kind = if kind_byte == KIND_SNAPSHOT {
        if range.0 > range.1 {
            return Err(CodecError::Invalid("snapshot chunk range is reversed".to_owned()));
        }
        let outside = |entity: &EntityId| *entity < range.0 || *entity > range.1;
        if entities.iter().any(outside) || columns.iter().any(|column| column.holders.iter().any(outside)) {
            return Err(CodecError::Invalid("snapshot chunk names an entity outside its range".to_owned()));
        }
        ArchiveKind::SnapshotChunk { index: manifest.sequence.to_native(), last: manifest.last }
    } else {
        ArchiveKind::Delta { round: manifest.sequence.to_native(), part: manifest.part.to_native() }
    };
    Ok(DecodedArchive {
        kind,
        tick: manifest.tick.to_native(),
        next_entity: manifest.next_entity.to_native(),
        byte_len: bytes.len(),
        range,
        entities,
        despawned,
        removed,
        columns,
        declared,
    })
}

fn strictly_increasing(values: impl Iterator<Item = u64>, what: &str) -> Result<Vec<EntityId>, CodecError> {
    let mut out: Vec<EntityId> = Vec::with_capacity(values.size_hint().0);
    for value in values {
        if out.last().is_some_and(|previous| previous.0 >= value) {
            return Err(CodecError::Invalid(format!("{what} is not in strictly increasing entity order")));
        }
        out.push(EntityId(value));
    }
    Ok(out)
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl DecodedArchive {
    /// Hashes every value for the world digest now, so that [`DecodedArchive::apply`] only inserts
    /// them: a handoff's target prepares each archive it receives this way (with [`prepare`]) on
    /// another thread while its region's thread applies the one before. `registry` must be the
    /// registry the archive was decoded against (a clone of the receiving world's).
    pub fn hash_values(&mut self, registry: &Registry) {
        for column in &mut self.columns {
            if let Some(info) = registry.info(column.id) {
                column.hashes = Some((info.hash)(&*column.values, &column.holders));
            }
        }
    }

    /// Whether `registry` gives each component the archive declares (its columns' and its
    /// removals') the id the archive was decoded with, for the same Rust type: an archive decoded
    /// against one registry is applied only to worlds of a registry that numbers its components
    /// alike (the schema check at a handoff's `Begin` compares names and shapes, not the order
    /// they were registered in).
    #[must_use]
    pub fn fits(&self, registry: &Registry) -> bool {
        self.declared.iter().all(|(id, type_id)| registry.info(*id).is_some_and(|info| info.type_id == *type_id))
    }

    /// About how much memory the decoded archive holds: its entity lists, and for each value its
    /// size in memory (what it holds on the heap, a string's bytes say, left out), its entity and
    /// its hash once made.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        let id = std::mem::size_of::<EntityId>();
        let lists = (self.entities.len() + self.despawned.len()) * id
            + self.removed.len() * std::mem::size_of::<(EntityId, ComponentId)>();
        let columns: usize = self
            .columns
            .iter()
            .map(|column| {
                let hash = if column.hashes.is_some() { std::mem::size_of::<u128>() } else { 0 };
                column.holders.len() * (id + column.value_bytes + hash)
            })
            .sum();
        lists + columns
    }

    /// Applies the archive to `world` and sets the world's tick and entity allocator to the source's.
    pub fn apply(self, world: &mut World) -> ApplyStats {
        let mut stats = ApplyStats::default();
        if let ArchiveKind::SnapshotChunk { .. } = self.kind {
            // The chunk is authoritative for its id range: whatever the receiver has there that the
            // chunk does not list is gone at the source.
            let stale: Vec<EntityId> = world
                .entities_from(self.range.0)
                .take_while(|(entity, _)| *entity <= self.range.1)
                .map(|(entity, _)| entity)
                .filter(|entity| self.entities.binary_search(entity).is_err())
                .collect();
            for entity in stale {
                world.despawn(entity);
                stats.despawned += 1;
            }
        }
        for entity in &self.despawned {
            if world.despawn(*entity) {
                stats.despawned += 1;
            }
        }
        for entity in &self.entities {
            world.spawn_with_id(*entity);
        }
        for (entity, id) in &self.removed {
            if world.remove_erased(*entity, *id) {
                stats.removed += 1;
            }
        }
        let mut received_masks: Vec<u128> = Vec::new();
        let is_snapshot = matches!(self.kind, ArchiveKind::SnapshotChunk { .. });
        if is_snapshot {
            received_masks = vec![0; self.entities.len()];
        }
        for DecodedColumn { id, holders, values, hashes, .. } in self.columns {
            if is_snapshot {
                for entity in &holders {
                    if let Ok(position) = self.entities.binary_search(entity) {
                        received_masks[position] |= 1u128 << id.0;
                    }
                }
            }
            stats.values += holders.len();
            world.insert_decoded(id, &holders, values, hashes);
        }
        if is_snapshot {
            // Components the receiver has on a listed entity but the chunk does not carry were
            // removed at the source.
            for (entity, received) in self.entities.iter().zip(received_masks) {
                let extra = world.mask_of(*entity).unwrap_or(0) & !received;
                for index in crate::world::MaskBits(extra) {
                    if world.remove_erased(*entity, ComponentId(index as u16)) {
                        stats.removed += 1;
                    }
                }
            }
        }
        world.set_tick(self.tick);
        world.raise_next_entity_id(self.next_entity);
        stats
    }
}

/// Encodes one entity with all its components except `exclude` as a bundle (a one-entity delta
/// archive), to move it into another world with [`apply_bundle`] (an avatar crossing a border).
pub fn encode_bundle(world: &World, entity: EntityId, exclude: &[ComponentId]) -> Result<AlignedVec, CodecError> {
    let Some(mask) = world.mask_of(entity) else {
        return Err(CodecError::Encode(format!("entity {} does not exist", entity.0)));
    };
    let columns: Vec<(ComponentId, Vec<EntityId>)> = crate::world::MaskBits(mask)
        .map(|index| ComponentId(index as u16))
        .filter(|id| !exclude.contains(id))
        .map(|id| (id, vec![entity]))
        .collect();
    write_archive_of(
        world,
        ArchiveKind::Delta { round: BUNDLE_ROUND, part: 0 },
        (EntityId(0), EntityId(0)),
        &[entity],
        &[],
        &[],
        &columns,
    )
}

/// The round number that marks a bundle.
const BUNDLE_ROUND: u32 = u32::MAX;

/// Checks a bundle from [`encode_bundle`] completely and spawns its entity in `world` under a new
/// id, which it returns. Anything but a well-formed one-entity bundle is refused, unchanged world.
pub fn apply_bundle(world: &mut World, bytes: &[u8], limits: DecodeLimits) -> Result<EntityId, CodecError> {
    let decoded = decode(world.registry(), bytes, limits)?;
    if decoded.kind != (ArchiveKind::Delta { round: BUNDLE_ROUND, part: 0 })
        || decoded.entities.len() != 1
        || !decoded.despawned.is_empty()
        || !decoded.removed.is_empty()
    {
        return Err(CodecError::Invalid("not an entity bundle".into()));
    }
    let original = decoded.entities[0];
    if decoded.columns.iter().any(|column| column.holders.as_slice() != [original]) {
        return Err(CodecError::Invalid("a bundle column holds another entity".into()));
    }
    let entity = world.spawn();
    for column in decoded.columns {
        world.insert_decoded(column.id, &[entity], column.values, None);
    }
    Ok(entity)
}

/// An archive [`prepare`]d away from the world it is for, or why it was refused.
pub type Prepared = Result<DecodedArchive, CodecError>;

/// [`decode`], then [`DecodedArchive::hash_values`]: everything of applying an archive but the
/// inserting, which needs the world. Never panics on any input.
pub fn prepare(registry: &Registry, bytes: &[u8], limits: DecodeLimits) -> Prepared {
    let mut decoded = decode(registry, bytes, limits)?;
    decoded.hash_values(registry);
    Ok(decoded)
}

/// Decodes and applies one archive.
pub fn apply(world: &mut World, bytes: &[u8], limits: DecodeLimits) -> Result<ApplyStats, CodecError> {
    let decoded = decode(world.registry(), bytes, limits)?;
    Ok(decoded.apply(world))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.hp")]
    struct Hp(u32);

    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.mp")]
    struct Mp(u32);

    #[test]
    fn an_archive_prepared_away_from_the_world_applies_as_one_decoded_on_it() {
        let mut registry = Registry::new();
        registry.register::<Hp>().unwrap();
        let mut source = World::new(registry);
        let entities: Vec<EntityId> = (0..40)
            .map(|value| {
                let entity = source.spawn();
                source.insert(entity, Hp(value)).unwrap();
                entity
            })
            .collect();
        let mut raw = World::new(source.registry().as_ref().clone());
        let mut prepared = World::new(source.registry().as_ref().clone());
        let registry = prepared.registry().clone();
        let deliver = |raw: &mut World, prepared: &mut World, archives: Vec<AlignedVec>| {
            for bytes in archives {
                apply(raw, &bytes, DecodeLimits::default()).unwrap();
                let archive = super::prepare(&registry, &bytes, DecodeLimits::default()).unwrap();
                assert!(
                    archive.columns.iter().all(|column| column
                        .hashes
                        .as_ref()
                        .is_some_and(|hashes| hashes.len() == column.holders.len())),
                    "each value hashed before it is applied"
                );
                archive.apply(prepared);
            }
        };
        let tracker = source.create_tracker();
        deliver(&mut raw, &mut prepared, encode_snapshot(&source, ChunkConfig::default()).unwrap());
        // Values replaced, new entities holding the component, and one removed.
        for entity in entities.iter().step_by(3) {
            source.insert(*entity, Hp(1000 + entity.0 as u32)).unwrap();
        }
        let born = source.spawn();
        source.insert(born, Hp(7)).unwrap();
        source.remove::<Hp>(entities[1]);
        source.despawn(entities[2]);
        let changes = source.changes(tracker);
        let delta = encode_delta(&source, &changes, 1, ChunkConfig::default()).unwrap();
        // What a delta holds: its entity lists (8 bytes an entity, 16 a removal) and each value's
        // entity, value and hash.
        let held = super::prepare(&registry, &delta[0], DecodeLimits::default()).unwrap();
        assert!(!held.despawned.is_empty() && !held.removed.is_empty());
        let values: usize = held.columns.iter().map(|column| column.holders.len()).sum();
        assert_eq!(
            held.held_bytes(),
            (held.entities.len() + held.despawned.len()) * 8 + held.removed.len() * 16 + values * (8 + 4 + 16)
        );
        deliver(&mut raw, &mut prepared, delta);
        assert_eq!(prepared.get::<Hp>(entities[3]), Some(&Hp(1000 + entities[3].0 as u32)));
        assert_eq!(prepared.digest(), source.digest());
        assert_eq!(prepared.digest(), raw.digest());
        assert_eq!(prepared.digest_full(), prepared.digest(), "the hashes made away are the ones the world makes");

        // The world takes the hashes made away as they are (a wrong one would show).
        let bytes = &encode_snapshot(&source, ChunkConfig::default()).unwrap()[0];
        let mut archive = super::prepare(&registry, bytes, DecodeLimits::default()).unwrap();
        if let Some(hashes) = archive.columns[0].hashes.as_mut() {
            hashes[0] ^= 1;
        }
        let mut trusting = World::new(source.registry().as_ref().clone());
        archive.apply(&mut trusting);
        assert_ne!(trusting.digest(), trusting.digest_full());
        // A registry that numbers the same components otherwise does not take it.
        let archive = super::prepare(&registry, bytes, DecodeLimits::default()).unwrap();
        assert!(archive.fits(&registry));
        let mut reordered = Registry::new();
        reordered.register::<Mp>().unwrap();
        reordered.register::<Hp>().unwrap();
        assert!(!archive.fits(&reordered));
        // Each value: its entity (8 bytes), the value (4) and its hash (16); and the entity list
        // (8 each).
        assert_eq!(archive.held_bytes(), source.count::<Hp>() * (8 + 4 + 16) + source.entity_count() * 8);
        // Nor does it take an archive that only removes a component.
        source.remove::<Hp>(entities[4]);
        let changes = source.changes(tracker);
        let removal = encode_delta(&source, &changes, 2, ChunkConfig::default()).unwrap();
        let removal = super::prepare(&registry, &removal[0], DecodeLimits::default()).unwrap();
        assert!(removal.columns.is_empty() && !removal.removed.is_empty());
        assert!(removal.fits(&registry) && !removal.fits(&reordered));
    }

    #[test]
    fn only_a_well_formed_one_entity_bundle_is_applied() {
        let mut registry = Registry::new();
        registry.register::<Hp>().unwrap();
        let mut world = World::new(registry);
        let [a, b] = [world.spawn(), world.spawn()];
        world.insert(a, Hp(1)).unwrap();
        world.insert(b, Hp(2)).unwrap();
        let hp = world.registry().id_of::<Hp>().unwrap();
        let bundle = ArchiveKind::Delta { round: BUNDLE_ROUND, part: 0 };
        let range = (EntityId(0), EntityId(0));
        let write = |kind, entities: &[EntityId], despawned: &[EntityId], removed: &[_], columns: &[_]| {
            write_archive_of(&world, kind, range, entities, despawned, removed, columns).unwrap()
        };
        let cases = [
            ("the bundle", write(bundle, &[a], &[], &[], &[(hp, vec![a])])),
            ("two entities", write(bundle, &[a, b], &[], &[], &[(hp, vec![a, b])])),
            ("a despawn", write(bundle, &[a], &[b], &[], &[(hp, vec![a])])),
            ("a removal", write(bundle, &[a], &[], &[(b, hp)], &[(hp, vec![a])])),
            ("another entity's column", write(bundle, &[a], &[], &[], &[(hp, vec![b])])),
            ("a delta round", write(ArchiveKind::Delta { round: 1, part: 0 }, &[a], &[], &[], &[(hp, vec![a])])),
            (
                "a later part",
                write(ArchiveKind::Delta { round: BUNDLE_ROUND, part: 1 }, &[a], &[], &[], &[(hp, vec![a])]),
            ),
        ];
        let mut target = World::new(world.registry().as_ref().clone());
        for (what, bytes) in cases {
            let before = target.digest();
            let result = apply_bundle(&mut target, &bytes, DecodeLimits::default());
            if what == "the bundle" {
                let entity = result.unwrap();
                assert_eq!(target.get::<Hp>(entity), Some(&Hp(1)));
            } else {
                let expected = if what == "another entity's column" {
                    "a bundle column holds another entity"
                } else {
                    "not an entity bundle"
                };
                assert_eq!(result, Err(CodecError::Invalid(expected.into())), "{what}");
                assert_eq!(target.digest(), before, "{what} changed the world");
            }
        }
    }

    fn hp_world(entities: u32) -> World {
        let mut registry = Registry::new();
        registry.register::<Hp>().unwrap();
        let mut world = World::new(registry);
        for value in 0..entities {
            let entity = world.spawn();
            world.insert(entity, Hp(value)).unwrap();
        }
        world
    }

    #[test]
    fn a_captured_round_encodes_the_values_of_its_capture_whatever_the_world_does_after() {
        let mut world = hp_world(300);
        let tracker = world.create_tracker();
        for entity in world.entities().step_by(3).collect::<Vec<_>>() {
            world.get_mut::<Hp>(entity).unwrap().0 += 1000;
        }
        world.despawn(EntityId(2));
        world.remove::<Hp>(EntityId(5));
        let spawned = world.spawn();
        let changes = world.changes(tracker);
        assert!(!changes.spawned.is_empty() && !changes.despawned.is_empty() && !changes.removed.is_empty());
        let config = ChunkConfig { target_chunk_bytes: 256, max_chunk_bytes: 1024 };
        let expected = encode_delta(&world, &changes, 4, config).unwrap();
        assert!(expected.len() > 2, "split into parts: {}", expected.len());
        let captured = capture_delta(&world, changes.clone(), 4).unwrap();
        assert_eq!((captured.round(), captured.records()), (4, changes.len()));
        assert_eq!(
            format!("{captured:?}"),
            format!("CapturedDelta {{ round: 4, tick: 0, records: {}, .. }}", changes.len())
        );
        world.despawn(spawned);
        // The world goes on: values change, entities go; the capture keeps what it read.
        for entity in world.entities().collect::<Vec<_>>() {
            if let Some(mut hp) = world.get_mut::<Hp>(entity) {
                hp.0 = 7;
            }
        }
        world.despawn(EntityId(1));
        world.set_tick(99);
        let parts = captured.encode(config).unwrap();
        assert_eq!(
            parts.iter().map(|part| part.as_slice()).collect::<Vec<_>>(),
            expected.iter().map(|part| part.as_slice()).collect::<Vec<_>>()
        );
        // Just over the limit: split in two.
        let whole = captured.encode(ChunkConfig { target_chunk_bytes: 1 << 30, max_chunk_bytes: 1 << 30 }).unwrap();
        let length = whole[0].len();
        let halves =
            captured.encode(ChunkConfig { target_chunk_bytes: length / 2 + 1, max_chunk_bytes: length - 1 }).unwrap();
        assert_eq!((whole.len(), halves.len()), (1, 2));
        // One entity's changes over the limit cannot be split.
        let tight = ChunkConfig { target_chunk_bytes: 8, max_chunk_bytes: 16 };
        let error = capture_delta(
            &hp_world(1),
            ChangeSet { set: vec![(EntityId(1), ComponentId(0))], ..ChangeSet::default() },
            1,
        )
        .unwrap()
        .encode(tight)
        .unwrap_err();
        assert!(error.to_string().contains("changes of one entity need"), "{error}");
        let missing = ChangeSet { set: vec![(EntityId(5), ComponentId(0))], ..ChangeSet::default() };
        assert!(capture_delta(&hp_world(1), missing, 1).is_err(), "a value not in the world");
    }

    #[test]
    fn snapshot_chunks_aim_at_the_target_size_from_the_second_on() {
        let world = hp_world(5000);
        let config = ChunkConfig { target_chunk_bytes: 4096, max_chunk_bytes: 64 * 1024 };
        let mut writer = SnapshotWriter::new(config);
        let mut sizes = Vec::new();
        let mut decoded = Vec::new();
        while let Some(chunk) = writer.next_chunk(&world).unwrap() {
            sizes.push(chunk.len());
            decoded.push(decode(world.registry(), &chunk, DecodeLimits::default()).unwrap());
        }
        assert!(writer.is_done());
        // Numbered in order, the last marked, each entity in exactly one chunk, in id order.
        let count = decoded.len();
        for (index, archive) in decoded.iter().enumerate() {
            let kind = ArchiveKind::SnapshotChunk { index: index as u32, last: index + 1 == count };
            assert_eq!(archive.kind, kind);
        }
        let entities: Vec<EntityId> = decoded.iter().flat_map(|archive| archive.entities.iter().copied()).collect();
        assert_eq!(entities, world.entities().collect::<Vec<_>>());
        // The first guesses (512 entities); the others follow what it weighed per entity.
        let (middle, last) = (&sizes[1..sizes.len() - 1], sizes[sizes.len() - 1]);
        assert!(middle.len() >= 10, "{sizes:?}");
        // Within 10% of the target (the estimate rounds the bytes per entity down).
        for size in middle {
            assert!((3686..=4506).contains(size), "a chunk of {size} bytes for a target of 4096: {sizes:?}");
        }
        assert!(last <= 4506, "{sizes:?}");
        assert!(writer.next_chunk(&world).unwrap().is_none());
    }

    #[test]
    fn a_first_chunk_over_the_limit_is_halved_until_it_fits() {
        let world = hp_world(5000);
        let config = ChunkConfig { target_chunk_bytes: 1024, max_chunk_bytes: 2048 };
        let chunks = encode_snapshot(&world, config).unwrap();
        assert!(chunks.iter().all(|chunk| chunk.len() <= 2048));
        // 512 entities were too many; 64 fit (a chunk of 64 weighs well under 2 kB).
        assert!(chunks[0].len() > 1024, "the first chunk is the largest halving that fits: {}", chunks[0].len());
    }

    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.blob")]
    struct Blob(Vec<u8>);

    #[test]
    fn an_entity_alone_over_the_limit_is_an_error_naming_it() {
        let mut registry = Registry::new();
        registry.register::<Blob>().unwrap();
        let mut world = World::new(registry);
        let small = world.spawn();
        world.insert(small, Blob(vec![1; 10])).unwrap();
        let big = world.spawn();
        world.insert(big, Blob(vec![2; 4096])).unwrap();
        let config = ChunkConfig { target_chunk_bytes: 1024, max_chunk_bytes: 2048 };
        let error = encode_snapshot(&world, config).unwrap_err();
        let CodecError::Encode(message) = error else { panic!("{error:?}") };
        assert!(message.starts_with("entity #2 alone needs"), "{message}");
        assert!(message.ends_with("over the chunk limit of 2048"), "{message}");
    }

    /// Every entity id an archive names (spawned, despawned, removed, columns), smallest and largest.
    fn id_span(archive: &DecodedArchive) -> (EntityId, EntityId) {
        let ids: Vec<EntityId> = archive
            .entities
            .iter()
            .chain(&archive.despawned)
            .copied()
            .chain(archive.removed.iter().map(|(entity, _)| *entity))
            .chain(archive.columns.iter().flat_map(|column| column.holders.iter().copied()))
            .collect();
        (*ids.iter().min().unwrap(), *ids.iter().max().unwrap())
    }

    #[test]
    fn a_large_delta_is_split_by_entity_into_parts_that_fit_and_apply_to_the_same_world() {
        let mut registry = Registry::new();
        registry.register::<Hp>().unwrap();
        registry.register::<Blob>().unwrap();
        let mut source = World::new(registry);
        let entities: Vec<EntityId> = (0..200u32)
            .map(|value| {
                let entity = source.spawn();
                source.insert(entity, Hp(value)).unwrap();
                source.insert(entity, Blob(vec![1; 100])).unwrap();
                entity
            })
            .collect();
        let mut target = World::new(source.registry().as_ref().clone());
        for chunk in encode_snapshot(&source, ChunkConfig::default()).unwrap() {
            apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
        }
        let tracker = source.create_tracker();
        // Every kind of record, spread over the whole id range.
        for (index, entity) in entities.iter().enumerate() {
            match index % 5 {
                0 => assert!(source.despawn(*entity)),
                1 => assert!(source.remove::<Hp>(*entity).is_some()),
                2 => assert!(source.insert(*entity, Blob(vec![2; 150])).unwrap().is_some()),
                _ => {}
            }
        }
        for _ in 0..50 {
            let entity = source.spawn();
            source.insert(entity, Blob(vec![3; 100])).unwrap();
        }
        let changes = source.changes(tracker);
        let config = ChunkConfig { target_chunk_bytes: 2048, max_chunk_bytes: 4096 };
        let parts = encode_delta(&source, &changes, 7, config).unwrap();
        assert!(parts.len() >= 4, "{} parts", parts.len());
        let mut previous: Option<EntityId> = None;
        for (index, part) in parts.iter().enumerate() {
            assert!(part.len() <= 4096, "part {index}: {} bytes", part.len());
            let decoded = decode(target.registry(), part, DecodeLimits::default()).unwrap();
            assert_eq!(decoded.kind, ArchiveKind::Delta { round: 7, part: index as u32 });
            // Parts hold consecutive ranges of entities: all of one entity's changes in one part.
            let (low, high) = id_span(&decoded);
            assert!(previous.is_none_or(|previous| previous < low), "part {index} starts at {low}, after {previous:?}");
            previous = Some(high);
            decoded.apply(&mut target);
        }
        assert_eq!(target.digest(), source.digest());
    }

    #[test]
    fn a_round_over_the_limit_is_cut_where_split_round_cuts_it_and_a_capture_where_the_world_is() {
        let mut registry = Registry::new();
        registry.register::<Blob>().unwrap();
        let mut world = World::new(registry);
        let tracker = world.create_tracker();
        for size in [900, 1000, 1100, 950, 1050, 1000, 980, 1020, 1000, 990] {
            let entity = world.spawn();
            world.insert(entity, Blob(vec![7; size])).unwrap();
        }
        let changes = world.changes(tracker);
        let whole = encode_delta(&world, &changes, 3, ChunkConfig::default()).unwrap();
        assert_eq!(whole.len(), 1);
        let config = ChunkConfig { target_chunk_bytes: 2500, max_chunk_bytes: 4000 };
        let pieces = split_round(&changes, whole[0].len().div_ceil(config.target_chunk_bytes));
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        let from_world = encode_delta(&world, &changes, 3, config).unwrap();
        let captured = capture_delta(&world, changes.clone(), 3).unwrap().encode(config).unwrap();
        assert_eq!(from_world.len(), pieces.len());
        for ((part, piece), same) in from_world.iter().zip(&pieces).zip(&captured) {
            let decoded = decode(world.registry(), part, DecodeLimits::default()).unwrap();
            let first = piece.spawned.first().unwrap();
            let last = piece.spawned.last().unwrap();
            assert_eq!(id_span(&decoded), (*first, *last));
            assert!(part.as_slice() == same.as_slice(), "a captured part differs");
        }
        assert_eq!(captured.len(), from_world.len());
    }

    /// The world's values, counting those encoded.
    struct Counting<'a> {
        world: &'a World,
        values: std::cell::Cell<usize>,
    }

    impl ColumnSource<ColumnSlice<'_>> for Counting<'_> {
        fn encode_column(
            &self,
            column: &(ComponentId, ColumnSlice<'_>),
            out: AlignedVec,
        ) -> Result<AlignedVec, CodecError> {
            self.values.set(self.values.get() + column.1.holders.len());
            self.world.encode_column(column, out)
        }
    }

    #[test]
    fn a_round_reckoned_over_one_and_a_half_chunks_is_split_before_any_value_is_encoded() {
        let mut world = hp_world(1000);
        let tracker = world.create_tracker();
        for entity in world.entities().collect::<Vec<_>>() {
            world.get_mut::<Hp>(entity).unwrap().0 += 1;
        }
        let changes = world.changes(tracker);
        let records = DeltaRecords::of(changes.clone());
        // Reckoned at 12 bytes a value (an 8-byte id, a 4-byte Hp): 12,000 bytes, ten chunks of
        // 1,200; the limit is far above, so only the reckoning splits it.
        let config = ChunkConfig { target_chunk_bytes: 1200, max_chunk_bytes: 1 << 20 };
        let counting = Counting { world: &world, values: std::cell::Cell::new(0) };
        let stamp = (world.tick(), world.next_entity_id());
        let parts = records.encode(world.registry(), 4, stamp, config, &counting).unwrap();
        assert_eq!(counting.values.get(), 1000, "each value encoded once");
        assert_eq!(parts.len(), 10);
        let mut target = hp_world(1000);
        for (index, part) in parts.iter().enumerate() {
            let decoded = decode(target.registry(), part, DecodeLimits::default()).unwrap();
            assert_eq!(decoded.kind, ArchiveKind::Delta { round: 4, part: index as u32 });
            let values: usize = decoded.columns.iter().map(|column| column.holders.len()).sum();
            assert_eq!(values, 100, "part {index}");
            decoded.apply(&mut target);
        }
        assert_eq!(target.digest(), world.digest());
        // A part at a time, as a frozen source sends its final round: the same parts.
        let mut encoder = DeltaEncoder::new(&world, changes.clone(), 4, config);
        let whole = encode_delta(&world, &changes, 4, config).unwrap();
        for (index, part) in whole.iter().enumerate() {
            assert!(!encoder.is_done(), "done before part {index}");
            assert_eq!(encoder.next_part(&world).unwrap().as_deref(), Some(part.as_slice()), "part {index}");
            assert_eq!(encoder.parts(), index as u32 + 1);
        }
        assert!(encoder.is_done());
        assert!(encoder.next_part(&world).unwrap().is_none());
        // One and a half chunks or less is one part.
        for (target_chunk_bytes, expected) in [(8000, 1), (7999, 2)] {
            let config = ChunkConfig { target_chunk_bytes, max_chunk_bytes: 1 << 20 };
            let counting = Counting { world: &world, values: std::cell::Cell::new(0) };
            let parts = records.encode(world.registry(), 4, stamp, config, &counting).unwrap();
            assert_eq!((parts.len(), counting.values.get()), (expected, 1000), "target {target_chunk_bytes}");
        }
        // The entity lists are reckoned too, eight bytes an id: 300 spawned, 300 despawned and 300
        // components removed come to 7,200 bytes, six chunks of 1,200.
        let mut target = World::new(world.registry().as_ref().clone());
        for chunk in encode_snapshot(&world, ChunkConfig::default()).unwrap() {
            apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
        }
        let tracker = world.create_tracker();
        let entities: Vec<EntityId> = world.entities().collect();
        for entity in &entities[..300] {
            assert!(world.despawn(*entity));
        }
        for entity in &entities[300..600] {
            assert!(world.remove::<Hp>(*entity).is_some());
        }
        for _ in 0..300 {
            world.spawn();
        }
        let lists = world.changes(tracker);
        assert_eq!((lists.spawned.len(), lists.despawned.len(), lists.removed.len()), (300, 300, 300));
        let parts = encode_delta(&world, &lists, 5, config).unwrap();
        assert_eq!(parts.len(), 6);
        for part in &parts {
            apply(&mut target, part, DecodeLimits::default()).unwrap();
        }
        assert_eq!(target.digest(), world.digest());
    }

    #[test]
    fn two_entities_over_the_limit_go_in_two_parts_and_one_alone_is_an_error() {
        let mut registry = Registry::new();
        registry.register::<Blob>().unwrap();
        let mut world = World::new(registry);
        let config = ChunkConfig { target_chunk_bytes: 1024, max_chunk_bytes: 2048 };
        let tracker = world.create_tracker();
        for _ in 0..2 {
            let entity = world.spawn();
            world.insert(entity, Blob(vec![1; 1500])).unwrap();
        }
        let changes = world.changes(tracker);
        assert_eq!(encode_delta(&world, &changes, 1, config).unwrap().len(), 2);
        let big = world.spawn();
        world.insert(big, Blob(vec![1; 4096])).unwrap();
        let changes = world.changes(tracker);
        let error = encode_delta(&world, &changes, 2, config).unwrap_err();
        let CodecError::Encode(message) = error else { panic!("{error:?}") };
        assert!(message.starts_with("changes of one entity need"), "{message}");
    }

    #[test]
    fn the_size_limit_and_the_header_are_checked_at_their_exact_boundaries() {
        let world = hp_world(3);
        let bytes = encode_snapshot(&world, ChunkConfig::default()).unwrap().remove(0);
        let registry = world.registry();
        let exactly = DecodeLimits { max_archive_bytes: bytes.len() };
        assert!(decode(registry, &bytes, exactly).is_ok(), "an archive of exactly the limit is taken");
        let under = DecodeLimits { max_archive_bytes: bytes.len() - 1 };
        assert_eq!(
            decode(registry, &bytes, under).unwrap_err(),
            CodecError::TooLarge { length: bytes.len(), limit: bytes.len() - 1 }
        );
        let limits = DecodeLimits::default();
        assert_eq!(
            decode(registry, &bytes[..HEADER_LEN], limits).unwrap_err(),
            CodecError::Truncated("shorter than its declared length"),
            "a whole header is read"
        );
        assert_eq!(
            decode(registry, &bytes[..HEADER_LEN - 1], limits).unwrap_err(),
            CodecError::Truncated("shorter than the header")
        );
    }

    #[test]
    fn a_section_off_the_alignment_is_refused_even_within_bounds() {
        let world = hp_world(3);
        let mut bytes = encode_snapshot(&world, ChunkConfig::default()).unwrap().remove(0).to_vec();
        let offset = u32::from_le_bytes(bytes[HEADER_LEN..HEADER_LEN + 4].try_into().unwrap()) as usize;
        let length = u32::from_le_bytes(bytes[HEADER_LEN + 4..HEADER_LEN + 8].try_into().unwrap()) as usize;
        let shifted = offset + ALIGN / 2;
        assert!(shifted + length <= bytes.len(), "the shifted manifest still lies inside the archive");
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(shifted as u32).to_le_bytes());
        assert_eq!(
            decode(world.registry(), &bytes, DecodeLimits::default()).unwrap_err(),
            CodecError::Invalid(format!("section 0 at {shifted}+{length} is out of bounds"))
        );
    }

    #[test]
    fn a_chunk_of_one_entity_has_a_range_of_one_id() {
        let mut registry = Registry::new();
        registry.register::<Blob>().unwrap();
        let mut world = World::new(registry);
        for _ in 0..3 {
            let entity = world.spawn();
            world.insert(entity, Blob(vec![1; 1500])).unwrap();
        }
        let config = ChunkConfig { target_chunk_bytes: 1024, max_chunk_bytes: 2048 };
        let chunks = encode_snapshot(&world, config).unwrap();
        assert_eq!(chunks.len(), 3);
        let middle = decode(world.registry(), &chunks[1], DecodeLimits::default()).unwrap();
        assert_eq!(middle.range, (EntityId(2), EntityId(2)));
        let mut copy = World::new(world.registry().as_ref().clone());
        for chunk in &chunks {
            apply(&mut copy, chunk, DecodeLimits::default()).unwrap();
        }
        assert_eq!(copy.digest(), world.digest());
    }

    #[test]
    fn a_snapshot_chunk_clears_its_range_and_apply_counts_what_it_did() {
        let mut source = hp_world(5);
        let mut target = World::new(source.registry().as_ref().clone());
        for chunk in encode_snapshot(&source, ChunkConfig::default()).unwrap() {
            apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
        }
        // Entity 3 is gone at the source and entity 2 lost its component: a new snapshot over
        // the whole range takes both away.
        assert!(source.despawn(EntityId(3)));
        assert_eq!(source.remove::<Hp>(EntityId(2)), Some(Hp(1)));
        let chunks = encode_snapshot(&source, ChunkConfig::default()).unwrap();
        assert_eq!(chunks.len(), 1);
        let stats = apply(&mut target, &chunks[0], DecodeLimits::default()).unwrap();
        assert_eq!(stats, ApplyStats { values: 3, despawned: 1, removed: 1 });
        assert!(target.is_alive(EntityId(2)) && !target.has::<Hp>(EntityId(2)));
        assert!(!target.is_alive(EntityId(3)));
        assert_eq!(target.digest(), source.digest());
        // A delta: one value set, one component removed, one entity despawned.
        let tracker = source.create_tracker();
        source.insert(EntityId(1), Hp(100)).unwrap();
        assert!(source.remove::<Hp>(EntityId(4)).is_some());
        assert!(source.despawn(EntityId(5)));
        let changes = source.changes(tracker);
        let parts = encode_delta(&source, &changes, 1, ChunkConfig::default()).unwrap();
        let stats = apply(&mut target, &parts[0], DecodeLimits::default()).unwrap();
        assert_eq!(stats, ApplyStats { values: 1, despawned: 1, removed: 1 });
        assert_eq!(target.digest(), source.digest());
    }

    #[test]
    fn a_snapshot_chunk_names_only_entities_inside_its_range() {
        let world = hp_world(5);
        let hp = world.registry().id_of::<Hp>().unwrap();
        let ids = |range: std::ops::RangeInclusive<u64>| range.map(EntityId).collect::<Vec<_>>();
        let chunk = |entities: &[EntityId], holders: Vec<EntityId>| {
            let kind = ArchiveKind::SnapshotChunk { index: 1, last: false };
            write_archive_of(&world, kind, (EntityId(2), EntityId(3)), entities, &[], &[], &[(hp, holders)]).unwrap()
        };
        let outside = || Err(CodecError::Invalid("snapshot chunk names an entity outside its range".into()));
        let cases = [
            ("both ends of the range", chunk(&ids(2..=3), ids(2..=3)), Ok(())),
            ("an entity below", chunk(&ids(1..=3), ids(2..=3)), outside()),
            ("an entity above", chunk(&ids(2..=4), ids(2..=3)), outside()),
            ("a holder below", chunk(&ids(2..=3), ids(1..=3)), outside()),
            ("a holder above", chunk(&ids(2..=3), ids(2..=4)), outside()),
        ];
        for (what, bytes, expected) in cases {
            let result = decode(world.registry(), &bytes, DecodeLimits::default()).map(drop);
            assert_eq!(result, expected, "{what}");
        }
    }

    #[test]
    fn a_chunk_of_exactly_the_limit_is_kept_whole() {
        for entities in [1, 2] {
            let world = hp_world(entities);
            let whole = encode_snapshot(&world, ChunkConfig::default()).unwrap();
            assert_eq!(whole.len(), 1);
            let limit = whole[0].len();
            let config = ChunkConfig { target_chunk_bytes: limit, max_chunk_bytes: limit };
            let chunks = encode_snapshot(&world, config).unwrap();
            assert_eq!(chunks.len(), 1, "{entities} entities in {limit} bytes, the limit, are one chunk");
            let decoded = decode(world.registry(), &chunks[0], DecodeLimits::default()).unwrap();
            assert_eq!(decoded.kind, ArchiveKind::SnapshotChunk { index: 0, last: true });
            assert!(format!("{decoded:?}").starts_with("DecodedArchive { kind: SnapshotChunk"));
        }
    }

    #[test]
    fn a_split_sends_every_record_below_the_entity_low_and_the_rest_high() {
        let id = ComponentId(0);
        let of = |entity: u64| ChangeSet {
            spawned: vec![EntityId(entity)],
            set: vec![(EntityId(entity), id)],
            removed: vec![(EntityId(entity), id)],
            despawned: vec![EntityId(entity)],
        };
        let both = ChangeSet {
            spawned: vec![EntityId(4), EntityId(5)],
            set: vec![(EntityId(4), id), (EntityId(5), id)],
            removed: vec![(EntityId(4), id), (EntityId(5), id)],
            despawned: vec![EntityId(4), EntityId(5)],
        };
        assert_eq!(split_changes(&both, &[EntityId(5)]), vec![of(4), of(5)]);
        // Three pieces: below 5, from 5 to 8, from 9; a piece with no entity is empty.
        let many = ChangeSet {
            spawned: vec![EntityId(4), EntityId(5), EntityId(9)],
            set: vec![(EntityId(4), id), (EntityId(5), id), (EntityId(9), id)],
            removed: vec![(EntityId(4), id), (EntityId(5), id), (EntityId(9), id)],
            despawned: vec![EntityId(4), EntityId(5), EntityId(9)],
        };
        assert_eq!(split_changes(&many, &[EntityId(5), EntityId(9)]), vec![of(4), of(5), of(9)]);
        assert_eq!(
            split_changes(&many, &[EntityId(5), EntityId(6), EntityId(9)]),
            vec![of(4), of(5), ChangeSet::default(), of(9)]
        );
    }

    #[test]
    fn a_change_set_s_values_group_by_type_ascending_with_each_type_s_holders_ascending() {
        let (pose, velocity, stats) = (ComponentId(4), ComponentId(1), ComponentId(9));
        // As a journal lists them: types interleaved, each type's entities in runs (two ticks of
        // a system visiting entities in order), one type seen first late.
        let set = vec![
            (EntityId(5), pose),
            (EntityId(5), velocity),
            (EntityId(9), pose),
            (EntityId(9), velocity),
            (EntityId(2), pose),
            (EntityId(7), stats),
            (EntityId(3), pose),
            (EntityId(3), velocity),
            (EntityId(1), stats),
        ];
        assert_eq!(
            columns_of(set),
            vec![
                (velocity, vec![EntityId(3), EntityId(5), EntityId(9)]),
                (pose, vec![EntityId(2), EntityId(3), EntityId(5), EntityId(9)]),
                (stats, vec![EntityId(1), EntityId(7)]),
            ]
        );
        assert_eq!(columns_of(Vec::new()), Vec::new());
        let touched = touched_entities(
            &[EntityId(8)],
            &[EntityId(4)],
            [EntityId(3), EntityId(5), EntityId(9), EntityId(2), EntityId(3), EntityId(5)].into_iter(),
            &[(EntityId(5), pose), (EntityId(1), stats)],
        );
        assert_eq!(touched, [1, 2, 3, 4, 5, 8, 9].map(EntityId));
    }

    /// What `columns_of` gave before it grouped first: the whole set sorted by (type, entity).
    fn columns_by_one_sort(mut set: Vec<(EntityId, ComponentId)>) -> Vec<(ComponentId, Vec<EntityId>)> {
        let mut columns: Vec<(ComponentId, Vec<EntityId>)> = Vec::new();
        set.sort_unstable_by_key(|(entity, id)| (*id, *entity));
        for (entity, id) in set {
            match columns.last_mut() {
                Some((current, holders)) if *current == id => holders.push(entity),
                _ => columns.push((id, vec![entity])),
            }
        }
        columns
    }

    proptest::proptest! {
        /// Grouping first gives what one sort of the whole set gave, in any order, with repeats,
        /// and the touched entities are every entity once, ascending.
        #[test]
        fn grouping_before_sorting_gives_what_one_sort_gave(
            set in proptest::collection::vec((0u64..300, 0u16..6), 0..600),
            spawned in proptest::collection::vec(0u64..300, 0..20),
        ) {
            let set: Vec<(EntityId, ComponentId)> =
                set.into_iter().map(|(entity, id)| (EntityId(entity), ComponentId(id))).collect();
            let columns = columns_of(set.clone());
            proptest::prop_assert_eq!(&columns, &columns_by_one_sort(set.clone()));
            let spawned: Vec<EntityId> = spawned.into_iter().map(EntityId).collect();
            let holders = columns.iter().flat_map(|(_, holders)| holders.iter().copied());
            let touched = touched_entities(&spawned, &[], holders, &[]);
            let mut expected: Vec<EntityId> = set.iter().map(|(entity, _)| *entity).chain(spawned).collect();
            expected.sort_unstable();
            expected.dedup();
            proptest::prop_assert_eq!(touched, expected);
        }
    }
}
