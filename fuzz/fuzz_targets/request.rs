//! Request bodies: the JSON body decoder of every endpoint, then the `/sign`, `/renew`
//! and token-field validators. No input may panic, and whatever they accept must hold
//! the invariants the rest of keygate relies on.
#![no_main]

use std::net::IpAddr;

use keygate_gateway::extract::parse;
use keygate_keyring::MAX_TOKEN_LEN;
use keygate_sessions::{
    token_field, RenewInput, SignInput, MAX_CUSTOM_CLAIMS, MAX_SUB, MAX_USERAGENT,
    RESERVED_CLAIMS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = parse::<Map<String, Value>>(data) else { return };
    if let Ok(input) = RenewInput::parse(&body) {
        assert!(!input.refresh_token.is_empty() && input.refresh_token.len() <= MAX_TOKEN_LEN);
        assert!(input.useragent.len() <= MAX_USERAGENT && !input.useragent.contains('\0'));
        assert_eq!(input.ip.parse::<IpAddr>().map(|ip| ip.to_string()).ok(), Some(input.ip.clone()));
    }
    if let Ok(input) = SignInput::parse(body.clone()) {
        assert!(!input.sub.is_empty() && input.sub.len() <= MAX_SUB && !input.sub.contains('\0'));
        assert!(input.useragent.len() <= MAX_USERAGENT);
        assert!(input.custom.keys().all(|k| !RESERVED_CLAIMS.contains(&k.as_str())));
        let size = serde_json::to_string(&input.custom).map(|s| s.len()).unwrap_or(usize::MAX);
        assert!(size <= MAX_CUSTOM_CLAIMS);
    }
    if let Ok(token) = token_field(&body, "token") {
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
    }
});
