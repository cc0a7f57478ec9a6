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
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often histograms are drained into their summaries (the exporter's own default).
const UPKEEP: Duration = Duration::from_secs(5);

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("binding the metrics listener on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
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
    let listener = std::net::TcpListener::bind(address).map_err(|source| MetricsError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| MetricsError::Bind { address, source })?;
    listener.set_nonblocking(true).map_err(|source| MetricsError::Bind { address, source })?;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::RecorderInstalled)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MetricsError::Thread)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(run(listener, handle)))
        .map_err(MetricsError::Thread)?;
    Ok(bound)
}

async fn run(listener: std::net::TcpListener, handle: PrometheusHandle) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "the metrics listener could not start");
            return;
        }
    };
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
            if let Err(error) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%error, "a metrics connection ended");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let response = Response::builder();
    let built = if request.method() == Method::GET {
        response.header("content-type", "text/plain; version=0.0.4").body(Full::new(Bytes::from(handle.render())))
    } else {
        response.status(StatusCode::METHOD_NOT_ALLOWED).header("allow", "GET").body(Full::default())
    };
    built.unwrap_or_else(|_| Response::new(Full::default()))
}
