//! The kernel's types as database columns (feature `sqlx`): each is stored as its text form
//! and decoded by parsing it, so the store's rows carry ids and states, not strings. A value
//! that does not parse is a decoding error, which the store reports as corrupt data.

use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Type};

use crate::{
    AccessTokenProfile, AppId, DpopMode, EventId, Jid, KeyId, KeyState, OnReuse, SessionId,
};

macro_rules! text_columns {
    ($($ty:ty),* $(,)?) => {$(
        impl<DB: Database> Type<DB> for $ty
        where
            String: Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: Database> Decode<'r, DB> for $ty
        where
            &'r str: Decode<'r, DB>,
        {
            fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&'r str as Decode<'r, DB>>::decode(value)?.parse::<$ty>()?)
            }
        }
    )*};
}

text_columns!(
    AppId,
    KeyId,
    SessionId,
    Jid,
    EventId,
    KeyState,
    OnReuse,
    AccessTokenProfile,
    DpopMode
);
