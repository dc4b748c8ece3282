//! What the two kinds' TLS settings share: telling a refused server certificate from a broken
//! connection. A certificate the settings refuse (unknown issuer, wrong host name, expired) is
//! refused again on every attempt, so it is a definite error (say what to fix) rather than a
//! transient one (retry with backoff).

/// Whether `error` or one of its sources (looking inside I/O errors, where the drivers put
/// rustls' error) is rustls refusing the server's certificate.
pub(crate) fn certificate_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && certificate_refused(inner)
        {
            return true;
        }
        next = e.source();
    }
    false
}
