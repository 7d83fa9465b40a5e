//! `smtp-relay queue list|show ID|retry [ID]|delete ID`: the queue as an operator sees it,
//! while the relay runs or not. `list` and `show` read the journal; `retry` and `delete`
//! change the queue themselves when no relay holds it, and otherwise leave a request that the
//! running relay carries out at its scheduler's next look (they wait for it, 10 s at most).

use std::path::PathBuf;
use std::process::ExitCode;

use super::store::{Queue, RcptState};

#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// The queue directory (`[queue] dir` of the config; `up --queue` keeps it in
    /// `<data-dir>/queue`).
    #[arg(long, default_value = "./smtp-relay-data/queue", global = true)]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum QueueCommand {
    /// Every queued message: id, age, attempts, next attempt, sender, recipients, last error.
    List,
    /// One message's record and the start of its content.
    Show { id: String },
    /// Make one message (or all) due now.
    Retry { id: Option<String> },
    /// Take a message out of the queue without delivering it (no bounce).
    Delete { id: String },
}

pub async fn run(args: QueueArgs) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp-relay queue: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_inner(args: QueueArgs) -> Result<(), String> {
    if !args.dir.join("msg").is_dir() {
        return Err(format!("{}: not a queue directory", args.dir.display()));
    }
    // Reading needs no hold; a change holds the queue when no relay does (opening then
    // recovers what a crash left: only what was never acknowledged).
    let q = match args.command {
        QueueCommand::List | QueueCommand::Show { .. } if args.dir.join("journal").is_dir() => {
            Queue::observe(&args.dir)
        }
        _ => Queue::open_existing(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?,
    };
    match args.command {
        QueueCommand::List => {
            let (records, bad) = q.list().map_err(|e| e.to_string())?;
            let now = chrono::Utc::now();
            let mut out = format!(
                "{:<32} {:>8} {:>8} {:<25} {:<28} {}\n",
                "id", "age", "attempts", "next attempt", "from", "to (pending)"
            );
            for r in &records {
                let age = human(now.signed_duration_since(r.received_at));
                let pending: Vec<String> = r.pending().map(|p| p.to.to_string()).collect();
                out.push_str(&format!(
                    "{:<32} {:>8} {:>8} {:<25} {:<28} {}\n",
                    r.id,
                    age,
                    r.attempts,
                    r.next_attempt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    r.mail_from.to_string(),
                    pending.join(" ")
                ));
                if let Some(e) = &r.last_error {
                    out.push_str(&format!("{:<32} last: {e}\n", ""));
                }
            }
            out.push_str(&format!("{} message(s) queued\n", records.len()));
            for (path, e) in bad {
                out.push_str(&format!("unreadable record {}: {e}\n", path.display()));
            }
            smtp_net::say(&out);
        }
        QueueCommand::Show { id } => {
            let r = q.load(&id).map_err(|e| format!("{id}: {e}"))?;
            let mut out = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
            out.push('\n');
            for rcpt in &r.rcpts {
                let state = match &rcpt.state {
                    RcptState::Pending { last } => format!(
                        "pending{}",
                        last.as_ref()
                            .map(|l| format!(" (last: {l})"))
                            .unwrap_or_default()
                    ),
                    RcptState::Delivered { reply } => format!("delivered: {reply}"),
                    RcptState::Failed { reply } => format!("failed: {reply}"),
                };
                out.push_str(&format!("{}: {state}\n", rcpt.to));
            }
            let body = q.content_blocking(&id).map_err(|e| format!("{id}: {e}"))?;
            let size = r.trace().len() as u64 + body.len().map_err(|e| format!("{id}: {e}"))?;
            let mut head = r.trace().to_vec();
            head.extend(body.head(2000).map_err(|e| format!("{id}: {e}"))?);
            head.truncate(2000);
            out.push_str(&format!(
                "--- content ({size} octets), first {}:\n{}\n",
                head.len(),
                String::from_utf8_lossy(&head)
            ));
            smtp_net::say(&out);
        }
        QueueCommand::Retry { id } => {
            let n = q
                .retry(id.as_deref())
                .await
                .map_err(|e| format!("{}: {e}", id.as_deref().unwrap_or("retry")))?;
            smtp_net::say(&format!("{n} message(s) due now\n"));
        }
        QueueCommand::Delete { id } => {
            q.delete(&id).await.map_err(|e| format!("{id}: {e}"))?;
            smtp_net::say(&format!("{id} deleted (not delivered, no bounce)\n"));
        }
    }
    Ok(())
}

fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
