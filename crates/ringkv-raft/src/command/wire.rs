//! The postcard encoding of [`Op`], kept as it was when the log held one
//! flat enum of 27 commands (and forwarded proposals one of 28).
//!
//! postcard writes an enum variant as its index, so splitting the flat enum
//! into [`KvOp`] and [`MetaOp`] would renumber every variant: entries already
//! in a data directory would read as other commands, and a peer of the
//! previous version would misread a forwarded proposal. Instead each typed
//! variant is written under its index in the flat enum, from the tables
//! below, and read back the same way. The `wire_golden` tests hold bytes
//! written by the flat enums; a change that alters them fails there.
//!
//! A new command gets the next unused index, in its part's table; an index
//! is never reused.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor};
use serde::ser::{self, Impossible};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{KvOp, KvProposal, MetaOp, Op};

/// A key-value part of [`Op`], with the flat indices of its variants.
pub trait KvPart: Serialize + for<'de> Deserialize<'de> {
    /// The flat enum's name (what self-describing formats print).
    const FLAT_NAME: &'static str;
    /// The flat index of each of this part's variants, in declaration order.
    const KV_INDICES: &'static [u32];
    /// The flat index of each [`MetaOp`] variant, in declaration order.
    const META_INDICES: &'static [u32];
}

/// The log's commands: `raft::types::Op` before it was split.
impl KvPart for KvOp {
    const FLAT_NAME: &'static str = "Op";
    // Put, Delete, Expire, MoveIn, ClearMoveMarkers, ClearMoveMarkersUpTo,
    // MoveInBatch, ExpireBatch.
    const KV_INDICES: &'static [u32] = &[0, 1, 2, 16, 17, 20, 21, 22];
    const META_INDICES: &'static [u32] = &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 19, 23, 24, 25, 26];
}

/// Forwarded proposals: `cluster::Proposal` before it was split.
impl KvPart for KvProposal {
    const FLAT_NAME: &'static str = "Proposal";
    // Put, Delete, Expire, MoveIn, MoveOut, ClearMoveMarkers,
    // ClearMoveMarkersUpTo, MoveInBatch, MoveOutBatch.
    const KV_INDICES: &'static [u32] = &[0, 1, 2, 16, 17, 18, 21, 22, 23];
    const META_INDICES: &'static [u32] = &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 19, 20, 24, 25, 26, 27];
}

impl<K: KvPart> Serialize for Op<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Op::Kv(op) => op.serialize(Renumber { inner: s, name: K::FLAT_NAME, indices: K::KV_INDICES }),
            Op::Meta(op) => op.serialize(Renumber { inner: s, name: K::FLAT_NAME, indices: K::META_INDICES }),
        }
    }
}

impl<'de, K: KvPart> Deserialize<'de> for Op<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum(K::FLAT_NAME, &[], OpVisitor(PhantomData))
    }
}

struct OpVisitor<K>(PhantomData<K>);

impl<'de, K: KvPart> Visitor<'de> for OpVisitor<K> {
    type Value = Op<K>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} variant index", K::FLAT_NAME)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Op<K>, A::Error> {
        let (flat, variant) = data.variant::<u32>()?;
        let local = |table: &[u32]| table.iter().position(|&i| i == flat).map(|i| i as u32);
        if let Some(index) = local(K::KV_INDICES) {
            return K::deserialize(Replay { index, variant }).map(Op::Kv);
        }
        if let Some(index) = local(K::META_INDICES) {
            return MetaOp::deserialize(Replay { index, variant }).map(Op::Meta);
        }
        Err(de::Error::invalid_value(de::Unexpected::Unsigned(flat.into()), &self))
    }
}

/// Hands a typed enum's derived `Deserialize` the variant already read,
/// under its index in the typed enum.
struct Replay<A> {
    index: u32,
    variant: A,
}

impl<'de, A: VariantAccess<'de>> Deserializer<'de> for Replay<A> {
    type Error = A::Error;

    fn deserialize_any<W: Visitor<'de>>(self, _: W) -> Result<W::Value, A::Error> {
        Err(de::Error::custom("a split command enum reads only as an enum"))
    }

    fn deserialize_enum<W: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: W,
    ) -> Result<W::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de, A: VariantAccess<'de>> EnumAccess<'de> for Replay<A> {
    type Error = A::Error;
    type Variant = A;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, A), A::Error> {
        let index: de::value::U32Deserializer<A::Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self.variant))
    }
}

/// A serializer for one typed enum value that writes its variant under the
/// flat index `indices[i]` and name `name`; everything inside the variant
/// goes to `inner` unchanged.
struct Renumber<S> {
    inner: S,
    name: &'static str,
    indices: &'static [u32],
}

impl<S: Serializer> Renumber<S> {
    fn flat(&self, index: u32) -> Result<u32, S::Error> {
        self.indices
            .get(index as usize)
            .copied()
            .ok_or_else(|| ser::Error::custom(format!("variant {index} of a {} part has no wire index", self.name)))
    }
}

/// The serializer methods a split command enum never calls.
macro_rules! not_an_enum {
    ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<$ok, S::Error> {
            Err(ser::Error::custom("a split command enum writes only enum variants"))
        }
    )*};
}

impl<S: Serializer> Serializer for Renumber<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = S::SerializeTupleVariant;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = S::SerializeStructVariant;

    fn serialize_unit_variant(self, _: &'static str, index: u32, variant: &'static str) -> Result<S::Ok, S::Error> {
        let flat = self.flat(index)?;
        self.inner.serialize_unit_variant(self.name, flat, variant)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let flat = self.flat(index)?;
        self.inner.serialize_newtype_variant(self.name, flat, variant, value)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<S::SerializeTupleVariant, S::Error> {
        let flat = self.flat(index)?;
        self.inner.serialize_tuple_variant(self.name, flat, variant, len)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<S::SerializeStructVariant, S::Error> {
        let flat = self.flat(index)?;
        self.inner.serialize_struct_variant(self.name, flat, variant, len)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom("a split command enum writes only enum variants"))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, _: &T) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom("a split command enum writes only enum variants"))
    }

    not_an_enum! {
        serialize_bool(bool) -> S::Ok;
        serialize_i8(i8) -> S::Ok;
        serialize_i16(i16) -> S::Ok;
        serialize_i32(i32) -> S::Ok;
        serialize_i64(i64) -> S::Ok;
        serialize_u8(u8) -> S::Ok;
        serialize_u16(u16) -> S::Ok;
        serialize_u32(u32) -> S::Ok;
        serialize_u64(u64) -> S::Ok;
        serialize_f32(f32) -> S::Ok;
        serialize_f64(f64) -> S::Ok;
        serialize_char(char) -> S::Ok;
        serialize_str(&str) -> S::Ok;
        serialize_bytes(&[u8]) -> S::Ok;
        serialize_none() -> S::Ok;
        serialize_unit() -> S::Ok;
        serialize_unit_struct(&'static str) -> S::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
}
