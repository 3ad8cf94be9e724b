//! The core tier's workload: each drawn [`Action`] as inputs to the core,
//! and the publisher's broadcasts with their receipts told to the oracle.

use super::*;

impl CoreSim {
    pub(super) fn act(&mut self, action: Action) -> Result<(), SimError> {
        if action == Action::Open {
            return self.open_client(false).map(drop);
        }
        if action == Action::Broadcast {
            return self.broadcast();
        }
        if action == Action::Direct {
            let user = format!("user-{}", self.rng.below(self.mix.users as u64));
            let message = DirectMessage {
                target: SendTarget::User(user),
                kind: "system_info".into(),
                data: Map::new(),
                to_other_nodes: true,
            };
            self.input(0, "direct", Input::Direct(message))?;
            return Ok(());
        }
        let Some(key) = self.pick_client() else {
            return Ok(());
        };
        match action {
            Action::Join | Action::Leave | Action::Presence => {
                let room = self.room();
                let (verb, sent) = match action {
                    Action::Join => ("join", Sent::Join(room.clone())),
                    Action::Leave => ("leave", Sent::Leave(room.clone())),
                    _ => ("presence", Sent::Other),
                };
                let top_level = action != Action::Presence && self.rng.chance(200_000);
                let id = self.next_request(key);
                let text = if top_level {
                    json!({"action": verb, "room": room, "id": id}).to_string()
                } else {
                    json!({"action": verb, "data": {"room": room}, "id": id}).to_string()
                };
                self.request(key, verb_tag(verb), id, sent, &text)
            }
            Action::Ping => {
                let id = self.next_request(key);
                self.request(
                    key,
                    "ping",
                    id,
                    Sent::Other,
                    &format!("{{\"action\":\"ping\",\"id\":{id}}}"),
                )
            }
            Action::Garbage => {
                let (template, has_id) = GARBAGE[self.rng.below(GARBAGE.len() as u64) as usize];
                if has_id {
                    let id = self.next_request(key);
                    self.request(
                        key,
                        "garbage",
                        id,
                        Sent::Other,
                        &template.replace("ID", &id.to_string()),
                    )
                } else {
                    let conn = self.clients[&key].conn;
                    self.input(
                        key,
                        "garbage",
                        Input::Text {
                            conn,
                            text: template,
                        },
                    )
                    .map(drop)
                }
            }
            Action::Binary => {
                let conn = self.clients[&key].conn;
                self.input(key, "binary", Input::Binary { conn }).map(drop)
            }
            Action::Crash => self.crash(key),
            Action::Stall => {
                if let Some(client) = self.clients.get_mut(&key) {
                    client.stalled = true;
                }
                self.recent.push(self.now_us, key, "stall", 0);
                Ok(())
            }
            Action::Unstall => {
                // Unstall a random stalled client, if any (a random open client would rarely be one).
                let stalled = self.stalled_clients();
                match stalled.len() {
                    0 => Ok(()),
                    n => {
                        let pick = stalled[self.rng.below(n as u64) as usize];
                        self.unstall(pick)
                    }
                }
            }
            Action::Burst => {
                for _ in 0..self.rng.range(10, 80) {
                    if !self.clients.contains_key(&key) {
                        break;
                    }
                    let id = self.next_request(key);
                    self.request(
                        key,
                        "burst-ping",
                        id,
                        Sent::Other,
                        &format!("{{\"action\":\"ping\",\"id\":{id}}}"),
                    )?;
                }
                Ok(())
            }
            Action::Open | Action::Broadcast | Action::Direct => Ok(()),
        }
    }

    fn broadcast(&mut self) -> Result<(), SimError> {
        let count = self.rng.range(1, 3);
        let mut rooms = Vec::new();
        for _ in 0..count {
            let room = RoomName::new(&self.room()).expect("generated room names are valid");
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        let (kind, data) = if self.rng.chance(500_000) {
            (
                "download_progress",
                // A few series, so conflation has something to replace.
                json!({"key": "attack-on-titan", "download_id": self.rng.below(3), "percent": self.events % 100}),
            )
        } else {
            ("queue_status", json!({"pending": self.events}))
        };
        let serde_json::Value::Object(data) = data else {
            unreachable!("json! object")
        };
        let publish = Publish {
            rooms,
            kind: kind.into(),
            data,
        };
        let response = self.input(0, "broadcast", Input::Broadcast(publish))?;
        self.record_receipt(response);
        Ok(())
    }

    /// Tells the oracle what the publisher was told.
    /// Tells the oracle what the publisher was told (the bookkeeping the
    /// `core_events` fuzz target shares).
    pub(super) fn record_receipt(&mut self, response: Response) {
        roomcast_testkit::record_receipt(&mut self.oracle, response);
    }
}
