//! TLS for the load generator's `echo` and `rate` loads (`--tls-ca`): a rustls client, on
//! the same `ring` provider as the server, that trusts the benchmark's own CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A connector that trusts the CA certificate in `ca` (PEM).
pub(crate) fn connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let cert = CertificateDer::from_pem_file(ca)
        .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
    roots.add(cert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connect to `addr` and finish a handshake for `localhost`.
pub(crate) async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}
