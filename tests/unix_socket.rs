//! The service on a Unix domain socket beside its TCP port (`--listen unix:PATH`): real recorded
//! ticks streamed over the socket, health and reflection on it, the socket file's mode, a stale
//! socket file replaced and a live one refused, and the file removed at shutdown.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use quantd::proto::signal_service_client::SignalServiceClient;
use quantd::server::Server;
use quantd::server::settings::UnixSection;
use tonic::transport::{Channel, Endpoint, Uri};

const BTC_QUOTES: &str = "binance_usdm_btcusdt_20240808_quotes.csv.gz";

/// A channel that dials the Unix socket at `path` (the URI is only a placeholder for HTTP/2).
async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("the Unix socket accepts")
}

async fn start_on(path: &Path) -> Result<Server, quantd::server::StartError> {
    let mut c = test_config();
    c.unix = UnixSection { path: Some(path.to_owned()), mode: Some(0o660), ..Default::default() };
    c.validate().expect("valid");
    Server::start(&c.server_config().unwrap()).await
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("quantd.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_health_and_reflection_over_the_unix_socket_beside_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let server = start_on(&path).await.expect("server starts");
    assert_eq!(server.unix_path(), Some(path.as_path()));
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // The same recorded ticks over the socket and over TCP get the same signals.
    let ticks = recorded(&[BTC_QUOTES], 500);
    let mut over_unix = SignalServiceClient::new(unix_channel(&path).await);
    let signals = stream_all(&mut over_unix, ticks.clone()).await;
    check_signals(&ticks, &signals, DEFAULT_MODEL);
    let again: Vec<_> =
        ticks.iter().map(|t| quantd::proto::Tick { symbol: format!("{}.tcp", t.symbol), ..t.clone() }).collect();
    let mut over_tcp = client(&server).await;
    let tcp_signals = stream_all(&mut over_tcp, again).await;
    let scores = |s: &[quantd::proto::Signal]| s.iter().map(|s| s.score.to_bits()).collect::<Vec<_>>();
    assert_eq!(scores(&signals), scores(&tcp_signals), "one engine, one answer, whatever the transport");

    // Health and reflection (v1 and v1alpha) on the socket too.
    assert_tick_service_serving_and_reflected(unix_channel(&path).await).await;

    server.shutdown(Duration::from_secs(2)).await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced_and_a_live_one_or_a_plain_file_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    // A server that died left its socket file: nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = start_on(&path).await.expect("a stale socket file is replaced");
    let mut c = SignalServiceClient::new(unix_channel(&path).await);
    let ticks = recorded(&[BTC_QUOTES], 10);
    assert_eq!(stream_all(&mut c, ticks).await.len(), 10);

    // A second server on the same, live socket is refused, and the first keeps serving.
    let err = start_on(&path).await.err().expect("a live socket is refused").to_string();
    assert!(err.contains("another server is listening"), "{err}");
    assert_eq!(stream_all(&mut c, recorded(&[BTC_QUOTES], 20)[10..].to_vec()).await.len(), 10);
    server.shutdown(Duration::from_secs(2)).await;

    // A file that is not a socket is never removed.
    std::fs::write(&path, "not a socket").unwrap();
    let err = start_on(&path).await.err().expect("a plain file is refused").to_string();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}
