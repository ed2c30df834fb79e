//! The `heim` binary: argument parsing, logging set-up and exit codes. Everything else lives in the
//! library.

use clap::{Parser, Subcommand};

/// Heim: an edge gateway for digital home monitoring.
#[derive(Debug, Parser)]
#[command(name = "heim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn parse_direction(s: &str) -> Result<heim::sources::ble::profiles::Direction, String> {
    heim::sources::ble::profiles::Direction::parse(s)
        .ok_or_else(|| format!("{s:?}: expected `request` or `response`"))
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode {
            characteristic,
            hex,
            direction,
            decimal,
        } => {
            let (json, code) =
                heim::sources::ble::decode_report(&characteristic, &hex, direction, decimal);
            println!("{json}");
            std::process::exit(code);
        }
    }
}
