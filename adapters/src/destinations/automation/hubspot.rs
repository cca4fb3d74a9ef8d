//! `hubspot`: HubSpot contacts, custom events and lists.
//!
//! Every request carries `Authorization: Bearer {access_token}` (a private
//! app's token):
//!
//! ```text
//! POST {endpoint}/crm/v3/objects/contacts/batch/upsert      identifies (and the people of list changes), ≤ 100
//! {"inputs": [{"idProperty": "email", "id": "ann@example.com",
//!              "properties": {"firstname", "lastname", "phone", ...}}]}
//! → {"results": [{"id": "501", "properties": {"email": "ann@example.com", ...}}]}
//!
//! POST {endpoint}/events/v3/send                               a track, one request each
//! {"eventName": "pe{hub_id}_order_completed", "email", "occurredAt", "properties": {...}}
//!
//! PUT {endpoint}/crm/v3/lists/{list_id}/memberships/add       audience entries: ["501", ...]
//! PUT {endpoint}/crm/v3/lists/{list_id}/memberships/remove    audience exits
//! ```
//!
//! References: <https://developers.hubspot.com/docs/api/crm/contacts>
//! (batch upsert), <https://developers.hubspot.com/docs/api/analytics/events>
//! (custom event completions), <https://developers.hubspot.com/docs/api/crm/lists>
//! (memberships), <https://developers.hubspot.com/docs/api/crm/contacts#gdpr-delete>,
//! and error handling <https://developers.hubspot.com/docs/api/error-handling>.
//!
//! - Contacts are keyed by email: a person without one is refused
//!   (permanent). Traits become contact properties: `firstName` /
//!   `first_name` → `firstname`, `lastName` / `last_name` → `lastname`,
//!   others lowercased with every character outside `a-z0-9` as `_`
//!   (`Plan Tier` → `plan_tier`); values as text. The properties must exist
//!   in the portal, as HubSpot requires.
//! - A track is sent as the custom event named in `settings.event_names`
//!   (`{"Order Completed": "pe12345_order_completed"}`), else
//!   `pe{hub_id}_{snake_case name}` when `settings.hub_id` is set; with
//!   neither it is refused (permanent) naming both settings.
//! - Audience membership: the connected audience's external id is a HubSpot
//!   list id. The people are upserted by email first (which gives their
//!   record ids), then added to or removed from the list.
//! - Page, screen, group and alias messages are answered delivered without
//!   being sent.
//! - Erasure: GDPR delete of the contact, by email.
//!
//! A 429 is retried (after `Retry-After` when given); 401 / 403 refuse the
//! batch naming the access token.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::EventId;
use onepd_domain::destination::{
    AudienceChange, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult, Outcome,
    PreparedEvent, RenderedRequest,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::lifecycle::{self, Lists, Outcomes};
use crate::destinations::mapping;
use crate::destinations::{AdapterError, http};

/// The adapter's name.
pub const NAME: &str = "hubspot";

/// The most events one batch carries (HubSpot's batch upsert takes 100).
pub const MAX_BATCH_SIZE: u32 = 100;

/// The settings `onepd destination create --adapter hubspot` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A private app's access token.
    access_token: String,
    /// The API's base URL (a test server in tests).
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// The portal (hub) id, for custom event names `pe{hub_id}_{name}`.
    #[serde(default)]
    hub_id: Option<String>,
    /// Segment event name → the custom event's fully qualified name.
    #[serde(default)]
    event_names: BTreeMap<String, String>,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn default_endpoint() -> String {
    "https://api.hubapi.com".to_owned()
}

/// The HubSpot adapter.
#[derive(Debug, Clone)]
pub struct HubSpot {
    endpoint: String,
    access_token: String,
    hub_id: Option<String>,
    event_names: BTreeMap<String, String>,
    timeout: Duration,
}

/// A batch as HubSpot takes it.
#[derive(Default)]
struct Plan {
    known: Vec<EventResult>,
    /// Contacts to upsert: email → (properties, events).
    contacts: BTreeMap<String, (Map<String, Value>, Vec<EventId>)>,
    events: Vec<(Value, EventId)>,
    lists: Lists,
}

impl HubSpot {
    /// The adapter configured with `settings`: `access_token` is required;
    /// `endpoint`, `hub_id`, `event_names` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<HubSpot, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "access_token", &settings.access_token)?;
        Ok(HubSpot {
            endpoint: mapping::base_url(NAME, "endpoint", &settings.endpoint)?,
            access_token: settings.access_token,
            hub_id: settings.hub_id.map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()),
            event_names: settings.event_names,
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        events: impl IntoIterator<Item = EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        let headers = vec![("Authorization".to_owned(), format!("Bearer {}", self.access_token))];
        let url = format!("{}{path}", self.endpoint);
        http::json_request(method, &url, &[], headers, body, events, vec![self.access_token.clone()])
    }

    fn plan(&self, events: &[PreparedEvent]) -> Plan {
        let mut plan = Plan::default();
        for event in events {
            let refuse = |reason: &str| EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) };
            let email = lifecycle::first(event, "email");
            if let Some(change) = AudienceChange::of(event) {
                let Some(list) = change.external_id else {
                    plan.known.push(refuse(&format!(
                        "audience {:?} is connected without a HubSpot list id: connect it with --external-id LIST_ID",
                        change.audience
                    )));
                    continue;
                };
                let Some(email) = email else {
                    plan.known.push(refuse("HubSpot contacts are upserted by email: the person has no email"));
                    continue;
                };
                plan.contacts.entry(email.to_owned()).or_default().1.push(event.event_id);
                plan.lists.change(list, email, change.entered, event.event_id);
                continue;
            }
            match event.message_type.as_str() {
                "identify" => {
                    let Some(email) = email else {
                        plan.known.push(refuse("HubSpot contacts are upserted by email: the person has no email"));
                        continue;
                    };
                    let contact = plan.contacts.entry(email.to_owned()).or_default();
                    contact.0.extend(contact_properties(&lifecycle::traits(event)));
                    contact.1.push(event.event_id);
                }
                "track" => match self.event_body(event, email) {
                    Ok(body) => plan.events.push((body, event.event_id)),
                    Err(reason) => plan.known.push(refuse(&reason)),
                },
                _ => plan.known.push(EventResult { event_id: event.event_id, outcome: Outcome::Delivered }),
            }
        }
        plan
    }

    /// The upsert of `contacts`, if any.
    fn upsert(
        &self,
        contacts: &BTreeMap<String, (Map<String, Value>, Vec<EventId>)>,
    ) -> Result<Option<RenderedRequest>, DeliverError> {
        if contacts.is_empty() {
            return Ok(None);
        }
        let inputs: Vec<Value> = (contacts.iter())
            .map(|(email, (properties, _))| json!({"idProperty": "email", "id": email, "properties": properties}))
            .collect();
        let events = contacts.values().flat_map(|(_, events)| events.iter().copied());
        let request =
            self.request("POST", "/crm/v3/objects/contacts/batch/upsert", &json!({ "inputs": inputs }), events)?;
        Ok(Some(request))
    }

    /// A list call adding or removing `ids`.
    fn membership(
        &self,
        list: &str,
        entered: bool,
        ids: &[String],
        events: impl IntoIterator<Item = EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        let action = if entered { "add" } else { "remove" };
        let list: String = list.chars().filter(char::is_ascii_alphanumeric).collect();
        self.request("PUT", &format!("/crm/v3/lists/{list}/memberships/{action}"), &json!(ids), events)
    }

    /// A track as a custom event, or why it cannot be sent.
    fn event_body(&self, event: &PreparedEvent, email: Option<&str>) -> Result<Value, String> {
        let name = event.name.as_deref().filter(|name| !name.trim().is_empty()).ok_or("track without an event name")?;
        let event_name = match (self.event_names.get(name), &self.hub_id) {
            (Some(mapped), _) => mapped.clone(),
            (None, Some(hub)) => format!("pe{hub}_{}", property_name(name)),
            (None, None) => {
                return Err(format!(
                    "no HubSpot custom event for {name:?}: set settings.event_names or settings.hub_id"
                ));
            }
        };
        let email = email.ok_or("HubSpot custom events are sent by email: the person has no email")?;
        let properties: Map<String, Value> = (mapping::properties(&event.message).iter())
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| (property_name(name), json!(lifecycle::as_text(value))))
            .collect();
        Ok(json!({"eventName": event_name, "email": email, "occurredAt": event.timestamp, "properties": properties}))
    }
}

/// A HubSpot property name: lowercase, every character outside `a-z0-9`
/// as `_`.
fn property_name(name: &str) -> String {
    let lower: String =
        name.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    lower.trim_matches('_').to_owned()
}

/// Traits as contact properties (see the module doc).
fn contact_properties(traits: &Map<String, Value>) -> Map<String, Value> {
    let mut properties = Map::new();
    for (name, value) in traits {
        if value.is_null() || matches!(name.as_str(), "email" | "userId" | "user_id" | "anonymousId") {
            continue;
        }
        let property = match name.as_str() {
            "firstName" | "first_name" => "firstname".to_owned(),
            "lastName" | "last_name" => "lastname".to_owned(),
            other => property_name(other),
        };
        if !property.is_empty() {
            properties.insert(property, json!(lifecycle::as_text(value)));
        }
    }
    properties
}

#[async_trait]
impl Destination for HubSpot {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(lifecycle::description(NAME, MAX_BATCH_SIZE))
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let plan = self.plan(events);
        let mut outcomes = Outcomes::known(plan.known);
        let refuse = |refusal| lifecycle::refused(refusal, "HubSpot", "access token");
        // Record ids by email, from the upsert's answer.
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        if let Some(upsert) = self.upsert(&plan.contacts)?
            && let Some(answer) = outcomes.send(&upsert, self.timeout, refuse).await?
        {
            for result in answer.json()["results"].as_array().into_iter().flatten() {
                if let (Some(id), Some(email)) = (result["id"].as_str(), result["properties"]["email"].as_str()) {
                    ids.insert(email.to_lowercase(), id.to_owned());
                }
            }
        }
        for (body, event) in &plan.events {
            let request = self.request("POST", "/events/v3/send", body, [*event])?;
            outcomes.send(&request, self.timeout, refuse).await?;
        }
        for ((list, entered), members) in plan.lists.grouped() {
            let mut found = Vec::new();
            let mut carried = Vec::new();
            for (email, events) in members {
                match ids.get(&email.to_lowercase()) {
                    Some(id) => {
                        found.push(id.clone());
                        carried.extend(events);
                    }
                    // The upsert failed (its outcome is recorded) or did not name them.
                    None => {
                        for event in events {
                            let outcome = Outcome::retryable("HubSpot did not return the contact's record id", None);
                            outcomes.set(event, outcome);
                        }
                    }
                }
            }
            if !found.is_empty() {
                let request = self.membership(&list, entered, &found, carried)?;
                outcomes.send(&request, self.timeout, refuse).await?;
            }
        }
        Ok(outcomes.into_results())
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        let plan = self.plan(events);
        let mut requests: Vec<RenderedRequest> = self.upsert(&plan.contacts).ok()?.into_iter().collect();
        for (body, event) in &plan.events {
            requests.push(self.request("POST", "/events/v3/send", body, [*event]).ok()?);
        }
        // The record ids are known only once the upsert answers.
        for ((list, entered), members) in plan.lists.grouped() {
            let ids: Vec<String> = members.iter().map(|_| "{record id}".to_owned()).collect();
            let events = members.into_iter().flat_map(|(_, events)| events);
            requests.push(self.membership(&list, entered, &ids, events).ok()?);
        }
        Some(requests)
    }

    async fn delete(&self, request: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let emails = request.identifiers.get("email").cloned().unwrap_or_default();
        if emails.is_empty() {
            return Ok(DeletionAnswer::Unsupported);
        }
        for email in emails {
            let body = json!({"objectId": email, "idProperty": "email"});
            let rendered = self.request("POST", "/crm/v3/objects/contacts/gdpr-delete", &body, [])?;
            if let Err(refusal) = http::send_rendered(&rendered, self.timeout).await? {
                return Err(lifecycle::refused(refusal, "HubSpot", "access token"));
            }
        }
        Ok(DeletionAnswer::Requested)
    }
}
