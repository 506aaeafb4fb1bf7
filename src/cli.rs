//! The binary's commands that run a process: `run` here, `ctl` and `up` in
//! their own files.
//!
//! Owns process concerns only: the tracing subscriber (`RUST_LOG`, default
//! `info`: one line per route decision), the tokio runtime, messages and
//! exit codes (0 clean stop, 1 start failure, 2 configuration error).

pub mod ctl;
pub mod up;

use std::path::Path;
use std::process::ExitCode;

use interlocking::app::{App, AppError};

/// Exit code of a configuration error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of a start failure.
pub const EXIT_START: u8 = 1;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A multi-threaded tokio runtime, or the reason there is none.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// `interlocking sidecar --config HUB_FILE`.
pub fn sidecar(config: &Path) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("interlocking sidecar: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    rt.block_on(async move {
        init_tracing();
        let cfg = match interlocking::config::Config::load(config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("interlocking sidecar: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        match interlocking::app::sidecar::run(&cfg).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("interlocking sidecar: {e}");
                ExitCode::from(EXIT_START)
            }
        }
    })
}

/// `interlocking run --config FILE`.
pub fn run(config: &Path, token: Option<String>) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("interlocking run: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    rt.block_on(async move {
        // Listen for SIGTERM/Ctrl-C first: a stop asked for while the node
        // starts (e.g. waiting for an unreachable root) ends the start, exit 0.
        let stop = interlocking::app::shutdown_signal();
        tokio::pin!(stop);
        init_tracing();
        let app = match App::load(config) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("interlocking run: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let app = app.builtin_handlers().join_token(token);
        let (id, role) = (app.config().id.clone(), app.config().role);
        let started = tokio::select! {
            r = app.start() => r,
            why = &mut stop => {
                println!("interlocking: {id} stopped before it had started ({why})");
                return ExitCode::SUCCESS;
            }
        };
        match started {
            Ok(running) => {
                let control = running
                    .control_addr()
                    .map_or("no control API".to_string(), |a| {
                        format!("control API on http://{a}")
                    });
                println!("interlocking: {id} ({role}) running; {control}");
                if let interlocking::app::runtime::Role::Root(r) = &running.runtime().role {
                    let fp: String = r
                        .certificate_authority()
                        .fingerprint()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    println!(
                        "interlocking: node endpoint {}, join endpoint {}, CA fingerprint {fp}",
                        r.local_addr(),
                        r.join_addr()
                    );
                }
                let why = running.wait_for(&mut stop).await;
                println!("interlocking: {id} stopped ({why})");
                ExitCode::SUCCESS
            }
            Err(e @ AppError::Config(_)) => {
                eprintln!("interlocking run: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(e) => {
                eprintln!("interlocking run: {e}");
                ExitCode::from(EXIT_START)
            }
        }
    })
}
