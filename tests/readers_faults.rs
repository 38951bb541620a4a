//! Reader endpoints (design 9.3) under trouble: a standby that dies under read load, a
//! rotation under read load, a standby that refuses a new credential, a promoted standby and
//! `prefer-standby`'s fallback to the primary.

mod common;

use common::pg::Pg;
use common::readers::*;
use common::*;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_under_read_load_fails_only_the_reads_in_flight() {
    let ((_primary, one, two), proxy, load) = under_read_load().await;
    one.crash();
    let on_two = load.on(&two);
    wait_until(20, "reads going on on the other standby", || async {
        load.on(&two) >= on_two + 200
    })
    .await;
    assert_eq!(in_rotation(&proxy).await, [at(&two)]);
    let errors = load.errors.lock().unwrap().clone();
    eprintln!(
        "standby killed under 4 reading clients: {} failed reads: {errors:?}",
        errors.len()
    );
    assert!(
        errors.len() <= 4,
        "at most one read in flight per client failed: {errors:?}"
    );

    // It comes back when it answers again.
    one.restart();
    wait_until(20, "the restarted standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let on_one = load.on(&one);
    wait_until(20, "reads on the restarted standby", || async {
        load.on(&one) >= on_one + 50
    })
    .await;
    let errors = load.finish().await;
    assert!(errors.len() <= 4, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_read_load_fails_no_read() {
    let ((primary, one, two), proxy, load) = under_read_load().await;
    proxy.rotate_to(&primary, APP_USER, "rotated-pw-2").await;
    let (a, b) = (load.on(&one), load.on(&two));
    wait_until(
        20,
        "reads on both standbys with the new credential",
        || async { load.on(&one) >= a + 100 && load.on(&two) >= b + 100 },
    )
    .await;
    assert_eq!(in_rotation(&proxy).await.len(), 2);
    let errors = load.finish().await;
    assert_eq!(errors, Vec::<String>::new(), "no read failed");
}

/// Makes `pg` refuse TCP logins of `user` (a pg_hba.conf `reject` line first), or take them
/// again; reloads.
fn refuse(pg: &Pg, user: &str, on: bool) {
    let path = pg.dir().join("data/pg_hba.conf");
    let hba = std::fs::read_to_string(&path).unwrap();
    let line = format!("host all {user} 127.0.0.1/32 reject\n");
    let hba = match on {
        true => format!("{line}{hba}"),
        false => hba.replace(&line, ""),
    };
    std::fs::write(&path, hba).unwrap();
    common::pg::give_to_pg(&path);
    pg.sql("SELECT pg_reload_conf()");
}

/// A role made on the primary, once every standby has replayed it.
async fn second_role(primary: &Pg, standbys: &[&Pg]) -> (&'static str, &'static str) {
    let (user, password) = ("app_second", "second-pw-1");
    primary.sql(&format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"));
    for pg in standbys {
        wait_until(20, "the role replayed", || async {
            pg.sql(&format!(
                "SELECT count(*) FROM pg_roles WHERE rolname = '{user}'"
            )) == "1"
        })
        .await;
    }
    (user, password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_refusing_a_new_credential_leaves_the_rotation_until_it_takes_it() {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "").await;
    let (user, password) = second_role(&primary, &[&one, &two]).await;
    let load = ReadLoad::start(&proxy, 2).await;
    wait_until(20, "reads on both standbys", || async {
        load.on(&one) >= 20 && load.on(&two) >= 20
    })
    .await;

    // Every host refuses it: the rotation fails and both standbys keep serving.
    refuse(&one, user, true);
    refuse(&two, user, true);
    let before = proxy.generation().await;
    write_secret(&proxy.secret, &primary, user, password);
    wait_until(20, "the failed rotation", || async {
        proxy
            .metric("rotagate_rotations_total", "result=\"rejected\"")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(proxy.generation().await, before);
    assert_eq!(in_rotation(&proxy).await.len(), 2);

    // One takes it: the rotation is applied on that one, the other leaves the rotation.
    refuse(&one, user, false);
    // Now, or at the engine's own retry.
    let _ = proxy.post("/rotate", "").await;
    wait_until(20, "the rotation applied", || async {
        proxy.generation().await > before
    })
    .await;
    wait_until(5, "the refusing standby out of rotation", || async {
        in_rotation(&proxy).await == [at(&one)]
    })
    .await;
    let a = load.on(&one);
    wait_until(20, "reads on the standby that took it", || async {
        load.on(&one) >= a + 100
    })
    .await;

    // It comes back once it takes the credential.
    refuse(&two, user, false);
    wait_until(20, "the other standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let errors = load.finish().await;
    assert_eq!(errors, Vec::<String>::new(), "no read failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_leaves_and_prefer_standby_falls_back_to_the_primary() {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "").await;
    two.promote();
    wait_until(20, "the promoted standby out of rotation", || async {
        in_rotation(&proxy).await == [at(&one)]
    })
    .await;
    drop(proxy);

    // prefer-standby: with its standby lagging, reads go to the primary, then back.
    let proxy = reader_proxy_with(
        &[&primary, &one],
        "prefer-standby",
        "max_replica_lag = \"1s\"",
    )
    .await;
    let client = proxy.client().await;
    assert_eq!(port_of_read(&client).await.unwrap(), i32::from(one.port));
    let writing = keep_writing(&primary);
    one.sql("SELECT pg_wal_replay_pause()");
    wait_until(10, "the primary in rotation instead", || async {
        in_rotation(&proxy).await == [at(&primary)]
    })
    .await;
    assert_eq!(
        port_of_read(&client).await.unwrap(),
        i32::from(primary.port)
    );
    one.sql("SELECT pg_wal_replay_resume()");
    wait_until(10, "the standby back, the primary out", || async {
        in_rotation(&proxy).await == [at(&one)]
    })
    .await;
    writing.store(true, Ordering::Relaxed);
    assert_eq!(port_of_read(&client).await.unwrap(), i32::from(one.port));
}
