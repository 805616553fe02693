//! A configuration value that keeps the order and the case of table keys as written, so a
//! response template renders its fields in the order the operator wrote them. It is also a
//! [`Deserializer`], so that route tables are read by `#[derive(Deserialize)]` types.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Unexpected, Visitor,
};
use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Array(Vec<ConfigValue>),
    /// Keys in the order they were written.
    Table(#[serde(deserialize_with = "entries")] Vec<(String, ConfigValue)>),
}

impl ConfigValue {
    /// Reads the table at `key` into `T`; a mistake names its key below `key`.
    pub fn read<T: DeserializeOwned>(self, key: &str) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(self).map_err(|err| {
            let (path, inner) = (err.path().to_string(), err.into_inner());
            let parts = [key, &path, &inner.key].into_iter().filter(|p| !["", "."].contains(p));
            ConfigError::new(parts.collect::<Vec<_>>().join("."), inner.message)
        })
    }
}

/// The errors of [`ConfigValue::read`], worded for operators. The key is the missing field,
/// if any; `read` puts the path in front.
impl de::Error for ConfigError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Self::new("", message.to_string())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        let expected = match expected.to_string().as_str() {
            "a boolean" => "true or false".to_owned(),
            "i64" => "an integer".to_owned(),
            other => other.to_owned(),
        };
        let found = match unexpected {
            Unexpected::Bool(_) => "a boolean",
            Unexpected::Signed(_) | Unexpected::Unsigned(_) => "an integer",
            Unexpected::Float(_) => "a float",
            Unexpected::Str(_) => "a string",
            Unexpected::Seq => "an array",
            Unexpected::Map => "a table",
            _ => "another kind of value",
        };
        Self::new("", format!("must be {expected}, not {found}"))
    }

    fn unknown_field(_: &str, keys: &'static [&'static str]) -> Self {
        Self::new("", format!("unknown key; the keys are {}", keys.join(", ")))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::new(field, "is required")
    }
}

impl<'de> Deserializer<'de> for ConfigValue {
    type Error = ConfigError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConfigError> {
        match self {
            Self::Bool(b) => visitor.visit_bool(b),
            Self::Integer(i) => visitor.visit_i64(i),
            Self::Float(f) => visitor.visit_f64(f),
            Self::String(s) => visitor.visit_string(s),
            Self::Array(items) => visitor.visit_seq(SeqDeserializer::new(items.into_iter())),
            Self::Table(entries) => visitor.visit_map(MapDeserializer::new(entries.into_iter())),
        }
    }

    /// A key that is present has a value: TOML has no null.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConfigError> {
        visitor.visit_some(self)
    }

    /// A struct is a table, not an array of its fields in order.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConfigError> {
        match self {
            Self::Array(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

impl IntoDeserializer<'_, ConfigError> for ConfigValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// The entries of a table, in the order they were written.
fn entries<'de, D: Deserializer<'de>>(table: D) -> Result<Vec<(String, ConfigValue)>, D::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, ConfigValue)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    table.deserialize_map(Entries)
}
