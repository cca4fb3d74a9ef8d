//! `google_ads`: Google Ads enhanced conversions for leads, uploaded as click
//! conversions through the Google Ads API (REST).
//!
//! One batch is one request:
//!
//! ```text
//! POST {endpoint}/{api_version}/customers/{customer_id}:uploadClickConversions
//! Authorization: Bearer {access_token}
//! developer-token: {developer_token}
//! login-customer-id: {login_customer_id}        (when set)
//! {"conversions": [{"conversionAction": "customers/{id}/conversionActions/{action}",
//!                   "conversionDateTime": "2024-05-01 12:30:05+00:00",
//!                   "conversionValue", "currencyCode", "orderId", "gclid"?,
//!                   "userIdentifiers": [{"userIdentifierSource": "FIRST_PARTY",
//!                                        "hashedEmail": …}, …]}],
//!  "partialFailure": true}
//! ```
//!
//! References: <https://developers.google.com/google-ads/api/rest/reference/rest/v18/customers/uploadClickConversions>,
//! <https://developers.google.com/google-ads/api/reference/rpc/v18/ClickConversion>,
//! <https://developers.google.com/google-ads/api/docs/conversions/upload-identifiers>.
//!
//! - Only track events whose name has a conversion action (the
//!   `conversion_actions` map, else the `conversion_action` default) are
//!   uploaded; every other event is answered [`Outcome::Delivered`] without
//!   being sent: it is not a conversion of this account.
//! - `ConversionUploadService` accepts only `hashedEmail` and
//!   `hashedPhoneNumber` user identifiers, at most five per conversion, one
//!   identifier per entry; so the adapter asks only for those and `gclid`
//!   out of [`onepd_domain::hashing::google_ads_identifiers`] (address info
//!   is for conversion adjustments and Customer Match, not click uploads).
//! - `orderId` is the event's `order_id` when it has one, else onepd's event
//!   id: Google deduplicates on it, so a retry or a replay is not counted
//!   twice.
//! - Partial failure is required for uploads. A failed conversion comes back
//!   in `partialFailureError` with its index (`conversions[i]`); it becomes a
//!   permanent outcome for that event, the others are delivered.
//!
//! **Customer Match.** Audience entries and exits ([`AudienceChange`]) go
//! to the user list the connection's external id names, through
//! `OfflineUserDataJobService`: per user list and batch, three calls (after
//! the conversions' upload, when the batch has conversions):
//!
//! ```text
//! POST {endpoint}/{api_version}/customers/{customer_id}/offlineUserDataJobs:create
//! {"job": {"type": "CUSTOMER_MATCH_USER_LIST",
//!          "customerMatchUserListMetadata": {
//!              "userList": "customers/{customer_id}/userLists/{list}",
//!              "consent": {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}}}}   (consent when set)
//! → {"resourceName": "customers/{customer_id}/offlineUserDataJobs/{job}"}
//! POST {endpoint}/{api_version}/{resourceName}:addOperations
//! {"operations": [{"create": {"userIdentifiers": [{"hashedEmail": …}, {"hashedPhoneNumber": …}]}},
//!                 {"remove": {"userIdentifiers": [...]}}],
//!  "enablePartialFailure": true}
//! → {"partialFailureError"?: {"details": [{"errors": [{"location": {"fieldPathElements":
//!                                          [{"fieldName": "operations", "index": i}]}, …}]}]}}
//! POST {endpoint}/{api_version}/{resourceName}:run
//! {}
//! ```
//!
//! The three calls carry the same headers as the conversions' upload.
//! References: <https://developers.google.com/google-ads/api/docs/remarketing/audience-segments/customer-match/get-started>,
//! <https://developers.google.com/google-ads/api/rest/reference/rest/v18/customers.offlineUserDataJobs>,
//! <https://developers.google.com/google-ads/api/reference/rpc/v18/CustomerMatchUserListMetadata>,
//! <https://developers.google.com/google-ads/api/reference/rpc/v18/UserDataErrorEnum.UserDataError>.
//!
//! - An entry is a `create` operation, an exit a `remove`, one operation
//!   (one `UserData`) per person with each hashed email and phone as its
//!   own user identifier, at most 20 (Google's limit per operation). The
//!   identifiers are Google's normalization, SHA-256 (gmail dots removed,
//!   E.164 phones), prepared by the engine as for conversions. Address info
//!   is not sent: the description does not ask for it (see `describe`).
//! - The last change of a person in a list in a batch wins; the changes it
//!   supersedes share its outcome.
//! - A batch holds at most 2000 changes, within the 100,000 operations one
//!   `addOperations` request takes, so each list gets one job and one
//!   `addOperations` call.
//! - Refused (permanent) without sending: a change whose audience has no
//!   external id, a list id that is not digits, a person with neither a
//!   hashed email nor a hashed phone.
//! - Consent: `customerMatchUserListMetadata.consent` is optional in the
//!   API, but Google needs it for users in the EEA. The settings
//!   `ad_user_data_consent` and `ad_personalization_consent` (`GRANTED` or
//!   `DENIED`) declare it for every person the destination uploads; gate
//!   the destination with `--consent` so only those who gave it reach it.
//!   Without the settings no consent is sent.
//! - Answers: the first call of a delivery that fails fails the delivery
//!   (the engine retries or splits the batch). A later call's failure (the
//!   job's `addOperations` or `run`, or another list's job) becomes the
//!   outcome of the changes it carried, read by `http::as_outcome`. An
//!   operation named in `partialFailureError` is a permanent outcome for its
//!   changes; the job still runs for the others.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use onepd_domain::EventId;
use onepd_domain::destination::{
    AudienceChange, Category, DeliverError, Description, Destination, EventResult, Outcome, PreparedEvent,
    RenderedRequest,
};
use onepd_domain::hashing::google_ads_identifiers;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::AdapterError;
use super::http;
use super::mapping::{self, json_number};

/// The adapter's name.
pub const NAME: &str = "google_ads";

/// The most conversions Google Ads takes in one upload request.
pub const MAX_BATCH_SIZE: u32 = 2000;

/// The most user identifiers one conversion may carry.
const MAX_USER_IDENTIFIERS: usize = 5;

/// The most user identifiers one Customer Match operation (one person) may
/// carry (`UserDataError.TOO_MANY_USER_IDENTIFIERS`).
const MAX_IDENTIFIERS_PER_PERSON: usize = 20;

/// The most operations one `addOperations` request takes.
const MAX_OPERATIONS_PER_REQUEST: usize = 100_000;

// A batch's changes always fit one `addOperations` request per list.
const _: () = assert!(MAX_BATCH_SIZE as usize <= MAX_OPERATIONS_PER_REQUEST);

/// The identifier fields this adapter sends.
const SENT_IDENTIFIERS: [&str; 5] = ["hashed_email", "hashed_phone_number", "gclid", "gbraid", "wbraid"];

/// The settings `onepd destination create --adapter google_ads` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The Google Ads account the conversions belong to (dashes allowed).
    customer_id: String,
    /// The API developer token.
    developer_token: String,
    /// An OAuth 2.0 access token with the `adwords` scope.
    access_token: String,
    /// The manager account the access goes through, if any.
    #[serde(default)]
    login_customer_id: Option<String>,
    /// The conversion action (id or resource name) for every track event
    /// that `conversion_actions` does not name.
    #[serde(default)]
    conversion_action: Option<String>,
    /// Conversion actions (id or resource name) by track event name.
    #[serde(default)]
    conversion_actions: BTreeMap<String, String>,
    /// The API's base URL (a test server in tests).
    #[serde(default = "default_endpoint")]
    endpoint: String,
    /// The API version.
    #[serde(default = "default_api_version")]
    api_version: String,
    /// Customer Match: the `adUserData` consent declared for every person
    /// uploaded (see the module doc).
    #[serde(default)]
    ad_user_data_consent: Option<ConsentStatus>,
    /// Customer Match: the `adPersonalization` consent declared for every
    /// person uploaded.
    #[serde(default)]
    ad_personalization_consent: Option<ConsentStatus>,
    /// How long one request may take, in milliseconds.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A Google Ads `ConsentStatus` an operator may declare.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum ConsentStatus {
    Granted,
    Denied,
}

fn default_endpoint() -> String {
    "https://googleads.googleapis.com".to_owned()
}

fn default_api_version() -> String {
    "v18".to_owned()
}

/// The Google Ads enhanced-conversions adapter.
#[derive(Debug, Clone)]
pub struct GoogleAds {
    url: String,
    /// `{endpoint}/{api_version}`.
    base: String,
    customer_id: String,
    developer_token: String,
    access_token: String,
    login_customer_id: Option<String>,
    default_action: Option<String>,
    actions: BTreeMap<String, String>,
    /// `customerMatchUserListMetadata.consent`, when the settings declare it.
    consent: Option<Value>,
    timeout: Duration,
}

impl GoogleAds {
    /// The adapter configured with `settings`: `customer_id`,
    /// `developer_token`, `access_token` and at least one conversion action
    /// (`conversion_action` or `conversion_actions`) are required;
    /// `login_customer_id`, `endpoint`, `api_version`,
    /// `ad_user_data_consent`, `ad_personalization_consent` and `timeout_ms`
    /// are optional.
    pub fn new(settings: &Value) -> Result<GoogleAds, AdapterError> {
        let settings: Settings = mapping::parse_settings(NAME, settings)?;
        let customer_id = customer_id_digits("customer_id", &settings.customer_id)?;
        mapping::required(NAME, "developer_token", &settings.developer_token)?;
        mapping::required(NAME, "access_token", &settings.access_token)?;
        mapping::required(NAME, "api_version", &settings.api_version)?;
        let login_customer_id =
            settings.login_customer_id.as_deref().map(|id| customer_id_digits("login_customer_id", id)).transpose()?;
        let default_action = settings
            .conversion_action
            .as_deref()
            .map(|action| resource_name(&customer_id, "conversion_action", action))
            .transpose()?;
        let actions = settings
            .conversion_actions
            .iter()
            .map(|(event, action)| {
                Ok((event.clone(), resource_name(&customer_id, &format!("conversion_actions.{event}"), action)?))
            })
            .collect::<Result<BTreeMap<_, _>, AdapterError>>()?;
        if default_action.is_none() && actions.is_empty() {
            return Err(mapping::settings_error(
                NAME,
                "settings.conversion_action: expected a conversion action (or settings.conversion_actions by event name), found none",
            ));
        }
        let endpoint = mapping::base_url(NAME, "endpoint", &settings.endpoint)?;
        let base = format!("{endpoint}/{}", settings.api_version.trim());
        let mut consent = Map::new();
        if let Some(status) = settings.ad_user_data_consent {
            consent.insert("adUserData".into(), json!(status));
        }
        if let Some(status) = settings.ad_personalization_consent {
            consent.insert("adPersonalization".into(), json!(status));
        }
        Ok(GoogleAds {
            url: format!("{base}/customers/{customer_id}:uploadClickConversions"),
            base,
            customer_id,
            developer_token: settings.developer_token,
            access_token: settings.access_token,
            login_customer_id,
            default_action,
            actions,
            consent: (!consent.is_empty()).then_some(Value::Object(consent)),
            timeout: mapping::timeout(NAME, settings.timeout_ms)?,
        })
    }

    /// The conversion action for a track event named `name`, if it is a
    /// conversion.
    fn action_for(&self, name: &str) -> Option<&str> {
        self.actions.get(name).or(self.default_action.as_ref()).map(String::as_str)
    }

    /// One `ClickConversion`, or why the event cannot be sent.
    fn conversion(&self, action: &str, event: &PreparedEvent) -> Result<Value, String> {
        let properties = mapping::properties(&event.message);
        let mut conversion = Map::new();
        conversion.insert("conversionAction".into(), json!(action));
        conversion.insert("conversionDateTime".into(), json!(mapping::utc_date_time(&event.timestamp)?));
        if let Some(value) = mapping::value(properties) {
            conversion.insert("conversionValue".into(), json_number(value));
        }
        if let Some(currency) = mapping::currency(properties) {
            conversion.insert("currencyCode".into(), json!(currency));
        }
        let order_id = mapping::order_id(properties).unwrap_or_else(|| event.event_id.to_string());
        conversion.insert("orderId".into(), json!(order_id));
        // One click id per conversion: gclid, else the iOS gbraid or wbraid.
        if let Some((field, id)) = ["gclid", "gbraid", "wbraid"]
            .iter()
            .find_map(|field| Some((*field, event.identifiers.get(*field)?.first()?)))
        {
            conversion.insert(field.into(), json!(id));
        }
        let user_identifiers: Vec<Value> =
            [("hashed_email", "hashedEmail"), ("hashed_phone_number", "hashedPhoneNumber")]
                .iter()
                .flat_map(|(field, key)| {
                    event
                        .identifiers
                        .get(*field)
                        .into_iter()
                        .flatten()
                        .map(move |value| json!({ "userIdentifierSource": "FIRST_PARTY", *key: value }))
                })
                .take(MAX_USER_IDENTIFIERS)
                .collect();
        if !user_identifiers.is_empty() {
            conversion.insert("userIdentifiers".into(), json!(user_identifiers));
        }
        let clicked = ["gclid", "gbraid", "wbraid"].iter().any(|field| conversion.contains_key(*field));
        if !clicked && !conversion.contains_key("userIdentifiers") {
            return Err("no click id and no hashed email or phone to attribute the conversion with".to_owned());
        }
        Ok(Value::Object(conversion))
    }
}

#[async_trait]
impl Destination for GoogleAds {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(Description {
            name: NAME.to_owned(),
            category: Category::AdPlatform,
            identifiers: google_ads_identifiers()
                .into_iter()
                .filter(|spec| SENT_IDENTIFIERS.contains(&spec.name.as_str()))
                .collect(),
            max_batch_size: MAX_BATCH_SIZE,
            rate_limit_per_second: None,
        })
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        let (changes, others): (Vec<PreparedEvent>, Vec<PreparedEvent>) =
            events.iter().cloned().partition(|event| AudienceChange::of(event).is_some());
        let mapping::Built { mut results, sent, request } = self.build(&others)?;
        let uploaded = request.is_some();
        if let Some(request) = request {
            let answer = http::post_rendered(&request, self.timeout).await?;
            let failures = partial_failures(&answer.json(), "conversions", sent.len())?;
            results.extend(sent.iter().enumerate().map(|(index, event)| EventResult {
                event_id: event.event_id,
                outcome: match failures.get(&index) {
                    Some(reason) => Outcome::permanent(reason.clone()),
                    None => Outcome::Delivered,
                },
            }));
        }
        results.extend(self.sync_lists(&changes, uploaded).await?);
        Ok(results)
    }

    fn render(&self, events: &[PreparedEvent]) -> Option<Vec<RenderedRequest>> {
        let (changes, others): (Vec<PreparedEvent>, Vec<PreparedEvent>) =
            events.iter().cloned().partition(|event| AudienceChange::of(event).is_some());
        let mut requests: Vec<RenderedRequest> = self.build(&others).ok()?.request.into_iter().collect();
        let (_, lists) = user_lists(&changes);
        // The job's resource name is known only once Google has created it.
        let job = "customers/{customer_id}/offlineUserDataJobs/{job created}";
        for (list, operations) in lists {
            let ids = carried(&operations);
            requests.push(self.create_request(&list, &ids).ok()?);
            requests.push(self.add_operations_request(job, &operations).ok()?);
            requests.push(self.run_request(job, &ids).ok()?);
        }
        Some(requests)
    }
}

impl GoogleAds {
    /// A request to the API with this account's headers.
    fn post(
        &self,
        url: &str,
        body: &Value,
        events: impl IntoIterator<Item = EventId>,
    ) -> Result<RenderedRequest, DeliverError> {
        http::json_post(
            url,
            &[],
            self.headers(),
            body,
            events,
            vec![self.access_token.clone(), self.developer_token.clone()],
        )
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = vec![
            ("Authorization".to_owned(), format!("Bearer {}", self.access_token)),
            ("developer-token".to_owned(), self.developer_token.clone()),
        ];
        if let Some(login) = &self.login_customer_id {
            headers.push(("login-customer-id".to_owned(), login.clone()));
        }
        headers
    }

    /// `offlineUserDataJobs:create` for user list `list`.
    fn create_request(&self, list: &str, ids: &[EventId]) -> Result<RenderedRequest, DeliverError> {
        let mut metadata = json!({"userList": format!("customers/{}/userLists/{list}", self.customer_id)});
        if let Some(consent) = &self.consent {
            metadata["consent"] = consent.clone();
        }
        let body = json!({"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata}});
        let url = format!("{}/customers/{}/offlineUserDataJobs:create", self.base, self.customer_id);
        self.post(&url, &body, ids.iter().copied())
    }

    /// `{job}:addOperations` with one list's operations.
    fn add_operations_request(&self, job: &str, operations: &[Operation]) -> Result<RenderedRequest, DeliverError> {
        let body = json!({
            "operations": operations.iter().map(|(operation, _)| operation).collect::<Vec<_>>(),
            "enablePartialFailure": true,
        });
        self.post(&format!("{}/{job}:addOperations", self.base), &body, carried(operations))
    }

    /// `{job}:run`.
    fn run_request(&self, job: &str, ids: &[EventId]) -> Result<RenderedRequest, DeliverError> {
        self.post(&format!("{}/{job}:run", self.base), &json!({}), ids.iter().copied())
    }

    /// Sends the audience changes, per user list: create a job, add its
    /// operations, run it. The first call of the delivery that fails fails
    /// the delivery (`earlier` says whether a call went before); a later
    /// one's failure becomes its changes' outcome.
    async fn sync_lists(&self, changes: &[PreparedEvent], earlier: bool) -> Result<Vec<EventResult>, DeliverError> {
        let (mut results, lists) = user_lists(changes);
        let mut sent_before = earlier;
        for (list, operations) in lists {
            let ids = carried(&operations);
            let job = match self.create_job(&list, &ids).await {
                Ok(job) => job,
                Err(err) if !sent_before => return Err(err),
                Err(err) => {
                    results.extend(each(&ids, &http::as_outcome(&err)));
                    continue;
                }
            };
            sent_before = true;
            results.extend(self.fill_and_run(&job, &operations).await);
        }
        Ok(results)
    }

    /// Creates a job for user list `list`: its resource name.
    async fn create_job(&self, list: &str, ids: &[EventId]) -> Result<String, DeliverError> {
        let answer = http::post_rendered(&self.create_request(list, ids)?, self.timeout).await?.json();
        // The name goes into the next paths: only a job of this account.
        let prefix = format!("customers/{}/offlineUserDataJobs/", self.customer_id);
        let job = answer["resourceName"].as_str().filter(|name| {
            name.strip_prefix(&prefix).is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        });
        match job {
            Some(job) => Ok(job.to_owned()),
            None => Err(DeliverError::Retryable {
                reason: format!("google ads created no offline user data job: expected resourceName {prefix}{{id}}"),
                retry_after: None,
            }),
        }
    }

    /// Adds a created job's operations and runs it: every change's outcome.
    async fn fill_and_run(&self, job: &str, operations: &[Operation]) -> Vec<EventResult> {
        let ids = carried(operations);
        let failures = match self.add_operations(job, operations).await {
            Ok(failures) => failures,
            Err(err) => return each(&ids, &http::as_outcome(&err)).collect(),
        };
        let mut results = Vec::new();
        let mut added = Vec::new();
        for (index, (_, events)) in operations.iter().enumerate() {
            match failures.get(&index) {
                Some(reason) => results.extend(each(events, &Outcome::permanent(reason.clone()))),
                None => added.extend(events.iter().copied()),
            }
        }
        if added.is_empty() {
            return results;
        }
        let run = match self.run_request(job, &added) {
            Ok(request) => http::post_rendered(&request, self.timeout).await.map(|_| ()),
            Err(err) => Err(err),
        };
        let outcome = match run {
            Ok(()) => Outcome::Delivered,
            Err(err) => http::as_outcome(&err),
        };
        results.extend(each(&added, &outcome));
        results
    }

    /// Sends `addOperations`: the operations Google refused, by index.
    async fn add_operations(
        &self,
        job: &str,
        operations: &[Operation],
    ) -> Result<BTreeMap<usize, String>, DeliverError> {
        let answer = http::post_rendered(&self.add_operations_request(job, operations)?, self.timeout).await?;
        partial_failures(&answer.json(), "operations", operations.len())
    }
}

/// One Customer Match operation and the changes it carries (the last change
/// of a person, and those it superseded).
type Operation = (Value, Vec<EventId>);

/// Customer Match operations by user list.
type UserLists = BTreeMap<String, Vec<Operation>>;

/// The changes the operations carry.
fn carried(operations: &[Operation]) -> Vec<EventId> {
    operations.iter().flat_map(|(_, events)| events.iter().copied()).collect()
}

/// The same outcome for each of `ids`.
fn each<'a>(ids: &'a [EventId], outcome: &'a Outcome) -> impl Iterator<Item = EventResult> + 'a {
    ids.iter().map(move |event_id| EventResult { event_id: *event_id, outcome: outcome.clone() })
}

/// A batch's audience changes as Customer Match operations, by user list,
/// the last change of a person in a list winning; and the changes refused
/// (no list id, not digits, no identifier).
fn user_lists(changes: &[PreparedEvent]) -> (Vec<EventResult>, UserLists) {
    let mut refused = Vec::new();
    // (list, person) → the operation of the person's last change.
    let mut latest: BTreeMap<(String, String), Operation> = BTreeMap::new();
    for event in changes {
        let Some(change) = AudienceChange::of(event) else { continue };
        let operation = list_of(&change).and_then(|list| Ok((list, user_data(event)?)));
        let (list, identifiers) = match operation {
            Ok(operation) => operation,
            Err(reason) => {
                refused.push(EventResult { event_id: event.event_id, outcome: Outcome::permanent(reason) });
                continue;
            }
        };
        let person = identifiers[0].to_string();
        let kind = if change.entered { "create" } else { "remove" };
        let entry = latest.entry((list, person)).or_insert_with(|| (Value::Null, Vec::new()));
        entry.0 = json!({ kind: {"userIdentifiers": identifiers} });
        entry.1.push(event.event_id);
    }
    let mut lists = UserLists::new();
    for ((list, _), operation) in latest {
        lists.entry(list).or_default().push(operation);
    }
    (refused, lists)
}

/// The user list id a change goes to, or why it has none.
fn list_of(change: &AudienceChange<'_>) -> Result<String, String> {
    let Some(list) = change.external_id else {
        return Err(format!(
            "audience {:?} is connected without a Customer Match user list id: connect it again with \
             --external-id USER_LIST_ID",
            change.audience
        ));
    };
    // The id goes into a resource name: digits only.
    if list.is_empty() || !list.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("audience {:?}: a Customer Match user list id is digits, found {list:?}", change.audience));
    }
    Ok(list.to_owned())
}

/// A person's `userIdentifiers` (non-empty), or why there are none.
fn user_data(event: &PreparedEvent) -> Result<Vec<Value>, String> {
    let identifiers: Vec<Value> = [("hashed_email", "hashedEmail"), ("hashed_phone_number", "hashedPhoneNumber")]
        .iter()
        .flat_map(|(field, key)| {
            event.identifiers.get(*field).into_iter().flatten().map(move |value| json!({ *key: value }))
        })
        .take(MAX_IDENTIFIERS_PER_PERSON)
        .collect();
    if identifiers.is_empty() {
        return Err("Customer Match matches on a hashed email or phone: the person has neither".to_owned());
    }
    Ok(identifiers)
}

impl GoogleAds {
    /// The results known without sending, the conversions' events, and the
    /// one upload request (none when no event is a conversion).
    fn build(&self, events: &[PreparedEvent]) -> Result<mapping::Built, DeliverError> {
        // Not a conversion of this account (see the module doc).
        let mapping::Mapped { results, sent, records: conversions } = mapping::map_events(events, |event| {
            let action = match (event.message_type.as_str(), event.name.as_deref()) {
                ("track", Some(name)) => self.action_for(name)?,
                _ => return None,
            };
            Some(self.conversion(action, event))
        });
        if conversions.is_empty() {
            return Ok(mapping::Built { results, sent, request: None });
        }
        let body = json!({ "conversions": conversions, "partialFailure": true });
        let request = self.post(&self.url, &body, sent.iter().map(|event| event.event_id))?;
        Ok(mapping::Built { results, sent, request: Some(request) })
    }
}

/// The failed entries of a partial-failure answer (`conversions[i]` of an
/// upload, `operations[i]` of `addOperations`), by index, with their
/// reasons. A `partialFailureError` whose errors name no entry refuses the
/// request: which entries failed is unknown.
fn partial_failures(answer: &Value, field: &str, sent: usize) -> Result<BTreeMap<usize, String>, DeliverError> {
    let error = &answer["partialFailureError"];
    if error.is_null() || error.as_object().is_some_and(Map::is_empty) {
        return Ok(BTreeMap::new());
    }
    let mut failures = BTreeMap::new();
    let errors =
        error["details"].as_array().into_iter().flatten().flat_map(|d| d["errors"].as_array().into_iter().flatten());
    for failure in errors {
        let index = failure["location"]["fieldPathElements"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|element| element["fieldName"] == field)
            .and_then(|element| element["index"].as_u64())
            .map(|index| index as usize)
            .filter(|index| *index < sent);
        let Some(index) = index else { continue };
        let code = failure["errorCode"]
            .as_object()
            .and_then(|codes| codes.iter().next())
            .map(|(kind, code)| format!("{kind} {}", code.as_str().unwrap_or_default()))
            .unwrap_or_else(|| "error".to_owned());
        let message = failure["message"].as_str().unwrap_or_default();
        failures.entry(index).or_insert_with(|| format!("google ads {code}: {message}"));
    }
    if failures.is_empty() {
        let message = error["message"].as_str().unwrap_or("partial failure without details");
        return Err(DeliverError::BatchRejected { reason: format!("google ads partial failure: {message}") });
    }
    Ok(failures)
}

/// A customer id as digits (`123-456-7890` → `1234567890`).
fn customer_id_digits(field: &str, value: &str) -> Result<String, AdapterError> {
    let digits: String = value.trim().chars().filter(|c| *c != '-').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(mapping::settings_error(
            NAME,
            format!("settings.{field}: expected a customer id like 123-456-7890, found \"{value}\""),
        ));
    }
    Ok(digits)
}

/// A conversion action's resource name: an id becomes
/// `customers/{customer_id}/conversionActions/{id}`; a resource name is kept.
fn resource_name(customer_id: &str, field: &str, value: &str) -> Result<String, AdapterError> {
    let value = value.trim();
    if value.starts_with("customers/") && value.contains("/conversionActions/") {
        return Ok(value.to_owned());
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(mapping::settings_error(
            NAME,
            format!("settings.{field}: expected a conversion action id or resource name, found \"{value}\""),
        ));
    }
    Ok(format!("customers/{customer_id}/conversionActions/{value}"))
}
