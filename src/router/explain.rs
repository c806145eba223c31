//! Explain: every subscription's verdict on one event, with each filter part's result
//! (and CEL errors), for `switchyard explain` and the admin API.

use std::fmt;

use crate::config::subscriptions::Subscription;
use crate::event::Event;
use crate::expr::activation::{self, Needs};
use crate::expr::filter::PartResult;

/// One subscription's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub subscription: String,
    pub broker: String,
    pub matched: bool,
    /// `(part, result)` in file order; empty for a subscription without a filter.
    pub parts: Vec<(String, PartResult)>,
}

/// Explains `event` against every subscription (all brokers).
pub fn explain<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    event: &Event,
) -> Vec<Verdict> {
    let data = activation::parse_data(event);
    let base = activation::base();
    subscriptions
        .into_iter()
        .map(|s| {
            let mut needs = Needs::default();
            if let Some(c) = &s.filter.cel {
                needs.add(c.variables());
            }
            let act = activation::activation(&base, event, data.as_ref(), &needs);
            let parts = s
                .filter
                .explain(&crate::expr::cost::Input::new(event, data.as_ref()), &act);
            let matched = parts.iter().all(|(_, r)| *r == PartResult::Match);
            Verdict {
                subscription: s.name.clone(),
                broker: s.broker.clone(),
                matched,
                parts,
            }
        })
        .collect()
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.matched { "MATCH   " } else { "no match" };
        write!(f, "{word} {} (broker {})", self.subscription, self.broker)?;
        if self.parts.is_empty() {
            write!(f, "\n    (no filter: every event matches)")?;
        }
        for (part, result) in &self.parts {
            match result {
                PartResult::Match => write!(f, "\n    {part}: match")?,
                PartResult::NoMatch => write!(f, "\n    {part}: no match")?,
                PartResult::Error(e) => write!(f, "\n    {part}: error: {e}")?,
            }
        }
        Ok(())
    }
}
