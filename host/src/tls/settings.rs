//! A listener's TLS settings: the certificate chain, its key, the CA that client
//! certificates must chain to (mutual TLS), the handshake timeout and the ALPN protocols —
//! read from PEM files and checked once into a [`Tls`], which a SIGHUP reads again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::units::duration;

/// How long a client may take to finish its handshake, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The range `handshake_timeout` may take.
pub const HANDSHAKE_TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);

/// Where a listener's TLS material is, and how its handshakes go: what [`Tls::load`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM: the server's certificate first, then intermediates.
    pub cert: PathBuf,
    /// The private key of the first certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Mutual TLS: the CA certificates (PEM) that a client's certificate must chain to. A
    /// client without one is refused. `None`: clients are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
    /// A client that has not finished its handshake this long after it connected is closed
    /// (and counted). Default 10 s.
    pub handshake_timeout: Duration,
    /// The ALPN protocols the listener accepts, most preferred first (`h2`, `http/1.1`, …).
    /// Empty: ALPN is not negotiated. A client that offers protocols, none of them these, is
    /// refused.
    pub alpn: Vec<String>,
}

impl TlsFiles {
    /// A certificate chain and its key, with no client certificates asked, the default
    /// handshake timeout and no ALPN.
    #[must_use]
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            alpn: Vec::new(),
        }
    }
}

/// Why a listener's TLS settings cannot be used. Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The setting that names it (`tls.cert`, `tls.key`, `tls.client_ca`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no certificate (or its PEM is broken).
    #[error("{}: no certificate in it ({reason})", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found instead.
        reason: String,
    },
    /// The key file holds no private key (or its PEM is broken).
    #[error("{}: no private key in it ({reason})", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found instead.
        reason: String,
    },
    /// The key is not the key of the certificate.
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or the key (an unsupported key type, say).
    #[error("{}: {reason}", path.display())]
    Unusable {
        /// The file at fault.
        path: PathBuf,
        /// What rustls says.
        reason: String,
    },
    /// The client CA file cannot verify client certificates.
    #[error("{}: cannot verify client certificates with it: {reason}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An ALPN protocol name is empty or longer than 255 bytes.
    #[error("ALPN protocol {protocol:?}: a protocol name is 1 to 255 bytes")]
    Alpn {
        /// The name.
        protocol: String,
    },
    /// The handshake timeout is out of range.
    #[error("handshake_timeout must be between {} and {}", duration(HANDSHAKE_TIMEOUT.start()), duration(HANDSHAKE_TIMEOUT.end()))]
    HandshakeTimeout,
}

impl TlsError {
    /// The setting at fault, as a config file names it (`tls.cert`, `tls.key`, …).
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Read { setting, .. } => setting,
            TlsError::Unusable { .. } => "tls",
            TlsError::NoCertificate { .. } => "tls.cert",
            TlsError::NoKey { .. } | TlsError::KeyMismatch { .. } => "tls.key",
            TlsError::ClientCa { .. } => "tls.client_ca",
            TlsError::Alpn { .. } => "tls.alpn",
            TlsError::HandshakeTimeout => "tls.handshake_timeout",
        }
    }
}

/// A listener's TLS settings, loaded: the certificate chain and key checked to match, ready
/// to accept handshakes. Two are equal when they were read from the same files with the
/// same content and settings, so a reload that finds new certificates replaces them.
#[derive(Clone)]
pub struct Tls {
    files: TlsFiles,
    acceptor: TlsAcceptor,
    /// SHA-256 of every byte read (chain, key, client CAs).
    digest: [u8; 32],
    /// The server certificate's validity.
    not_before: Option<SystemTime>,
    not_after: Option<SystemTime>,
    subject: String,
}

impl Tls {
    /// Read and check the files: the chain must hold a certificate, the key file a key that
    /// belongs to it, the client CA file (if any) a CA certificate. A certificate that has
    /// expired, or is not valid yet, loads with a warning in the log: clients that check
    /// dates will refuse it, but the server still serves those that do not.
    ///
    /// # Errors
    ///
    /// A [`TlsError`] naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        if !HANDSHAKE_TIMEOUT.contains(&files.handshake_timeout) {
            return Err(TlsError::HandshakeTimeout);
        }
        if let Some(protocol) = files.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
            return Err(TlsError::Alpn {
                protocol: protocol.clone(),
            });
        }
        let mut digest = Sha256::new();
        let cert_pem = read("tls.cert", &files.cert)?;
        let key_pem = read("tls.key", &files.key)?;
        digest.update(&cert_pem);
        digest.update(&key_pem);
        let chain = certificates(&cert_pem).map_err(|reason| TlsError::NoCertificate {
            path: files.cert.clone(),
            reason,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::NoKey {
            path: files.key.clone(),
            reason: pem_reason(&error),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Unusable {
                path: files.cert.clone(),
                reason: error.to_string(),
            })?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let ca_pem = read("tls.client_ca", path)?;
                digest.update(&ca_pem);
                let verifier =
                    client_verifier(&ca_pem, &provider).map_err(|reason| TlsError::ClientCa {
                        path: path.clone(),
                        reason,
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let (subject, not_before, not_after) = validity(&chain[0]);
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| match error {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                },
                other => TlsError::Unusable {
                    path: files.key.clone(),
                    reason: other.to_string(),
                },
            })?;
        config.alpn_protocols = files.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let tls = Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            digest: digest.finalize().into(),
            not_before,
            not_after,
            subject,
            files,
        };
        tls.warn_if_out_of_date(SystemTime::now());
        Ok(tls)
    }

    /// Read the same files again (on SIGHUP): new certificates for new handshakes.
    ///
    /// # Errors
    ///
    /// As [`Tls::load`]; the caller keeps the old one.
    pub fn reload(&self) -> Result<Tls, TlsError> {
        Tls::load(self.files.clone())
    }

    /// The files and settings it was loaded from.
    #[must_use]
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// How long a client may take to finish its handshake.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        self.files.handshake_timeout
    }

    /// When the server certificate stops being valid, if its dates could be read.
    #[must_use]
    pub fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }

    /// The server certificate's subject (e.g. `CN=example.com`).
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Warn when the certificate is out of its validity at `now`.
    fn warn_if_out_of_date(&self, now: SystemTime) {
        let cert = self.files.cert.display();
        if let Some(after) = self.not_after
            && after < now
        {
            tracing::warn!(
                "{cert}: the certificate ({}) expired {} ago; clients that check dates will \
                 refuse it",
                self.subject,
                ago(now, after)
            );
        } else if let Some(before) = self.not_before
            && before > now
        {
            tracing::warn!(
                "{cert}: the certificate ({}) is not valid for another {}; clients that check \
                 dates will refuse it",
                self.subject,
                ago(before, now)
            );
        }
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.digest == other.digest
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file, at least one.
fn certificates(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_reason(&error))?;
    if chain.is_empty() {
        return Err("no -----BEGIN CERTIFICATE----- section".to_string());
    }
    Ok(chain)
}

fn pem_reason(error: &pem::Error) -> String {
    match error {
        pem::Error::NoItemsFound => "no PEM section of that kind".to_string(),
        other => other.to_string(),
    }
}

/// The verifier of client certificates against the CAs of `ca_pem`.
fn client_verifier(
    ca_pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_pem)? {
        roots.add(ca).map_err(|error| error.to_string())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|error| error.to_string())
}

/// A certificate's subject and validity, as far as they can be read.
fn validity(cert: &CertificateDer<'_>) -> (String, Option<SystemTime>, Option<SystemTime>) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return ("(unparsable certificate)".to_string(), None, None);
    };
    let time = |t: &x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .ok()
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    let validity = parsed.validity();
    (
        parsed.subject().to_string(),
        time(&validity.not_before),
        time(&validity.not_after),
    )
}

/// `later - earlier`, as a person reads it.
fn ago(later: SystemTime, earlier: SystemTime) -> String {
    let span = later.duration_since(earlier).unwrap_or_default();
    let days = span.as_secs() / 86_400;
    if days > 0 {
        format!("{days} days")
    } else {
        duration(&Duration::from_secs(span.as_secs().max(1)))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, date_time_ymd};

    use super::*;

    /// A folder of this test's with a self-signed certificate for `localhost` valid until
    /// `until` (year), its key, and a second key that belongs to nothing.
    fn pki(name: &str, until: i32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(until, 1, 1);
        let pair = KeyPair::generate().expect("key");
        let cert = params.self_signed(&pair).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), pair.serialize_pem()).expect("write");
        let other = KeyPair::generate().expect("key");
        std::fs::write(dir.join("other.pem"), other.serialize_pem()).expect("write");
        dir
    }

    fn load(files: TlsFiles) -> Result<Tls, String> {
        Tls::load(files).map_err(|error| format!("{}: {error}", error.field()))
    }

    #[test]
    fn a_certificate_and_its_key_load() -> Result<(), TlsError> {
        let dir = pki("good", 4000);
        let tls = Tls::load(TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem")))?;
        assert_eq!(tls.handshake_timeout(), DEFAULT_HANDSHAKE_TIMEOUT);
        assert!(
            tls.not_after()
                .is_some_and(|after| after > SystemTime::now())
        );
        Ok(())
    }

    #[test]
    fn each_bad_file_is_named_with_its_setting() {
        let dir = pki("bad", 4000);
        let missing = load(TlsFiles::new(dir.join("nope.pem"), dir.join("key.pem")));
        let message = missing.err().unwrap_or_default();
        assert!(message.starts_with("tls.cert: cannot read "), "{message}");
        assert!(message.contains("nope.pem"), "{message}");

        let swapped = load(TlsFiles::new(dir.join("key.pem"), dir.join("key.pem")));
        let message = swapped.err().unwrap_or_default();
        assert!(message.starts_with("tls.cert: "), "{message}");
        assert!(message.contains("no certificate in it"), "{message}");

        let no_key = load(TlsFiles::new(dir.join("cert.pem"), dir.join("cert.pem")));
        let message = no_key.err().unwrap_or_default();
        assert!(message.starts_with("tls.key: "), "{message}");
        assert!(message.contains("no private key in it"), "{message}");

        let mismatch = load(TlsFiles::new(dir.join("cert.pem"), dir.join("other.pem")));
        let message = mismatch.err().unwrap_or_default();
        assert!(
            message.starts_with("tls.key: the key in ")
                && message.contains("other.pem does not belong to the certificate in"),
            "{message}"
        );

        let mut files = TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem"));
        files.client_ca = Some(dir.join("key.pem"));
        let message = load(files).err().unwrap_or_default();
        assert!(message.starts_with("tls.client_ca: "), "{message}");

        let mut files = TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem"));
        files.alpn = vec![String::new()];
        let message = load(files).err().unwrap_or_default();
        assert!(message.starts_with("tls.alpn: "), "{message}");

        let mut files = TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem"));
        files.handshake_timeout = Duration::ZERO;
        let message = load(files).err().unwrap_or_default();
        assert!(message.starts_with("tls.handshake_timeout: "), "{message}");
    }

    #[test]
    fn an_expired_certificate_loads_and_is_out_of_date() -> Result<(), TlsError> {
        let dir = pki("expired", 2001);
        let tls = Tls::load(TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem")))?;
        assert!(
            tls.not_after()
                .is_some_and(|after| after < SystemTime::now())
        );
        assert_eq!(
            ago(
                SystemTime::UNIX_EPOCH + Duration::from_secs(3 * 86_400 + 5),
                SystemTime::UNIX_EPOCH
            ),
            "3 days"
        );
        Ok(())
    }

    #[test]
    fn new_content_in_the_same_files_is_a_change() -> Result<(), TlsError> {
        let dir = pki("renewed", 4000);
        let files = TlsFiles::new(dir.join("cert.pem"), dir.join("key.pem"));
        let first = Tls::load(files.clone())?;
        assert_eq!(first, first.reload()?);
        // A renewed certificate and key under the same names.
        let pair = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&pair).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), pair.serialize_pem()).expect("write");
        assert_ne!(first, Tls::load(files)?);
        Ok(())
    }
}
