//! Validation of the `[credentials]` section and its source sub-sections.

use super::raw::*;
use super::validate::Check;
use super::*;

pub(super) fn credentials(c: &mut Check, r: Option<RawCredentials>) -> CredentialsConfig {
    let r = r.unwrap_or_else(|| {
        c.err("credentials", "the [credentials] section is required");
        RawCredentials::default()
    });
    let source = source_kind(c, r.source.as_deref());
    let file = r.file.map(|f| FileSourceConfig {
        path: c.required("credentials.file.path", f.path.as_ref()).into(),
    });
    let aws = r.aws.map(|a| aws(c, a));
    match source {
        SourceKind::File if file.is_none() => c.err(
            "credentials.file",
            "[credentials.file] with a path is required when source = \"file\"",
        ),
        SourceKind::Aws if aws.is_none() => c.err(
            "credentials.aws",
            "[credentials.aws] with a secret_id is required when source = \"aws\"",
        ),
        SourceKind::Vault => c.err(
            "credentials.source",
            "\"vault\" is not supported by this build yet",
        ),
        _ => {}
    }
    CredentialsConfig {
        source,
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
        cache_key: None,
    }
}

fn source_kind(c: &mut Check, v: Option<&str>) -> SourceKind {
    match v {
        Some("file") => SourceKind::File,
        Some("aws") => SourceKind::Aws,
        Some("vault") => SourceKind::Vault,
        Some(other) => {
            c.err(
                "credentials.source",
                format!("{other:?} is not one of file, aws, vault"),
            );
            SourceKind::File
        }
        None => {
            c.err("credentials.source", "is required (file, aws or vault)");
            SourceKind::File
        }
    }
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
                format!("{region:?} is not a region like \"us-east-1\""),
            );
        }
    }
    AwsSourceConfig {
        secret_id,
        region,
        endpoint_url: http_url(c, "credentials.aws.endpoint_url", r.endpoint_url),
        queue_url: http_url(c, "credentials.aws.queue_url", r.queue_url),
    }
}

fn http_url(c: &mut Check, path: &str, v: Option<String>) -> Option<String> {
    let v = v.filter(|s| !s.trim().is_empty())?;
    if !(v.starts_with("https://") || v.starts_with("http://")) {
        c.err(path, format!("{v:?} is not an http:// or https:// URL"));
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BASE: &str = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n\
        [upstream]\nhost = \"db.example.com\"\ndatabase = \"app\"\n[credentials]\nsource = \"aws\"\n";

    #[test]
    fn an_aws_source_is_read_with_its_defaults() {
        let c = parse(
            &format!("{BASE}[credentials.aws]\nsecret_id = \"prod/app/db\"\n"),
            [],
        )
        .unwrap();
        let aws = c.credentials.aws.unwrap();
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
            c.credentials.aws.unwrap().queue_url.as_deref(),
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
}
