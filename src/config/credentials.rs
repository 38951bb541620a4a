//! Validation of the `[credentials]` section and its source sub-sections.

use super::raw::*;
use super::validate::Check;
use super::*;

pub(super) fn credentials(c: &mut Check, r: Option<RawCredentials>) -> CredentialsConfig {
    let r = r.unwrap_or_else(|| {
        c.err("credentials", "the [credentials] section is required");
        RawCredentials::default()
    });
    let sources = sources(c, r.source);
    let file = r.file.map(|f| FileSourceConfig {
        path: c.required("credentials.file.path", f.path.as_ref()).into(),
    });
    let aws = r.aws.map(|a| aws(c, a));
    let vault = r.vault.map(|v| vault(c, v));
    let rds_iam = r.rds_iam.map(|i| rds_iam(c, i));
    for kind in &sources {
        let (section, missing) = match kind {
            SourceKind::File => ("file", file.is_none()),
            SourceKind::Aws => ("aws", aws.is_none()),
            SourceKind::Vault => ("vault", vault.is_none()),
            SourceKind::RdsIam => ("rds_iam", rds_iam.is_none()),
        };
        if missing {
            c.err(
                &format!("credentials.{section}"),
                format!("[credentials.{section}] is required when source includes \"{section}\""),
            );
        }
    }
    CredentialsConfig {
        sources,
        refresh_interval: c.duration(
            "credentials.refresh_interval",
            r.refresh_interval.as_ref(),
            Duration::from_secs(300),
        ),
        breaker_failures: c.range(
            "credentials.breaker_failures",
            r.breaker_failures,
            3,
            1,
            1000,
        ) as u32,
        breaker_cooldown: c.duration(
            "credentials.breaker_cooldown",
            r.breaker_cooldown.as_ref(),
            Duration::from_secs(300),
        ),
        cache_file: r.cache_file.map(PathBuf::from),
        cache_key_file: r.cache_key_file.map(PathBuf::from),
        allow_endpoint_change: r.allow_endpoint_change.unwrap_or(false),
        file,
        aws,
        vault,
        rds_iam,
        cache_key: None,
    }
}

fn rds_iam(c: &mut Check, r: RawRdsIamSource) -> RdsIamSourceConfig {
    RdsIamSourceConfig {
        user: c
            .required("credentials.rds_iam.user", r.user.as_ref())
            .to_owned(),
        region: r.region.filter(|s| !s.trim().is_empty()),
        endpoint_url: http_url(c, "credentials.rds_iam.endpoint_url", r.endpoint_url),
    }
}

/// An RDS IAM token is a bearer password: it goes only over TLS whose certificate is
/// verified, it is the only source (a fallback to a stored password would defeat it), and
/// there is nothing to cache.
pub(super) fn check_rds_iam(c: &mut Check, upstream: &UpstreamConfig, cred: &CredentialsConfig) {
    if !cred.sources.contains(&SourceKind::RdsIam) {
        return;
    }
    let verified = |h: &super::HostPort| {
        matches!(
            upstream.tls_for(&h.host),
            UpstreamTls::VerifyCa | UpstreamTls::VerifyFull
        )
    };
    if !upstream.hosts.iter().all(verified) {
        c.err(
            "upstream.tls",
            "must be verify-ca or verify-full with source = \"rds-iam\" (an IAM token is sent \
             in cleartext inside TLS: only to a verified server)",
        );
    }
    if cred.sources.len() > 1 {
        c.err(
            "credentials.source",
            "rds-iam cannot be combined with other sources",
        );
    }
    if cred.cache_file.is_some() {
        c.err(
            "credentials.cache_file",
            "is not used with rds-iam (tokens are signed for each login; nothing to cache)",
        );
    }
}

/// RDS failover events arrive on the secret's SQS queue: `upstream.rds_cluster_id` and
/// `rds_instance_id` need `credentials.aws.queue_url`.
pub(super) fn check_rds_events(c: &mut Check, upstream: &UpstreamConfig, cred: &CredentialsConfig) {
    let queue = cred.aws.as_ref().is_some_and(|a| a.queue_url.is_some());
    for (path, set) in [
        ("upstream.rds_cluster_id", upstream.rds_cluster_id.is_some()),
        (
            "upstream.rds_instance_id",
            upstream.rds_instance_id.is_some(),
        ),
    ] {
        if set && !queue {
            c.err(
                path,
                "needs credentials.aws.queue_url: RDS failover events are read from that queue \
                 (route them there with an EventBridge rule)",
            );
        }
    }
}

/// `source`: one name, or a list whose first is the primary and the rest fallbacks in order.
fn sources(c: &mut Check, v: Option<OneOrMany>) -> Vec<SourceKind> {
    let names = match v {
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(list)) => list,
        None => vec![],
    };
    if names.is_empty() {
        c.err(
            "credentials.source",
            "is required (file, aws, vault or rds-iam, or a list of them)",
        );
        return vec![SourceKind::File];
    }
    let mut kinds = Vec::new();
    for name in names {
        let kind = match name.as_str() {
            "file" => SourceKind::File,
            "aws" => SourceKind::Aws,
            "vault" => SourceKind::Vault,
            "rds-iam" => SourceKind::RdsIam,
            _ => {
                c.err(
                    "credentials.source",
                    "must be one of file, aws, vault, rds-iam (the value is not shown)".to_owned(),
                );
                continue;
            }
        };
        if kinds.contains(&kind) {
            c.err(
                "credentials.source",
                "names a source listed twice".to_owned(),
            );
        }
        kinds.push(kind);
    }
    if kinds.is_empty() {
        kinds.push(SourceKind::File);
    }
    kinds
}

fn vault(c: &mut Check, r: RawVaultSource) -> VaultSourceConfig {
    let addr = c
        .required("credentials.vault.addr", r.addr.as_ref())
        .to_owned();
    http_url(c, "credentials.vault.addr", Some(addr.clone()));
    let auth = vault_auth(c, r.token_file, r.approle_role_id, r.approle_secret_id_file);
    let mount = |m: Option<String>, default: &str| m.unwrap_or_else(|| default.to_owned());
    let mode = match (r.kv_path, r.database_role) {
        (Some(path), None) => VaultMode::Kv {
            mount: mount(r.kv_mount, "secret"),
            path,
        },
        (None, Some(role)) => VaultMode::Database {
            mount: mount(r.database_mount, "database"),
            role,
        },
        _ => {
            c.err(
                "credentials.vault",
                "set exactly one of kv_path (a KV v2 secret) or database_role (dynamic credentials)",
            );
            VaultMode::Kv {
                mount: String::new(),
                path: String::new(),
            }
        }
    };
    VaultSourceConfig {
        addr: addr.trim_end_matches('/').to_owned(),
        auth,
        mode,
        ca_file: r.ca_file.map(PathBuf::from),
    }
}

fn account(c: &mut Check, v: Option<String>) -> Option<String> {
    let v = v?.trim().to_owned();
    if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        c.err(
            "credentials.aws.expected_account",
            "must be a 12-digit AWS account id (the value is not shown)",
        );
    }
    Some(v)
}

fn aws(c: &mut Check, r: RawAwsSource) -> AwsSourceConfig {
    let secret_id = c
        .required("credentials.aws.secret_id", r.secret_id.as_ref())
        .trim()
        .to_owned();
    if secret_id.starts_with("arn:") && !secret_id.contains(":secret:") {
        c.err(
            "credentials.aws.secret_id",
            "an ARN here must be a Secrets Manager secret's (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
        );
    }
    let region = r.region.filter(|s| !s.trim().is_empty());
    if let Some(region) = &region {
        if !region
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        {
            c.err(
                "credentials.aws.region",
                "must be a region like \"us-east-1\" (the value is not shown)".to_owned(),
            );
        }
    }
    AwsSourceConfig {
        secret_id,
        region,
        endpoint_url: http_url(c, "credentials.aws.endpoint_url", r.endpoint_url),
        queue_url: http_url(c, "credentials.aws.queue_url", r.queue_url),
        expected_account: account(c, r.expected_account),
    }
}

/// token_file, or AppRole's two keys, or neither (then VAULT_TOKEN, checked in `parse`).
fn vault_auth(
    c: &mut Check,
    token_file: Option<String>,
    role_id: Option<String>,
    secret_id_file: Option<String>,
) -> VaultAuth {
    match (token_file, role_id, secret_id_file) {
        (None, Some(role_id), Some(secret_id_file)) => VaultAuth::AppRole {
            role_id,
            secret_id_file: secret_id_file.into(),
        },
        (None, None, None) => VaultAuth::Token {
            file: None,
            env: None,
        },
        (Some(file), None, None) => VaultAuth::Token {
            file: Some(file.into()),
            env: None,
        },
        (Some(_), _, _) => {
            c.err(
                "credentials.vault.token_file",
                "give token_file or approle_role_id + approle_secret_id_file, not both",
            );
            VaultAuth::Token {
                file: None,
                env: None,
            }
        }
        (None, _, _) => {
            c.err(
                "credentials.vault.approle_role_id",
                "AppRole needs both approle_role_id and approle_secret_id_file",
            );
            VaultAuth::Token {
                file: None,
                env: None,
            }
        }
    }
}

fn http_url(c: &mut Check, path: &str, v: Option<String>) -> Option<String> {
    let v = v.filter(|s| !s.trim().is_empty())?;
    if !(v.starts_with("https://") || v.starts_with("http://")) {
        c.err(
            path,
            "must be an http:// or https:// URL (the value is not shown)".to_owned(),
        );
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BASE: &str = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n\
        [upstream]\nhost = \"db.example.com\"\ndatabase = \"app\"\n[credentials]\nsource = \"aws\"\n";

    #[test]
    fn rds_iam_needs_verified_tls_and_stands_alone() {
        let iam = BASE.replace("source = \"aws\"", "source = \"rds-iam\"")
            + "[credentials.rds_iam]\nuser = \"app_iam\"\n";
        // A host off loopback defaults to verify-full.
        let c = parse(&iam, []).unwrap();
        assert_eq!(
            c.databases[0].credentials.rds_iam.as_ref().unwrap().user,
            "app_iam"
        );
        for tls in ["disable", "prefer", "require"] {
            let text = iam.replace(
                "database = \"app\"",
                &format!("database = \"app\"\ntls = \"{tls}\""),
            );
            let e = parse(&text, []).unwrap_err().to_string();
            assert!(
                e.contains("upstream.tls") && e.contains("rds-iam"),
                "{tls}: {e}"
            );
        }
        let with_file = iam.replace("source = \"rds-iam\"", "source = [\"rds-iam\", \"file\"]")
            + "[credentials.file]\npath = \"/s.json\"\n";
        assert!(
            parse(&with_file, [])
                .unwrap_err()
                .to_string()
                .contains("credentials.source")
        );
        let no_user = iam.replace("user = \"app_iam\"", "");
        assert!(
            parse(&no_user, [])
                .unwrap_err()
                .to_string()
                .contains("credentials.rds_iam.user")
        );
    }

    #[test]
    fn an_aws_source_is_read_with_its_defaults() {
        let c = parse(
            &format!("{BASE}[credentials.aws]\nsecret_id = \"prod/app/db\"\n"),
            [],
        )
        .unwrap();
        let aws = c.databases[0].credentials.aws.clone().unwrap();
        assert_eq!(aws.secret_id, "prod/app/db");
        assert!(aws.region.is_none() && aws.endpoint_url.is_none() && aws.queue_url.is_none());
        let env = [(
            "ROTAGATE_CREDENTIALS__AWS__QUEUE_URL".to_owned(),
            "https://sqs.eu-west-1.amazonaws.com/1/q".to_owned(),
        )];
        let c = parse(
            &format!("{BASE}[credentials.aws]\nsecret_id = \"prod/app/db\"\n"),
            env,
        )
        .unwrap();
        assert_eq!(
            c.databases[0]
                .credentials
                .aws
                .clone()
                .unwrap()
                .queue_url
                .as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/1/q")
        );
    }

    #[test]
    fn every_bad_aws_field_is_named() {
        let e = parse(BASE, []).unwrap_err().to_string();
        assert!(e.contains("credentials.aws"), "{e}");
        let bad = format!(
            "{BASE}[credentials.aws]\nsecret_id = \"arn:aws:sqs:us-east-1:1:q\"\nregion = \"US East\"\n\
             endpoint_url = \"localhost:4566\"\nqueue_url = \"sqs/q\"\n"
        );
        let e = parse(&bad, []).unwrap_err().to_string();
        for path in [
            "credentials.aws.secret_id",
            "credentials.aws.region",
            "credentials.aws.endpoint_url",
            "credentials.aws.queue_url",
        ] {
            assert!(e.contains(path), "{path} missing from: {e}");
        }
        let e = parse(
            &format!("{BASE}[credentials.aws]\nregion = \"us-east-1\"\n"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("credentials.aws.secret_id"), "{e}");
    }

    #[test]
    fn a_vault_source_needs_a_login_and_exactly_one_mode() {
        let base = BASE.replace("source = \"aws\"", "source = \"vault\"");
        let kv = format!(
            "{base}[credentials.vault]\naddr = \"https://vault:8200/\"\n\
             approle_role_id = \"r\"\napprole_secret_id_file = \"/s\"\nkv_path = \"app/db\"\n"
        );
        let v = parse(&kv, []).unwrap().databases[0]
            .credentials
            .vault
            .clone()
            .unwrap();
        assert_eq!(v.addr, "https://vault:8200");
        assert!(matches!(v.mode, super::VaultMode::Kv { ref mount, .. } if mount == "secret"));
        // No login configured: VAULT_TOKEN is the last resort.
        let token_only = format!(
            "{base}[credentials.vault]\naddr = \"http://v:8200\"\ndatabase_role = \"app\"\n"
        );
        let e = parse(&token_only, []).unwrap_err().to_string();
        assert!(e.contains("VAULT_TOKEN"), "{e}");
        let env = [("VAULT_TOKEN".to_owned(), "s.secret-token".to_owned())];
        let v = parse(&token_only, env).unwrap().databases[0]
            .credentials
            .vault
            .clone()
            .unwrap();
        assert!(format!("{v:?}").contains("***") && !format!("{v:?}").contains("secret-token"));
        let both = format!(
            "{base}[credentials.vault]\naddr = \"v\"\ntoken_file = \"/t\"\napprole_role_id = \"r\"\n\
             kv_path = \"a\"\ndatabase_role = \"b\"\n"
        );
        let e = parse(&both, []).unwrap_err().to_string();
        for path in [
            "credentials.vault.addr",
            "credentials.vault.token_file",
            "credentials.vault:",
        ] {
            assert!(e.contains(path), "{path} missing from: {e}");
        }
    }

    #[test]
    fn sources_are_a_name_or_an_ordered_list() {
        let list = format!(
            "{}[credentials.aws]\nsecret_id = \"db\"\n[credentials.file]\npath = \"/s\"\n",
            BASE.replace("source = \"aws\"", "source = [\"aws\", \"file\"]")
        );
        let c = parse(&list, []).unwrap();
        assert_eq!(
            c.databases[0].credentials.sources,
            [super::SourceKind::Aws, super::SourceKind::File]
        );
        let twice = BASE.replace("source = \"aws\"", "source = [\"aws\", \"aws\", \"ftp\"]");
        let e = parse(&twice, []).unwrap_err().to_string();
        assert!(
            e.contains("listed twice") && e.contains("must be one of") && !e.contains("ftp"),
            "{e}"
        );
    }
}
