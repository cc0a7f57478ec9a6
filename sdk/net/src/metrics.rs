//! Prometheus metrics over HTTP, on a listener the process binds itself.
//!
//! The agent, the gateway and region servers install the Prometheus recorder and answer `GET`
//! on any path with the text exposition format. Binding here (rather than in the exporter)
//! means `--metrics-listen 127.0.0.1:0` works: the caller learns the port it got and reports
//! it, so nobody has to pick a free port beforehand and race another process for it.
//!
//! The listener runs on a thread of its own with its own single-threaded runtime, so metrics
//! answer even when the process's main runtime is saturated.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often histograms are drained into their summaries (the exporter's own default).
const UPKEEP: Duration = Duration::from_secs(5);
/// How long a connection may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("binding the metrics listener on {address}: {error}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The process has a metrics recorder already.
    #[error("a metrics recorder is installed already")]
    RecorderInstalled,
    /// The listener's thread could not start.
    #[error("starting the metrics thread: {0}")]
    Thread(std::io::Error),
}

/// Installs the Prometheus recorder as the process's global one and serves it on `address`
/// (port 0 picks a free port). Returns the address bound.
pub fn serve(address: SocketAddr) -> Result<SocketAddr, MetricsError> {
    let bind = |error| MetricsError::Bind { address, error };
    let listener = std::net::TcpListener::bind(address).map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MetricsError::Thread)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind)?
    };
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::RecorderInstalled)?;
    if crate::heap::live_bytes().is_some() {
        metrics::describe_gauge!(
            crate::heap::LIVE_BYTES_GAUGE,
            metrics::Unit::Bytes,
            "Heap bytes allocated and not yet freed (read when the metrics are)."
        );
    }
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(run(listener, handle)))
        .map_err(MetricsError::Thread)?;
    Ok(bound)
}

async fn run(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, say: the scrape fails, the process goes on.
                tracing::warn!(%error, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&request, &handle)) }
            });
            // A scraper that sends no complete request in time is dropped.
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "a metrics connection ended");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let response = Response::builder();
    let built = if request.method() == Method::GET {
        if let Some(live) = crate::heap::live_bytes() {
            metrics::gauge!(crate::heap::LIVE_BYTES_GAUGE).set(live as f64);
        }
        response.header("content-type", "text/plain; version=0.0.4").body(Full::new(Bytes::from(handle.render())))
    } else {
        response.status(StatusCode::METHOD_NOT_ALLOWED).header("allow", "GET").body(Full::default())
    };
    built.unwrap_or_else(|_| Response::new(Full::default()))
}
