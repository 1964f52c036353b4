//! `firmware-sim`: simulate a device fleet against a telemux server (see `firmware-sim --help`).

use std::process::ExitCode;

use clap::Parser;
use firmware_sim::config::SimConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = SimConfig::parse();
    let json = cfg.json.clone();
    let summary = match firmware_sim::run(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("firmware-sim: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", summary.table());
    if let Some(path) = json {
        let text = match serde_json::to_string_pretty(&summary) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("firmware-sim: cannot serialize the summary: {e}");
                return ExitCode::from(2);
            }
        };
        let written = if path == "-" {
            println!("{text}");
            Ok(())
        } else {
            std::fs::write(&path, text + "\n")
        };
        if let Err(e) = written {
            eprintln!("firmware-sim: cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
