//! A signing key as stored, and its states: the store's record, in the kernel's types.

pub use keygate_kernel::KeyState;
pub use keygate_store::signing_keys::KeyRecord;
