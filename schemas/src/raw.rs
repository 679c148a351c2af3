//! A format-neutral view of a decoded body, so MessagePack, JSON and CSV input are validated
//! by one piece of code and every error can name the field it is about.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One value as the publisher sent it, before validation.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<RawValue>),
    Map(BTreeMap<String, RawValue>),
}

impl RawValue {
    /// Short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            RawValue::Nil => "null",
            RawValue::Bool(_) => "a boolean",
            RawValue::Int(_) | RawValue::UInt(_) => "an integer",
            RawValue::Float(_) => "a float",
            RawValue::Str(_) => "a string",
            RawValue::Bytes(_) => "binary data",
            RawValue::List(_) => "an array",
            RawValue::Map(_) => "a map",
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_unit<E>(self) -> Result<RawValue, E> {
        Ok(RawValue::Nil)
    }
    fn visit_none<E>(self) -> Result<RawValue, E> {
        Ok(RawValue::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        RawValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<RawValue, E> {
        Ok(RawValue::Bytes(v.to_vec()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawValue::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<MapKey>()? {
            let value = map.next_value()?;
            if out.insert(key.0.clone(), value).is_some() {
                return Err(de::Error::custom(format_args!("duplicate key `{}`", key.0)));
            }
        }
        Ok(RawValue::Map(out))
    }
}

/// Map keys must be strings: a positional or integer-keyed encoding is refused.
struct MapKey(String);

impl<'de> Deserialize<'de> for MapKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = MapKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string map key")
            }
            fn visit_str<E>(self, v: &str) -> Result<MapKey, E> {
                Ok(MapKey(v.to_owned()))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<MapKey, E> {
                std::str::from_utf8(v)
                    .map(|s| MapKey(s.to_owned()))
                    .map_err(|_| E::custom("map key is not UTF-8"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}
