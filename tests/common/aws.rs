//! AWS for the tests: moto's server (Secrets Manager, SQS, SNS, EventBridge) on a free port,
//! and the steps an operator, a rotation function or AWS itself takes, through the real APIs
//! with the AWS SDK.

use super::http;
use super::pg::{Pg, free_port};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::config::Credentials;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const REGION: &str = "us-east-1";

/// A moto server for one test, stopped when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
    _log: tempfile::NamedTempFile,
}

/// moto_server from the venv `scripts/test` makes, or from `ROTAGATE_MOTO_SERVER`.
fn moto_server() -> PathBuf {
    let path = std::env::var_os("ROTAGATE_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/moto_server")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (it installs moto[server]==5.2.5 into target/test-venv), \
         or pip install 'moto[server]==5.2.5' and set ROTAGATE_MOTO_SERVER",
        path.display()
    );
    path
}

impl Moto {
    /// Starts moto's server; on a port taken between choosing and binding (tests run in
    /// parallel), tries other ports.
    pub async fn start() -> Moto {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start().await {
                Ok(moto) => return moto,
                Err(log) => last_log = log,
            }
        }
        panic!("moto_server did not start; its last log:\n{last_log}");
    }

    async fn try_start() -> Result<Moto, String> {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while http(addr, "GET", "/moto-api/data.json").await.0 != 200 {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(std::fs::read_to_string(log.path()).unwrap_or_default());
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Ok(Moto {
            child,
            url,
            _log: log,
        })
    }

    /// The environment rotagate runs with against this server: static test keys, no
    /// instance-metadata lookups.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into()
    }

    /// The `[credentials.aws]` section for `secret_id`, with `queue_url` when given.
    pub fn section(&self, secret_id: &str, queue_url: Option<&str>) -> String {
        let mut s = format!(
            "[credentials.aws]\nsecret_id = \"{secret_id}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n",
            self.url
        );
        if let Some(q) = queue_url {
            s.push_str(&format!("queue_url = \"{q}\"\n"));
        }
        s
    }

    pub async fn clients(&self) -> Aws {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let sdk: SdkConfig = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await;
        Aws {
            sm: aws_sdk_secretsmanager::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            events: aws_sdk_eventbridge::Client::new(&sdk),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Aws {
    pub sm: aws_sdk_secretsmanager::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub events: aws_sdk_eventbridge::Client,
}

/// The RDS secret JSON for `user` on `pg`.
pub fn rds_json(pg: &Pg, user: &str, password: &str) -> String {
    format!(
        r#"{{"engine":"postgres","username":"{user}","password":"{password}","host":"127.0.0.1","port":{},"dbname":"appdb"}}"#,
        pg.port
    )
}

impl Aws {
    /// Creates the secret; returns its ARN.
    pub async fn create_secret(&self, name: &str, json: String) -> String {
        let out = self
            .sm
            .create_secret()
            .name(name)
            .secret_string(json)
            .send()
            .await
            .unwrap();
        out.arn.unwrap()
    }

    /// Rotation step createSecret: a new version staged AWSPENDING; returns its id.
    pub async fn put_pending(&self, secret: &str, json: String) -> String {
        let out = self
            .sm
            .put_secret_value()
            .secret_id(secret)
            .secret_string(json)
            .version_stages("AWSPENDING")
            .send()
            .await
            .unwrap();
        out.version_id.unwrap()
    }

    /// Rotation step finishSecret: AWSCURRENT moves to `version`, AWSPENDING leaves it.
    pub async fn promote(&self, secret: &str, version: &str) {
        let current = self.current_version(secret).await;
        self.sm
            .update_secret_version_stage()
            .secret_id(secret)
            .version_stage("AWSCURRENT")
            .move_to_version_id(version)
            .remove_from_version_id(current)
            .send()
            .await
            .unwrap();
        self.sm
            .update_secret_version_stage()
            .secret_id(secret)
            .version_stage("AWSPENDING")
            .remove_from_version_id(version)
            .send()
            .await
            .unwrap();
    }

    pub async fn current_version(&self, secret: &str) -> String {
        let d = self
            .sm
            .describe_secret()
            .secret_id(secret)
            .send()
            .await
            .unwrap();
        d.version_ids_to_stages()
            .unwrap()
            .iter()
            .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
            .map(|(v, _)| v.clone())
            .unwrap()
    }

    /// A single-user rotation as AWS runs it: createSecret, setSecret (the database),
    /// finishSecret. Returns the new version id.
    pub async fn rotate(&self, pg: &Pg, secret: &str, user: &str, password: &str) -> String {
        let version = self.put_pending(secret, rds_json(pg, user, password)).await;
        pg.sql(&format!("ALTER ROLE {user} PASSWORD '{password}'"));
        self.promote(secret, &version).await;
        version
    }

    pub async fn create_queue(&self, name: &str) -> String {
        let out = self
            .sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap();
        out.queue_url.unwrap()
    }

    pub async fn queue_arn(&self, url: &str) -> String {
        use aws_sdk_sqs::types::QueueAttributeName;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        out.attributes.unwrap()[&QueueAttributeName::QueueArn].clone()
    }

    /// Visible plus in-flight messages.
    pub async fn depth(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = out.attributes.unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|k| a[k].parse::<u64>().unwrap())
        .sum()
    }

    pub async fn send(&self, url: &str, body: &str) {
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
}

/// A change event from `tests/fixtures/aws/NAME.json`, rewritten for the real secret (its
/// ARN, and its name, which follows the ARN's `:secret:`) and `version` (for fixtures that
/// name one).
pub fn fixture_event(name: &str, arn: &str, version: &str) -> serde_json::Value {
    let secret_name = arn.split(":secret:").nth(1).unwrap();
    let secret_name = &secret_name[..secret_name.len() - 7];
    const FIXTURE_ARN: &str =
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db-AbC123";
    let path = format!(
        "{}/tests/fixtures/aws/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text
        .replace(FIXTURE_ARN, arn)
        .replace("\"prod/app/db\"", &format!("\"{secret_name}\""))
        .replace("v-new", version)
        .replace("v-pending", version);
    serde_json::from_str(&text).unwrap()
}

impl Aws {
    /// An EventBridge rule on the default bus sending every aws.secretsmanager event to the
    /// queue (the queue policy is not enforced by moto; the README shows the real one).
    pub async fn route(&self, queue_url: &str) {
        let pattern = r#"{"source":["aws.secretsmanager"]}"#;
        self.rule("rotagate-secret-events", pattern, queue_url)
            .await;
    }

    /// The README's EventBridge rule for RDS failover events, to the queue.
    pub async fn route_rds(&self, queue_url: &str) {
        let pattern = r#"{"source":["aws.rds"],"detail-type":["RDS DB Cluster Event","RDS DB Instance Event"],"detail":{"EventCategories":["failover"]}}"#;
        self.rule("rotagate-rds-failover", pattern, queue_url).await;
    }

    async fn rule(&self, name: &str, pattern: &str, queue_url: &str) {
        let arn = self.queue_arn(queue_url).await;
        self.events
            .put_rule()
            .name(name)
            .event_pattern(pattern)
            .send()
            .await
            .unwrap();
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("rotagate-queue")
            .arn(arn)
            .build()
            .unwrap();
        self.events
            .put_targets()
            .rule(name)
            .targets(target)
            .send()
            .await
            .unwrap();
    }

    /// put_events of `event` (an EventBridge event as a target receives it) on the default bus.
    pub async fn put_event(&self, event: &serde_json::Value) {
        let resources: Vec<String> = event["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(event["source"].as_str().unwrap_or("aws.secretsmanager"))
            .detail_type(event["detail-type"].as_str().unwrap())
            .detail(event["detail"].to_string())
            .set_resources(Some(resources))
            .build();
        let out = self
            .events
            .put_events()
            .entries(entry)
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_entry_count, 0, "put_events: {out:?}");
    }

    /// An SNS topic with the queues subscribed (enveloped delivery); returns its ARN.
    pub async fn topic(&self, name: &str, queues: &[&str]) -> String {
        let topic = self.sns.create_topic().name(name).send().await.unwrap();
        let topic = topic.topic_arn.unwrap();
        for q in queues {
            self.sns
                .subscribe()
                .topic_arn(&topic)
                .protocol("sqs")
                .endpoint(self.queue_arn(q).await)
                .send()
                .await
                .unwrap();
        }
        topic
    }

    pub async fn publish(&self, topic: &str, event: &serde_json::Value) {
        self.sns
            .publish()
            .topic_arn(topic)
            .message(event.to_string())
            .send()
            .await
            .unwrap();
    }
}
