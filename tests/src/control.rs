//! A client for the VMM's control socket: one JSON request line, one JSON
//! response line (`hull_protocol::vmm_api`), each call bounded in time.

use std::path::Path;
use std::time::Duration;

use hull_protocol::vmm_api::{VmState, VmmRequest, VmmResponse};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one control request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Send `request` on a new connection to `api_sock`; the parsed response.
pub async fn request(api_sock: &Path, request: &VmmRequest) -> VmmResponse {
    let line = serde_json::to_string(request).expect("requests serialize");
    request_line(api_sock, &line).await
}

/// Send one raw request `line` (newline added) on a new connection to
/// `api_sock`; the parsed response.
pub async fn request_line(api_sock: &Path, line: &str) -> VmmResponse {
    let exchange = async {
        let stream = UnixStream::connect(api_sock)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", api_sock.display()));
        let mut stream = BufReader::new(stream);
        stream
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("sending a control request");
        let mut reply = String::new();
        stream
            .read_line(&mut reply)
            .await
            .expect("reading the control response");
        serde_json::from_str::<VmmResponse>(&reply)
            .unwrap_or_else(|e| panic!("control response {reply:?} to {line}: {e}"))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no control response to {line} within {REQUEST_TIMEOUT:?}"))
}

/// Send `request` and require an `ok` response in state `expected`.
pub async fn expect_state(api_sock: &Path, req: VmmRequest, expected: VmState) {
    let response = request(api_sock, &req).await;
    assert_eq!(
        response,
        VmmResponse::Ok { state: expected },
        "control request {req:?}"
    );
}

/// Wait until something listens on `path`, or fail after `timeout`.
pub async fn wait_for_listener(path: &Path, timeout: Duration) {
    let listening = async {
        while UnixStream::connect(path).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(timeout, listening)
        .await
        .unwrap_or_else(|_| panic!("nothing listened on {} within {timeout:?}", path.display()));
}
