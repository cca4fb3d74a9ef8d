//! `braze`: Braze user attributes, custom events and purchases through
//! `/users/track`.
//!
//! ```text
//! POST {endpoint}/users/track
//! Authorization: Bearer {api_key}
//! {"attributes": [{"external_id", "email", "phone", "first_name", "last_name", ...custom}],
//!  "events":     [{"external_id", "app_id"?, "name", "time", "properties"}],
//!  "purchases":  [{"external_id", "app_id"?, "product_id", "currency", "price", "quantity", "time"}]}
//! ```
//!
//! References: <https://www.braze.com/docs/api/endpoints/user_data/post_user_track/>
//! (and its limits: at most 75 objects in each array of one request),
//! <https://www.braze.com/docs/api/endpoints/user_data/post_user_delete/>,
//! <https://www.braze.com/docs/api/errors/>, rate limits
//! <https://www.braze.com/docs/api/api_limits/>.
//!
//! - A user is named by `external_id` (the user id); without one, by a
//!   `user_alias` `{"alias_name": anonymous id, "alias_label":
//!   "anonymous_id"}`; with neither the event is refused (permanent).
//! - An identify is an attributes object: Braze's standard attributes
//!   (`email`, `phone`, `first_name`, `last_name`, `gender`, `dob`,
//!   `country`, `home_city`) and every other trait as a custom attribute.
//! - A track is an event; an `Order Completed` is also one purchase per
//!   product (Segment e-commerce `products`, currency `USD` when none).
//! - Audience membership: Braze has no lists, so membership is a custom
//!   attribute array changed with Braze's `add` / `remove` syntax,
//!   `{"onepd_audiences": {"add": ["repeat buyers"]}}`, named by the
//!   connection's external id when given (as Segment's and RudderStack's
//!   Braze destinations sync audiences).
//! - Page, screen, group and alias messages are answered delivered without
//!   being sent.
//! - A batch is one request unless an array would pass 75 objects; then it
//!   is split in order.
//! - Erasure: `POST /users/delete` by external id and alias.
//!
//! Braze answers 201 with `errors` for objects it could not take ("minor
//! errors"): those objects' events are refused (permanent), the others
//! delivered. 429 is retried after `X-RateLimit-Reset` (a unix time); 401
//! / 403 refuse the batch naming the key.

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

use super::lifecycle::{self, Outcomes};
use crate::destinations::mapping::{self, json_number};
use crate::destinations::{AdapterError, http};

/// The adapter's name.
pub const NAME: &str = "braze";

/// The most objects in each array of one request, and the most events of a batch.
pub const MAX_BATCH_SIZE: u32 = 75;

/// The custom attribute holding a person's audiences unless the connection names another.
pub const AUDIENCES_ATTRIBUTE: &str = "onepd_audiences";

const ARRAYS: [&str; 3] = ["attributes", "events", "purchases"];

/// The settings `onepd destination create --adapter braze` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A REST API key with `users.track` (and `users.delete`) permission.
    api_key: String,
    /// The instance's REST endpoint (`https://rest.iad-01.braze.com`).
    endpoint: String,
    /// The app the events and purchases belong to.
    #[serde(default)]
    app_id: Option<String>,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// The Braze adapter.
#[derive(Debug, Clone)]
pub struct Braze {
    endpoint: String,
    api_key: String,
    app_id: Option<String>,
    timeout: Duration,
}

/// One object of a request: its array and the event it came from.
type Object = (&'static str, Value, EventId);

impl Braze {
    /// The adapter configured with `settings`: `api_key` and `endpoint` are
    /// required; `app_id` and `timeout_ms` are optional.
    pub fn new(settings: &Value) -> Result<Braze, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        mapping::required(NAME, "api_key", &settings.api_key)?;
        Ok(Braze {
            endpoint: mapping::base_url(NAME, "endpoint", &settings.endpoint)?,
            api_key: settings.api_key,
            app_id: settings.app_id.filter(|id| !id.trim().is_empty()),
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    fn request(&self, path: &str, body: &Value, events: Vec<EventId>) -> Result<RenderedRequest, DeliverError> {
        let headers = vec![("Authorization".to_owned(), format!("Bearer {}", self.api_key))];
        http::json_post(&format!("{}{path}", self.endpoint), &[], headers, body, events, vec![self.api_key.clone()])
    }

    /// The results known without sending, and each request with the
    /// objects it carries.
    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        events: &[PreparedEvent],
    ) -> Result<(Vec<EventResult>, Vec<(RenderedRequest, Vec<Object>)>), DeliverError> {
        let mut known = Vec::new();
        let mut objects: Vec<Object> = Vec::new();
        for event in events {
            let Some(user) = user(event) else {
                let takes =
                    AudienceChange::of(event).is_some() || matches!(event.message_type.as_str(), "identify" | "track");
                let outcome = if takes {
                    Outcome::permanent("Braze needs a user id or an anonymous id: the person has neither")
                } else {
                    Outcome::Delivered
                };
                known.push(EventResult { event_id: event.event_id, outcome });
                continue;
            };
            let id = event.event_id;
            if let Some(change) = AudienceChange::of(event) {
                let attribute = change.external_id.unwrap_or(AUDIENCES_ATTRIBUTE);
                let action = if change.entered { "add" } else { "remove" };
                let mut object = user.clone();
                object.insert(attribute.to_owned(), json!({ action: [change.audience] }));
                objects.push(("attributes", Value::Object(object), id));
                continue;
            }
            match event.message_type.as_str() {
                "identify" => {
                    let mut object = user.clone();
                    object.extend(attributes(&lifecycle::traits(event)));
                    objects.push(("attributes", Value::Object(object), id));
                }
                "track" => {
                    let Some(name) = event.name.as_deref().filter(|name| !name.trim().is_empty()) else {
                        known.push(EventResult {
                            event_id: id,
                            outcome: Outcome::permanent("track without an event name"),
                        });
                        continue;
                    };
                    let properties = mapping::properties(&event.message);
                    let mut object = user.clone();
                    object.insert("name".into(), json!(name));
                    object.insert("time".into(), json!(event.timestamp));
                    object.insert("properties".into(), Value::Object(properties.clone()));
                    self.with_app(&mut object);
                    objects.push(("events", Value::Object(object), id));
                    if name == "Order Completed" {
                        let currency = mapping::currency(properties).unwrap_or_else(|| "USD".to_owned());
                        for product in mapping::products(properties) {
                            let Some(product_id) = product.id else { continue };
                            let mut purchase = user.clone();
                            purchase.insert("product_id".into(), json!(product_id));
                            purchase.insert("currency".into(), json!(currency));
                            purchase.insert("price".into(), json_number(product.price.unwrap_or(0.0)));
                            purchase.insert("quantity".into(), json_number(product.quantity.unwrap_or(1.0)));
                            purchase.insert("time".into(), json!(event.timestamp));
                            self.with_app(&mut purchase);
                            objects.push(("purchases", Value::Object(purchase), id));
                        }
                    }
                }
                _ => known.push(EventResult { event_id: id, outcome: Outcome::Delivered }),
            }
        }
        // Requests of at most 75 objects per array, in order.
        let mut requests = Vec::new();
        let mut current: Vec<Object> = Vec::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for object in objects {
            if counts.get(object.0).copied().unwrap_or(0) == MAX_BATCH_SIZE as usize {
                requests.push(std::mem::take(&mut current));
                counts.clear();
            }
            *counts.entry(object.0).or_default() += 1;
            current.push(object);
        }
        if !current.is_empty() {
            requests.push(current);
        }
        let requests = (requests.into_iter())
            .map(|objects| {
                let mut body = Map::new();
                for array in ARRAYS {
                    let items: Vec<Value> =
                        objects.iter().filter(|(a, _, _)| *a == array).map(|(_, value, _)| value.clone()).collect();
                    if !items.is_empty() {
                        body.insert(array.into(), Value::Array(items));
                    }
                }
                let mut ids: Vec<EventId> = Vec::new();
                for (_, _, id) in &objects {
                    if !ids.contains(id) {
                        ids.push(*id);
                    }
                }
                Ok((self.request("/users/track", &Value::Object(body), ids)?, objects))
            })
            .collect::<Result<Vec<_>, DeliverError>>()?;
        Ok((known, requests))
    }

    fn with_app(&self, object: &mut Map<String, Value>) {
        if let Some(app) = &self.app_id {
            object.insert("app_id".into(), json!(app));
        }
    }
}

/// How an object names its user: `external_id`, else a `user_alias` from
/// the anonymous id.
fn user(event: &PreparedEvent) -> Option<Map<String, Value>> {
    let mut user = Map::new();
    if let Some(id) = lifecycle::first(event, "user_id") {
        user.insert("external_id".into(), json!(id));
    } else if let Some(anonymous) = lifecycle::first(event, "anonymous_id") {
        user.insert("user_alias".into(), json!({"alias_name": anonymous, "alias_label": "anonymous_id"}));
    } else {
        return None;
    }
    Some(user)
}

/// Traits as Braze attributes (see the module doc).
fn attributes(traits: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in traits {
        let attribute = match name.as_str() {
            "userId" | "user_id" | "anonymousId" | "address" => continue,
            "firstName" | "first_name" => "first_name",
            "lastName" | "last_name" => "last_name",
            "birthday" => "dob",
            "city" => "home_city",
            other => other,
        };
        out.insert(attribute.to_owned(), value.clone());
    }
    if let Some(address) = traits.get("address").and_then(Value::as_object) {
        if let Some(city) = address.get("city") {
            out.insert("home_city".into(), city.clone());
        }
        if let Some(country) = address.get("country") {
            out.insert("country".into(), country.clone());
        }
    }
    out
}

#[async_trait]
impl Destination for Braze {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(lifecycle::description(NAME, MAX_BATCH_SIZE))
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (known, requests) = self.build(events)?;
        let mut outcomes = Outcomes::known(known);
        for (request, objects) in &requests {
            let refuse = |refusal| lifecycle::refused(refusal, "Braze", "API key");
            let Some(answer) = outcomes.send(request, self.timeout, refuse).await? else { continue };
            // Minor errors: the objects Braze could not take.
            for error in answer.json()["errors"].as_array().into_iter().flatten() {
                let (Some(array), Some(index)) = (error["input_array"].as_str(), error["index"].as_u64()) else {
                    continue;
                };
                let failed = objects.iter().filter(|(a, _, _)| *a == array).nth(index as usize);
                if let Some((_, _, id)) = failed {
                    let what = error["type"].as_str().unwrap_or("refused");
                    outcomes.set(*id, Outcome::permanent(format!("braze {array}[{index}]: {what}")));
                }
            }
        }
        Ok(outcomes.into_results())
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        Some(self.build(events).ok()?.1.into_iter().map(|(request, _)| request).collect())
    }

    async fn delete(&self, request: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        let external_ids = request.identifiers.get("user_id").cloned().unwrap_or_default();
        let aliases: Vec<Value> = (request.identifiers.get("anonymous_id").into_iter().flatten())
            .map(|id| json!({"alias_name": id, "alias_label": "anonymous_id"}))
            .collect();
        if external_ids.is_empty() && aliases.is_empty() {
            return Ok(DeletionAnswer::Unsupported);
        }
        let mut body = Map::new();
        if !external_ids.is_empty() {
            body.insert("external_ids".into(), json!(external_ids));
        }
        if !aliases.is_empty() {
            body.insert("user_aliases".into(), json!(aliases));
        }
        let rendered = self.request("/users/delete", &Value::Object(body), Vec::new())?;
        if let Err(refusal) = http::send_rendered(&rendered, self.timeout).await? {
            return Err(lifecycle::refused(refusal, "Braze", "API key"));
        }
        Ok(DeletionAnswer::Requested)
    }
}
