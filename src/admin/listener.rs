//! The admin listener's connections, with limits no client of it can get around: at most
//! `admin.max_connections` at once (a new one beyond that drops the oldest that has not sent a
//! request yet), request headers within a few seconds (hyper's `header_read_timeout`, which
//! also closes a connection that sends nothing), a small request body (413 beyond it, from
//! tower-http before any of it is read) and a deadline per request (408).

use crate::frontend::pending::{Evicted, Pending, Ticket};
use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Headers of a request must arrive within this, counted from the connection's start or the
/// end of its previous request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body; `POST /rotate` needs none.
pub const MAX_BODY: usize = 4096;
/// One request's deadline, `POST /rotate` (a whole rotation attempt) included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The router with the body limit and the request deadline.
pub fn limited(router: Router) -> Router {
    router
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// Serves `app` until `stop`, then gives open requests `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    stop: CancellationToken,
    grace: Duration,
) {
    let open = Pending::named(
        max_connections,
        (
            "rotagate_admin_connections",
            "rotagate_admin_connections_evicted_total",
        ),
    );
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(10);
                tracker.spawn(connection(tcp, app.clone(), open.enter(), stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(grace, tracker.wait()).await;
}

async fn connection(
    tcp: TcpStream,
    app: Router,
    (ticket, mut evicted): (Ticket, Evicted),
    stop: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let ticket = Arc::new(ticket);
    let service = TowerToHyperService::new(app.map_request({
        let ticket = ticket.clone();
        move |req: Request<hyper::body::Incoming>| {
            ticket.progress();
            req.map(axum::body::Body::new)
        }
    }));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(error = %e, "admin connection ended with an error");
        },
        _ = evicted.wait() => {
            tracing::debug!("admin connection dropped for a newer one (admin.max_connections)");
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
