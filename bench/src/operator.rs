//! The `operator` scenario (issue 17): what running shoal for real costs, measured side by
//! side in alternating rounds on the Wasm echo —
//! - TLS against plain TCP: 512 B round trips on 100 connections (round trips/s, p99), and
//!   new connections per second (TLS: a full handshake each, no resumption);
//! - metrics: the plain echo with the admin listener on (its histograms timing every call)
//!   and `/metrics` scraped every second, as Prometheus would, against no admin listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use shoal_bench::{median, paired_ratios};

use crate::{Args, Server, admin_address, loadgen, metrics_page};

/// How each server of the scenario is started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Setup {
    Plain,
    Tls,
    /// Plain, with the admin listener on and scraped.
    Metrics,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Plain, Setup::Tls, Setup::Metrics];

    fn label(self) -> &'static str {
        match self {
            Setup::Plain => "plain TCP",
            Setup::Tls => "TLS 1.3",
            Setup::Metrics => "plain TCP, metrics on and scraped every 1 s",
        }
    }
}

/// One setup's figures, one value per round.
#[derive(Default)]
pub struct Figures {
    round_trips: Vec<f64>,
    p99_us: Vec<f64>,
    server_busy: Vec<f64>,
    client_busy: Vec<f64>,
    connections: Vec<f64>,
    scrapes: Vec<f64>,
}

/// The benchmark's own CA and a server certificate for 127.0.0.1, as PEM files.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certificates(dir: &Path) -> anyhow::Result<Certificates> {
    std::fs::create_dir_all(dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "shoal bench CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    let files = Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    Ok(files)
}

/// A Wasm echo server set up as `setup` says, and its admin address if it has one.
fn start(
    setup: Setup,
    bin_dir: &Path,
    args: &Args,
    pinned: bool,
    certs: &Certificates,
) -> anyhow::Result<(Server, Option<String>)> {
    let mut serve: Vec<String> = [
        "serve",
        "--no-cache",
        "--no-watch",
        "--listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    match setup {
        Setup::Plain => {}
        Setup::Tls => {
            serve.push("--tls-cert".into());
            serve.push(certs.cert.display().to_string());
            serve.push("--tls-key".into());
            serve.push(certs.key.display().to_string());
        }
        Setup::Metrics => {
            serve.push("--admin".into());
            serve.push("127.0.0.1:0".into());
        }
    }
    serve.push(args.plugins.join("echo.wasm").display().to_string());
    let (server, mut stdout) =
        Server::spawn_reading(&bin_dir.join("shoal"), &serve, pinned, setup.label())?;
    let admin = if setup == Setup::Metrics {
        Some(admin_address(&mut stdout)?)
    } else {
        None
    };
    Ok((server, admin))
}

/// Scrape `GET /metrics` from `admin` every second until `stop`; how many scrapes
/// succeeded.
fn scrape_until(admin: String, stop: Arc<AtomicBool>, scraped: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(answer) = metrics_page(&admin) else {
            return;
        };
        if answer.starts_with("HTTP/1.1 200") {
            scraped.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn run(args: &Args, bin_dir: &Path, pinned: bool) -> anyhow::Result<Vec<(Setup, Figures)>> {
    let certs = certificates(Path::new("target/bench/tls"))?;
    let mut rows: Vec<(Setup, Figures)> = Setup::ALL
        .iter()
        .map(|&setup| (setup, Figures::default()))
        .collect();
    let seconds = args.seconds.to_string();
    let ca = certs.ca.display().to_string();
    for round in 1..=args.rounds {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for index in order {
            let setup = rows[index].0;
            let (server, admin) = start(setup, bin_dir, args, pinned, &certs)?;
            let pid = server.child.id().to_string();
            let stop = Arc::new(AtomicBool::new(false));
            let scraped = Arc::new(AtomicU64::new(0));
            let scraper = admin.map(|admin| {
                let (stop, scraped) = (Arc::clone(&stop), Arc::clone(&scraped));
                std::thread::spawn(move || scrape_until(admin, stop, scraped))
            });
            let mut echo = vec![
                "echo",
                "--addr",
                &server.addr,
                "--conns",
                "100",
                "--size",
                "512",
                "--seconds",
                &seconds,
                "--server-pid",
                &pid,
            ];
            let mut rate = vec!["rate", "--addr", &server.addr, "--seconds", &seconds];
            if setup == Setup::Tls {
                echo.extend(["--tls-ca", &ca]);
                rate.extend(["--tls-ca", &ca]);
            }
            let echoed = loadgen(bin_dir, pinned, &echo)?;
            stop.store(true, Ordering::Relaxed);
            if let Some(scraper) = scraper {
                let _ = scraper.join();
            }
            let figures = &mut rows[index].1;
            let value = |key: &str| echoed.get(key).copied().unwrap_or(f64::NAN);
            figures.round_trips.push(value("round_trips_per_sec"));
            figures.p99_us.push(value("p99_us"));
            figures.server_busy.push(value("server_busy"));
            figures.client_busy.push(value("client_busy"));
            figures.scrapes.push(scraped.load(Ordering::Relaxed) as f64);
            if setup != Setup::Metrics {
                let rated = loadgen(bin_dir, pinned, &rate)?;
                figures
                    .connections
                    .push(rated.get("conns_per_sec").copied().unwrap_or(f64::NAN));
            }
            eprintln!(
                "operator round {round}: {}: {:.0} round trips/s",
                setup.label(),
                value("round_trips_per_sec")
            );
        }
    }
    Ok(rows)
}

/// The markdown section.
pub fn report(rows: &mut [(Setup, Figures)], args: &Args) -> String {
    let plain_trips = rows
        .iter()
        .find(|(s, _)| *s == Setup::Plain)
        .map(|(_, f)| f.round_trips.clone())
        .unwrap_or_default();
    let plain_conns = rows
        .iter()
        .find(|(s, _)| *s == Setup::Plain)
        .map(|(_, f)| f.connections.clone())
        .unwrap_or_default();
    let cell = |values: &mut Vec<f64>, digits: usize| {
        median(values).map_or_else(|| "–".to_string(), |m| format!("{m:.digits$}"))
    };
    let mut out = format!(
        "\n## Running it for real: TLS and metrics (issue 17)\n\n\
         The Wasm echo, medians of {} rounds (setups alternate within a round); 100 \
         connections × 512 B round trips for {} s; new connections: connect, 64 B echo, \
         close, from 32 loops (over TLS each is a full TLS 1.3 handshake). Ratios are \
         medians of the rounds' ratios to plain TCP.\n\n\
         | setup | round trips/s | × plain | p99 µs | server busy | client busy | \
         connections/s | × plain | /metrics scrapes |\n|---|---|---|---|---|---|---|---|---|\n",
        args.rounds, args.seconds
    );
    for (setup, figures) in rows.iter_mut() {
        let mut trips_ratio = paired_ratios(&figures.round_trips, &plain_trips);
        let mut conns_ratio = paired_ratios(&figures.connections, &plain_conns);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            setup.label(),
            cell(&mut figures.round_trips, 0),
            cell(&mut trips_ratio, 3),
            cell(&mut figures.p99_us, 0),
            cell(&mut figures.server_busy, 2),
            cell(&mut figures.client_busy, 2),
            cell(&mut figures.connections, 0),
            cell(&mut conns_ratio, 3),
            cell(&mut figures.scrapes, 0),
        ));
    }
    out
}
