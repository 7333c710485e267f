//! The sans-IO core of sse-gateway.
//!
//! This crate holds every rule of the gateway that does not touch a socket, a broker or a clock:
//! request heads to decisions ([`Front`]), JWT verification ([`auth`]), the event catalogue and
//! payload validation ([`catalogue`]), upstream messages to encoded events ([`Ingest`]), SSE
//! framing ([`sse`]), resume buffers, heartbeat/warning/expiry timers and the per-user stream
//! limit ([`Gateway`]), start-up checks shared by the frontends ([`setup`]), demo mode's
//! sample events and page ([`demo`]) and the command line both binaries share ([`cli`]).
//! Frontends (`sse-gateway` on tokio, `sse-gateway-smol` on smol) bind it to TCP, RabbitMQ and
//! timers.
//!
//! # The sans-IO contract
//! * Time is an argument: every input that depends on time takes `now: Instant` (and, where a
//!   token is judged, the wall clock: `unix_now` seconds, or `since_epoch` to the sub-second
//!   where a stream's end at `exp` is placed). Nothing here reads a clock, except
//!   [`cli`], the process start-up both `main`s call, which is outside the state machine.
//! * Inputs change state and queue outputs; they never block and never panic on input.
//! * Outputs are pulled: [`Gateway::poll_output`] (wake a writer, close a stream, read back
//!   history), [`Gateway::take_output`] (a stream's bytes), [`Gateway::poll_timeout`] (when to
//!   call [`Gateway::handle_timeout`]). Each input leaves the state consistent, so draining in any
//!   order is correct; the documented loop is input, then `poll_output` until `None`, then re-arm
//!   the timer.
//!
//! # Sharding
//! [`Front`] and [`Ingest`] produce values (`StreamRequest`, `Event`) that any thread may hand to
//! any shard. A frontend with several worker threads runs one [`Gateway`] per worker, routes each
//! stream to the shard of its user ([`shard_of`]) so the per-user limit stays local, and gives
//! every shard a clone of each `Event` (one `Arc`; the frame bytes are shared).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
mod backoff;
mod buffer;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod contract;
pub mod demo;
mod gateway;
mod http;
mod ids;
mod ingest;
pub mod metrics;
pub mod setup;
pub mod sse;

pub use backoff::Backoff;
pub use auth::{issue_hs256, Identity, JwtVerifier, KeyMaterial, ReloadableVerifier, TokenError, TokenVerifier};
pub use catalogue::Catalogue;
pub use config::{Config, ConfigError, Settings};
pub use gateway::{log_continues, log_resumes, logs_meet, BackfillStep, Gateway, Output, TimerReason, KEEP_FRAMES, LOG_SKIP};
pub use http::{shard_of, Front, PublishRequest, Refusal, Response, Resume, Routed, StreamRequest};
pub use ids::{process_epoch, ChannelId, EventId, StreamId, MAX_CHANNELS};
pub use ingest::{misnamed_header, parse_publish, Dropped, Event, HeaderValue, Ingest, RecentIds, Recipients, UpstreamMessage};
pub use metrics::{CloseReason, DropReason, Metrics};
