//! Part 5: process RSS per idle registered command stream, each count
//! measured in a fresh child process.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Resident set size of this process, from `/proc/self/statm`.
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // 4 KiB pages (x86-64 and aarch64 Linux defaults).
    pages * 4096
}

/// In a child process: one node, `n` idle command senders; prints one JSON
/// line with the RSS before and after.
pub(crate) async fn scale_child(n: usize) -> Result<(), BoxError> {
    let ca = CertificateAuthority::generate("bench-ca")?;
    let node = NodeBuilder::new("scale", Role::Member)
        .quic(QuicConfig::new(
            ca.issue_node(&NodeId::new("scale"), Role::Member)?,
            ca.roots(),
        ))
        .spawn()
        .await?;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut senders: Vec<Sender> = Vec::with_capacity(n);
    // Warm every code path once, then measure.
    let warm: Sender = CommandChannel::spawn_sender(
        &node,
        StreamId::new("command:scale/warm"),
        NodeId::new("hub"),
        store.clone(),
        SenderConfig::default(),
    )
    .await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let t0 = Instant::now();
    for i in 0..n {
        senders.push(
            CommandChannel::spawn_sender(
                &node,
                StreamId::new(format!("command:scale/{i}")),
                NodeId::new("hub"),
                store.clone(),
                SenderConfig::default(),
            )
            .await?,
        );
    }
    let spawn_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    println!(
        "{}",
        json!({ "n": n, "rss_before": before, "rss_after": after, "spawn_secs": spawn_secs })
    );
    Ok(())
}

pub(crate) fn scale(n: usize) -> Result<Value, BoxError> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--scale-child", &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "scale child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or("scale child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}
