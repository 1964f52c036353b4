//! `ingest`: the telemux server binary (see `ingest --help`).

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use ingest::config::{Cli, Command, TokenCommand};
use ingest::{Config, auth, store};

/// Lifetime of the operator token in the dashboard URL printed at each start.
const STARTUP_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        None | Some(Command::Serve) => serve(Config::from_matches(&matches)?).await,
        Some(Command::Token(cmd)) => token(cmd).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listener = ingest::bind(config.listen, config.listen_backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let data = config.data_dir.display().to_string();
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("cannot create {data}"))?;
    let authority = auth::Authority::load_or_create(&config.data_dir)?;
    let operator =
        authority.mint_operator("dashboard", vec!["*".into()], Some(STARTUP_TOKEN_TTL))?;
    println!("telemux ingest listening on {local} (store: {data})");
    println!(
        "  dashboard:      http://localhost:{}/?token={operator}   (operator token, valid 12h)",
        local.port()
    );
    println!(
        "  live data:      ws://localhost:{}/v1/live   (SSE: /v1/live/sse)",
        local.port()
    );
    println!(
        "  device socket:  ws://localhost:{}/v1/devices/ws",
        local.port()
    );
    println!(
        "  device token:   cargo run --release --bin ingest -- token device <ID> --data-dir {data}"
    );
    ingest::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Device {
            device_id,
            data_dir,
            ttl,
        } => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let authority = auth::Authority::load_or_create(&data_dir)?;
            println!("{}", authority.mint_device(device_id, ttl.map(|t| t.0))?);
        }
        TokenCommand::Operator {
            devices,
            ttl,
            name,
            data_dir,
        } => {
            let devices = if devices.is_empty() {
                vec!["*".to_string()]
            } else {
                devices
            };
            dashboard::Grants::parse(&devices)?;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let authority = auth::Authority::load_or_create(&data_dir)?;
            println!("{}", authority.mint_operator(&name, devices, Some(ttl.0))?);
        }
        TokenCommand::Revoke {
            device,
            token,
            data_dir,
        } => {
            let authority = auth::Authority::from_secret_file(&auth::secret_path(&data_dir))?;
            let revocation = match (device, token) {
                (Some(id), _) => auth::Authority::revoke_device(id),
                (None, Some(t)) => authority.revoke_token(&t)?,
                (None, None) => anyhow::bail!("give --device <ID> or --token <TOKEN>"),
            };
            store::sqlite::SqliteStore::record_revocation(
                &data_dir.join(store::sqlite::DB_FILE),
                &revocation,
            )?;
            eprintln!(
                "revoked {} (tokens issued until now); connected holders are disconnected within the server's --revocation-poll",
                revocation.subject
            );
        }
    }
    Ok(())
}
