//! A real headless Chromium for browser tests (Debian's package; the flags
//! of DESIGN.md §9), and the loopback endpoint its pages report to.

use std::process::{Child, Command, Stdio};

use axum::Router;
use axum::routing::post;
use serde_json::Value;
use tokio::sync::mpsc;

/// The page's reports, received on this test's own loopback endpoint.
pub async fn report_endpoint() -> (String, mpsc::Receiver<Value>) {
    let (tx, rx) = mpsc::channel(16);
    let app = Router::new().route(
        "/report",
        post(move |body: String| {
            let tx = tx.clone();
            async move {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                let _ = tx.send(v).await;
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/report", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, rx)
}

/// Headless Chromium on `url` with the flags of DESIGN.md §9 and a fresh
/// profile. Killed when dropped.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chromium(url: &str) -> Chromium {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("CHROMIUM_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start chromium ({e}): install it with `apt-get install chromium` (scripts/test does)")
        });
    Chromium {
        child,
        _profile: profile,
    }
}
