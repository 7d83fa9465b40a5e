//! The harness tested by the relays it must catch: the portable scenarios against a small
//! correct relay and against each of its mutants (`smtp_relay::scenario::mutant`), all over
//! real sockets. The correct relay passes every portable scenario; every mutant fails at
//! least one. The OpenSMTPD case (LF . LF taken as the end of data, the smuggled MAIL sent
//! upstream in a session that stays open) is caught by `upstream never saw`, which reads the
//! fake's live record of sessions still open.

use smtp_relay::scenario::mutant::{Defect, score, table};
use smtp_relay::scenario::run::Verdict;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutant_is_caught_and_the_correct_relay_passes() {
    let files = smtp_relay::scenario::find(&[std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios"
    ))])
    .unwrap();
    let scenarios: Vec<_> = files
        .iter()
        .map(|f| smtp_relay::scenario::Scenario::load(f).unwrap())
        .collect();
    let work = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mutants-{}", std::process::id()));
    let scores = score(&scenarios, &work, None).await.unwrap();
    let text = table(&scores);
    println!("{text}");
    assert_eq!(scores.len(), 1 + Defect::ALL.len());
    let portable = scenarios
        .iter()
        .filter(|s| s.tags.iter().any(|t| t == "portable"))
        .count();
    assert!(portable >= 80, "{portable} portable scenarios");
    for s in &scores {
        assert_eq!(s.outcomes.len(), portable);
        if s.defect == Defect::None {
            assert!(
                !s.killed(),
                "the correct relay failed:\n{text}\n{:#?}",
                s.failed()
            );
        } else {
            assert!(s.killed(), "mutant {} survived:\n{text}", s.defect.name());
        }
    }
    let lf = scores.iter().find(|s| s.defect == Defect::LfDotLf).unwrap();
    let smuggled = lf
        .outcomes
        .iter()
        .find(|o| o.name == "smuggle-lf-dot-lf")
        .unwrap();
    let Verdict::Fail(why) = &smuggled.verdict else {
        panic!("{:?}", smuggled.verdict)
    };
    assert!(
        why.contains("MAIL FROM:<ceo@bank.example>") && why.contains("still open"),
        "{why}"
    );
    // A relay that writes BDAT content out in DATA unstuffed: the dot line inside the chunk
    // ends the message at the next hop, which reads the rest as a second transaction.
    let chunks = scores
        .iter()
        .find(|s| s.defect == Defect::ChunksNotStuffed)
        .unwrap();
    let smuggled = chunks
        .outcomes
        .iter()
        .find(|o| o.name == "bdat-smuggle-crlf-dot-crlf")
        .unwrap();
    let Verdict::Fail(why) = &smuggled.verdict else {
        panic!("{:?}", smuggled.verdict)
    };
    assert!(why.contains("boss@example.com"), "{why}");
    let _ = std::fs::remove_dir_all(&work);
}
