//! What drover shows and accepts: the status/control HTTP server (its routes, its listener and
//! connections on a thread of their own, the Host allow-list, the loop's liveness), the events
//! the loop emits and their streams (`GET /events`, `drover events`), Prometheus metrics,
//! control requests to the loop, the command-line client, TLS, and sd_notify to systemd.

pub mod ages;
pub mod client;
pub mod control;
pub mod event_stream;
pub mod events;
pub mod events_cli;
pub mod history;
pub mod hosts;
pub mod listener;
pub mod liveness;
pub mod locate;
pub mod logs;
pub mod metrics;
pub mod preloader_words;
pub mod rolls;
pub mod sd_notify;
pub mod server;
pub mod snapshot;
pub mod tail;
pub mod tls;
pub mod top;
