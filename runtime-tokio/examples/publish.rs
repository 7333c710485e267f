//! Publishes one message to RabbitMQ, the way a backend service should (D4): persistent,
//! mandatory, and confirmed by the broker (docs/operations.md, "Publishers"). For trying the
//! gateway by hand:
//!
//! ```sh
//! cargo run --release -p sse-gateway-tokio --example publish -- \
//!     --exchange crm.domain --type deal.created --header schema_version=1 '{"deal_id": "..."}'
//! ```
#![forbid(unsafe_code)]

use async_rs::Runtime;
use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Publishes one JSON message to an exchange (or, with the default exchange, to a queue).
#[derive(Parser)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Exchange (empty: the default exchange, routing key = queue name).
    #[arg(long, default_value = "")]
    exchange: String,
    /// Routing key (default: the type).
    #[arg(long)]
    routing_key: Option<String>,
    /// AMQP `type` property: the event type.
    #[arg(long = "type")]
    kind: Option<String>,
    /// `message_id` property.
    #[arg(long)]
    message_id: Option<String>,
    /// Header `name=value`; integer values are sent as integers (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// The body (the event's JSON payload).
    body: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let conn = Connection::connect_with_runtime(&a.url, ConnectionProperties::default(), Runtime::tokio_current()).await?;
    let chan = conn.create_channel().await?;
    chan.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut headers = FieldTable::default();
    for h in &a.header {
        let (k, v) = h.split_once('=').ok_or_else(|| anyhow::anyhow!("--header wants name=value"))?;
        let v = match v.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(v.into()),
        };
        headers.insert(k.into(), v);
    }
    // Delivery mode 2: kept across a broker restart in a durable queue.
    let mut props = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    if let Some(k) = &a.kind {
        props = props.with_type(k.as_str().into());
    }
    if let Some(m) = &a.message_id {
        props = props.with_message_id(m.as_str().into());
    }
    let key = a.routing_key.or(a.kind).unwrap_or_default();
    let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
    let confirm = chan.basic_publish(a.exchange.as_str().into(), key.as_str().into(), opts, a.body.as_bytes(), props).await?.await?;
    conn.close(200, "bye".into()).await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        // Mandatory: returned when no queue took it (is the gateway's queue bound?).
        Confirmation::Ack(Some(_)) => anyhow::bail!("no queue took the message (routing key {key:?})"),
        other => anyhow::bail!("the broker did not take the message: {other:?}"),
    }
}
