//! What the marketing automation adapters (Klaviyo, HubSpot, Mailchimp,
//! Braze) share: the identifiers they take (raw, normalized), a person's
//! traits as an event carries them, and sending a batch as several requests
//! in order.
//!
//! **Does not:** map anything to a platform's shape; each adapter does.

use std::collections::BTreeMap;
use std::time::Duration;

use onepd_domain::EventId;
use onepd_domain::destination::{
    Category, DeliverError, Description, EventResult, IdentifierSpec, Outcome, PreparedEvent, RenderedRequest,
};
use reqwest::StatusCode;
use serde_json::{Map, Value};

use crate::destinations::http::{self, Answer, Refusal};

/// The identifiers a marketing automation tool takes: `email`, `phone`
/// (E.164), `user_id` and `anonymous_id`, normalized and not hashed (the
/// category receives full data unless the destination removes classes).
pub(crate) fn identifiers() -> Vec<IdentifierSpec> {
    crate::destinations::webhook::default_identifiers()
}

/// What a marketing automation adapter says about itself.
pub(crate) fn description(name: &str, max_batch_size: u32) -> Description {
    Description {
        name: name.to_owned(),
        category: Category::MarketingAutomation,
        identifiers: identifiers(),
        max_batch_size,
        rate_limit_per_second: None,
    }
}

/// The first value of identifier `field`, if any.
pub(crate) fn first<'a>(event: &'a PreparedEvent, field: &str) -> Option<&'a str> {
    event.identifiers.get(field)?.first().map(String::as_str).filter(|value| !value.is_empty())
}

/// The person's traits as the event carries them: the destination's chosen
/// profile traits, with the message's own `traits` (an identify's) over
/// them.
pub(crate) fn traits(event: &PreparedEvent) -> Map<String, Value> {
    let mut all = event.traits.clone();
    if let Some(own) = event.message.get("traits").and_then(Value::as_object) {
        all.extend(own.iter().map(|(name, value)| (name.clone(), value.clone())));
    }
    all
}

/// The first of `names` the traits hold as text (a number as its digits).
pub(crate) fn trait_text(traits: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| traits.get(*name).and_then(crate::destinations::mapping::text))
}

/// A value as text: strings as they are, anything else as JSON.
pub(crate) fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A refused request: 401 and 403 name the credential the platform refused;
/// anything else is read by status.
pub(crate) fn refused(refusal: Refusal, platform: &str, credential: &str) -> DeliverError {
    if matches!(refusal.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return DeliverError::BatchRejected {
            reason: format!("{platform} refused the {credential}: {}", refusal.reason()),
        };
    }
    refusal.classify()
}

/// A batch's list changes, one per person and list: the last change of a
/// person in a list wins (an entry then an exit in one batch is an exit),
/// and the events of the changes it supersedes go with it. Grouped by
/// (list, entered), each person with their events.
pub(crate) type ListChanges = BTreeMap<(String, bool), Vec<(String, Vec<EventId>)>>;

/// Collects list changes in batch order into [`ListChanges`].
#[derive(Debug, Default)]
pub(crate) struct Lists {
    latest: BTreeMap<(String, String), (bool, Vec<EventId>)>,
}

impl Lists {
    /// `person` entered (or left) `list` by `event`.
    pub fn change(&mut self, list: &str, person: &str, entered: bool, event: EventId) {
        let latest = self.latest.entry((list.to_owned(), person.to_owned())).or_insert((entered, Vec::new()));
        latest.0 = entered;
        latest.1.push(event);
    }

    /// The changes, grouped.
    pub fn grouped(self) -> ListChanges {
        let mut grouped = ListChanges::new();
        for ((list, person), (entered, events)) in self.latest {
            grouped.entry((list, entered)).or_default().push((person, events));
        }
        grouped
    }
}

/// The outcomes of a batch sent as several requests, one after another.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    results: BTreeMap<EventId, Outcome>,
    order: Vec<EventId>,
    sent: usize,
}

impl Outcomes {
    /// Starts with the results known without sending.
    pub fn known(results: Vec<EventResult>) -> Outcomes {
        let mut outcomes = Outcomes::default();
        for result in results {
            outcomes.set(result.event_id, result.outcome);
        }
        outcomes
    }

    /// Records `outcome` for `event`; a failure is never overwritten by a
    /// later success (an event sent in several requests is delivered only
    /// when all were taken).
    pub fn set(&mut self, event: EventId, outcome: Outcome) {
        match self.results.get(&event) {
            None => {
                self.order.push(event);
                self.results.insert(event, outcome);
            }
            Some(Outcome::Delivered) => {
                self.results.insert(event, outcome);
            }
            Some(_) => {}
        }
    }

    /// Sends `request` and reads the answer with `read` (2xx) or `refuse`
    /// (any other status). The first request of a batch that fails fails
    /// the whole call, so the engine retries or splits it as for a
    /// one-request adapter; a later one's failure becomes the outcome of
    /// the events it carried. The answer is returned when it was taken.
    pub async fn send(
        &mut self,
        request: &RenderedRequest,
        timeout: Duration,
        refuse: impl Fn(Refusal) -> DeliverError,
    ) -> Result<Option<Answer>, DeliverError> {
        let first = self.sent == 0;
        self.sent += 1;
        let answer = match http::send_rendered(request, timeout).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(refusal)) => Err(refuse(refusal)),
            Err(err) => Err(err),
        };
        match answer {
            Ok(answer) => {
                for event in &request.events {
                    self.set(*event, Outcome::Delivered);
                }
                Ok(Some(answer))
            }
            Err(err) if first => Err(err),
            Err(err) => {
                let outcome = http::as_outcome(&err);
                for event in &request.events {
                    self.set(*event, outcome.clone());
                }
                Ok(None)
            }
        }
    }

    /// The results, in the order the events were first seen.
    pub fn into_results(mut self) -> Vec<EventResult> {
        (self.order.into_iter())
            .map(|event_id| EventResult { event_id, outcome: self.results.remove(&event_id).expect("recorded") })
            .collect()
    }
}
