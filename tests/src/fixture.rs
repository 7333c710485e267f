//! A gateway on RabbitMQ, wired to a fresh [`Topology`], consuming and ready.

use crate::{Bin, Broker, ConfigBuilder, GatewayProcess, Message, Topology};

/// The usual setup of a broker test. Field order is drop order: the gateway stops before the
/// broker helper deletes the test's exchanges and queues.
pub struct Fixture {
    /// The running gateway.
    pub gw: GatewayProcess,
    /// The publisher side.
    pub broker: Broker,
    /// This test's names.
    pub topo: Topology,
}

impl Fixture {
    /// Declares the test's exchanges (durable topic, as their publishers would), adds `[broker]`
    /// (at `amqp_url`) and every channel's source to `cfg`, starts `bin` and waits for
    /// `/readyz`.
    pub async fn start_with(bin: Bin, cfg: ConfigBuilder, amqp_url: &str) -> Fixture {
        Fixture::start_with_env(bin, cfg, amqp_url, &[]).await
    }

    /// [`Fixture::start_with`], the gateway's environment given `env` too.
    pub async fn start_with_env(bin: Bin, cfg: ConfigBuilder, amqp_url: &str, env: &[(&str, &str)]) -> Fixture {
        let topo = Topology::unique();
        let broker = Broker::connect().await;
        for channel in ["deals", "tasks", "payments"] {
            broker.declare_exchange(topo.exchange(channel)).await;
            broker.own_queue(&topo.bind_queue(channel));
        }
        broker.own_queue(&topo.notifications);
        let mut cfg = cfg.str("broker", "url", amqp_url);
        for channel in ["deals", "tasks", "payments"] {
            let section = format!("channels.{channel}.source");
            cfg = cfg
                .str(&section, "exchange", topo.exchange(channel))
                .strs(&section, "routing_keys", &["#"])
                .str(&section, "bind_queue", &topo.bind_queue(channel));
        }
        cfg = cfg.str("channels.notifications.source", "queue", &topo.notifications);
        let gw = GatewayProcess::start_with_env(bin, &cfg.render(), env).await;
        gw.wait_ready().await;
        Fixture { gw, broker, topo }
    }

    /// [`Fixture::start_with`] on the suite's broker.
    pub async fn start(bin: Bin, cfg: ConfigBuilder) -> Fixture {
        Fixture::start_with(bin, cfg, &crate::broker::amqp_url()).await
    }

    /// Publishes `body` as event `kind` to `channel`'s source (type property set, routing key
    /// `kind` too), with a unique `message_id`.
    pub async fn publish(&self, channel: &str, kind: &str, body: &str) {
        self.publish_msg(self.msg(channel, kind, body)).await
    }

    /// A message of type `kind` for `channel`, with a unique `message_id`, to refine.
    pub fn msg(&self, channel: &str, kind: &str, body: &str) -> Message {
        self.topo
            .message(channel, kind, body.as_bytes().to_vec())
            .kind(kind)
            .message_id(&format!("m-{}", crate::broker::unique_suffix()))
    }

    /// Publishes `m`.
    pub async fn publish_msg(&self, m: Message) {
        self.broker.publish(&m).await
    }

    /// Publishes every message in order, pipelined ([`crate::Broker::publish_all`]).
    pub async fn publish_all(&self, messages: &[Message]) {
        self.broker.publish_all(messages).await
    }
}
