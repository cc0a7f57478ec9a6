//! What the admin API's OpenAPI document says that the derives cannot say exactly, and the path
//! extractors whose answers it promises.
//!
//! - Ids. A region's or a migration's id is an unsigned 64-bit integer (`RegionId`,
//!   `MigrationId`: `integer`, `format: uint64`, 0 to 2^64 - 1). In a path it is decimal digits
//!   only; [`RegionPath`] and [`MigrationPath`] answer anything else (`-1`, `+1`, `3621.0`, `abc`,
//!   2^64) with 400 and an `ApiError`. In a JSON body it is a JSON integer literal: serde reads
//!   `3621.0` or `3.621e3` as a float and the body is refused (400), although JSON Schema counts
//!   their values as integers. No schema keyword can say that, so the ids' description does.
//! - The create-region body has two shapes, afresh (`world`) and restored (`from_checkpoint:
//!   true`, no `world` or an empty one); the schema is their `oneOf`, so a body with both fits
//!   neither, as the handler refuses it.
//!
//! It deliberately holds no behaviour of its own: the handlers decide, this module describes.
//! `tests/openapi_contract.rs` checks every operation of the document against the running API.

use std::borrow::Cow;

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Ref, Schema, SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use super::{CreateRegion, Failure};

/// Writes the unsigned integer formats as the OpenAPI format registry spells them (`uint64`).
///
/// utoipa 6 derives `format: uint64` for a `u64` (feature `non_strict_integers`) but serialises it
/// kebab-cased, `u-int64`, which no tool knows (juhaku/utoipa#1527); without the feature a `u64`
/// is an `int64`, whose range stops at 2^63 - 1. Once utoipa spells it right this does nothing.
pub(super) fn fix_unsigned_formats(document: &mut serde_json::Value) {
    match document {
        serde_json::Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                let unsigned = match value.as_str() {
                    Some(format) if key == "format" => format.strip_prefix("u-int").map(|bits| format!("uint{bits}")),
                    _ => None,
                };
                match unsigned {
                    Some(unsigned) => *value = serde_json::Value::String(unsigned),
                    None => fix_unsigned_formats(value),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fix_unsigned_formats),
        _ => {}
    }
}

/// The `RegionId` schema: how a request names a region.
pub struct RegionIdSchema;

impl PartialSchema for RegionIdSchema {
    fn schema() -> RefOr<Schema> {
        id_schema("A region's id.")
    }
}

impl ToSchema for RegionIdSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RegionId")
    }
}

/// The `MigrationId` schema: how a request names a migration.
pub struct MigrationIdSchema;

impl PartialSchema for MigrationIdSchema {
    fn schema() -> RefOr<Schema> {
        id_schema("A migration's id.")
    }
}

impl ToSchema for MigrationIdSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("MigrationId")
    }
}

fn id_schema(what: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::UInt64)))
        .minimum(Some(0u64))
        .maximum(Some(u64::MAX))
        .description(Some(format!(
            "{what} An unsigned 64-bit integer. In a path: decimal digits only (`-1`, `+1`, `3621.0`, \
             `abc` or more than 18446744073709551615 are answered 400). In a JSON body: a JSON integer \
             literal; a number written with a fraction or an exponent (`3621.0`, `3.621e3`) is refused \
             with 400 even when its value is whole."
        )))
        .examples([json!(1)])
        .into()
}

/// The create-region body's first shape: a new region, from the game's initial world.
pub struct CreateRegionAfresh;

impl PartialSchema for CreateRegionAfresh {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .title(Some("afresh"))
            .description(Some(
                "Create the region from the game's initial world. Refused (409) if the directory knows \
                 the region already: restore it instead.",
            ))
            .property("region", Ref::from_schema_name(RegionIdSchema::name()))
            .required("region")
            .property("host", host_schema())
            .required("host")
            .property(
                "world",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .additional_properties(Some(AdditionalProperties::FreeForm(true)))
                    .default(Some(json!({})))
                    .description(Some(
                        "The game's initial world, passed to the game unread (the sample reads \
                         `objects`, `npcs`, `plants`, `seed`). Absent or empty: the game's default.",
                    )),
            )
            .property(
                "from_checkpoint",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([false]))
                    .default(Some(json!(false)))
                    .description(Some("Absent or `false` for a new region.")),
            )
            .property(
                "standby",
                ObjectBuilder::new().schema_type(Type::Boolean).description(Some(
                    "Keep a hot standby of the region on another host (needs the coordinator's failover \
                     on). Absent: the coordinator's `--standby`; a restore without it keeps the region's \
                     earlier choice.",
                )),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .examples([json!({"region": 1, "host": "h1", "world": {"objects": 40, "npcs": 4}})])
            .into()
    }
}

impl ToSchema for CreateRegionAfresh {}

/// The create-region body's second shape: a region restored from its newest checkpoint.
pub struct CreateRegionFromCheckpoint;

impl PartialSchema for CreateRegionFromCheckpoint {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .title(Some("from checkpoint"))
            .description(Some(
                "Restore the region from its newest checkpoint in the host's checkpoint store (after a \
                 full restart, or when its host died), at the next epoch. The region may be in the \
                 directory already; it must not be served by any registered host (409).",
            ))
            .property("region", Ref::from_schema_name(RegionIdSchema::name()))
            .required("region")
            .property("host", host_schema())
            .required("host")
            .property("from_checkpoint", ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([true])))
            .required("from_checkpoint")
            .property(
                "world",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .max_properties(Some(0))
                    .description(Some("The checkpoint holds the world: absent or empty.")),
            )
            .property(
                "standby",
                ObjectBuilder::new().schema_type(Type::Boolean).description(Some(
                    "Keep a hot standby of the region on another host (needs the coordinator's failover \
                     on). Absent: the coordinator's `--standby`; a restore without it keeps the region's \
                     earlier choice.",
                )),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .examples([json!({"region": 1, "host": "h1", "from_checkpoint": true})])
            .into()
    }
}

impl ToSchema for CreateRegionFromCheckpoint {}

fn host_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some("The host to place it on."))
}

impl PartialSchema for CreateRegion {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "Create a region on a host: afresh from a world, or restored from its newest checkpoint. \
                 A body with both `from_checkpoint: true` and a non-empty `world` fits neither shape and \
                 is refused (400).",
            ))
            .item(Ref::from_schema_name(CreateRegionAfresh::name()))
            .item(Ref::from_schema_name(CreateRegionFromCheckpoint::name()))
            .into()
    }
}

impl ToSchema for CreateRegion {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (CreateRegionAfresh::name(), CreateRegionAfresh::schema()),
            (CreateRegionFromCheckpoint::name(), CreateRegionFromCheckpoint::schema()),
            (RegionIdSchema::name(), RegionIdSchema::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}

/// The route's one path parameter as text. axum answers a segment that is not UTF-8 once
/// percent-decoded with a plain-text 400; this answers it with an `ApiError`, as the document
/// says every error is.
pub(super) struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(text)) => Ok(PathText(text)),
            // A client's bad segment keeps axum's 400; a route wired without its parameter is the
            // server's fault and keeps its 500.
            Err(rejection) => Err(Failure(rejection.status(), format!("malformed path: {}", rejection.body_text()))),
        }
    }
}

/// A region id from the path (`RegionId`); anything but decimal digits up to 2^64 - 1 is a 400.
pub(super) struct RegionPath(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for RegionPath {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_id(parts, state, "region id").await.map(RegionPath)
    }
}

/// A migration id from the path (`MigrationId`); anything but decimal digits up to 2^64 - 1 is a
/// 400.
pub(super) struct MigrationPath(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for MigrationPath {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_id(parts, state, "migration id").await.map(MigrationPath)
    }
}

async fn path_id<S: Send + Sync>(parts: &mut Parts, state: &S, what: &str) -> Result<u64, Failure> {
    let PathText(text) = PathText::from_request_parts(parts, state).await?;
    parse_id(&text).ok_or_else(|| {
        Failure(StatusCode::BAD_REQUEST, format!("{text:?} is not a {what} (decimal digits, at most {})", u64::MAX))
    })
}

/// Decimal digits only: `u64::from_str` also takes a leading `+`, which the document's integer
/// does not.
fn parse_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn ids_are_decimal_digits_within_u64() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("007"), Some(7));
        assert_eq!(parse_id("18446744073709551615"), Some(u64::MAX));
        for refused in ["", "-1", "+1", "3621.0", "1e3", "abc", " 1", "18446744073709551616"] {
            assert_eq!(parse_id(refused), None, "{refused:?}");
        }
    }
}
