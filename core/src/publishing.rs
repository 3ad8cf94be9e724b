//! Publishing: a broadcast (HTTP API or client `publish`) becomes one
//! engine append per room; the engine's answer hands the numbered frame
//! to the room's stream (`stream`, which delivers it to the members with
//! `delivery` when it is next), and the publisher is answered once every
//! room's append has been answered. A direct message (`/api/send`) is
//! built here and delivered by `delivery`, through the engine to other
//! nodes.
//!
//! `delivered` in a receipt counts this node's members of the room when
//! the engine's answer was handled: each of them receives the message in
//! order, held for conflation, or is told (closed as a slow consumer or
//! warned of a `ROOM_GAP`). With shards, the members on the node's other
//! shards are added as the engine seam tells them with the answer
//! (`EngineEvent::Appended::peer_members`). Members on other nodes are
//! not counted.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::calls::{Call, PendingPublish, Publisher};
use crate::codes::ErrorCode;
use crate::config::Ticket;
use crate::conflation::series_of;
use crate::engine::{CallId, EngineError, EngineRequest, Numbered, Unnumbered};
use crate::envelope;
use crate::input::SendTarget;
use crate::machine::Core;
use crate::names::{ConnectionId, RoomName};
use crate::parse::RequestId;
use crate::time::Now;
use crate::validate::{
    validate_message, DirectMessage, Publish, PublishError, PublishReceipt, RoomSeq,
};

/// Room for the envelope around a payload (type, timestamp, room, seq, id):
/// a payload bigger than the outbound bound minus this could never be
/// delivered, so it is refused up front.
const ENVELOPE_OVERHEAD_MAX: usize = 512;

impl Core {
    /// `POST /api/broadcast`: one append per room; the answer comes later
    /// with the returned ticket.
    pub(crate) fn api_broadcast(
        &mut self,
        now: Now,
        publish: Publish,
    ) -> Result<Ticket, PublishError> {
        let ticket = self.engine.next_ticket();
        self.append_all(now, publish, Publisher::Api(ticket))?;
        Ok(ticket)
    }

    /// A client's `publish` action: validated here, answered once appended.
    pub(crate) fn client_publish(
        &mut self,
        now: Now,
        slot: u32,
        room: RoomName,
        kind: String,
        data: Map<String, Value>,
        id: Option<RequestId>,
    ) {
        let Some(connection) = self.conns.at(slot) else {
            return;
        };
        let conn = connection.id;
        let allowed = connection
            .identity
            .user()
            .is_some_and(|u| u.can_publish(&room));
        if !allowed {
            let message = format!("no publish grant for room: {room}");
            let frame = envelope::error(now.unix_ms, ErrorCode::Forbidden, &message, id.as_ref());
            return self.send(slot, frame);
        }
        let publish = Publish {
            rooms: vec![room],
            kind,
            data,
        };
        let invalid = validate_message(&self.config.types, &publish.kind, &publish.data).err();
        let result = match invalid {
            Some(error) => Err(error),
            None => self.append_all(
                now,
                publish,
                Publisher::Client {
                    conn,
                    id: id.clone(),
                },
            ),
        };
        match result {
            Ok(()) => self.start_waiting(conn),
            Err(error) => {
                let code = match error {
                    PublishError::UnknownType(_) => ErrorCode::UnknownType,
                    PublishError::InvalidKey(_) => ErrorCode::InvalidKey,
                    PublishError::InvalidRoom(_) => ErrorCode::InvalidSubscription,
                    PublishError::EngineUnavailable { .. } => ErrorCode::EngineUnavailable,
                    PublishError::InvalidBody(_) | PublishError::TooLarge(_) => {
                        ErrorCode::InvalidMessage
                    }
                };
                let frame = envelope::error(now.unix_ms, code, error.message(), id.as_ref());
                self.send(slot, frame);
            }
        }
    }

    /// Serializes the payload once, each room's envelope once (without its
    /// `seq`), and asks the engine to append it to every room.
    fn append_all(
        &mut self,
        now: Now,
        publish: Publish,
        publisher: Publisher,
    ) -> Result<(), PublishError> {
        let payload = self.serialize_payload(&publish.data)?;
        if !self.engine_has_room(publish.rooms.len()) {
            return Err(PublishError::EngineUnavailable {
                message: format!(
                    "the engine has {} requests in flight (engine_calls_max); try again",
                    self.engine.in_flight()
                ),
                appended: Vec::new(),
            });
        }
        let series = series_of(&publish.kind, &publish.data);
        let number = self.engine.new_publish();
        let mut pending = PendingPublish {
            publisher,
            rooms: Vec::with_capacity(publish.rooms.len()),
            outstanding: publish.rooms.len(),
        };
        for (index, room) in publish.rooms.into_iter().enumerate() {
            let (head, tail) =
                envelope::broadcast_parts(&publish.kind, now.unix_ms, &room, &payload);
            let call = self.engine.call(Call::Append {
                publish: number,
                index,
            });
            // What this node has streamed of the room: the engine's
            // rollback check (a store behind it has lost messages).
            let known = self.rooms.get(&room).and_then(|r| r.cursor.clone());
            self.engine.push(EngineRequest::Append {
                call,
                room: room.clone(),
                message: Unnumbered {
                    head,
                    tail,
                    series: series.clone(),
                },
                known,
            });
            pending.rooms.push((room, None));
        }
        self.engine.insert_publish(number, pending);
        Ok(())
    }

    /// The answer to one room's append: fan out (if this node follows the
    /// room and the message is next), then answer the publisher once all
    /// its rooms are answered.
    pub(crate) fn on_appended(
        &mut self,
        now: Now,
        call: CallId,
        result: Result<Numbered, EngineError>,
        peer_members: u64,
    ) {
        let Some(Call::Append { publish, index }) = self.engine.take(call) else {
            self.impossible("an append answer for no append in flight");
            return;
        };
        let outcome = match result {
            Ok(message) => {
                let (room, epoch, seq) = (message.room.clone(), message.epoch.clone(), message.seq);
                self.on_stream(message);
                // This core's members, and those of the node's other
                // shards (told by the engine seam; 0 with one core).
                let delivered = self.member_count(&room) as u64 + peer_members;
                Ok((epoch, seq, delivered))
            }
            Err(error) => Err(error),
        };
        let Some(pending) = self.engine.publish_mut(publish) else {
            self.impossible("an append of an unknown publish");
            return;
        };
        pending.rooms[index].1 = Some(outcome);
        pending.outstanding -= 1;
        if pending.outstanding > 0 {
            return;
        }
        if let Some(pending) = self.engine.remove_publish(publish) {
            self.answer_publisher(now, pending);
        }
    }

    fn answer_publisher(&mut self, now: Now, pending: PendingPublish) {
        let mut receipt = PublishReceipt {
            delivered: 0,
            rooms: Vec::with_capacity(pending.rooms.len()),
        };
        let mut failed = Vec::new();
        for (room, outcome) in pending.rooms {
            match outcome {
                Some(Ok((epoch, seq, delivered))) => {
                    receipt.delivered += delivered;
                    receipt.rooms.push(RoomSeq {
                        room,
                        epoch: epoch.to_string(),
                        seq,
                    });
                }
                Some(Err(why)) => failed.push(format!("{room} ({})", why.message())),
                None => self.impossible("a publish answered before all its rooms"),
            }
        }
        let result = if failed.is_empty() {
            Ok(receipt)
        } else {
            let appended: Vec<String> = receipt
                .rooms
                .iter()
                .map(|r| format!("{} (seq {})", r.room, r.seq))
                .collect();
            let mut message = format!("the engine did not append to: {}", failed.join(", "));
            if !appended.is_empty() {
                message.push_str(&format!(
                    "; appended and delivered: {}",
                    appended.join(", ")
                ));
            }
            Err(PublishError::EngineUnavailable {
                message,
                appended: receipt.rooms,
            })
        };
        match pending.publisher {
            Publisher::Api(ticket) => self.engine.answer(ticket, result),
            Publisher::Client { conn, id } => {
                self.answer_client_publish(now, conn, id, result);
            }
        }
    }

    fn answer_client_publish(
        &mut self,
        now: Now,
        conn: ConnectionId,
        id: Option<RequestId>,
        result: Result<PublishReceipt, PublishError>,
    ) {
        let Some(slot) = self.conns.slot(conn) else {
            return; // closed while waiting
        };
        self.finish_waiting(conn);
        let frame = match result {
            Ok(receipt) => {
                #[derive(Serialize)]
                struct Published<'a> {
                    message: String,
                    room: &'a str,
                    seq: u64,
                    delivered: u64,
                }
                let Some(room) = receipt.rooms.first() else {
                    self.impossible("a client publish has one room");
                    return;
                };
                let data = Published {
                    message: format!("Published to room: {}", room.room),
                    room: room.room.as_str(),
                    seq: room.seq,
                    delivered: receipt.delivered,
                };
                envelope::envelope("system_info", now.unix_ms, None, &data, id.as_ref())
            }
            Err(error) => envelope::error(
                now.unix_ms,
                ErrorCode::EngineUnavailable,
                error.message(),
                id.as_ref(),
            ),
        };
        self.send(slot, frame);
    }

    /// The payload serialized once, or `TooLarge` when no connection could
    /// ever take a frame carrying it.
    fn serialize_payload(&self, data: &Map<String, Value>) -> Result<Box<RawValue>, PublishError> {
        let raw = serde_json::value::to_raw_value(data)
            .map_err(|_| PublishError::InvalidBody("payload cannot be serialized".into()))?;
        let bound = self.config.limits.outbound_queue_bytes_max;
        if raw.get().len() + ENVELOPE_OVERHEAD_MAX > bound {
            return Err(PublishError::TooLarge(format!(
                "payload of {} bytes does not fit the outbound queue bound of {bound} bytes",
                raw.get().len()
            )));
        }
        Ok(raw)
    }

    /// `POST /api/send`: a direct message (not numbered) to this node's
    /// targets, and through the engine to every other node's (a user's
    /// connections, or a connection that is not here). Returns how many
    /// local connections got it.
    pub(crate) fn direct(&mut self, now: Now, message: DirectMessage) -> Result<u64, PublishError> {
        let payload = self.serialize_payload(&message.data)?;
        let frame = envelope::envelope(&message.kind, now.unix_ms, None, &payload, None);
        let elsewhere = message.to_other_nodes
            && match &message.target {
                SendTarget::User(_) => true,
                SendTarget::Connection(conn) => !self.conns.is_open(*conn),
            };
        let delivered = self.deliver_direct(&message.target, &frame);
        if elsewhere {
            self.engine.push(EngineRequest::Direct {
                target: message.target,
                frame,
            });
        }
        Ok(delivered)
    }
}
