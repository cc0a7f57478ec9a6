//! `#[derive(Component)]` for Baton world components.
//!
//! The derive gives a type a stable, registered name and a schema fingerprint, and wires it to the
//! SDK's validated rkyv codec. It deliberately does not derive rkyv itself: the user writes
//! `#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]`, so the archived layout
//! is visible at the type's definition.
//!
//! Attributes (all optional): `#[component(name = "game.door", version = 2)]`.
//! - `name`: the stable name archives use for this type. Default: `<crate name>::<TypeName>`.
//!   Renaming the Rust type without setting `name` changes the name, so a running cluster with the
//!   old and the new build will refuse to stream state between them (which is the safe outcome).
//! - `version`: bump it when a nested type changes in a way the fingerprint cannot see.
//!
//! The fingerprint hashes the type's shape (field names and field type tokens, variant names),
//! the explicit version and, at compile time, the archived size and alignment.

use proc_macro::TokenStream;
use quote::{ToTokens, quote};
use syn::{Data, DeriveInput, Fields, LitInt, LitStr, parse_macro_input};

/// Derives `baton_sdk::Component`. See the crate documentation for the attributes.
#[proc_macro_derive(Component, attributes(component))]
pub fn derive_component(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "Component cannot be derived for generic types: an archive names one concrete type",
        ));
    }
    let mut name: Option<String> = None;
    let mut version: u64 = 0;
    for attribute in &input.attrs {
        if !attribute.path().is_ident("component") {
            continue;
        }
        attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let value: LitStr = meta.value()?.parse()?;
                if value.value().is_empty() {
                    return Err(meta.error("component name must not be empty"));
                }
                name = Some(value.value());
                Ok(())
            } else if meta.path.is_ident("version") {
                let value: LitInt = meta.value()?.parse()?;
                version = value.base10_parse()?;
                Ok(())
            } else {
                Err(meta.error("unknown component attribute; expected `name` or `version`"))
            }
        })?;
    }
    let ident = &input.ident;
    let name = name.unwrap_or_else(|| {
        let crate_name = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "crate".to_owned());
        format!("{crate_name}::{ident}")
    });
    let fingerprint = shape_fingerprint(input, &name, version);

    Ok(quote! {
        impl ::baton_sdk::Component for #ident {
            const NAME: &'static str = #name;
            const SCHEMA: u64 = ::baton_sdk::codec::column::schema_hash::<#ident>(#fingerprint);

            fn encode_column(
                values: &[&Self],
                out: ::baton_sdk::rkyv::util::AlignedVec,
            ) -> ::core::result::Result<::baton_sdk::rkyv::util::AlignedVec, ::baton_sdk::codec::CodecError> {
                ::baton_sdk::codec::column::encode::<#ident>(values, out)
            }

            fn decode_column(
                bytes: &[u8],
                expected_len: usize,
            ) -> ::core::result::Result<::std::vec::Vec<Self>, ::baton_sdk::codec::CodecError> {
                ::baton_sdk::codec::column::decode::<#ident>(bytes, expected_len)
            }

            fn encode_one(
                &self,
                out: ::baton_sdk::rkyv::util::AlignedVec,
            ) -> ::core::result::Result<::baton_sdk::rkyv::util::AlignedVec, ::baton_sdk::codec::CodecError> {
                ::baton_sdk::codec::column::encode_one::<#ident>(self, out)
            }

            fn capture_column(values: &[&Self]) -> ::std::boxed::Box<dyn ::baton_sdk::codec::column::CapturedColumn> {
                ::baton_sdk::codec::column::capture::<#ident>(values)
            }
        }
    })
}

/// A 64-bit FNV-1a over the type's shape, so that two builds agree on it without sharing code.
fn shape_fingerprint(input: &DeriveInput, name: &str, version: u64) -> u64 {
    let mut shape = format!("{name}|v{version}|");
    match &input.data {
        Data::Struct(data) => {
            shape.push_str("struct");
            push_fields(&mut shape, &data.fields);
        }
        Data::Enum(data) => {
            shape.push_str("enum");
            for variant in &data.variants {
                shape.push('|');
                shape.push_str(&variant.ident.to_string());
                push_fields(&mut shape, &variant.fields);
            }
        }
        Data::Union(_) => shape.push_str("union"),
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in shape.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn push_fields(shape: &mut String, fields: &Fields) {
    for (index, field) in fields.iter().enumerate() {
        shape.push('{');
        match &field.ident {
            Some(ident) => shape.push_str(&ident.to_string()),
            None => shape.push_str(&index.to_string()),
        }
        shape.push(':');
        shape.push_str(&field.ty.to_token_stream().to_string());
        shape.push('}');
    }
}
