//! A presence-diff room of hundreds shutting down (issue 14): the server
//! closes every member with 1001 without telling each remaining member
//! about every departure (that was n²/2 frames in one step), and exits
//! within its drain time. `core/tests/presence.rs` shows the same at
//! 2,000 members on the core alone.

use std::time::Duration;

use roomcast_tests::{binary, Auth, Client, Ending};

const MEMBERS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_room_shuts_down_without_a_diff_storm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("roomcast.toml");
    let toml = "[rooms]\npresence_diff_prefixes = [\"team:\"]\n";
    std::fs::write(&config, toml).expect("config");
    let env = [("ROOMCAST_SHUTDOWN_DRAIN_MS", "5000".to_owned())];
    let server = binary::Process::start(&["--config", config.to_str().expect("utf-8")], &env).await;
    let mut members = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        let mut member = Client::connect(server.addr, Auth::None).await;
        member.join("team:all").await;
        members.push(member);
    }
    // Everything up to now (the diffs of the joins) is read.
    for member in &mut members {
        member.fence().await;
    }
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut member| tokio::spawn(async move { member.read_to_end().await }))
        .collect();
    let (status, exit_time) = server.stop().await;
    let mut diffs = 0;
    for reader in readers {
        let (messages, ending) = reader.await.expect("reader");
        assert!(
            matches!(ending, Ending::Close(1001, _)),
            "every member is closed with 1001: {ending:?}"
        );
        diffs += messages
            .iter()
            .filter(|m| m["type"] == "presence_diff")
            .count();
    }
    eprintln!("presence storm: {MEMBERS} members, {diffs} diffs during shutdown, exit {status} after {exit_time:?}");
    assert_eq!(diffs, 0, "no presence diffs while shutting down");
    assert!(status.success(), "{status}");
    assert!(
        exit_time < Duration::from_secs(5 + 5),
        "exit took {exit_time:?}"
    );
}
