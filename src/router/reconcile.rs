//! What a new subscription set changes in a broker's routing state, decided without
//! I/O: the router's loop (`mod.rs`) reads the stored states, asks [`diff`], and carries
//! out the changes in order.

use std::collections::HashMap;

use crate::config::subscriptions::StartFrom;
use crate::log::SubscriptionState;

/// A subscription of the running set, as reconciling sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    /// Its sinks, one lane each.
    pub sinks: Vec<String>,
    pub start_from: StartFrom,
}

/// One change to the stored routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The subscription left the set: its state and every entry of its lanes go.
    Remove { subscription: String },
    /// Sinks left the subscription: their lanes' entries go.
    DropSinks {
        subscription: String,
        sinks: Vec<String>,
    },
    /// The subscription's sinks changed; a backfill under way goes on for the new set.
    Update {
        subscription: String,
        state: SubscriptionState,
    },
    /// A subscription new to the router: stored with where it starts, which
    /// [`added`] turns into its backfill once the start is a sequence.
    Add {
        subscription: String,
        sinks: Vec<String>,
        start_from: StartFrom,
    },
}

/// The changes that bring `known` (the stored states) in line with `wanted`: removals
/// first, then for each wanted subscription in order its dropped sinks and its new
/// state. A subscription whose stored sinks are the wanted ones changes nothing.
pub fn diff(known: &HashMap<String, SubscriptionState>, wanted: &[Wanted]) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut gone: Vec<&String> = known
        .keys()
        .filter(|name| !wanted.iter().any(|w| &w.name == *name))
        .collect();
    gone.sort();
    for name in gone {
        changes.push(Change::Remove {
            subscription: name.clone(),
        });
    }
    for w in wanted {
        match known.get(&w.name) {
            Some(state) => {
                let dropped: Vec<String> = state
                    .sinks
                    .iter()
                    .filter(|s| !w.sinks.contains(s))
                    .cloned()
                    .collect();
                if !dropped.is_empty() {
                    changes.push(Change::DropSinks {
                        subscription: w.name.clone(),
                        sinks: dropped,
                    });
                }
                if state.sinks != w.sinks {
                    changes.push(Change::Update {
                        subscription: w.name.clone(),
                        state: SubscriptionState {
                            sinks: w.sinks.clone(),
                            backfill: state.backfill,
                        },
                    });
                }
            }
            None => changes.push(Change::Add {
                subscription: w.name.clone(),
                sinks: w.sinks.clone(),
                start_from: w.start_from,
            }),
        }
    }
    changes
}

/// The state of a subscription added when the router had decided up to `cursor`, that
/// starts at `from`: the events from `from` to `cursor` are its backfill.
pub fn added(sinks: Vec<String>, from: u64, cursor: u64) -> SubscriptionState {
    SubscriptionState {
        sinks,
        backfill: (from <= cursor).then_some((from, cursor)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sinks: &[&str], backfill: Option<(u64, u64)>) -> SubscriptionState {
        SubscriptionState {
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            backfill,
        }
    }

    fn wanted(name: &str, sinks: &[&str]) -> Wanted {
        Wanted {
            name: name.into(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            start_from: StartFrom::Latest,
        }
    }

    #[test]
    fn the_changes_a_new_set_makes() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // What, the stored states, the wanted set, the changes.
        type Case = (
            &'static str,
            Vec<(&'static str, SubscriptionState)>,
            Vec<Wanted>,
            Vec<Change>,
        );
        let cases: Vec<Case> = vec![
            ("nothing known, nothing wanted", vec![], vec![], vec![]),
            (
                "the same set changes nothing",
                vec![("a", state(&["x", "y"], None))],
                vec![wanted("a", &["x", "y"])],
                vec![],
            ),
            (
                "a new subscription is added with where it starts",
                vec![],
                vec![wanted("a", &["x"])],
                vec![Change::Add {
                    subscription: "a".into(),
                    sinks: s(&["x"]),
                    start_from: StartFrom::Latest,
                }],
            ),
            (
                "a subscription that left goes, before anything else",
                vec![("old", state(&["x"], None))],
                vec![wanted("new", &["x"])],
                vec![
                    Change::Remove {
                        subscription: "old".into(),
                    },
                    Change::Add {
                        subscription: "new".into(),
                        sinks: s(&["x"]),
                        start_from: StartFrom::Latest,
                    },
                ],
            ),
            (
                "a removed sink's lane is dropped and the state keeps its backfill",
                vec![("a", state(&["x", "y"], Some((3, 9))))],
                vec![wanted("a", &["x"])],
                vec![
                    Change::DropSinks {
                        subscription: "a".into(),
                        sinks: s(&["y"]),
                    },
                    Change::Update {
                        subscription: "a".into(),
                        state: state(&["x"], Some((3, 9))),
                    },
                ],
            ),
            (
                "an added sink updates the state and drops nothing",
                vec![("a", state(&["x"], None))],
                vec![wanted("a", &["x", "z"])],
                vec![Change::Update {
                    subscription: "a".into(),
                    state: state(&["x", "z"], None),
                }],
            ),
            (
                "removals come in name order",
                vec![("b", state(&["x"], None)), ("a", state(&["x"], None))],
                vec![],
                vec![
                    Change::Remove {
                        subscription: "a".into(),
                    },
                    Change::Remove {
                        subscription: "b".into(),
                    },
                ],
            ),
        ];
        for (what, known, want, expected) in cases {
            let known: HashMap<String, SubscriptionState> =
                known.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
            assert_eq!(diff(&known, &want), expected, "{what}");
        }
    }

    #[test]
    fn an_added_subscription_backfills_from_its_start_to_the_cursor() {
        // (from, cursor) → backfill: `latest` starts at cursor + 1, `earliest` at 1, a
        // time where the log says.
        let cases = [
            (11, 10, None),
            (1, 0, None),
            (1, 10, Some((1, 10))),
            (4, 10, Some((4, 10))),
            (10, 10, Some((10, 10))),
        ];
        for (from, cursor, backfill) in cases {
            assert_eq!(
                added(vec!["x".into()], from, cursor),
                state(&["x"], backfill),
                "from {from} at cursor {cursor}"
            );
        }
    }
}
