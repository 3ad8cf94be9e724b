//! Replays every checked-in fuzz corpus entry and every crash artifact ever
//! found through the fuzz targets' bodies, on stable, in `cargo test`: a
//! fixed crash cannot come back.

use std::path::Path;

use roomcast_testkit::fuzz::TARGETS;

#[test]
fn every_corpus_entry_and_artifact_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, body) in TARGETS {
        let mut entries = 0;
        for folder in ["corpus", "artifacts", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(folder).join(name)) else {
                continue;
            };
            let mut files: Vec<_> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for file in files {
                let data = std::fs::read(&file).expect("corpus files are readable");
                let outcome = std::panic::catch_unwind(|| body(&data));
                assert!(
                    outcome.is_ok(),
                    "fuzz target {name} fails on {}",
                    file.display()
                );
                entries += 1;
            }
        }
        assert!(entries > 0, "target {name} has no corpus checked in");
        replayed += entries;
    }
    println!("replayed {replayed} fuzz inputs");
}
