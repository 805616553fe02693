//! A request id for every request. A well-formed `X-Request-Id` from the client (or the
//! load balancer) is kept, anything else is replaced by a new ULID. The id is answered in
//! `X-Request-Id`, every log line written while the request is handled carries it (a
//! tracing span named `request`), and so does the access log line.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a client.
const MAX_LEN: usize = 64;

/// Whether a client's request id is safe to keep, log and echo: 1 to 64 characters of
/// `A-Z a-z 0-9 - _ . :` (nothing that could break a log line or a header).
pub fn well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The middleware (`actix_web::middleware::from_fn(request_id::middleware)`).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| well_formed(value))
        .map_or_else(|| ulid::Ulid::new().to_string(), str::to_owned);
    let span = tracing::info_span!("request", id = %id);
    let mut response = next.call(req).instrument(span).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_kept() {
        for id in ["abc-123", "01M8R1VYBRW6H5J885CEW39PJS", "a.b_c:d", &"x".repeat(64)] {
            assert!(well_formed(id), "{id}");
        }
        for id in ["", "a b", "a\r\nb", "\u{1b}[31m", "é", "a\"b", &"x".repeat(65)] {
            assert!(!well_formed(id), "{id:?}");
        }
    }
}
