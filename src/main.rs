//! The `rotagate` binary: parse the command line, load config, start telemetry, run.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "rotagate",
    version,
    about = "PostgreSQL proxy with rotating upstream credentials"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (default: $ROTAGATE_CONFIG, else rotagate.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and list every problem; exits 1 when there is one.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a password on stdin and print a SCRAM-SHA-256 verifier for [[clients]] scram = ...
    HashPassword,
    /// Exit 0 when the admin listener answers /healthz with 200 (for container health checks,
    /// where there is no curl).
    Healthcheck {
        /// The admin listener's address.
        #[arg(long, default_value = "127.0.0.1:9930")]
        addr: std::net::SocketAddr,
    },
    /// Start a throwaway PostgreSQL with rotagate in front of it and rotate its password
    /// every so often; prints the DATABASE_URL. Ctrl-C removes everything.
    Demo {
        /// How often the upstream password rotates.
        #[arg(long, default_value = "15s")]
        every: humantime::Duration,
    },
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("ROTAGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("rotagate.toml"))
}

fn load(arg: Option<PathBuf>) -> Result<rotagate::config::Config, ExitCode> {
    let path = config_path(arg);
    rotagate::config::load(&path, std::env::vars()).map_err(|errors| {
        eprintln!("{}: invalid configuration:", path.display());
        for e in &errors.0 {
            eprintln!("  {}: {}", e.path, e.message);
        }
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(config) {
            Ok(_) => {
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashPassword => hash_password(),
        Command::Healthcheck { addr } => healthcheck(addr),
        Command::Demo { every } => {
            init_tracing_default(cli.log_format, "warn");
            demo(every.into())
        }
        Command::Run { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(cli.log_format);
            run(cfg)
        }
    }
}

fn hash_password() -> ExitCode {
    let mut input = zeroize::Zeroizing::new(String::new());
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read the password from stdin: {e}");
        return ExitCode::from(1);
    }
    let password = input.strip_suffix('\n').unwrap_or(&input);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("the password on stdin is empty");
        return ExitCode::from(1);
    }
    println!("{}", rotagate::frontend::scram::hash_password(password));
    ExitCode::SUCCESS
}

fn healthcheck(addr: std::net::SocketAddr) -> ExitCode {
    use std::io::Write;
    let timeout = std::time::Duration::from_secs(3);
    let answer = std::net::TcpStream::connect_timeout(&addr, timeout).and_then(|mut s| {
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: healthcheck\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    match answer {
        Ok(out) if out.split_whitespace().nth(1) == Some("200") => ExitCode::SUCCESS,
        Ok(out) => {
            eprintln!(
                "{addr}/healthz: {}",
                out.lines().next().unwrap_or("no answer")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{addr}/healthz: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: LogFormat) {
    init_tracing_default(format, "info")
}

/// Logs to stderr, filtered by `RUST_LOG`, else by `default`.
fn init_tracing_default(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(cfg: rotagate::config::Config) -> ExitCode {
    raise_open_files(cfg.listen.max_clients);
    // One event-loop thread by default: on a proxy, cross-thread wake-ups cost more CPU per
    // transaction than they buy (measured in benches/proxy.rs); `listen.workers` adds threads.
    let runtime = if cfg.listen.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.listen.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let app = rotagate::app::App::bind(cfg).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        app.run(shutdown).await
    });
    // Sessions still open after the shutdown deadline are dropped with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "rotagate stopped");
            eprintln!("rotagate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn demo(every: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        rotagate::demo::run(shutdown, every).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotagate demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Each client takes a file descriptor and so does its upstream connection: raise the soft
/// limit to the hard one, and say so when even that is below what `max_clients` needs.
fn raise_open_files(max_clients: usize) {
    let wanted = max_clients as u64 + 1024;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_clients,
            "the open-files limit is below listen.max_clients; raise it (ulimit -n, LimitNOFILE) or lower max_clients"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
