//! Ids: ULID newtypes, so two ids of different things cannot be swapped.

/// The error of parsing any ULID-based id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id: expected a 26-character ULID")]
pub struct ParseIdError;

pub(crate) mod __private {
    pub use serde;
    pub use ulid::Ulid;
    pub use utoipa;

    /// The OpenAPI schema of an id: a ULID in its canonical form.
    pub fn ulid_schema(name: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some(format!(
                "{name}: a ULID in its canonical form, 26 characters of upper-case Crockford \
                 base32"
            )))
            .min_length(Some(26))
            .max_length(Some(26))
            .pattern(Some("^[0-7][0-9A-HJKMNP-TV-Z]{25}$"))
            .examples(["01M80GYW02JF8GZ7PV8HHY5BXY"])
            .into()
    }

    /// A ULID greater than every other this process made with it: within one millisecond
    /// the random part counts up instead of being drawn again, so ids made one after the
    /// other sort in the order they were made.
    pub fn monotonic() -> Ulid {
        static GENERATOR: std::sync::Mutex<ulid::Generator> =
            std::sync::Mutex::new(ulid::Generator::new());
        let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
        // The random part overflows only after 2^80 ids in one millisecond.
        generator.generate().unwrap_or_else(|_| Ulid::new())
    }
}

/// Defines a ULID newtype id. Only the canonical (upper-case, 26-character) form parses,
/// so one thing has exactly one spelling of its id.
macro_rules! ulid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($crate::__private::Ulid);

        impl $name {
            pub fn new() -> Self {
                Self($crate::__private::Ulid::new())
            }

            /// Like [`Self::new`], but greater than every id this process made with it
            /// before: for ids whose order must follow creation (sessions made in the same
            /// second). Within a millisecond the next one is predictable from the last.
            pub fn new_monotonic() -> Self {
                Self($crate::__private::monotonic())
            }

            pub fn ulid(self) -> $crate::__private::Ulid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<$crate::__private::Ulid> for $name {
            fn from(value: $crate::__private::Ulid) -> Self {
                Self(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 26 {
                    return Err($crate::ParseIdError);
                }
                let ulid = $crate::__private::Ulid::from_string(s).map_err(|_| $crate::ParseIdError)?;
                if ulid.to_string() != s {
                    return Err($crate::ParseIdError);
                }
                Ok(Self(ulid))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as $crate::__private::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err($crate::__private::serde::de::Error::custom)
            }
        }

        impl $crate::__private::utoipa::PartialSchema for $name {
            fn schema() -> $crate::__private::utoipa::openapi::RefOr<$crate::__private::utoipa::openapi::schema::Schema> {
                $crate::__private::ulid_schema(stringify!($name))
            }
        }

        impl $crate::__private::utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }
    };
}

ulid_id!(
    /// The id of an app (tenant).
    AppId
);

ulid_id!(
    /// The id of a signing key: the `kid` of every token it signs.
    KeyId
);

ulid_id!(
    /// The id of a session (a refresh-token family): the `sid` claim of its tokens.
    SessionId
);

ulid_id!(
    /// The id of one token: the `jid` claim.
    Jid
);

ulid_id!(
    /// The id of an audit event; events sort by it in the order they were recorded.
    EventId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_canonical_form() {
        let id = AppId::new();
        assert_eq!(id.to_string().parse::<AppId>(), Ok(id));
        assert_eq!(id.to_string().to_lowercase().parse::<AppId>(), Err(ParseIdError));
        assert_eq!("".parse::<AppId>(), Err(ParseIdError));
        assert_eq!("../../etc/passwd".parse::<AppId>(), Err(ParseIdError));
        assert_eq!("ZZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<AppId>(), Err(ParseIdError));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<AppId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<AppId>("\"nope\"").is_err());
    }

    #[test]
    fn monotonic_ids_follow_the_order_of_creation() {
        let ids: Vec<AppId> = (0..10_000).map(|_| AppId::new_monotonic()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    }
}
