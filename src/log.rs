//! Structured logs (tracing): one file, `<log dir>/relay.log`, human-readable lines by default
//! or JSON lines with `--log-json`. Each delivery outcome is one line carrying the message id
//! (the spool file's name), so one message can be followed from client to upstream.

use std::path::Path;

/// Keeps the background log writer alive; logs are flushed when it is dropped.
pub struct LogGuard {
    _guard: tracing_appender::non_blocking::WorkerGuard,
}

/// Sends the process's logs to `dir/relay.log`.
pub fn init(dir: &Path, json: bool) -> Result<LogGuard, String> {
    smtp_net::files::private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let appender = tracing_appender::rolling::never(dir, "relay.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| format!("logging: {e}"))?;
    Ok(LogGuard { _guard: guard })
}
