//! Every scenario of the library (`scenarios/*.scn`) against smtp-relay and fresh fake
//! upstreams; each must pass, and its normalised two-hop transcript is an insta snapshot in
//! the top-level `snapshots/` folder (`scenarios@<file>.snap`). `INSTA_GLOB_FILTER=<glob>`
//! runs a subset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use smtp_relay::scenario::run::{Options, Outcome, Target, Verdict};
use smtp_relay::scenario::{Scenario, run_all, run_one};

fn options() -> Options {
    Options {
        target: Target::Ours,
        jobs: 8,
        timeout: None,
        work_dir: std::env::temp_dir()
            .join(format!("smtp-relay-scenario-tests-{}", std::process::id())),
        fail_fast: false,
        settle: std::time::Duration::from_secs(1),
        seed: 1,
    }
}

#[test]
fn scenarios() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = options();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    // Without a filter, run them all at once first (the glob below then only checks).
    let mut done: HashMap<PathBuf, Outcome> = HashMap::new();
    if std::env::var_os("INSTA_GLOB_FILTER").is_none() {
        let files = smtp_relay::scenario::find(std::slice::from_ref(&dir)).unwrap();
        let all: Vec<Scenario> = files.iter().map(|f| Scenario::load(f).unwrap()).collect();
        assert!(all.len() >= 80, "the library has {} scenarios", all.len());
        for o in rt.block_on(run_all(all, &opts, |_| {})).unwrap().outcomes {
            done.insert(o.path.clone(), o);
        }
    }
    std::fs::create_dir_all(&opts.work_dir).unwrap();
    let tls =
        fake_upstream::tls::load_or_generate(fake_upstream::tls::TlsFiles::in_dir(&opts.work_dir))
            .unwrap();
    insta::glob!("../scenarios", "*.scn", |path| {
        let outcome = match done.remove(path) {
            Some(o) => o,
            None => {
                let sc = Scenario::load(path).unwrap();
                rt.block_on(run_one(&sc, &opts, &tls))
            }
        };
        assert_eq!(
            outcome.verdict,
            Verdict::Pass,
            "{}\n{}",
            path.display(),
            outcome.transcript
        );
        insta::with_settings!({
            snapshot_path => "../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(outcome.transcript);
        });
    });
    let _ = std::fs::remove_dir_all(&opts.work_dir);
}
