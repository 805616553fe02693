keygate_tenants::ulid_id!(
    /// The id of a signing key: the `kid` of every token it signs.
    KeyId
);
