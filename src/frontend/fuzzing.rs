//! Entry points for the fuzz targets under `fuzz/` (built with `--cfg fuzzing`, and in tests):
//! the relay's scanner and decisions fed arbitrary bytes cut into arbitrary reads, and the
//! post-processing of a startup packet. They must return (an error is fine) and never panic,
//! loop or allocate without bound.

use super::relay::lane::{Lane, Policy, walk};
use super::transaction::flow::{ClientState, Flow};
use super::transaction::incoming::Rx;
use super::transaction::policy::{ClientPolicy, ServerPolicy};
use super::transaction::replies::{Entry, Expect};
use crate::backend::ServerParams;
use crate::backend::prepared::{Known, Prepared};
use crate::config::{OnPin, PoolConfig, PoolMode};
use bytes::BytesMut;
use std::time::Duration;

/// Largest message the fuzzed relay accepts: keeps a claimed length from costing memory.
const MAX: usize = 1 << 16;

/// `data[0]` picks the direction and mode, `data[1..9]` the sizes of the reads and writes, the
/// rest is the byte stream.
pub fn relay(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(rest.len().min(8));
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();
    let tx = mode & 1 == 1;
    let mut side = Side::default();
    let cfg = pool_config();
    match (tx, mode & 2 == 0) {
        (true, true) => run(stream, &sizes, &mut side.client_policy(&cfg)),
        (true, false) => {
            for expect in [Expect::Query, Expect::Parse, Expect::Bind, Expect::Execute] {
                side.flow.replies.push(Entry::new(expect));
            }
            side.flow.replies.push(Entry::new(Expect::Sync));
            run(stream, &sizes, &mut side.server_policy());
        }
        (false, client) => {
            let mut session = super::session::Session::new(&side.counter, MAX);
            if client {
                run(stream, &sizes, &mut session);
            } else {
                session.pending = 2;
                let mut policy = session.incoming(&mut side.status, &mut side.params);
                run(stream, &sizes, &mut policy);
            }
        }
    }
}

/// One client session's state as the relay's policies borrow it (for the fuzzed relay and the
/// walk's property tests).
pub(super) struct Side {
    pub state: ClientState,
    pub prepared: Prepared,
    pub flow: Flow,
    pub status: u8,
    pub known: Known,
    pub params: ServerParams,
    pub counter: metrics::Counter,
}

impl Default for Side {
    fn default() -> Self {
        Self {
            state: ClientState::default(),
            prepared: Prepared::default(),
            flow: Flow::default(),
            status: b'I',
            known: Known::default(),
            params: ServerParams::default(),
            counter: metrics::Counter::noop(),
        }
    }
}

impl Side {
    pub(super) fn client_policy<'a>(&'a mut self, cfg: &'a PoolConfig) -> ClientPolicy<'a> {
        ClientPolicy {
            status: self.status,
            client: &mut self.state,
            prepared: &mut self.prepared,
            flow: &mut self.flow,
            cfg,
        }
    }

    pub(super) fn server_policy(&mut self) -> ServerPolicy<'_> {
        ServerPolicy {
            rx: Rx {
                client: &mut self.state,
                prepared: &mut self.prepared,
                flow: &mut self.flow,
                tx_status: &mut self.status,
                known: &self.known,
            },
            params: &mut self.params,
            transactions: &self.counter,
        }
    }
}

/// Feeds `stream` in reads of the `sizes` (cycled) and writes out whatever is queued, until the
/// walk stops or fails.
fn run(stream: &[u8], sizes: &[usize], policy: &mut impl Policy) {
    let (mut src, mut lane, mut scratch) = (BytesMut::new(), Lane::default(), BytesMut::new());
    let mut sizes = sizes.iter().copied().cycle();
    let mut at = 0;
    loop {
        let n = sizes.next().unwrap_or(usize::MAX).min(stream.len() - at);
        src.extend_from_slice(&stream[at..at + n]);
        at += n;
        if walk(&mut src, &mut lane, MAX, &mut scratch, policy).is_err() {
            return;
        }
        let queued = lane.queued();
        assert!(
            queued <= src.len() + lane.built.len(),
            "queued what is not there"
        );
        lane.wrote(&mut src, queued);
        if walk(&mut src, &mut lane, MAX, &mut scratch, policy).is_err() {
            return;
        }
        assert!(
            src.len() <= stream.len() + MAX,
            "the buffer grew without bound"
        );
        if at == stream.len() && lane.queued() == 0 {
            return;
        }
    }
}

/// A client's first message as pgwire decodes it (the decoder rotagate's listener uses), then
/// rotagate's own checks of a startup packet's parameters.
pub fn startup(data: &[u8]) {
    use pgwire::messages::{DecodeContext, PgWireFrontendMessage};
    let mut buf = BytesMut::from(data);
    let mut ctx = DecodeContext::default();
    for awaiting_ssl in [true, false] {
        ctx.awaiting_frontend_ssl = awaiting_ssl;
        let Ok(Some(m)) = PgWireFrontendMessage::decode(&mut buf, &ctx) else {
            return;
        };
        if let PgWireFrontendMessage::Startup(s) = m {
            if let Ok((_, _, params)) = super::startup::split_params(s.parameters) {
                let _ = super::transaction::settings::Settings::from_startup(&params);
            }
            return;
        }
    }
}

/// The server side of a client's SCRAM-SHA-256 exchange, as `startup::authenticate` runs it:
/// `data[0]` splits the rest into the SASLInitialResponse body and the client's final message,
/// answered with the verifier of a configured user and with the mock one unknown users get.
pub fn client_scram(data: &[u8]) {
    use pgwire::api::auth::sasl::scram::ScramServerAuth;
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (first, last) = rest.split_at(usize::from(cut).min(rest.len()));
    let clients = scram_clients();
    let auth = super::scram::ClientAuth::from_config(&clients);
    for secret in [
        super::scram::pgwire_secret(auth.get("app").expect("configured")),
        auth.mock("nobody"),
    ] {
        let Ok(first) = super::startup::sasl_initial(BytesMut::from(first)) else {
            return;
        };
        let Ok((_, waiting)) =
            ScramServerAuth::new().on_client_first_message_with_secret(&first, secret)
        else {
            continue;
        };
        let _ = waiting.on_client_final_message(last);
    }
}

/// The one client login the SCRAM entry (and its test) authenticates: `app`, password `pw`.
fn scram_clients() -> [crate::config::ClientUser; 1] {
    [crate::config::ClientUser {
        user: "app".into(),
        secret: crate::config::ClientSecret::Password(crate::crypto::SecretString::new(
            "pw".into(),
        )),
        databases: None,
        max_connections: None,
    }]
}

/// The pool settings the fuzzed relay (and the relay's property tests) run with.
pub(super) fn pool_config() -> PoolConfig {
    PoolConfig {
        mode: PoolMode::Transaction,
        size: 2,
        min_idle: 0,
        on_pin: OnPin::Pin,
        max_pinned: None,
        client_view: false,
        idle_transaction_timeout: None,
        query_timeout: None,
        max_prepared_statements: 3,
        max_client_statement_bytes: 1 << 16,
        prepare_unnamed: true,
        acquire_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_lifetime: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fuzz_entry_points_take_any_bytes() {
        let query = b"Q\0\0\0\x0dSELECT 1;\0";
        for mode in 0..4u8 {
            let mut data = vec![mode, 0, 3, 1, 7, 0, 2, 200, 5];
            data.extend_from_slice(query);
            data.extend_from_slice(b"\xff\xff\xff\xff\xff");
            super::relay(&data);
            super::relay(&data[..4]);
        }
        super::startup(b"\0\0\0\x16\0\x03\0\0user\0app\0\0");
        super::startup(b"\0\0\0\x08\x04\xd2\x16\x2f");
        let seed = include_bytes!("../../fuzz/corpus/client_scram/seed");
        super::client_scram(seed);
        for n in [0, 1, 5, 20, seed.len()] {
            super::client_scram(&seed[..n]);
        }
    }

    /// The SCRAM entry reaches the proof check: a real client's messages pass it (and the
    /// fuzz target starts from the same code path as a login).
    #[test]
    fn the_scram_entry_runs_a_real_exchange() {
        use pgwire::api::auth::sasl::scram::ScramServerAuth;
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let clients = super::scram_clients();
        let auth = crate::frontend::scram::ClientAuth::from_config(&clients);
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let mut body = bytes::BytesMut::from(&b"SCRAM-SHA-256\0"[..]);
        body.extend_from_slice(&(client.message().len() as u32).to_be_bytes());
        body.extend_from_slice(client.message());
        let first = crate::frontend::startup::sasl_initial(body).unwrap();
        let secret = crate::frontend::scram::pgwire_secret(auth.get("app").unwrap());
        let (server_first, waiting) = ScramServerAuth::new()
            .on_client_first_message_with_secret(&first, secret)
            .unwrap();
        client.update(server_first.as_bytes()).unwrap();
        assert!(waiting.on_client_final_message(client.message()).is_ok());
    }
}
