//! TLS listeners with real clients: `openssl s_client` and a rustls client talk to the echo
//! plugin (a round trip, 1 MiB, a half-close); mutual TLS accepts a client with a
//! certificate from the CA and refuses one without; a plain-text client and a stalled
//! handshake are closed and counted while other connections keep echoing; the guest reads
//! its session through `connection.tls`; `shoal serve --tls-cert` reads new certificates on
//! SIGHUP. Certificates are made in the test with rcgen.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shoal_host::{EndKind, ServerConfig, Tls, TlsFiles};
use support::{TestServer, plugin, random_bytes, read_to_end, shoal, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA, a server certificate for `localhost` and 127.0.0.1 it signed, and a client
/// certificate (`CN=alice`) it signed, as PEM files in a folder of this test's.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tls-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "shoal test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        let pki = Self { dir, ca };
        pki.issue_server("cert.pem", "key.pem", "shoal test server")?;
        pki.issue_client("alice")?;
        Ok(pki)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A server certificate with `common_name`, written as `cert` and `key`.
    fn issue_server(&self, cert: &str, key: &str, common_name: &str) -> anyhow::Result<()> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let pair = KeyPair::generate()?;
        let issued = params.signed_by(&pair, &self.ca)?;
        std::fs::write(self.path(cert), issued.pem())?;
        std::fs::write(self.path(key), pair.serialize_pem())?;
        Ok(())
    }

    /// A client certificate `CN=name`, written as `name.pem` and `name.key`.
    fn issue_client(&self, name: &str) -> anyhow::Result<()> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        let pair = KeyPair::generate()?;
        let issued = params.signed_by(&pair, &self.ca)?;
        std::fs::write(self.path(&format!("{name}.pem")), issued.pem())?;
        std::fs::write(self.path(&format!("{name}.key")), pair.serialize_pem())?;
        Ok(())
    }

    fn files(&self) -> TlsFiles {
        TlsFiles::new(self.path("cert.pem"), self.path("key.pem"))
    }

    /// A rustls client that trusts the CA, with the client certificate `client` if given.
    fn connector(&self, client: Option<&str>) -> anyhow::Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(self.path("ca.pem"))?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => builder.with_client_auth_cert(
                vec![CertificateDer::from_pem_file(
                    self.path(&format!("{name}.pem")),
                )?],
                PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key")))?,
            )?,
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// A rustls client connected to `addr` as `localhost`.
async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

/// The plugin `name` served over TLS with `files`.
async fn tls_server(name: &str, files: TlsFiles) -> anyhow::Result<TestServer> {
    let config = ServerConfig::builder()
        .name(name)
        .pool_size(4)
        .shutdown_timeout(Duration::from_secs(5))
        .tls(Tls::load(files)?)
        .build()?;
    TestServer::start_with(plugin(name), config).await
}

/// One line round trip through an echo.
async fn echo_line(stream: &mut TlsStream<TcpStream>, line: &[u8]) -> anyhow::Result<()> {
    stream.write_all(line).await?;
    let mut reply = vec![0; line.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply)).await??;
    ensure!(reply == line, "echoed {reply:?}, sent {line:?}");
    Ok(())
}

/// Ask the probe plugin what it knows of its TLS session.
async fn probe_tls(stream: &mut TlsStream<TcpStream>) -> anyhow::Result<String> {
    stream.write_all(b"tls\n").await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await??;
    Ok(line.trim_end().to_string())
}

#[tokio::test]
async fn openssl_s_client_gets_its_bytes_back_and_verifies_the_chain() -> anyhow::Result<()> {
    let pki = Pki::new("openssl")?;
    let server = tls_server("echo", pki.files()).await?;
    let mut client = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-no_ign_eof",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .arg("-connect")
        .arg(server.addr.to_string())
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("openssl s_client (Debian's openssl; scripts/install-deps.sh installs it)")?;
    let mut stdin = client.stdin.take().context("stdin")?;
    let mut stdout = BufReader::new(client.stdout.take().context("stdout")?);
    stdin.write_all(b"hello over TLS\n").await?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
        .await
        .context("no echo from s_client within 20 s")??;
    assert_eq!(line, "hello over TLS\n");
    // Closing its input makes s_client send close_notify and quit; the server sees the end.
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(20), client.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Verification: OK"), "{stderr}");
    assert!(stderr.contains("Protocol version: TLSv1.3"), "{stderr}");
    server.wait_idle().await?;
    assert_eq!(server.stats.tls_handshakes(), 1);
    assert_eq!(server.stats.ended(EndKind::ClientClosed), 1);
    server.shutdown().await
}

#[tokio::test]
async fn a_rustls_client_sends_a_mebibyte_half_closes_and_gets_it_all_back() -> anyhow::Result<()> {
    let pki = Pki::new("mebibyte")?;
    let server = tls_server("echo", pki.files()).await?;
    let stream = connect(&pki.connector(None)?, server.addr).await?;
    let payload = random_bytes(1 << 20, 17);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sent = payload.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await?;
        // close_notify, then the FIN: the server still writes what it owes.
        writer.shutdown().await?;
        anyhow::Ok(())
    });
    let echoed = read_to_end(&mut reader).await?;
    writing.await??;
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ from those sent");
    server.wait_idle().await?;
    assert_eq!(server.stats.ended(EndKind::ClientClosed), 1);
    server.shutdown().await
}

#[tokio::test]
async fn the_guest_reads_its_session_version_sni_and_alpn() -> anyhow::Result<()> {
    let pki = Pki::new("session")?;
    let mut files = pki.files();
    files.alpn = vec!["shoal-test/1".to_string(), "http/1.1".to_string()];
    let server = tls_server("probe", files).await?;
    let mut connector_config = rustls::ClientConfig::clone(pki.connector(None)?.config());
    connector_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(connector_config));
    let mut stream = connect(&connector, server.addr).await?;
    let answer = probe_tls(&mut stream).await?;
    assert!(
        answer.starts_with("ok version=TLSv1.3 cipher=TLS13_"),
        "{answer}"
    );
    assert!(
        answer.ends_with("sni=localhost alpn=http/1.1 client=-"),
        "{answer}"
    );
    drop(stream);
    server.shutdown().await?;
    // Over plain TCP the same plugin hears `none`.
    let plain = TestServer::start("probe").await?;
    let mut stream = BufReader::new(plain.connect().await?);
    stream.get_mut().write_all(b"tls\n").await?;
    let line = support::read_line(&mut stream).await?;
    assert_eq!(line, "ok none");
    drop(stream);
    plain.shutdown().await
}

#[tokio::test]
async fn mutual_tls_takes_a_client_certificate_from_the_ca_and_refuses_none() -> anyhow::Result<()>
{
    let pki = Pki::new("mutual")?;
    let mut files = pki.files();
    files.client_ca = Some(pki.path("ca.pem"));
    let server = tls_server("probe", files).await?;

    let mut alice = connect(&pki.connector(Some("alice"))?, server.addr).await?;
    let answer = probe_tls(&mut alice).await?;
    assert!(answer.ends_with("client=CN=alice"), "{answer}");

    // Without a certificate: TLS 1.3 lets the client finish first, then the server's alert
    // ends the connection before a byte is echoed.
    let refused = async {
        let mut stream = connect(&pki.connector(None)?, server.addr).await?;
        stream.write_all(b"tls\n").await?;
        let mut buffer = [0u8; 64];
        let read = stream.read(&mut buffer).await?;
        anyhow::Ok(read)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), refused).await?;
    assert!(
        !matches!(outcome, Ok(n) if n > 0),
        "a client without a certificate was served: {outcome:?}"
    );
    let stats = Arc::clone(&server.stats);
    wait_for("the refused handshake to be counted", || {
        stats.ended(EndKind::TlsHandshakeFailed) == 1
    })
    .await?;
    // Alice was not disturbed.
    let again = probe_tls(&mut alice).await?;
    assert!(again.ends_with("client=CN=alice"), "{again}");
    drop(alice);
    server.wait_idle().await?;
    assert_eq!(server.stats.tls_handshakes(), 1);
    server.shutdown().await
}

#[tokio::test]
async fn a_plain_text_client_and_a_stalled_handshake_are_closed_and_counted() -> anyhow::Result<()>
{
    let pki = Pki::new("hostile")?;
    let mut files = pki.files();
    files.handshake_timeout = Duration::from_millis(300);
    let server = tls_server("echo", files).await?;
    let connector = pki.connector(None)?;
    let mut steady = connect(&connector, server.addr).await?;
    echo_line(&mut steady, b"before\n").await?;

    // A plain-text client: the server answers its bytes with an alert and closes.
    let mut plain = server.connect().await?;
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let answered = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut plain)).await?;
    if let Ok(bytes) = &answered {
        ensure!(
            !bytes.windows(3).any(|w| w == b"GET"),
            "plain text was echoed: {bytes:?}"
        );
    }

    // A client that connects and says nothing: closed at the handshake timeout.
    let mut silent = server.connect().await?;
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buffer))
        .await
        .context("a silent client was not closed within 10 s")?;
    ensure!(
        matches!(read, Ok(0) | Err(_)),
        "the silent client got {read:?}"
    );

    let stats = Arc::clone(&server.stats);
    wait_for("both failures to be counted", || {
        stats.ended(EndKind::TlsHandshakeFailed) == 1
            && stats.ended(EndKind::TlsHandshakeTimeout) == 1
    })
    .await?;
    // The steady client kept its connection, and new ones are served.
    echo_line(&mut steady, b"after\n").await?;
    let mut fresh = connect(&connector, server.addr).await?;
    echo_line(&mut fresh, b"fresh\n").await?;
    drop((steady, fresh));
    server.wait_idle().await?;
    assert_eq!(server.stats.tls_handshakes(), 2);
    server.shutdown().await
}

/// `shoal serve --tls-cert --tls-key` on port 0, with `args` (`--native-echo`, say); its
/// address.
async fn serve_tls_process(
    pki: &Pki,
    args: &[&str],
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "serve",
            "--no-cache",
            "--no-watch",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .arg("--tls-cert")
        .arg(pki.path("cert.pem"))
        .arg("--tls-key")
        .arg(pki.path("key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
        .await
        .context("shoal serve did not print its address")??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected line {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

/// The common name of the certificate the server presented.
fn server_common_name(stream: &TlsStream<TcpStream>) -> anyhow::Result<String> {
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .context("no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref())?;
    Ok(cert.subject().to_string())
}

#[tokio::test]
async fn the_cli_serves_tls_and_reads_new_certificates_on_sighup() -> anyhow::Result<()> {
    renews_its_certificate_on_sighup("sighup", &[]).await
}

#[tokio::test]
async fn the_native_echo_reads_new_certificates_on_sighup_too() -> anyhow::Result<()> {
    renews_its_certificate_on_sighup("sighup-native", &["--native-echo"]).await
}

/// `shoal serve` with `args` over TLS serves a renewed certificate after SIGHUP, keeps the
/// connections made before, and keeps its certificate when the renewal does not load.
async fn renews_its_certificate_on_sighup(name: &str, args: &[&str]) -> anyhow::Result<()> {
    let pki = Pki::new(name)?;
    let (child, addr) = serve_tls_process(&pki, args).await?;
    let connector = pki.connector(None)?;
    let mut before = connect(&connector, addr).await?;
    echo_line(&mut before, b"one\n").await?;
    assert_eq!(server_common_name(&before)?, "CN=shoal test server");

    pki.issue_server("cert.pem", "key.pem", "shoal renewed server")?;
    let pid = child.id().context("running")?.to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await?;
    ensure!(sent.success(), "kill -HUP failed");
    let mut renewed = false;
    for _ in 0..100 {
        let after = connect(&connector, addr).await?;
        if server_common_name(&after)? == "CN=shoal renewed server" {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(renewed, "the renewed certificate was not served within 5 s");
    // The connection made before the reload goes on with its session.
    echo_line(&mut before, b"two\n").await?;

    // A renewal that cannot load (a key of another certificate) changes nothing.
    pki.issue_server("stray.pem", "stray.key", "stray")?;
    std::fs::copy(pki.path("stray.key"), pki.path("key.pem"))?;
    let sent = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await?;
    ensure!(sent.success(), "kill -HUP failed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after = connect(&connector, addr).await?;
    assert_eq!(server_common_name(&after)?, "CN=shoal renewed server");
    echo_line(&mut after, b"three\n").await?;
    Ok(())
}

#[tokio::test]
async fn the_cli_names_a_key_that_does_not_match_its_certificate() -> anyhow::Result<()> {
    let pki = Pki::new("mismatch")?;
    pki.issue_server("other.pem", "other.key", "another server")?;
    let (cert, key) = (pki.path("cert.pem"), pki.path("other.key"));
    let (ok, _, stderr) = shoal(&[
        "serve",
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ])
    .await?;
    assert!(!ok);
    assert!(
        stderr.contains("other.key does not belong to the certificate in")
            && stderr.contains("cert.pem"),
        "{stderr}"
    );
    Ok(())
}
