//! The load test's driver, shared by `examples/loadtest.rs` (the full run:
//! 60 s, a report) and `tests/load.rs` (a short run in CI): starts `precis
//! serve` on loopback with a real small model, drives several times its
//! concurrency with summarize requests for a bounded time and count, samples
//! the server's memory, and checks what every answer was.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A `precis serve` process on a loopback port, stopped (SIGTERM) on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Server {
    /// Starts `precis serve` (`binary`) with `args`, without the result
    /// cache (every request runs the model), and waits until `/ready` says
    /// 200 (at most `wait`).
    pub fn start(binary: &Path, args: &[&str], wait: Duration) -> Result<Server, String> {
        let args: Vec<&str> = ["--no-cache"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        Self::start_with(binary, &args, &[], wait)
    }

    /// Starts `precis serve` (`binary`) with `args` and the environment
    /// variables `env`, and waits until `/ready` says 200 (at most `wait`).
    pub fn start_with(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        wait: Duration,
    ) -> Result<Server, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(binary)
            .arg("serve")
            .arg("--quiet")
            .envs(env.iter().copied())
            .args(args)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = client(Duration::from_secs(5));
        let started = Instant::now();
        loop {
            if client
                .get(format!("{}/ready", server.base))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("the server exited ({status}): {err}"));
            }
            if started.elapsed() > wait {
                return Err("the server did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The sum of the metric lines whose name is `name` (all labels).
    pub fn metric(&self, name: &str) -> f64 {
        let text = client(Duration::from_secs(5))
            .get(format!("{}/metrics", self.base))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now, in kB.
    pub fn rss_kb(&self) -> Option<u64> {
        rss_kb(self.pid())
    }

    /// Whether `/health` says 200.
    pub fn healthy(&self) -> bool {
        client(Duration::from_secs(5))
            .get(format!("{}/health", self.base))
            .send()
            .is_ok_and(|r| r.status() == 200)
    }

    /// `precis_tokens_generated_total`, all models together.
    pub fn tokens_generated(&self) -> u64 {
        self.metric("precis_tokens_generated_total") as u64
    }
}

impl Server {
    /// Sends SIGTERM and waits up to 30 s for the process to exit; its
    /// exit status, or `None` when it is still running.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A blocking client with this timeout.
pub fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client")
}

/// What to send and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    /// Clients sending one request after the other.
    pub clients: usize,
    /// How long they keep sending.
    pub duration: Duration,
    /// Most requests in all.
    pub max_requests: usize,
    /// The summarize request each sends.
    pub body: Value,
}

impl Load {
    /// A summary of `text` in at most `max_new_tokens` tokens.
    pub fn summaries(
        clients: usize,
        duration: Duration,
        text: &str,
        max_new_tokens: usize,
    ) -> Self {
        Self {
            clients,
            duration,
            max_requests: 100_000,
            body: json!({"text": text, "generation": {"max_new_tokens": max_new_tokens}}),
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Report {
    /// Answers by status (0: no answer: a connection error or client
    /// timeout).
    pub statuses: BTreeMap<u16, usize>,
    /// Other answers than 2xx and 429, with their bodies (the first few).
    pub unexpected: Vec<String>,
    /// Resident memory before the load (after one warm-up request), kB.
    pub baseline_rss_kb: u64,
    /// Highest resident memory seen during the load, kB.
    pub peak_rss_kb: u64,
    /// Tokens the server generated during the load.
    pub tokens: u64,
    /// Wall time of the load.
    pub elapsed: Duration,
    /// Whether `/health` said 200 afterwards.
    pub healthy_after: bool,
}

impl Report {
    /// Requests answered with this status.
    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Generated tokens per second of wall time.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Growth of resident memory under load, MB.
    pub fn rss_growth_mb(&self) -> f64 {
        self.peak_rss_kb.saturating_sub(self.baseline_rss_kb) as f64 / 1024.0
    }

    /// The report as lines for people.
    pub fn describe(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        format!(
            "answers          {}\nelapsed          {:.1} s\ntokens           {} ({:.1} tok/s)\nrss              {:.0} MB baseline, {:.0} MB peak (+{:.0} MB)\nhealthy after    {}",
            statuses.join(", "),
            self.elapsed.as_secs_f64(),
            self.tokens,
            self.tokens_per_second(),
            self.baseline_rss_kb as f64 / 1024.0,
            self.peak_rss_kb as f64 / 1024.0,
            self.rss_growth_mb(),
            self.healthy_after
        )
    }
}

/// Sends `load` to `server`: one warm-up request first, then every client
/// in a loop until the time or the count runs out.
pub fn drive(server: &Server, load: &Load) -> Report {
    let url = format!("{}/v1/summarize", server.base);
    let warm = client(Duration::from_secs(600))
        .post(&url)
        .json(&load.body)
        .send();
    assert!(
        warm.as_ref().is_ok_and(|r| r.status() == 200),
        "the warm-up request failed: {:?}",
        warm.map(|r| r.status())
    );
    let baseline = server.rss_kb().unwrap_or(0);
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (Arc::clone(&peak), Arc::clone(&stop), server.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(kb) = rss_kb(pid) {
                    peak.fetch_max(kb, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let tokens_before = server.tokens_generated();
    let sent = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(BTreeMap::new()));
    let unexpected = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let deadline = started + load.duration;
    let clients: Vec<_> = (0..load.clients)
        .map(|_| {
            let (url, body, sent, statuses, unexpected) = (
                url.clone(),
                load.body.clone(),
                Arc::clone(&sent),
                Arc::clone(&statuses),
                Arc::clone(&unexpected),
            );
            let max = load.max_requests;
            std::thread::spawn(move || {
                let http = client(Duration::from_secs(600));
                while Instant::now() < deadline && sent.fetch_add(1, Ordering::SeqCst) < max {
                    let (status, text) = match http.post(&url).json(&body).send() {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            (s, r.text().unwrap_or_default())
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    *statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                    if !(200..300).contains(&status) && status != 429 {
                        let mut u = unexpected.lock().unwrap();
                        if u.len() < 5 {
                            u.push(format!("{status}: {text}"));
                        }
                    }
                    if status == 429 {
                        // A polite client waits a little; a burst is the point.
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let tokens = server.tokens_generated().saturating_sub(tokens_before);
    let statuses = statuses.lock().unwrap().clone();
    let unexpected = unexpected.lock().unwrap().clone();
    Report {
        statuses,
        unexpected,
        baseline_rss_kb: baseline,
        peak_rss_kb: peak.load(Ordering::SeqCst),
        tokens,
        elapsed,
        healthy_after: server.healthy(),
    }
}

/// The load test's verdict: every answer 2xx or 429, memory growth within
/// `max_growth_mb`, the server healthy afterwards. `Err` says what failed.
pub fn check(report: &Report, max_growth_mb: f64) -> Result<(), String> {
    let bad: usize = report
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s) && **s != 429)
        .map(|(_, n)| n)
        .sum();
    if bad > 0 {
        return Err(format!(
            "{bad} answers were neither 2xx nor 429: {:?}",
            report.unexpected
        ));
    }
    if report.count(200) == 0 {
        return Err("no request succeeded".into());
    }
    if report.rss_growth_mb() > max_growth_mb {
        return Err(format!(
            "resident memory grew {:.0} MB under load (at most {max_growth_mb} MB allowed)",
            report.rss_growth_mb()
        ));
    }
    if !report.healthy_after {
        return Err("the server was not healthy afterwards".into());
    }
    Ok(())
}
