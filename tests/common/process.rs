//! rotagate as users run it: the real binary, its config in a file, its environment its own
//! (the AWS SDK reads credentials from there), its JSON logs kept for the leak checks.

use super::pg::free_port;
use super::{Builder, Endpoints};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Rotagate {
    child: Option<tokio::process::Child>,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Builder<'_> {
    /// Writes the config (on free ports) and runs the binary with the builder's variables as
    /// its environment. Waits for the admin listener, not for readiness. A port taken between
    /// choosing it and rotagate's bind (tests run in parallel) means other ports, up to 5 times.
    pub async fn spawn(self) -> Rotagate {
        let mut log = String::new();
        for _ in 0..5 {
            match self.try_spawn().await {
                Ok(r) => return r,
                Err(l) if l.contains("Address already in use") => log = l,
                Err(l) => panic!("rotagate exited at start; log:\n{l}"),
            }
        }
        panic!("rotagate found no free port in 5 tries; log:\n{log}");
    }

    async fn try_spawn(&self) -> Result<Rotagate, String> {
        let dir = tempfile::tempdir().unwrap();
        let (addr, admin): (SocketAddr, SocketAddr) = (
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        );
        let secret = dir.path().join("secret.json");
        super::write_secret(&secret, self.pg, super::APP_USER, super::APP_PASSWORD);
        let text = self
            .config_text(&secret)
            .replacen("addr = \"127.0.0.1:0\"", &format!("addr = \"{addr}\""), 1)
            .replacen("addr = \"127.0.0.1:0\"", &format!("addr = \"{admin}\""), 1);
        let config = dir.path().join("rotagate.toml");
        std::fs::write(&config, &text).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rotagate"));
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,rotagate=debug")
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        // An empty RUST_LOG from the builder means none: the config's log.filter decides.
        if self
            .vars
            .iter()
            .any(|(k, v)| k == "RUST_LOG" && v.is_empty())
        {
            cmd.env_remove("RUST_LOG");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the rotagate binary");
        let log = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), log.clone()),
            collect(child.stderr.take().unwrap(), log.clone()),
        ];
        let mut me = Rotagate {
            child: Some(child),
            addr,
            admin,
            log,
            readers,
            config,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while me.get("/healthz").await.0 != 200 {
            if let Ok(Some(status)) = me.child.as_mut().unwrap().try_wait() {
                return Err(format!("exited ({status}):\n{}", me.finish().await));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no admin listener after 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Ok(me)
    }
}

fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    })
}

impl Rotagate {
    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for /readyz, failing with the log when the process exits or never gets there.
    pub async fn ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.get("/readyz").await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "not ready after 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// The config file it runs with (rewrite it, then `signal("-HUP")`).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// The secret file it reads with the file source (rewrite it to rotate).
    pub fn secret_path(&self) -> PathBuf {
        self.config.with_file_name("secret.json")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Its resident memory in KiB (0 once it has exited).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The process's peak RSS since it started or since [`Rotagate::reset_peak`] (VmHWM).
    pub fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// A KiB field of /proc/PID/status (0 once the process has exited).
    fn status_kib(&self, field: &str) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Starts the peak RSS over from the current RSS.
    pub fn reset_peak(&self) {
        let pid = self.pid().expect("a running process");
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("write clear_refs");
    }

    /// Sends a signal ("-HUP", "-TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM, then the exit; returns the whole log.
    pub async fn stop(mut self) -> String {
        self.signal("-TERM");
        self.finish().await
    }

    /// SIGTERM; how long the process took to exit, its exit code, and the whole log.
    pub async fn terminate(mut self) -> (std::time::Duration, Option<i32>, String) {
        let started = std::time::Instant::now();
        self.signal("-TERM");
        let mut child = self.child.take().unwrap();
        let exited = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await;
        let took = started.elapsed();
        let code = match exited {
            Ok(Ok(status)) => status.code(),
            _ => panic!(
                "rotagate did not exit within 30 s of SIGTERM; log:\n{}",
                self.log()
            ),
        };
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        (took, code, self.log())
    }

    /// Waits for the exit and for the last log lines.
    async fn finish(&mut self) -> String {
        let mut child = self.child.take().unwrap();
        let exited = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await;
        assert!(
            exited.is_ok(),
            "rotagate did not exit within 30 s of SIGTERM"
        );
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        self.log()
    }
}

impl Endpoints for Rotagate {
    fn proxy_addr(&self) -> SocketAddr {
        self.addr
    }
    fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
}
