//! The metrics listener: bound on port 0, it says which port it got and serves what the process
//! records there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

fn request(address: SocketAddr, method: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "{method} /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn serves_the_process_metrics_on_the_port_it_bound() {
    let bound = baton_net::metrics::serve("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(bound.port(), 0, "the port bound is reported");
    metrics::counter!("baton_test_things_total").increment(3);
    let text = request(bound, "GET");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("baton_test_things_total 3"), "{text}");
    assert!(request(bound, "POST").starts_with("HTTP/1.1 405"));
    // One recorder per process: a second listener is refused, and the first keeps serving.
    assert!(matches!(
        baton_net::metrics::serve("127.0.0.1:0".parse().unwrap()),
        Err(baton_net::metrics::MetricsError::RecorderInstalled)
    ));
    // A taken address is a clear error, before anything is installed.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let error = baton_net::metrics::serve(taken).unwrap_err();
    assert!(error.to_string().starts_with(&format!("binding the metrics listener on {taken}")), "{error}");
    assert!(request(bound, "GET").contains("baton_test_things_total 3"));
}
