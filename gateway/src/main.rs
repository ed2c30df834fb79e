//! The `heim` binary: argument parsing, logging set-up and exit codes. Everything else lives in the
//! library.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use heim::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// Heim: an edge gateway for digital home monitoring.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon until SIGTERM/SIGINT.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "/etc/heim/heim.toml")]
        config: PathBuf,
    },
    /// Check a config file and exit (0 = valid, 2 = refused, with file, line and reason).
    CheckConfig {
        /// The config file.
        config: PathBuf,
    },
    /// Ask the running daemon for its status.
    Status {
        /// The daemon's config file (to find its control socket).
        #[arg(long, short, default_value = "/etc/heim/heim.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the whole path on simulated devices with a local broker (needs mosquitto).
    Demo {
        /// Readings to take.
        #[arg(long, default_value_t = 3000)]
        readings: u64,
        /// Seconds the broker goes down midway.
        #[arg(long, default_value_t = 5)]
        outage_seconds: u64,
        /// Keep certificates, store and logs in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Only the Bluetooth part: a simulated BlueZ with a blood-pressure monitor and a glucose
        /// meter back-filling stored records (needs python3-dbus, python3-gi and dbus-daemon).
        #[arg(long, conflicts_with = "no_ble")]
        ble: bool,
        /// Skip the Bluetooth part.
        #[arg(long)]
        no_ble: bool,
        /// The broker playing the hospital's: `auto` (mosquitto when installed, else the embedded
        /// one), `mosquitto` or `embedded`.
        #[arg(long, default_value = "auto", value_parser = ["auto", "mosquitto", "embedded"])]
        broker: String,
    },
    /// Manage this patient's BLE devices through the running daemon.
    Device {
        /// The daemon's config file (to find its control socket).
        #[arg(long, short, default_value = "/etc/heim/heim.toml", global = true)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Enrol, revoke or list the LAN clients (headsets) of the signalling API.
    Sig {
        /// The gateway's config file.
        #[arg(long, short, default_value = "/etc/heim/heim.toml", global = true)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: SigAction,
    },
    /// Decode one Bluetooth characteristic value and print it as one JSON object (exit 1 if it
    /// cannot be decoded, 2 for a usage mistake).
    Decode {
        /// The characteristic: `0x2A35`, `2a35` or `00002a35-0000-1000-8000-00805f9b34fb`.
        characteristic: String,
        /// The value as hex, two digits per octet (spaces and `:` allowed).
        #[arg(allow_hyphen_values = true)]
        hex: String,
        /// RACP (0x2A52) only: `request` (written by the gateway) or `response` (indicated by the
        /// device); by default inferred from the op code.
        #[arg(long, value_parser = parse_direction)]
        direction: Option<heim::sources::ble::profiles::Direction>,
        /// Add a `decimal` object with the exact decimal text of each value (keeps `37.60`).
        #[arg(long)]
        decimal: bool,
    },
}

/// `heim device …`
#[derive(Debug, Subcommand)]
enum DeviceAction {
    /// Nearby devices advertising health services (RSSI, kind, registered or not).
    Scan {
        /// How long to listen.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Pair and bond (Just Works, or passkey entry with --passkey), then register a device so
    /// its readings are taken.
    Add {
        /// `AA:BB:CC:DD:EE:FF`.
        address: String,
        /// blood_pressure, glucose, thermometer, weight_scale or pulse_oximeter (default: from
        /// its advertised service).
        #[arg(long)]
        kind: Option<String>,
        /// The care-plan measurement it feeds (e.g. `body_weight`); default: its kind's own.
        #[arg(long)]
        feeds: Option<String>,
        /// The six-digit number the device shows, for passkey-entry pairing.
        #[arg(long)]
        passkey: Option<u32>,
        /// Register without pairing (devices that need no bond).
        #[arg(long)]
        no_pair: bool,
    },
    /// The registered devices.
    List,
    /// Unregister a device and drop its bond.
    Remove {
        /// `AA:BB:CC:DD:EE:FF`.
        address: String,
    },
}

/// `heim sig …`
#[derive(Debug, Subcommand)]
enum SigAction {
    /// Issue a bearer token for a headset or app (shown once) and print how it reaches the API.
    Enrol {
        /// The client's name (1-64 of `[0-9a-zA-Z._~-]`), e.g. `hl2-03`.
        name: String,
    },
    /// Withdraw a client's token (takes effect within a second, no restart).
    Revoke {
        /// The client's name.
        name: String,
    },
    /// The enrolled clients.
    List,
}

fn parse_direction(s: &str) -> Result<heim::sources::ble::profiles::Direction, String> {
    heim::sources::ble::profiles::Direction::parse(s)
        .ok_or_else(|| format!("{s:?}: expected `request` or `response`"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Device {
            config,
            json,
            action,
        } => report(runtime().and_then(|rt| rt.block_on(device(config, json, action)))),
        Command::Sig {
            config,
            json,
            action,
        } => match Config::load(&config) {
            Ok(cfg) => report(sig(&cfg, json, action)),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Decode {
            characteristic,
            hex,
            direction,
            decimal,
        } => {
            let (json, code) =
                heim::sources::ble::decode_report(&characteristic, &hex, direction, decimal);
            println!("{json}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: valid ({} source(s), gateway {})",
                    config.display(),
                    cfg.sources.len(),
                    cfg.gateway_id.get_ref()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log.level, cfg.log.format);
            report(runtime().and_then(|rt| rt.block_on(run(cfg))))
        }
        Command::Status { config, json } => {
            report(runtime().and_then(|rt| rt.block_on(status(config, json))))
        }
        Command::Demo {
            readings,
            outage_seconds,
            keep,
            ble,
            no_ble,
            broker,
        } => {
            init_logging("error", LogFormat::Text);
            let opts = heim::demo::Options {
                readings,
                outage_s: outage_seconds,
                keep: keep.clone(),
                broker: match broker.as_str() {
                    "mosquitto" => heim::demo::BrokerChoice::Mosquitto,
                    "embedded" => heim::demo::BrokerChoice::Embedded,
                    _ => heim::demo::BrokerChoice::Auto,
                },
                ..heim::demo::Options::default()
            };
            demo(opts, keep, !no_ble, !ble)
        }
    }
}

/// `heim demo`: the simulated devices with a broker outage, then the Bluetooth part. The
/// simulated BlueZ starts before the async runtime: btleplug takes no D-Bus connection, only
/// `DBUS_SYSTEM_BUS_ADDRESS`, which may be set only while no other thread reads the environment.
fn demo(
    opts: heim::demo::Options,
    keep: Option<PathBuf>,
    with_ble: bool,
    with_sim: bool,
) -> ExitCode {
    let dir = keep.clone().map(|k| k.join("ble")).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("heim-demo-ble-{}", std::process::id()))
    });
    let bluez = if with_ble {
        match heim::sources::ble::demo::start_bluez(&dir) {
            Ok(b) => Some(b),
            Err(e) if with_sim => {
                eprintln!(
                    "(the Bluetooth part is skipped: {e}; scripts/demo installs what it needs)\n"
                );
                None
            }
            Err(e) => return report(Err(e.into())),
        }
    } else {
        None
    };
    if let Some(b) = &bluez {
        // The runtime has not started; the simulated BlueZ's reader thread does not read the
        // environment.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &b.address);
        }
    }
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let mut ok = true;
            if with_sim {
                let s = heim::demo::run(opts).await.map_err(|e| anyhow::anyhow!(e))?;
                ok &= s.lost == 0;
            }
            if let Some(b) = &bluez {
                println!("\n— Bluetooth: a blood-pressure monitor, a glucose meter with stored records, and a neighbour's device —\n");
                let s = heim::sources::ble::demo::run(&dir, b)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                ok &= s.lost == 0 && s.delivered > 0;
            }
            Ok::<bool, anyhow::Error>(ok)
        })
    });
    drop(bluez);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => report(Err(e)),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: a Pi has four small cores, and the gateway's work is I/O; SQLite has its own
    // thread. A small, fixed pool keeps memory flat.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
            shutdown.cancel();
        });
    }
    heim::daemon::run(cfg, shutdown)
        .await
        .context("the daemon failed")
}

async fn status(config: PathBuf, json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let v = heim::control::request(&cfg.socket_path(), serde_json::json!({"cmd": "status"}))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("gateway   {}", v["gateway_id"].as_str().unwrap_or("?"));
    println!(
        "uplink    {}{}",
        v["uplink"].as_str().unwrap_or("?"),
        v["uplink_detail"]["last_error"]
            .as_str()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default()
    );
    println!("backlog   {} reading(s) waiting", v["outbox_pending"]);
    if let Some(alarms) = v["alarms"].as_array().filter(|a| !a.is_empty()) {
        println!(
            "ALARMS    {}",
            alarms
                .iter()
                .filter_map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let cp = &v["careplan"];
    if let Some(plan) = cp.get("plan").filter(|p| p.is_object()) {
        println!(
            "careplan  {} version {} (seq {}), judging {}",
            plan["id"].as_str().unwrap_or("?"),
            plan["version"],
            plan["seq"],
            cp["judging"].as_str().unwrap_or("?")
        );
        for m in cp["measurements"].as_array().into_iter().flatten() {
            println!(
                "  {:<18} next window {} – {}, last reading {}",
                m["kind"].as_str().unwrap_or("?"),
                m["next_window"]["start"].as_str().unwrap_or("none"),
                m["next_window"]["end"].as_str().unwrap_or(""),
                m["last_reading"].as_str().unwrap_or("never")
            );
        }
        let a = &cp["open_alerts"];
        println!(
            "  alerts (24 h): {} red, {} yellow, {} missed",
            a["red_24h"], a["yellow_24h"], a["missed_24h"]
        );
    } else if !cp.is_null() {
        println!("careplan  none in force");
    }
    let sig = &v["signalling"];
    if sig.is_object() {
        let hospital = match sig["hospital_online"].as_bool() {
            Some(true) => "online",
            Some(false) => "OFFLINE",
            None => "not seen yet",
        };
        let st = &sig["stats"];
        println!(
            "signalling {} live call(s); hospital {hospital}; calls out {}, in {}; events dropped: {} duplicate, {} late, {} refused",
            sig["live_calls"],
            st["outgoing"],
            st["incoming"],
            st["duplicates"],
            st["late"],
            sig["refused_events"]
        );
    }
    if let Some(src) = v["sources"].as_object() {
        for (name, s) in src {
            println!(
                "source    {name} ({}): {} reading(s), last {}, {} error(s)",
                s["kind"].as_str().unwrap_or("?"),
                s["readings"],
                s["last_reading"].as_str().unwrap_or("never"),
                s["errors"]
            );
        }
    }
    Ok(())
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Under systemd, journald stamps each line itself.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match (format, journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

fn sig(cfg: &Config, json: bool, action: SigAction) -> anyhow::Result<()> {
    use heim::signalling::{tls, tokens};
    let sc = cfg
        .signalling
        .as_ref()
        .context("this config has no [signalling] section; add one to offer the signalling API")?;
    let path = cfg.signalling_tokens();
    match action {
        SigAction::Enrol { name } => {
            let ca = match (&sc.cert, &sc.key) {
                (Some(c), Some(_)) => cfg.resolve(c.get_ref()),
                _ => tls::ensure(&cfg.signalling_dir(), cfg.gateway_id.get_ref(), &sc.names)?.ca,
            };
            let token = tokens::enrol(&path, &name)?;
            let fingerprint = tls::fingerprint(&ca)?;
            // With signed hospital events, the gateway signs its own: the hospital needs this key.
            let signing = if sc.hospital_keys.is_empty() {
                None
            } else {
                heim::signalling::signing_key(&cfg.signalling_dir())?;
                Some(heim::signalling::signing_key_paths(&cfg.signalling_dir()).1)
            };
            let host = sc.names.first().map_or("localhost", String::as_str);
            let port = sc
                .listen
                .get_ref()
                .rsplit_once(':')
                .map_or("8443", |(_, p)| p);
            let api = format!("https://{host}:{port}/v1/calls");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"name": name, "token": token, "api": api,
                        "ca": ca, "ca_sha256": fingerprint, "gateway_signing_key": signing})
                );
            } else {
                println!(
                    "Enrolled {name}. Its bearer token (shown only now; enter it in the headset's app):"
                );
                println!("  {token}");
                println!("API:    {api}");
                println!("Trust:  {} (SHA-256 {fingerprint})", ca.display());
                if let Some(k) = &signing {
                    println!(
                        "Hospital service: verify this gateway's sig/up events with {} (kid = gateway id)",
                        k.display()
                    );
                }
            }
        }
        SigAction::Revoke { name } => {
            if !tokens::revoke(&path, &name)? {
                anyhow::bail!("no client named {name:?} is enrolled");
            }
            if json {
                println!("{}", serde_json::json!({"revoked": name}));
            } else {
                println!("Revoked {name}.");
            }
        }
        SigAction::List => {
            let list = tokens::list(&path)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|e| serde_json::json!({"name": e.name, "enrolled": e.created}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if list.is_empty() {
                println!("No client is enrolled (heim sig enrol NAME).");
            } else {
                for e in list {
                    println!("{:<24} enrolled {}", e.name, e.created);
                }
            }
        }
    }
    Ok(())
}

async fn device(config: PathBuf, json: bool, action: DeviceAction) -> anyhow::Result<()> {
    let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let req = match &action {
        DeviceAction::Scan { seconds } => {
            serde_json::json!({"cmd": "device.scan", "seconds": seconds})
        }
        DeviceAction::Add {
            address,
            kind,
            feeds,
            passkey,
            no_pair,
        } => serde_json::json!({
            "cmd": "device.add", "address": address, "kind": kind, "feeds": feeds,
            "passkey": passkey, "pair": !no_pair
        }),
        DeviceAction::List => serde_json::json!({"cmd": "device.list"}),
        DeviceAction::Remove { address } => {
            serde_json::json!({"cmd": "device.remove", "address": address})
        }
    };
    let v = heim::control::request(&cfg.socket_path(), req)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    match action {
        DeviceAction::Scan { .. } => {
            for d in v.as_array().into_iter().flatten() {
                println!(
                    "{}  {:>4} dBm  {:<15} {:<10} {}",
                    s(&d["address"]),
                    d["rssi"],
                    s(&d["kind"]),
                    if d["known"] == true {
                        "registered"
                    } else {
                        "unknown"
                    },
                    s(&d["name"])
                );
            }
        }
        DeviceAction::List => {
            for d in v.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<15} {}  {}",
                    s(&d["address"]),
                    s(&d["kind"]),
                    if d["bonded"] == true {
                        "bonded  "
                    } else {
                        "unbonded"
                    },
                    s(&d["name"])
                );
            }
        }
        DeviceAction::Add { .. } => println!(
            "registered {} ({}{})",
            s(&v["address"]),
            s(&v["kind"]),
            if v["bonded"] == true { ", bonded" } else { "" }
        ),
        DeviceAction::Remove { .. } => println!(
            "{} {}",
            s(&v["address"]),
            if v["removed"] == true {
                "removed"
            } else {
                "was not registered"
            }
        ),
    }
    Ok(())
}
