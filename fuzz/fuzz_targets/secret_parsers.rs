//! What secret sources hand rotagate: a Secrets Manager / mounted-file JSON secret, and an SQS
//! message body (an EventBridge event, or one inside an SNS envelope), matched against a secret
//! named by name and by ARN. Vault's KV data reaches the same JSON parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotagate::secrets::Credentials;
use rotagate::secrets::aws::SecretMatcher;
use rotagate::secrets::aws::events::classify;

const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db-AbC123";

fuzz_target!(|data: &[u8]| {
    let _ = Credentials::from_json(data, "v".into());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = classify(text, &SecretMatcher::new("prod/app/db"));
        let _ = classify(text, &SecretMatcher::new(ARN));
    }
});
