//! The core tier's workload: each step draws a wait and an [`Action`] from
//! the seed's generator and turns it into the driver's [`Event`]s (the
//! same events the `core_events` fuzz target decodes from bytes); dropped
//! clients come back with the positions they heard.

use roomcast_testkit::driver::{Event, Opening};

use super::*;
use crate::swarm::{Action, ACTIONS};

impl CoreSim {
    /// One step: time passes, a drawn action happens, dropped clients return.
    pub(super) fn step(&mut self) -> Result<(), DriverError> {
        let us = self.watch.rng.below(self.mix.event_gap_us_max) + 1;
        let us = u16::try_from(us).expect("event gaps are at most 2 ms");
        self.driver.apply(Event::Wait { us }, &mut self.watch)?;
        let action = ACTIONS[self.watch.rng.weighted(&self.mix.weights)];
        if let Some(event) = self.draw(action) {
            self.driver.apply(event, &mut self.watch)?;
        }
        while let Some(positions) = self.watch.returning.pop() {
            let opening = self.opening();
            let event = Event::Return { opening, positions };
            self.driver.apply(event, &mut self.watch)?;
        }
        Ok(())
    }

    /// The event of `action`, drawn (none when it cannot happen now).
    fn draw(&mut self, action: Action) -> Option<Event> {
        let rng = &mut self.watch.rng;
        match action {
            Action::Open => {
                if self.driver.open_count() >= self.mix.clients {
                    return None;
                }
                return Some(Event::Open(self.opening()));
            }
            Action::Broadcast => {
                let rooms = (0..rng.range(1, 3))
                    .map(|_| rng.below(self.mix.rooms as u64))
                    .collect();
                let progress = rng.chance(500_000).then(|| rng.below(3));
                return Some(Event::Broadcast { rooms, progress });
            }
            Action::Direct => {
                let user = rng.below(self.mix.users as u64);
                return Some(Event::Direct { user });
            }
            _ => {}
        }
        let open = self.driver.open_count() as u64;
        if open == 0 {
            return None;
        }
        let client = rng.below(open);
        let event = match action {
            Action::Join | Action::Leave | Action::Presence => {
                let room = rng.below(self.mix.rooms as u64);
                let top_level = action != Action::Presence && rng.chance(200_000);
                match action {
                    Action::Join => Event::Join {
                        client,
                        room,
                        top_level,
                    },
                    Action::Leave => Event::Leave {
                        client,
                        room,
                        top_level,
                    },
                    _ => Event::Presence { client, room },
                }
            }
            Action::Ping => Event::Ping { client },
            Action::Garbage => Event::Garbage {
                client,
                which: rng.below(8) as u8,
            },
            Action::Binary => Event::Binary { client },
            Action::Crash => Event::Crash { client },
            Action::Stall => Event::Stall { client },
            Action::Unstall => {
                // A random stalled client, if any (a random open client
                // would rarely be one).
                let stalled = self.driver.stalled_clients().len() as u64;
                if stalled == 0 {
                    return None;
                }
                Event::Unstall {
                    stalled: rng.below(stalled),
                }
            }
            Action::Burst => Event::Burst {
                client,
                pings: rng.range(10, 80) as u8,
            },
            Action::Open | Action::Broadcast | Action::Direct => unreachable!("drawn above"),
        };
        Some(event)
    }

    /// A connection's id salt and identity.
    fn opening(&mut self) -> Opening {
        let rng = &mut self.watch.rng;
        let salt = rng.next_u64();
        let user = (rng.below(100) < self.mix.authenticated_percent).then(|| {
            let expires_in_ms =
                (rng.below(100) < self.mix.expiring_percent).then(|| rng.range(100, 20_000) as u16);
            (rng.below(self.mix.users as u64), expires_in_ms)
        });
        Opening { salt, user }
    }
}
