//! A TCP proxy that can turn into a black hole, for tests of dead connections: a silent
//! network partition sends no FIN and no RST, it only stops carrying bytes.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection made to [`Proxy::port`] to `127.0.0.1:<upstream>`, on a runtime
/// of its own; stopped (every connection closed) when dropped.
pub struct Proxy {
    port: u16,
    cut: Arc<watch::Sender<u64>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts listening on a free port of 127.0.0.1.
    pub fn start(upstream: u16) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(watch::channel(0u64).0);
        let accepted = cut.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                // Subscribing marks the current generation seen: only a later cut stops it.
                tokio::spawn(forward(client, upstream, accepted.subscribe()));
            }
        });
        Proxy {
            port,
            cut,
            runtime: Some(runtime),
        }
    }

    /// The port to connect to instead of the upstream one.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection open now stops forwarding in both directions, its sockets kept open
    /// (nothing is closed, nothing is answered). Connections made later are forwarded.
    pub fn black_hole(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn forward(client: TcpStream, upstream: u16, mut cut: watch::Receiver<u64>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pump = async {
        tokio::join!(
            tokio::io::copy(&mut client_read, &mut server_write),
            tokio::io::copy(&mut server_read, &mut client_write)
        )
    };
    tokio::select! {
        _ = pump => {}
        _ = cut.changed() => {
            // The halves stay open (and unread) until the proxy stops.
            std::future::pending::<()>().await;
        }
    }
}
