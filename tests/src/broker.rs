//! RabbitMQ from the publishers' side: a lapin connection that publishes with confirms, and the
//! unique names one test uses, deleted when it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_rs::Runtime;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::Confirmation;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The broker the suite uses (`SSE_GATEWAY_TEST_AMQP_URL` overrides it).
pub fn amqp_url() -> String {
    std::env::var("SSE_GATEWAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Host and port of [`amqp_url`] (for the proxy).
pub fn amqp_addr() -> String {
    let url = amqp_url();
    let after_at = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
    let host = after_at.trim_start_matches("amqp://");
    host.split('/').next().unwrap_or("127.0.0.1:5672").to_string()
}

/// A header value as a publisher sets it.
#[derive(Debug, Clone)]
pub enum Header {
    /// A long string.
    Str(String),
    /// A 32-bit signed integer.
    Int(i32),
    /// A 64-bit signed integer.
    Long(i64),
    /// A double (a kind no header of the contract has).
    Float(f64),
    /// An array (`recipient_ids` must be a string, D3: classic queues keep arrays, stream queues
    /// drop them).
    Array(Vec<Header>),
    /// Void (`V`): what pika, Go's, Java's and amqplib's clients send for None / nil / null.
    Void,
}

impl Header {
    fn amqp(&self) -> AMQPValue {
        match self {
            Header::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
            Header::Int(i) => AMQPValue::LongInt(*i),
            Header::Long(i) => AMQPValue::LongLongInt(*i),
            Header::Float(f) => AMQPValue::Double(*f),
            Header::Array(items) => AMQPValue::FieldArray(FieldArray::from(items.iter().map(Header::amqp).collect::<Vec<_>>())),
            Header::Void => AMQPValue::Void,
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Exchange (`""` = the default exchange, routing straight to the queue named by the key).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// AMQP `type` property (the event type).
    pub kind: Option<String>,
    /// Headers.
    pub headers: Vec<(String, Header)>,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

impl Message {
    /// A message to `exchange` with `routing_key` and this body; no type, headers or id yet.
    pub fn new(exchange: &str, routing_key: &str, body: impl Into<Vec<u8>>) -> Message {
        Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            ..Message::default()
        }
    }

    /// Sets the `type` property.
    pub fn kind(mut self, kind: &str) -> Message {
        self.kind = Some(kind.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: Header) -> Message {
        self.headers.push((name.into(), value));
        self
    }

    /// Sets header `recipient_ids` (comma-separated user ids).
    pub fn recipients(self, ids: &str) -> Message {
        self.header("recipient_ids", Header::Str(ids.into()))
    }

    /// Sets `message_id`.
    pub fn message_id(mut self, id: &str) -> Message {
        self.message_id = Some(id.into());
        self
    }
}

/// A publisher connection to RabbitMQ (publisher confirms on, mandatory publishes). Deletes
/// every exchange and queue registered with it when dropped.
pub struct Broker {
    conn: Connection,
    channel: Channel,
    owned_exchanges: Mutex<Vec<String>>,
    owned_queues: Mutex<Vec<String>>,
}

async fn connect() -> Connection {
    let url = amqp_url();
    Connection::connect_with_runtime(&url, ConnectionProperties::default(), Runtime::tokio_current())
        .await
        .unwrap_or_else(|e| panic!("connect to RabbitMQ at {url} ({e}); start it with .ci/ensure-rabbitmq"))
}

impl Broker {
    /// Connects to [`amqp_url`].
    pub async fn connect() -> Broker {
        let conn = connect().await;
        let channel = conn.create_channel().await.expect("a channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm.select");
        Broker { conn, channel, owned_exchanges: Mutex::default(), owned_queues: Mutex::default() }
    }

    /// Declares a durable topic exchange (as a publisher owning it would) and deletes it on drop.
    pub async fn declare_exchange(&self, name: &str) {
        let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
        self.channel
            .exchange_declare(name.into(), ExchangeKind::Topic, opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
        self.own_exchange(name);
    }

    /// Deletes `name` on drop (an exchange someone else declared).
    pub fn own_exchange(&self, name: &str) {
        self.owned_exchanges.lock().unwrap().push(name.into());
    }

    /// Deletes queue `name` on drop (a queue the gateway declared).
    pub fn own_queue(&self, name: &str) {
        self.owned_queues.lock().unwrap().push(name.into());
    }

    /// Publishes and waits for the broker's confirm. Panics when the broker refuses it or when
    /// no queue is bound to take it (mandatory: an unroutable message would be silently lost,
    /// usually because the gateway has not bound its queue yet).
    pub async fn publish(&self, m: &Message) {
        let confirm = self.send(m).await;
        check_confirm(m, confirm.await);
    }

    /// Publishes every message in order, keeping up to 256 confirms outstanding (much faster
    /// than one round trip each), and waits for all confirms; panics like [`Broker::publish`].
    pub async fn publish_all(&self, messages: &[Message]) {
        for batch in messages.chunks(256) {
            let mut pending = Vec::with_capacity(batch.len());
            for m in batch {
                pending.push(self.send(m).await);
            }
            for (m, confirm) in batch.iter().zip(pending) {
                check_confirm(m, confirm.await);
            }
        }
    }

    /// Sends one message; the returned future is its confirm.
    async fn send(&self, m: &Message) -> lapin::PublisherConfirm {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(k) = &m.kind {
            props = props.with_type(k.as_str().into());
        }
        if let Some(id) = &m.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if !m.headers.is_empty() {
            let mut t = FieldTable::default();
            for (k, v) in &m.headers {
                t.insert(k.as_str().into(), v.amqp());
            }
            props = props.with_headers(t);
        }
        let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
        self.channel
            .basic_publish(m.exchange.as_str().into(), m.routing_key.as_str().into(), opts, &m.body, props)
            .await
            .unwrap_or_else(|e| panic!("publish to {:?}/{:?}: {e}", m.exchange, m.routing_key))
    }
}

fn check_confirm(m: &Message, confirm: lapin::Result<Confirmation>) {
    assert!(routed(m, confirm), "unroutable: no queue bound for {:?}/{:?} (is the gateway consuming?)", m.exchange, m.routing_key);
}

/// Whether a confirmed publish reached a queue; panics when the broker did not take it.
fn routed(m: &Message, confirm: lapin::Result<Confirmation>) -> bool {
    let confirm = confirm.unwrap_or_else(|e| panic!("confirm of a publish to {:?}/{:?}: {e}", m.exchange, m.routing_key));
    match confirm {
        Confirmation::Ack(None) => true,
        Confirmation::Ack(Some(_)) => false,
        other => panic!("broker did not take the message to {:?}/{:?}: {other:?}", m.exchange, m.routing_key),
    }
}

impl Broker {
    /// Publishes and waits for the broker's confirm; whether a queue took it (false: no queue
    /// is bound for it). Panics when the broker refuses it.
    pub async fn publish_routed(&self, m: &Message) -> bool {
        let confirm = self.send(m).await;
        routed(m, confirm.await)
    }

    /// Deletes exchange `name` now (as a deploy tool or an operator might); RabbitMQ drops
    /// every binding from it.
    pub async fn delete_exchange(&self, name: &str) {
        self.channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("delete exchange {name}: {e}"));
    }

    /// Starts a consumer on queue `name` on a channel of its own (as another instance of the
    /// gateway would); it takes its share of the queue's messages (unacked) until dropped.
    pub async fn consume(&self, name: &str) -> (Channel, lapin::Consumer) {
        let ch = self.conn.create_channel().await.expect("a channel");
        let consumer = ch
            .basic_consume(name.into(), "another-instance".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("consume from {name}: {e}"));
        (ch, consumer)
    }

    /// Deletes queue `name` now (as an operator or another application might).
    pub async fn delete_queue(&self, name: &str) {
        self.channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("delete queue {name}: {e}"));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let exchanges = std::mem::take(&mut *self.owned_exchanges.lock().unwrap());
        let queues = std::mem::take(&mut *self.owned_queues.lock().unwrap());
        if exchanges.is_empty() && queues.is_empty() {
            return;
        }
        // Drop cannot await: delete on a thread of its own with its own runtime and connection,
        // so the names go away even when the test panicked.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let conn = connect().await;
                let ch = conn.create_channel().await.expect("a channel");
                for q in queues {
                    let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
                }
                for x in exchanges {
                    let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
                }
                let _ = conn.close(200, "cleanup done".into()).await;
            });
        });
        let _ = cleanup.join();
        let _ = &self.conn;
    }
}

/// The names one test uses: the seed's sources with a unique suffix, so tests run in parallel
/// (and against a broker with leftovers) without crosstalk.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Unique suffix.
    pub suffix: String,
    /// Exchange of `deals` (seed: `crm.domain`).
    pub deals: String,
    /// Exchange of `tasks` (seed: `tasks.events`).
    pub tasks: String,
    /// Exchange of `payments` (seed: `payments.status`).
    pub payments: String,
    /// Queue of `notifications` (seed: `notifications.internal`).
    pub notifications: String,
}

impl Topology {
    /// Fresh names.
    pub fn unique() -> Topology {
        let suffix = unique_suffix();
        Topology {
            deals: format!("crm.domain.t-{suffix}"),
            tasks: format!("tasks.events.t-{suffix}"),
            payments: format!("payments.status.t-{suffix}"),
            notifications: format!("notifications.internal.t-{suffix}"),
            suffix,
        }
    }

    /// The gateway-owned queue bound to a channel's exchange.
    pub fn bind_queue(&self, channel: &str) -> String {
        format!("sse-gateway.{channel}.t-{}", self.suffix)
    }

    /// The exchange feeding `channel` (`deals`, `tasks`, `payments`).
    pub fn exchange(&self, channel: &str) -> &str {
        match channel {
            "deals" => &self.deals,
            "tasks" => &self.tasks,
            "payments" => &self.payments,
            _ => panic!("{channel} has no exchange source in the test topology"),
        }
    }

    /// A message that reaches `channel`: through its exchange, or to its queue through the
    /// default exchange (`notifications`).
    pub fn message(&self, channel: &str, routing_key: &str, body: impl Into<Vec<u8>>) -> Message {
        match channel {
            "notifications" => Message::new("", &self.notifications, body),
            _ => Message::new(self.exchange(channel), routing_key, body),
        }
    }
}

/// A suffix no other test (in this or another run) uses: process id, time and a counter.
pub fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{}-{:x}-{}", std::process::id(), nanos & 0xffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}
