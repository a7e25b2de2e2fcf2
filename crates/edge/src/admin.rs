//! The admin listener: `/status` (JSON), `/metrics` (Prometheus text) and
//! `/ready` (200 while serving, 503 otherwise: from the start of a shutdown,
//! `edge.unready_delay` before the listeners close, so a balancer in front
//! stops sending before connections are refused).

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::proxy::{error_response, full, ProxyBody};
use crate::state::EdgeState;
use crate::Phase;

pub async fn serve(
    listener: TcpListener,
    state: Arc<EdgeState>,
    phase: watch::Receiver<Phase>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on it.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let phase = phase.clone();
        let stop = stop.clone();
        let header_read_timeout = state.settings.client_timeout;
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = answer(&state, *phase.borrow(), &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client that never finishes its request head is closed after
            // the edge's client timeout, as on the traffic listeners.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

fn answer(state: &EdgeState, phase: Phase, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints answer GET only",
        );
    }
    match req.uri().path() {
        "/status" => {
            let body =
                serde_json::to_string_pretty(&state.snapshot(phase.as_str())).unwrap_or_default();
            with_type(Response::new(full(body)), "application/json")
        }
        "/metrics" => with_type(
            Response::new(full(state.metrics.encode())),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/ready" => {
            if phase == Phase::Serving {
                with_type(Response::new(full("ready\n")), "text/plain")
            } else {
                error_response(StatusCode::SERVICE_UNAVAILABLE, phase.as_str())
            }
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "admin endpoints: /status, /metrics, /ready",
        ),
    }
}

fn with_type(mut resp: Response<ProxyBody>, content_type: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
