//! A TCP proxy a test controls, between onepd nodes and PostgreSQL: it
//! passes bytes, cuts a node off (a partition: nothing flows either way and
//! connections hang), or drops every connection and refuses new ones (a
//! database restart).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes bytes both ways.
    Pass,
    /// Holds every connection open and passes nothing (a partition).
    CutOff,
    /// Closes every connection and refuses new ones (a restart).
    Refuse,
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Connections held open while cut off, closed when the cut ends.
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream` (`HOST:PORT`) on a free local port.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(Mode::Pass);
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let upstream = upstream.to_owned();
        let task = tokio::spawn({
            let (mode, held) = (mode.clone(), held.clone());
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else { return };
                    let now = *mode.borrow();
                    match now {
                        Mode::Refuse => {
                            let _ = client.shutdown().await;
                        }
                        Mode::CutOff => held.lock().unwrap().push(client),
                        Mode::Pass => {
                            let mut changes = mode.subscribe();
                            let (upstream, held) = (upstream.clone(), held.clone());
                            tokio::spawn(async move {
                                let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                                let pumped = tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
                                    changed = changes.wait_for(|mode| *mode != Mode::Pass) => changed.ok().map(|mode| *mode),
                                };
                                if pumped == Some(Mode::CutOff) {
                                    // Nothing flows any more, and nothing is closed.
                                    held.lock().unwrap().extend([client, server]);
                                }
                            });
                        }
                    }
                }
            }
        });
        Proxy { port, mode, held, task }
    }

    /// The url of `database_url` through this proxy.
    pub fn url(&self, database_url: &str) -> String {
        let (scheme, rest) = database_url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        let user = authority.split_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}/{path}", self.port)
    }

    /// Switches to `mode`; leaving a cut closes what it held.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode != Mode::CutOff {
            self.held.lock().unwrap().clear();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
