//! Generic rkyv glue for one column of component values.
//!
//! `#[derive(Component)]` calls these functions with a concrete type, which is where the rkyv
//! bounds are checked; the `Component` trait itself stays free of rkyv's long bounds.
//! Every decode goes through `rkyv::access`, i.e. bytecheck validation, before a value is built.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{BoxedError, Fallible};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Allocator, Writer};
use rkyv::util::AlignedVec;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

use super::CodecError;

/// Serialises a slice of references as an `ArchivedVec<T::Archived>`, without cloning the values
/// out of the world's storage.
struct ColumnRef<'a, T>(&'a [&'a T]);

impl<T: Archive> Archive for ColumnRef<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<T, S> Serialize<S> for ColumnRef<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_iter::<T, _, S>(self.0.iter().copied(), serializer)
    }
}

/// Appends an archive of `values` to `out`.
pub fn encode<T>(values: &[&T], out: AlignedVec) -> Result<AlignedVec, CodecError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, BoxedError>>,
{
    rkyv::api::high::to_bytes_in::<_, BoxedError>(&ColumnRef(values), out)
        .map_err(|error| CodecError::Encode(error.to_string()))
}

/// Values copied out of a world's column, to be encoded on another thread: a delta round's piece
/// that the region thread only reads out ([`capture_delta`](super::capture_delta)).
pub trait CapturedColumn: Send {
    /// Appends a column archive of the values at `range` to `out`.
    fn encode(&self, range: std::ops::Range<usize>, out: AlignedVec) -> Result<AlignedVec, CodecError>;
}

/// Copies `values` out of the world (the derive's `capture_column`; components are `Clone`).
pub fn capture<T: crate::Component + Clone>(values: &[&T]) -> Box<dyn CapturedColumn> {
    Box::new(Captured(values.iter().map(|value| (*value).clone()).collect::<Vec<T>>()))
}

/// Appends an archive of one value to `out`.
pub fn encode_one<T>(value: &T, out: AlignedVec) -> Result<AlignedVec, CodecError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, BoxedError>>,
{
    rkyv::api::high::to_bytes_in::<_, BoxedError>(value, out).map_err(|error| CodecError::Encode(error.to_string()))
}

/// Validates `bytes` as a column of exactly `expected_len` values of `T` and decodes it.
pub fn decode<T>(bytes: &[u8], expected_len: usize) -> Result<Vec<T>, CodecError>
where
    T: Archive,
    T::Archived: Deserialize<T, HighDeserializer<BoxedError>>,
    ArchivedVec<T::Archived>: for<'a> CheckBytes<HighValidator<'a, BoxedError>>,
{
    let archived = rkyv::access::<ArchivedVec<T::Archived>, BoxedError>(bytes)
        .map_err(|error| CodecError::Invalid(format!("column: {error}")))?;
    if archived.len() != expected_len {
        return Err(CodecError::Invalid(format!("column holds {} values for {expected_len} entities", archived.len())));
    }
    archived
        .iter()
        .map(|value| {
            rkyv::deserialize::<T, BoxedError>(value).map_err(|error| CodecError::Invalid(format!("value: {error}")))
        })
        .collect()
}

/// Mixes a derive-time shape fingerprint with the archived size and alignment of `T`.
#[must_use]
pub const fn schema_hash<T: Archive>(fingerprint: u64) -> u64 {
    let size = size_of::<T::Archived>() as u64;
    let align = align_of::<T::Archived>() as u64;
    let mut hash = fingerprint ^ 0x9e37_79b9_7f4a_7c15;
    hash = (hash ^ size).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ align).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

struct Captured<T>(Vec<T>);

impl<T: crate::Component> CapturedColumn for Captured<T> {
    fn encode(&self, range: std::ops::Range<usize>, out: AlignedVec) -> Result<AlignedVec, CodecError> {
        let Some(values) = self.0.get(range.clone()) else {
            return Err(CodecError::Encode(format!(
                "values {range:?} asked of a captured column of {} values",
                self.0.len()
            )));
        };
        let values: Vec<&T> = values.iter().collect();
        T::encode_column(&values, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes of different builds compare these hashes to agree on a component's shape, so
    /// the mixing must not change: the values are pinned.
    #[test]
    fn schema_hashes_are_stable_and_follow_size_alignment_and_fingerprint() {
        let hashes = [schema_hash::<u32>(1), schema_hash::<u32>(2), schema_hash::<u64>(1), schema_hash::<[u8; 4]>(1)];
        assert_eq!(
            hashes,
            [0x9761_7f44_6355_e656, 0x5fe0_2b82_2c32_c150, 0xbf98_bb74_ff89_4157, 0xd8f0_a215_a5e2_a733]
        );
    }
}
