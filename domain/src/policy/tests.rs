//! Given a message and a policy, when it is applied, then this is what goes
//! out and what the audit ledger says.

use serde_json::json;

use super::*;

mod proptests;

/// [`super::apply`] without workspace secrets: unknown field names are
/// recorded by class only.
fn apply(
    message: &Value,
    category: Category,
    workspace: &WorkspacePolicy,
    destination: &DestinationPolicy,
    annotations: &Annotations,
) -> Verdict {
    super::apply(message, category, workspace, destination, annotations, None)
}

const SITE: &str = "https://www.northside-health.example";

fn healthcare() -> WorkspacePolicy {
    WorkspacePolicy { industry: Industry::Healthcare, allow_ip_user_agent: false, site_origin: Some(SITE.to_owned()) }
}

fn appointment() -> Value {
    json!({
        "type": "track",
        "event": "Appointment Booked",
        "messageId": "550e8400-e29b-41d4-a716-446655440000",
        "timestamp": "2024-05-01T10:00:00Z",
        "userId": "u-123",
        "properties": {
            "diagnosis": "Type 2 diabetes",
            "value": 120,
            "currency": "USD",
            "appointment_type": "cardiology",
        },
        "context": {
            "ip": "203.0.113.7",
            "userAgent": "Mozilla/5.0",
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "page": {
                "url": "https://clinic.example.com/appointments/diabetes?patient=123",
                "path": "/appointments/diabetes",
                "title": "Book a diabetes consultation",
                "referrer": "https://search.example.com/?q=diabetes+clinic",
            },
            "campaign": {"name": "diabetes-spring", "source": "newsletter"},
        },
    })
}

fn mapped() -> DestinationPolicy {
    DestinationPolicy {
        event_names: [("Appointment Booked".to_owned(), "Schedule".to_owned())].into(),
        ..DestinationPolicy::default()
    }
}

fn sent(verdict: Verdict) -> (Value, Vec<Scrub>, bool) {
    match verdict {
        Verdict::Send { message, scrubs, withhold_ip_user_agent } => (message, scrubs, withhold_ip_user_agent),
        Verdict::Withhold { reason } => panic!("withheld: {reason}"),
    }
}

fn fields(scrubs: &[Scrub]) -> Vec<&str> {
    scrubs.iter().map(|scrub| scrub.field.as_str()).collect()
}

fn scrub<'a>(scrubs: &'a [Scrub], field: &str) -> &'a Scrub {
    scrubs.iter().find(|scrub| scrub.field == field).unwrap_or_else(|| panic!("no scrub of {field} in {scrubs:?}"))
}

#[test]
fn every_industry_but_general_is_restricted() {
    let restricted: Vec<_> = Industry::ALL.into_iter().filter(|industry| industry.is_restricted()).collect();
    assert_eq!(restricted.len(), 5);
    assert!(!Industry::General.is_restricted());
    assert!(restricted_ad_platform(Category::AdPlatform, Industry::Insurance));
    assert!(!restricted_ad_platform(Category::Analytics, Industry::Insurance));
    assert!(!restricted_ad_platform(Category::AdPlatform, Industry::General));
}

#[test]
fn a_classification_round_trips_through_its_name_and_a_wrong_name_lists_the_valid_ones() {
    for class in Classification::ALL {
        assert_eq!(class.as_str().parse::<Classification>(), Ok(class));
        assert_eq!(serde_json::to_value(class).unwrap(), json!(class.as_str()));
    }
    assert_eq!(
        "phii".parse::<Classification>().unwrap_err(),
        "classification: expected one of identifier, phi, financial, free_text, url, device, location, \
         other_sensitive, found \"phii\""
    );
}

#[test]
fn a_destination_policy_reads_from_partial_configuration() {
    let policy: DestinationPolicy = serde_json::from_value(json!({"remove": ["phi", "free_text"]})).unwrap();
    assert_eq!(policy.remove, [Classification::Phi, Classification::FreeText]);
    assert_eq!(policy.allow_ip_user_agent, None);
    assert!(policy.validate().is_ok());
}

#[test]
fn a_destination_policy_with_a_malformed_path_or_an_unknown_generic_name_is_invalid() {
    let policy = DestinationPolicy { allow_fields: vec!["properties..x".into()], ..DestinationPolicy::default() };
    assert_eq!(
        policy.validate().unwrap_err(),
        "allow_fields[0]: expected a dotted path such as properties.plan, found \"properties..x\""
    );
    for path in ["", ".properties", "properties.", "properties.[]", "properties.a[0]"] {
        let policy = DestinationPolicy { allow_fields: vec![path.into()], ..DestinationPolicy::default() };
        assert!(policy.validate().is_err(), "{path}");
    }
    let policy = DestinationPolicy { allow_fields: vec!["properties.products[].sku".into()], ..mapped() };
    assert!(policy.validate().is_ok());
    let policy = DestinationPolicy {
        event_names: [("Appointment Booked".to_owned(), "Booked".to_owned())].into(),
        ..DestinationPolicy::default()
    };
    let error = policy.validate().unwrap_err();
    assert!(error.starts_with("event_names.\"Appointment Booked\": expected one of Order Completed, "), "{error}");
    assert!(error.ends_with(", found \"Booked\""), "{error}");
}

#[test]
fn a_custom_event_of_a_restricted_industry_is_withheld_from_an_ad_platform_without_a_mapping() {
    let verdict = apply(
        &appointment(),
        Category::AdPlatform,
        &healthcare(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    );
    assert_eq!(
        verdict,
        Verdict::Withhold { reason: "custom event name is not mapped to an allowed generic name".into() }
    );
}

#[test]
fn a_mapped_custom_event_goes_to_an_ad_platform_under_its_generic_name_with_only_the_allowlist() {
    let verdict = apply(&appointment(), Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default());
    let (message, scrubs, withhold_ip_user_agent) = sent(verdict);
    assert_eq!(
        message,
        json!({
            "type": "track",
            "event": "Schedule",
            "timestamp": "2024-05-01T10:00:00Z",
            "properties": {"value": 120, "currency": "USD"},
            "context": {"page": {"url": SITE}},
        })
    );
    assert!(withhold_ip_user_agent);
    assert_eq!(
        scrub(&scrubs, "event"),
        &Scrub {
            field: "event".into(),
            action: Action::Renamed,
            reason: "custom event name mapped to a generic name".into()
        }
    );
    assert_eq!(scrub(&scrubs, "context.page.url").action, Action::ReplacedBySiteOrigin);
    assert_eq!(scrub(&scrubs, "context.page.url").reason, "replaced by the workspace's registered site origin");
    for field in [
        // Keys neither the Segment spec nor the plan names: class, no text.
        "properties.<phi>",
        "properties.<unclassified>",
        "messageId",
        "context.library",
        "context.page.title",
        "context.page.path",
        "context.page.referrer",
        "context.campaign",
        "context.ip",
        "context.userAgent",
        "userId",
    ] {
        assert_eq!(scrub(&scrubs, field).action, Action::Removed);
        assert!(scrub(&scrubs, field).reason.ends_with(NOT_ALLOWLISTED), "{:?}", scrub(&scrubs, field));
    }
    assert_eq!(scrub(&scrubs, "properties.<phi>").reason, format!("phi by its name; {NOT_ALLOWLISTED}"));
    assert_eq!(scrubs.len(), 13, "{:?}", fields(&scrubs));
}

#[test]
fn an_allowed_field_of_a_destination_reaches_a_restricted_ad_platform_only_with_a_declared_value_or_a_number() {
    let destination = DestinationPolicy {
        allow_fields: vec!["properties.appointment_type=cardiology|dermatology".into(), "properties.visits".into()],
        ..mapped()
    };
    let mut message = appointment();
    message["properties"]["visits"] = json!(3);
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &healthcare(), &destination, &Annotations::default()));
    assert_eq!(
        output["properties"],
        json!({"value": 120, "currency": "USD", "appointment_type": "cardiology", "visits": 3})
    );
    assert!(!fields(&scrubs).iter().any(|field| field.contains("appointment")), "{scrubs:?}");
    // Free text in a declared field, or text in a numeric one, is removed.
    message["properties"]["appointment_type"] = json!("HIV follow-up");
    message["properties"]["visits"] = json!("60640");
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &healthcare(), &destination, &Annotations::default()));
    assert_eq!(output["properties"], json!({"value": 120, "currency": "USD"}));
    let reasons: Vec<&str> = scrubs.iter().map(|scrub| scrub.reason.as_str()).collect();
    assert!(
        reasons.contains(&"not one of the values declared for it") && reasons.contains(&"not a number"),
        "{reasons:?}"
    );
}

#[test]
fn an_event_time_far_from_when_onepd_received_it_is_withheld_from_a_restricted_ad_platform() {
    let mut message = appointment();
    message["receivedAt"] = json!("2024-05-01T10:00:05Z");
    assert!(matches!(
        apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default()),
        Verdict::Send { .. }
    ));
    message["timestamp"] = json!("1961-04-12T00:00:00Z");
    assert_eq!(
        apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default()),
        Verdict::Withhold { reason: "event time more than 90 days from when onepd received it".into() }
    );
}

#[test]
fn allowlisted_numbers_that_read_as_identifiers_are_removed() {
    for planted in [
        json!(13125557734u64),
        json!(19610412),
        json!(78051120),
        json!(19610412.0),
        json!(3125557734.5),
        json!(-3125557734.5),
        json!(0.0019610412),
        json!(1.3125557734e19),
        json!(1961041.25),
    ] {
        let mut message = appointment();
        message["properties"]["value"] = planted.clone();
        let (output, _, _) =
            sent(apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default()));
        assert!(output["properties"].get("value").is_none(), "{planted} passed");
    }
    let mut message = appointment();
    message["properties"]["value"] = json!(123456.5);
    let (output, _, _) = sent(apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default()));
    assert_eq!(output["properties"]["value"], json!(123456.5));
}

#[test]
fn allowlisted_fields_are_typed_so_free_text_does_not_pass_as_a_currency() {
    let mut message = appointment();
    message["properties"]["currency"] = json!("HIV");
    message["properties"]["value"] = json!("Type 2 diabetes");
    message["channel"] = json!("HIV clinic");
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default()));
    assert_eq!(output["properties"], json!({}));
    assert!(output.get("channel").is_none());
    assert_eq!(scrub(&scrubs, "properties.currency").reason, "not an ISO 4217 currency code");
    assert_eq!(scrub(&scrubs, "properties.value").reason, "not a number");
    assert_eq!(scrub(&scrubs, "channel").reason, "not server, browser, mobile or client");
}

#[test]
fn click_ids_on_the_allowlist_keep_only_their_documented_shape() {
    let mut message = appointment();
    message["context"]["fbc"] = json!("078-05-1120");
    message["context"]["fbp"] = json!("fb.1.1764650000000.HIV-positive-patient");
    message["context"]["clickIds"] = json!({
        "gclid": {"value": "Type 2 diabetes", "capturedAt": "2024-05-01T10:00:00Z"},
        "ttclid": {"value": "E.C.P.CqgBGvW1y2hN4tQ3Zy1cw8", "capturedAt": "2024-05-01T10:00:00Z", "note": "x"},
        "Margaret Okafor DOB": "1961-04-12",
    });
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &Annotations::default()));
    assert_eq!(
        output["context"]["clickIds"],
        json!({"ttclid": {"value": "E.C.P.CqgBGvW1y2hN4tQ3Zy1cw8", "capturedAt": "2024-05-01T10:00:00Z"}})
    );
    assert!(output["context"].get("fbc").is_none() && output["context"].get("fbp").is_none(), "{output}");
    assert!(scrub(&scrubs, "context.fbc").reason.starts_with("not fb.<subdomain index>"));
    assert!(scrub(&scrubs, "context.clickIds.gclid").reason.starts_with("not a click id"));
    assert!(!format!("{scrubs:?}").contains("Okafor"), "{scrubs:?}");
}

#[test]
fn an_allowlisted_field_is_still_removed_when_the_plan_classifies_it_or_its_value_looks_sensitive() {
    let annotations = Annotations {
        events: [("Appointment Booked".to_owned(), [("value".to_owned(), Classification::Phi)].into())].into(),
        ..Annotations::default()
    };
    let mut message = appointment();
    message["properties"]["total"] = json!(4111111111111111u64);
    let (output, scrubs, _) = sent(apply(&message, Category::AdPlatform, &healthcare(), &mapped(), &annotations));
    assert_eq!(output["properties"], json!({"currency": "USD"}));
    assert_eq!(scrub(&scrubs, "properties.value").reason, "classified phi by the tracking plan");
    assert!(scrub(&scrubs, "properties.total").reason.starts_with("a number of 10,000,000 or more"));
    // A value the operator declared is still removed when it looks sensitive.
    let declared =
        DestinationPolicy { allow_fields: vec!["properties.contact=help@clinic.example".into()], ..mapped() };
    let mut message = appointment();
    message["properties"]["contact"] = json!("help@clinic.example");
    let (output, scrubs, _) = sent(apply(&message, Category::AdPlatform, &healthcare(), &declared, &annotations));
    assert!(output["properties"].get("contact").is_none());
    assert_eq!(scrub(&scrubs, "properties.contact").reason, "email address by its value");
}

#[test]
fn a_generic_event_name_reaches_a_restricted_ad_platform_unchanged() {
    let mut message = appointment();
    message["event"] = json!("Order Completed");
    let (output, scrubs, _) = sent(apply(
        &message,
        Category::AdPlatform,
        &WorkspacePolicy { industry: Industry::FinancialServices, allow_ip_user_agent: false, site_origin: None },
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(output["event"], "Order Completed");
    assert!(!fields(&scrubs).contains(&"event"));
}

#[test]
fn a_page_call_reaches_a_restricted_ad_platform_without_its_name_and_with_the_site_origin_as_its_url() {
    let message = json!({
        "type": "page",
        "name": "Diabetes care",
        "properties": {"url": "https://clinic.example.com/diabetes", "title": "Diabetes care", "search": "?q=x"},
        "context": {"page": {"url": "https://user:secret@Clinic.Example.com:8443/diabetes#top", "search": "?q=x"}},
    });
    let (output, scrubs, _) = sent(apply(
        &message,
        Category::AdPlatform,
        &healthcare(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(output, json!({"type": "page", "properties": {}, "context": {"page": {"url": SITE}}}));
    assert_eq!(
        fields(&scrubs),
        ["context.page.search", "context.page.url", "name", "properties.search", "properties.title", "properties.url"]
    );
}

#[test]
fn a_custom_event_field_on_a_page_call_is_removed_rather_than_withholding_the_call() {
    let message = json!({"type": "page", "event": "Diabetes care", "context": {"page": {"url": "https://a.example"}}});
    let (output, scrubs, _) = sent(apply(
        &message,
        Category::AdPlatform,
        &healthcare(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(output, json!({"type": "page", "context": {"page": {"url": SITE}}}));
    assert_eq!(scrubs[0], Scrub { field: "event".into(), action: Action::Removed, reason: NOT_ALLOWLISTED.into() });
}

#[test]
fn a_track_call_without_an_event_name_is_withheld_from_a_restricted_ad_platform() {
    let verdict = apply(
        &json!({"type": "track"}),
        Category::AdPlatform,
        &healthcare(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    );
    assert_eq!(verdict, Verdict::Withhold { reason: "track call without an event name".into() });
}

#[test]
fn without_a_registered_site_origin_a_restricted_ad_platform_gets_no_page_url() {
    let message = json!({"type": "page", "context": {"page": {"url": "https://hiv-prep.northside-health.example/"}}});
    let (output, scrubs, _) = sent(apply(
        &message,
        Category::AdPlatform,
        &WorkspacePolicy { site_origin: None, ..healthcare() },
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(output, json!({"type": "page", "context": {"page": {}}}));
    assert_eq!(scrubs[0].field, "context.page.url");
}

#[test]
fn an_array_of_objects_loses_a_field_in_every_element_and_records_it_once() {
    let mut message = appointment();
    message["event"] = json!("Order Completed");
    message["properties"]["products"] = json!([{"sku": "a1", "name": "Insulin pen"}, {"sku": "b2", "name": "Lancets"}]);
    let destination = DestinationPolicy {
        allow_fields: vec!["properties.products[].sku=a1|b2".into()],
        ..DestinationPolicy::default()
    };
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &healthcare(), &destination, &Annotations::default()));
    assert_eq!(output["properties"]["products"], json!([{"sku": "a1"}, {"sku": "b2"}]));
    assert_eq!(fields(&scrubs).iter().filter(|field| **field == "properties.products[].name").count(), 1);
}

#[test]
fn ip_address_and_user_agent_are_withheld_for_healthcare_unless_allowed() {
    let withheld = |workspace: WorkspacePolicy, destination: DestinationPolicy, category: Category| {
        sent(apply(&appointment(), category, &workspace, &destination, &Annotations::default())).2
    };
    assert!(withheld(healthcare(), mapped(), Category::AdPlatform));
    let allowing = WorkspacePolicy { allow_ip_user_agent: true, ..healthcare() };
    assert!(!withheld(allowing.clone(), mapped(), Category::AdPlatform));
    let destination_refuses = DestinationPolicy { allow_ip_user_agent: Some(false), ..mapped() };
    assert!(withheld(allowing, destination_refuses, Category::AdPlatform));
    let destination_allows = DestinationPolicy { allow_ip_user_agent: Some(true), ..mapped() };
    assert!(!withheld(healthcare(), destination_allows, Category::AdPlatform));
    let insurance = WorkspacePolicy { industry: Industry::Insurance, allow_ip_user_agent: false, site_origin: None };
    assert!(!withheld(insurance.clone(), mapped(), Category::AdPlatform));
    let destination_refuses = DestinationPolicy { allow_ip_user_agent: Some(false), ..mapped() };
    assert!(withheld(insurance, destination_refuses, Category::AdPlatform));
    assert!(!withheld(healthcare(), DestinationPolicy::default(), Category::Analytics));
}

#[test]
fn an_analytics_destination_gets_the_message_unchanged() {
    let verdict = apply(
        &appointment(),
        Category::Analytics,
        &healthcare(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    );
    assert_eq!(verdict, Verdict::Send { message: appointment(), scrubs: vec![], withhold_ip_user_agent: false });
}

#[test]
fn an_analytics_destination_told_to_remove_phi_loses_the_diagnosis_only() {
    let destination = DestinationPolicy { remove: vec![Classification::Phi], ..DestinationPolicy::default() };
    let (output, scrubs, _) =
        sent(apply(&appointment(), Category::Analytics, &healthcare(), &destination, &Annotations::default()));
    let mut expected = appointment();
    expected["properties"].as_object_mut().unwrap().remove("diagnosis");
    assert_eq!(output, expected);
    assert_eq!(
        scrubs,
        [Scrub { field: "properties.<phi>".into(), action: Action::Removed, reason: "phi by its name".into() }]
    );
}

#[test]
fn a_warehouse_told_to_remove_identifiers_finds_them_by_plan_name_and_value_in_nested_fields() {
    let annotations = Annotations::from_plan(&json!({"identify": {"type": "object", "properties": {
        "member": {"type": "object", "properties": {"code": {"type": "string", "classification": "identifier"}}},
        "contacts": {"type": "array", "items": {"type": "object", "properties": {
            "email": {"type": "string"}, "x1": {"type": "string"}}}},
        "joined": {"type": "string"},
    }}}))
    .unwrap();
    let message = json!({
        "type": "identify",
        "userId": "u-1",
        "traits": {
            "plan": "gold",
            "member": {"code": "M-77", "since": "2019"},
            "contacts": [{"email": "a@example.com", "label": "home"}, {"x1": "jane@example.com", "label": "work"}],
            "joined": "2020-02-03",
        },
        "context": {"traits": {"firstName": "Jane"}},
    });
    let destination = DestinationPolicy { remove: vec![Classification::Identifier], ..DestinationPolicy::default() };
    let (output, scrubs, _) =
        sent(apply(&message, Category::Warehouse, &WorkspacePolicy::default(), &destination, &annotations));
    assert_eq!(
        output,
        json!({
            "type": "identify",
            "userId": "u-1",
            "traits": {"plan": "gold", "member": {"since": "2019"}, "contacts": [{"label": "home"}, {"label": "work"}]},
            "context": {"traits": {}},
        })
    );
    let reasons: Vec<(&str, &str)> = scrubs.iter().map(|s| (s.field.as_str(), s.reason.as_str())).collect();
    assert_eq!(
        reasons,
        [
            ("context.traits.firstName", "identifier by its name"),
            ("traits.contacts[].email", "identifier by its name"),
            ("traits.contacts[].x1", "email address by its value"),
            ("traits.joined", "date by its value"),
            ("traits.member.code", "classified identifier by the tracking plan"),
        ]
    );
}

#[test]
fn a_general_ad_platform_loses_identifiers_phi_financial_and_other_sensitive_fields_but_keeps_the_rest() {
    let message = json!({
        "type": "track",
        "event": "Appointment Booked",
        "timestamp": "2024-05-01T10:00:00Z",
        "properties": {
            "diagnosis": "flu",
            "value": 120,
            "note": "call me at 555-123-4567",
            "contact": "555-123-4567",
            "card": 4111111111111111u64,
            "age": 34,
            "products": [{"sku": "a1", "price": 3}],
            "url": "https://shop.example.com/a?b=c",
            "city": "Springfield",
        },
        "context": {"library": {"name": "analytics.js"}, "page": {"title": "Flu shots", "url": "https://shop.example.com/a"}},
    });
    let (output, scrubs, withhold) = sent(apply(
        &message,
        Category::AdPlatform,
        &WorkspacePolicy::default(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(output["event"], "Appointment Booked");
    assert_eq!(
        output["properties"],
        json!({
            "value": 120,
            "note": "call me at 555-123-4567",
            "products": [{"sku": "a1", "price": 3}],
            "url": "https://shop.example.com/a?b=c",
            "city": "Springfield",
        })
    );
    assert_eq!(output["context"], message["context"]);
    assert_eq!(
        fields(&scrubs),
        ["properties.<other_sensitive>", "properties.<financial>", "properties.<identifier>", "properties.<phi>"]
    );
    assert_eq!(scrub(&scrubs, "properties.<identifier>").reason, "phone number by its value");
    assert!(!withhold);
}

#[test]
fn destination_removals_apply_on_top_of_the_general_ad_platform_rule() {
    let message = json!({"type": "track", "event": "Signed Up", "properties": {"note": "hello", "plan": "pro"}});
    let destination = DestinationPolicy { remove: vec![Classification::FreeText], ..DestinationPolicy::default() };
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &WorkspacePolicy::default(), &destination, &Annotations::default()));
    assert_eq!(output["properties"], json!({"plan": "pro"}));
    assert_eq!(scrubs[0].reason, "free text by its name");
}

#[test]
fn destination_removals_apply_on_top_of_a_restricted_allowlist() {
    let destination = DestinationPolicy {
        allow_fields: vec!["properties.notes=bring results".into()],
        remove: vec![Classification::FreeText],
        ..mapped()
    };
    let mut message = appointment();
    message["properties"]["notes"] = json!("bring results");
    let (output, scrubs, _) =
        sent(apply(&message, Category::AdPlatform, &healthcare(), &destination, &Annotations::default()));
    assert_eq!(output["properties"], json!({"value": 120, "currency": "USD"}));
    assert_eq!(scrub(&scrubs, "properties.notes").reason, "free text by its name");
}

#[test]
fn the_envelope_is_never_classified() {
    let message =
        json!({"type": "track", "event": "Signed Up", "timestamp": "2024-05-01T10:00:00Z", "sentAt": "2024-05-01"});
    assert_eq!(classify(None, "timestamp", "timestamp", &message["timestamp"], &Annotations::default()), None);
    let destination = DestinationPolicy { remove: Classification::ALL.to_vec(), ..DestinationPolicy::default() };
    let (output, scrubs, _) =
        sent(apply(&message, Category::Warehouse, &WorkspacePolicy::default(), &destination, &Annotations::default()));
    assert_eq!(output, message);
    assert!(scrubs.is_empty());
}

#[test]
fn classification_prefers_the_plan_then_the_name_then_the_value() {
    let annotations = Annotations {
        events: [("A".to_owned(), [("email".to_owned(), Classification::Phi)].into())].into(),
        ..Annotations::default()
    };
    let email = json!("a@example.com");
    assert_eq!(
        classify(Some("A"), "properties.email", "email", &email, &annotations),
        Some((Classification::Phi, Source::Annotation))
    );
    assert_eq!(
        classify(Some("B"), "properties.email", "email", &email, &annotations),
        Some((Classification::Identifier, Source::KeyName))
    );
    assert_eq!(
        classify(Some("B"), "properties.x1", "x1", &email, &annotations),
        Some((Classification::Identifier, Source::ValueShape))
    );
    assert_eq!(classify(Some("B"), "properties.x1", "x1", &json!("hello"), &annotations), None);
    assert_eq!(Source::KeyName.as_str(), "key_name");
    assert_eq!(Action::ReducedToOrigin.as_str(), "reduced_to_origin");
}

#[test]
fn key_names_do_not_apply_to_a_page_name_or_the_descriptive_context() {
    let annotations = Annotations::default();
    let name = json!("Home");
    assert_eq!(classify(None, "name", "name", &name, &annotations), None);
    assert_eq!(classify(None, "context.library.name", "name", &name, &annotations), None);
    assert_eq!(classify(None, "context.campaign.name", "name", &name, &annotations), None);
    assert_eq!(
        classify(None, "context.traits.name", "name", &name, &annotations),
        Some((Classification::Identifier, Source::KeyName))
    );
    assert_eq!(
        classify(None, "context.campaign.content", "content", &json!("a@example.com"), &annotations),
        Some((Classification::Identifier, Source::ValueShape))
    );
}

#[test]
fn an_age_over_89_is_an_identifier() {
    let annotations = Annotations::default();
    assert_eq!(
        classify(None, "traits.age", "age", &json!(34), &annotations),
        Some((Classification::OtherSensitive, Source::KeyName))
    );
    assert_eq!(
        classify(None, "traits.age", "age", &json!(92), &annotations),
        Some((Classification::Identifier, Source::KeyName))
    );
}

#[test]
fn a_key_neither_the_spec_nor_the_plan_names_is_recorded_by_class_and_keyed_digest() {
    let message = json!({"type": "identify", "traits": {"jane@example.com": true}});
    let (_, scrubs, _) = sent(apply(
        &message,
        Category::AdPlatform,
        &healthcare(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(fields(&scrubs), ["traits"]);
    let destination = DestinationPolicy { remove: vec![Classification::Identifier], ..DestinationPolicy::default() };
    let message = json!({"type": "identify", "traits": {"jane@example.com": "555-123-4567"}});
    let (_, scrubs, _) =
        sent(apply(&message, Category::Analytics, &healthcare(), &destination, &Annotations::default()));
    assert_eq!(fields(&scrubs), ["traits.<identifier>"]);
    // With the workspace's keys: a digest of the whole path, the same for
    // the same path, different for another, never the key's text.
    let secrets = WorkspaceSecrets { external_id: [1; 32], field_names: [2; 32] };
    let message = json!({"type": "track", "event": "Signed Up", "properties": {
        "Have you ever been diagnosed with HIV?": "yes", "Margaret Okafor DOB": "1961-04-12"}});
    let keyed = |message: &Value| {
        let verdict = super::apply(
            message,
            Category::AdPlatform,
            &healthcare(),
            &DestinationPolicy::default(),
            &Annotations::default(),
            Some(&secrets),
        );
        sent(verdict).1.into_iter().map(|scrub| scrub.field).collect::<Vec<_>>()
    };
    let names = keyed(&message);
    let hiv = format!(
        "properties.<unclassified:{}>",
        secrets.field_digest("properties.Have you ever been diagnosed with HIV?")
    );
    let dob = format!("properties.<identifier:{}>", secrets.field_digest("properties.Margaret Okafor DOB"));
    assert_eq!(names, [hiv, dob]);
    assert_eq!(keyed(&message), names, "the same path gives the same digest");
    assert!(!format!("{names:?}").contains("HIV") && !format!("{names:?}").contains("Okafor"));
    // A name the plan declares is written out.
    let plan = Annotations::from_plan(&json!({"events": {"Signed Up": {"type": "object", "properties": {
        "Margaret Okafor DOB": {"type": "string"}}}}}))
    .unwrap();
    let verdict =
        super::apply(&message, Category::AdPlatform, &healthcare(), &DestinationPolicy::default(), &plan, None);
    assert!(sent(verdict).1.iter().any(|scrub| scrub.field == "properties.Margaret Okafor DOB"));
}

#[test]
fn a_message_that_is_not_an_object_is_withheld() {
    let verdict =
        apply(&json!([1]), Category::Analytics, &healthcare(), &DestinationPolicy::default(), &Annotations::default());
    assert_eq!(verdict, Verdict::Withhold { reason: "message is not a json object".into() });
}

#[test]
fn origins_keep_scheme_host_and_port_only() {
    assert_eq!(origin("https://clinic.example.com/a?b#c").as_deref(), Some("https://clinic.example.com"));
    assert_eq!(origin("HTTP://Example.com:8080").as_deref(), Some("http://example.com:8080"));
    assert_eq!(origin("https://u:p@example.com/x").as_deref(), Some("https://example.com"));
    assert_eq!(origin("https://[2001:db8::1]:443/x").as_deref(), Some("https://[2001:db8::1]:443"));
    assert_eq!(origin("ftp://example.com"), None);
    assert_eq!(origin("https:///x"), None);
    assert_eq!(origin("https://exa mple.com"), None);
}

#[test]
fn a_general_industrys_ad_platform_keeps_the_segment_ecommerce_properties() {
    let order = json!({
        "type": "track", "event": "Order Completed", "messageId": "m-1",
        "properties": {
            "order_id": "50314b8e9bcf000000000000", "checkout_id": "c-1", "affiliation": "Google Store",
            "total": 27.5, "subtotal": 22.5, "revenue": 25.0, "shipping": 3, "tax": 2, "discount": 2.5,
            "coupon": "hasbros", "currency": "USD", "value": 27.5,
            "products": [{"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "category": "Games",
                          "brand": "Hasbro", "variant": "200 pieces", "price": 19, "quantity": 1, "position": 3}],
        },
    });
    let (message, scrubs, _) = sent(apply(
        &order,
        Category::AdPlatform,
        &WorkspacePolicy::default(),
        &DestinationPolicy::default(),
        &Annotations::default(),
    ));
    assert_eq!(message, order, "removed: {:?}", fields(&scrubs));
}
