//! A TLS session over TCP as a [`Transport`]: the connection task reads and writes plain
//! bytes, rustls encrypts them; `poll_shutdown` sends `close_notify` and then the FIN, so a
//! lingering close works as over plain TCP. The guest learns about the session through
//! `connection.tls`.

use std::io;
use std::net::SocketAddr;

use rustls::ProtocolVersion;
use rustls::server::ServerConnection;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::server::transport::Transport;
use crate::wasm::bindings::plugin::types::TlsInfo;

impl Transport for TlsStream<TcpStream> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        Some(session_info(self.get_ref().1))
    }
}

/// What the guest is told about a finished handshake.
pub(crate) fn session_info(session: &ServerConnection) -> TlsInfo {
    let version = match session.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher_suite = session.negotiated_cipher_suite().map_or_else(
        || "unknown".to_string(),
        |suite| format!("{:?}", suite.suite()),
    );
    let client_subject = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| x509_parser::parse_x509_certificate(cert.as_ref()).ok())
        .map(|(_, cert)| cert.subject().to_string());
    TlsInfo {
        version,
        cipher_suite,
        server_name: session.server_name().map(str::to_string),
        alpn: session
            .alpn_protocol()
            .map(|protocol| String::from_utf8_lossy(protocol).into_owned()),
        client_subject,
    }
}
