//! The `rotagate` binary: parse the command line, load config, start telemetry, run.

use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
    load_path(&config_path(arg))
}

fn load_path(path: &std::path::Path) -> Result<rotagate::config::Config, ExitCode> {
    rotagate::config::load(path, std::env::vars()).map_err(|errors| {
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
            init_tracing(cli.log_format, None, "warn");
            demo(every.into())
        }
        Command::Run { config } => {
            let path = config_path(config);
            let cfg = match load_path(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let log = init_tracing(cli.log_format, cfg.log.filter.as_deref(), "info");
            run(cfg, path, log)
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

type LogHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr. The filter is `RUST_LOG` when set, else `filter` (`log.filter`), else
/// `default`. The handle changes it on reload; None when `RUST_LOG` decides.
fn init_tracing(format: LogFormat, filter: Option<&str>, default: &str) -> Option<LogHandle> {
    use tracing_subscriber::prelude::*;
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env
        .unwrap_or_else(|| EnvFilter::try_new(filter.unwrap_or(default)).unwrap_or_default());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Text lines are escaped (no ANSI colours either): a client-chosen string must not be able
    // to start a log line of its own or drive a terminal.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(rotagate::logline::Escaped)
        .with_ansi(false);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    (!env_set).then_some(handle)
}

fn run(cfg: rotagate::config::Config, path: PathBuf, log: Option<LogHandle>) -> ExitCode {
    raise_open_files(cfg.listen.max_clients);
    // One event loop on this thread: worker 0, the rotation engine and the signals. Further
    // workers (`listen.workers`) are event loops of their own, started by `App::run`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let grace = cfg.listen.shutdown_timeout;
    let result = runtime.block_on(async {
        let mut app = rotagate::app::App::bind(cfg).await?;
        let reloads = app.reloads();
        let shutdown = CancellationToken::new();
        spawn_signals(shutdown.clone(), Reload { path, reloads, log }, grace)?;
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
        tokio::spawn(signals(shutdown.clone(), None));
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

/// What SIGHUP needs: the config file, where a valid new config goes, the log filter.
struct Reload {
    path: PathBuf,
    reloads: tokio::sync::mpsc::Sender<rotagate::config::Config>,
    log: Option<LogHandle>,
}

/// Signals are handled on a thread and event loop of their own, so that a shutdown never waits
/// on the loop that serves clients. After SIGTERM or SIGINT, a watchdog ends the process at
/// `listen.shutdown_timeout` plus a second, whatever that loop is doing.
fn spawn_signals(
    shutdown: CancellationToken,
    reload: Reload,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("rotagate-signals".into())
        .spawn(move || {
            runtime.block_on(signals(shutdown, Some(reload)));
            std::thread::sleep(grace + std::time::Duration::from_secs(1));
            tracing::error!(
                timeout = ?grace,
                "still running a second after listen.shutdown_timeout; exiting now"
            );
            std::process::exit(1);
        })?;
    Ok(())
}

/// SIGTERM or SIGINT starts a graceful shutdown; SIGHUP reloads the configuration.
async fn signals(shutdown: CancellationToken, reload: Option<Reload>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break tracing::info!("SIGTERM received"),
            _ = int.recv() => break tracing::info!("SIGINT received"),
            _ = hup.recv() => match &reload {
                Some(r) => r.apply().await,
                None => tracing::info!("SIGHUP ignored"),
            },
        }
    }
    shutdown.cancel();
}

impl Reload {
    /// Re-reads the config file; an invalid one is reported and the running one stays.
    async fn apply(&self) {
        tracing::info!(config = %self.path.display(), "SIGHUP received: reloading the configuration");
        let cfg = match rotagate::config::load(&self.path, std::env::vars()) {
            Ok(cfg) => cfg,
            Err(errors) => {
                let errors = errors.to_string().replace('\n', "; ");
                return tracing::error!(%errors, "the new configuration is invalid; keeping the running one");
            }
        };
        if let Some(handle) = &self.log {
            let filter = cfg.log.filter.as_deref().unwrap_or("info");
            match EnvFilter::try_new(filter).map(|f| handle.reload(f)) {
                Ok(Ok(())) => tracing::info!(filter, "log filter applied"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot apply log.filter"),
                Err(e) => tracing::error!(error = %e, "cannot apply log.filter"),
            }
        }
        let _ = self.reloads.send(cfg).await;
    }
}
