keygate_tenants::ulid_id!(
    /// The id of a session (a refresh-token family): the `sid` claim of its tokens.
    SessionId
);

keygate_tenants::ulid_id!(
    /// The id of one token: the `jid` claim.
    Jid
);
