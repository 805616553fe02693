//! The claims of a session's tokens, and signing them.

use keygate_kernel::{AccessTokenProfile, App};
use keygate_keyring::{Signer, Typ};
use serde_json::{Map, Value};

use crate::claims::{Cnf, TokenType};

use crate::{AuthClaims, Issued, Jid, RefreshClaims, Session, SessionError, SessionId};

pub(crate) fn refresh_claims(
    app: &App,
    sid: SessionId,
    jid: Jid,
    iat: i64,
    exp: i64,
    cnf: Option<Cnf>,
) -> RefreshClaims {
    RefreshClaims {
        iss: app.settings.issuer.clone(),
        jid,
        sid,
        iat,
        nbf: iat.saturating_add(app.settings.refresh_notbefore),
        exp,
        token_type: TokenType::Refresh,
        cnf,
    }
}

pub(crate) fn auth_claims(
    app: &App,
    session: &Session,
    ip: &str,
    useragent: &str,
    now: i64,
) -> AuthClaims {
    let s = &app.settings;
    let mut custom: Map<String, Value> = session.claims.clone();
    let aud = custom.remove("aud").unwrap_or_else(|| Value::String(s.audience.clone()));
    let cnf = custom.remove("cnf");
    let jid = Jid::new();
    let (client_id, jti) = match s.access_token_profile {
        // Custom claims of these names stay where they were: the tokens are byte for byte
        // the ones before the profile existed.
        AccessTokenProfile::Keygate => (None, None),
        // The profile's `client_id` takes the place of a custom claim of that name (`jti`
        // is reserved: no custom claim has it).
        AccessTokenProfile::Rfc9068 => {
            custom.remove("client_id");
            (Some(Value::String(app.app_id.to_string())), Some(Value::String(jid.to_string())))
        }
    };
    AuthClaims {
        iss: s.issuer.clone(),
        sub: session.sub.clone(),
        aud,
        iat: now,
        nbf: now.saturating_add(s.token_notbefore),
        exp: now.saturating_add(s.token_expire),
        jid,
        sid: session.session_id,
        ip: ip.to_owned(),
        useragent: useragent.to_owned(),
        client_id,
        jti,
        cnf,
        custom,
    }
}

/// The JOSE `typ` of the app's auth and refresh tokens.
pub(crate) fn typs(app: &App) -> (Typ, Typ) {
    match app.settings.access_token_profile {
        AccessTokenProfile::Keygate => (Typ::Jwt, Typ::Jwt),
        AccessTokenProfile::Rfc9068 => (Typ::AccessToken, Typ::RefreshToken),
    }
}

pub(crate) fn issue(
    app: &App,
    signer: &Signer,
    session: &Session,
    ip: &str,
    useragent: &str,
    refresh: &RefreshClaims,
    now: i64,
) -> Result<Issued, SessionError> {
    let mut issued = issue_auth(app, signer, session, ip, useragent, now)?;
    issued.refresh_token = signer.sign_typed(typs(app).1, refresh)?;
    issued.refresh_expires_in = refresh.exp - now;
    Ok(issued)
}

/// A new auth token for `session`, without a refresh token.
pub(crate) fn issue_auth(
    app: &App,
    signer: &Signer,
    session: &Session,
    ip: &str,
    useragent: &str,
    now: i64,
) -> Result<Issued, SessionError> {
    let auth = auth_claims(app, session, ip, useragent, now);
    Ok(Issued {
        auth_token: signer.sign_typed(typs(app).0, &auth)?,
        refresh_token: String::new(),
        key_id: signer.key_id,
        public_key: signer.public_key.clone(),
        token_type: if session.binding().is_some() { "DPoP" } else { "Bearer" },
        expires_in: app.settings.token_expire,
        refresh_expires_in: 0,
        session_id: session.session_id,
    })
}
