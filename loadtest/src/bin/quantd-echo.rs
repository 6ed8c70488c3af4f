//! `quantd-echo`: the floor. The same gRPC contract as quantd, answering each tick at once with
//! a `Signal` (no features, no model, no engine thread), so `quantd / echo` shows what quantd
//! itself adds to the round trip.

use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use quantd::proto::signal_service_server::{SignalService, SignalServiceServer};
use quantd::proto::{Signal, SignalBatch, Tick, TickBatch};
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn echo(t: Tick) -> Signal {
    let recv = now_ns();
    Signal {
        symbol: t.symbol,
        seq: t.seq,
        exchange_ts_ns: t.exchange_ts_ns,
        model: "echo".into(),
        server_recv_ns: recv,
        server_send_ns: now_ns(),
        ..Default::default()
    }
}

struct Echo;

#[tonic::async_trait]
impl SignalService for Echo {
    type StreamTicksStream = Pin<Box<dyn Stream<Item = Result<Signal, Status>> + Send>>;

    async fn stream_ticks(&self, req: Request<Streaming<Tick>>) -> Result<Response<Self::StreamTicksStream>, Status> {
        Ok(Response::new(Box::pin(req.into_inner().map(|t| t.map(echo)))))
    }

    async fn predict(&self, req: Request<Tick>) -> Result<Response<Signal>, Status> {
        Ok(Response::new(echo(req.into_inner())))
    }

    type StreamTickBatchesStream = Pin<Box<dyn Stream<Item = Result<SignalBatch, Status>> + Send>>;

    async fn stream_tick_batches(
        &self,
        req: Request<Streaming<TickBatch>>,
    ) -> Result<Response<Self::StreamTickBatchesStream>, Status> {
        Ok(Response::new(Box::pin(req.into_inner().map(|b| b.map(echo_batch)))))
    }

    async fn predict_batch(&self, req: Request<TickBatch>) -> Result<Response<SignalBatch>, Status> {
        Ok(Response::new(echo_batch(req.into_inner())))
    }
}

fn echo_batch(b: TickBatch) -> SignalBatch {
    SignalBatch { signals: b.ticks.into_iter().map(echo).collect() }
}

/// `quantd-echo [ADDR]`: ADDR is `HOST:PORT` (default 127.0.0.1:50061) or `unix:PATH`, a Unix
/// domain socket (a stale socket file there is replaced), as quantd's `--listen` takes them.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50061".into());
    let server = tonic::transport::Server::builder().add_service(SignalServiceServer::new(Echo));
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        println!("quantd-echo listening on unix:{path}");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        server.serve_with_incoming_shutdown(incoming, stop).await?;
        let _ = std::fs::remove_file(path);
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("quantd-echo listening on {}", listener.local_addr()?);
    // quantd sets TCP_NODELAY on accepted sockets; the floor must too, or Nagle's algorithm
    // would hold its replies back and flatter quantd.
    server.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stop).await?;
    Ok(())
}
