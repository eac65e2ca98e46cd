//! What went wrong with a request that got no answer, sorted into an [`AttemptError`] from the
//! error's cause chain (refused, reset, timed out, TLS, a certificate its owner can fix), in
//! words an endpoint's owner can act on.

use herald_core::delivery::AttemptError;

use super::CONNECT_TIMEOUT;
use crate::guard::Blocked;

/// Where a transport error came from: opening the connection, or the exchange on it.
#[derive(Clone, Copy)]
pub(super) enum Stage {
    Connect,
    Exchange,
}

/// Sorts a transport error by walking its cause chain.
pub(super) fn classify(e: &(dyn std::error::Error + 'static), stage: Stage) -> AttemptError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut tls = false;
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<Blocked>() {
            return AttemptError::Blocked(blocked.0.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // The connector's own limit (CONNECT_TIMEOUT) ran out: the endpoint's host did not
            // take the connection, which says more than "did not answer in time".
            if io.kind() == std::io::ErrorKind::TimedOut {
                return match stage {
                    Stage::Connect => AttemptError::Connect(format!(
                        "no connection within {} s (the host did not accept it)",
                        CONNECT_TIMEOUT.as_secs()
                    )),
                    Stage::Exchange => AttemptError::Timeout,
                };
            }
            // EMFILE, ENFILE: this process (or machine) is out of file descriptors.
            if matches!(io.raw_os_error(), Some(23 | 24)) {
                return AttemptError::Local(format!(
                    "this node is out of file descriptors ({io}); raise its open-file limit \
                     or lower HERALD_MAX_REQUESTS_IN_FLIGHT"
                ));
            }
        }
        tls |= is_tls(err);
        source = err.source();
    }
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        AttemptError::Dns(chain)
    } else if tls
        || lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
    {
        AttemptError::Tls(certificate_problem(e).unwrap_or(chain))
    } else {
        match stage {
            Stage::Connect => AttemptError::Connect(chain),
            Stage::Exchange => AttemptError::Request(chain),
        }
    }
}

/// Whether `err` is rustls's, perhaps inside io::Errors (which hide their inner error from
/// `source()`).
pub(super) fn is_tls(mut err: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if err.is::<rustls::Error>() {
            return true;
        }
        match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => err = inner,
            None => return false,
        }
    }
}

/// What is wrong with the endpoint's certificate, in words its owner can act on, when the
/// error's chain holds rustls's verdict on it (whose own words name the verifier's internals:
/// `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`).
pub(super) fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError as Cert;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(bad)) = err.downcast_ref::<rustls::Error>() {
            let what = match bad {
                Cert::UnknownIssuer => {
                    "is not signed by an authority Herald trusts (self-signed, or from a private \
                     CA): give the endpoint a certificate from a public CA"
                }
                Cert::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                    "is a CA's, not a server's (a self-signed certificate made as a CA?): give \
                     the endpoint a certificate from a public CA"
                }
                Cert::Expired | Cert::ExpiredContext { .. } => "has expired: renew it",
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                    "is not valid yet (or this machine's clock is behind)"
                }
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    "is not for the host in the webhook's URL: use the host it names, or a \
                     certificate for this one"
                }
                Cert::Revoked => "was revoked",
                _ => return None,
            };
            return Some(format!("the endpoint's certificate {what} ({bad})"));
        }
        // io::Errors hide their inner error from `source()`.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// "outer: inner: innermost", without repeating the same text twice.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}
