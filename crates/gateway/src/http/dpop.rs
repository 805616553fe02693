//! DPoP at the HTTP layer (RFC 9449): the URL a proof must name, the proof of a request
//! checked with the app's nonce setting, and the `DPoP-Nonce` header.

use actix_web::{HttpRequest, HttpResponseBuilder};
use keygate_sessions::dpop::{check_proof, Proof, ProofError};
use keygate_sessions::RenewInput;
use keygate_tenants::App;

use crate::bootstrap::Services;

/// The request header of the token endpoint that carries the proof.
pub const PROOF_HEADER: &str = "DPoP";
/// The response header that hands a client the nonce to put in its next proof.
pub const NONCE_HEADER: &str = "DPoP-Nonce";

/// Why a request's proof was not accepted.
#[derive(Debug)]
pub enum Refusal {
    /// Not a valid proof for this request; why.
    Invalid(String),
    /// A valid proof without the nonce the app requires (or with a stale one): retry with
    /// this one.
    UseNonce(String),
}

/// The `htu` of every proof of `app`: its token endpoint, on `public_url` (or, without
/// one, on the scheme and host the request came to). A proof forwarded to `/renew` names
/// the token endpoint too, so that a device makes its proofs alike wherever they go.
pub fn token_endpoint(services: &Services, request: &HttpRequest, app: &App) -> String {
    match &services.public_url {
        Some(base) => format!("{base}/app/{}/oauth/token", app.app_id),
        None => {
            let info = request.connection_info();
            format!("{}://{}/app/{}/oauth/token", info.scheme(), info.host(), app.app_id)
        }
    }
}

/// Checks `proof`, a proof for a POST to the app's token endpoint, at `now`; with the app's
/// `dpop_nonce` on, it must carry a nonce of the gateway's that has not expired.
pub fn check(
    services: &Services,
    request: &HttpRequest,
    app: &App,
    proof: &str,
    now: i64,
) -> Result<Proof, Refusal> {
    let htu = token_endpoint(services, request, app);
    let proof = check_proof(proof, "POST", &htu, now).map_err(|e| Refusal::Invalid(e.0))?;
    if app.settings.dpop_nonce {
        let fresh = proof
            .nonce
            .as_deref()
            .is_some_and(|n| services.dpop_nonces.accepts(app.app_id, n, now));
        if !fresh {
            return Err(Refusal::UseNonce(services.dpop_nonces.issue(app.app_id, now)));
        }
    }
    Ok(proof)
}

/// Checks the proof a renew brings (`proof`, from the `DPoP` header or the body's `dpop`)
/// into `input.proof`. An invalid proof is kept as such: it refuses the renew of a bound
/// session, with the session named in the audit trail. A valid proof without the nonce the
/// app requires is answered at once: `Err` holds the nonce to send.
pub fn attach(
    services: &Services,
    request: &HttpRequest,
    app: &App,
    proof: Option<&str>,
    input: &mut RenewInput,
    now: i64,
) -> Result<(), String> {
    input.proof = match proof.map(|proof| check(services, request, app, proof, now)) {
        None => None,
        Some(Ok(proof)) => Some(Ok(proof)),
        Some(Err(Refusal::Invalid(why))) => Some(Err(ProofError(why))),
        Some(Err(Refusal::UseNonce(nonce))) => return Err(nonce),
    };
    Ok(())
}

/// Adds a fresh `DPoP-Nonce` to an answer of an app that requires nonces (RFC 9449 §8.2),
/// so that the client's next proof has one.
pub fn offer_nonce(services: &Services, app: &App, now: i64, response: &mut HttpResponseBuilder) {
    if app.settings.dpop_nonce {
        response.insert_header((NONCE_HEADER, services.dpop_nonces.issue(app.app_id, now)));
    }
}
