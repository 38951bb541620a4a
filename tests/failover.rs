//! Failover (issue 14, in progress): which host rotagate serves from among `upstream.hosts`.
//! A primary and a streaming standby made by the harness, as the acceptance script makes
//! them.

mod common;

use common::pg::Pg;
use common::*;
use rotagate::backend::UpstreamTarget;
use rotagate::config::{HostPort, TargetSessionAttrs};
use rotagate::rotation::writer::{Role, choose, probe_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_classified_and_the_writer_is_chosen_standby_first() {
    let primary = app_cluster();
    let standby = primary.standby();
    let host = |pg: &Pg| HostPort::parse(&format!("127.0.0.1:{}", pg.port)).unwrap();
    let hosts = [host(&standby), host(&primary)];
    let text = format!(
        "[[clients]]\nuser = \"a\"\npassword = \"b\"\n[upstream]\nhosts = [\"{}\", \"{}\"]\n\
         database = \"appdb\"\ntls = \"disable\"\n[credentials]\nsource = \"file\"\n\
         [credentials.file]\npath = \"/x\"\n",
        hosts[0], hosts[1]
    );
    let cfg = rotagate::config::parse(&text, []).unwrap();
    let base = UpstreamTarget::from_config(&cfg.databases[0].upstream).unwrap();
    let creds = rotagate::secrets::Credentials::from_json(
        format!(r#"{{"username":"{APP_USER}","password":"{APP_PASSWORD}"}}"#).as_bytes(),
        "v".into(),
    )
    .unwrap();
    let probes = probe_all(&base, &hosts, &creds).await;
    let roles: Vec<_> = probes.iter().map(|p| p.role.clone()).collect();
    assert_eq!(roles, [Ok(Role::Standby), Ok(Role::Primary)]);
    let writer = choose(TargetSessionAttrs::ReadWrite, &probes).unwrap();
    assert_eq!(writer.host, hosts[1]);
    assert_eq!(
        choose(TargetSessionAttrs::Any, &probes).unwrap().host,
        hosts[0]
    );

    // The primary goes, the standby is promoted: the writer is the first host now.
    primary.crash();
    standby.promote();
    let probes = probe_all(&base, &hosts, &creds).await;
    assert_eq!(probes[0].role, Ok(Role::Primary));
    assert!(probes[1].role.is_err(), "{:?}", probes[1]);
    assert_eq!(
        choose(TargetSessionAttrs::ReadWrite, &probes).unwrap().host,
        hosts[0]
    );
}
