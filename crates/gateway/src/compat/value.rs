//! A configuration value that keeps the order and the case of table keys as written, so a
//! response template renders its fields in the order the operator wrote them.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
    Array(Vec<ConfigValue>),
    /// Keys in the order they were written.
    Table(Vec<(String, ConfigValue)>),
}

impl ConfigValue {
    /// What the value is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bool(_) => "a boolean",
            Self::Integer(_) => "an integer",
            Self::Float(_) => "a float",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ConfigValueVisitor)
    }
}

struct ConfigValueVisitor;

impl<'de> Visitor<'de> for ConfigValueVisitor {
    type Value = ConfigValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<ConfigValue, E> {
        Ok(ConfigValue::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<ConfigValue, E> {
        Ok(ConfigValue::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfigValue, E> {
        i64::try_from(v)
            .map(ConfigValue::Integer)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<ConfigValue, E> {
        i64::try_from(v)
            .map(ConfigValue::Integer)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<ConfigValue, E> {
        i64::try_from(v)
            .map(ConfigValue::Integer)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E>(self, v: f64) -> Result<ConfigValue, E> {
        Ok(ConfigValue::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<ConfigValue, E> {
        Ok(ConfigValue::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<ConfigValue, E> {
        Ok(ConfigValue::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<ConfigValue, E> {
        Err(E::custom("an empty value is not accepted"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ConfigValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(ConfigValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ConfigValue, A::Error> {
        let mut entries: Vec<(String, ConfigValue)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, ConfigValue>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            entries.push((key, value));
        }
        Ok(ConfigValue::Table(entries))
    }
}
