//! Given events, then profiles: what a 360-degree profile holds, and a
//! property test of determinism and of merges agreeing with attribution.

use onepd_domain::identity::IdentifierKind;
use onepd_domain::{Payload, StreamId};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::*;

const WORKSPACE: WorkspaceId = WorkspaceId(Uuid::from_u128(0xac1e));

/// The `position`th accepted message of the default workspace, sent by
/// `source`.
fn accepted(position: u64, source: &str, message: Value) -> RecordedEvent {
    RecordedEvent {
        position: Position(position),
        event_id: EventId(Uuid::from_u128(0xe0000 + u128::from(position))),
        workspace_id: WORKSPACE,
        stream_id: StreamId::new(format!("source-{source}")).unwrap(),
        stream_version: position,
        event_type: MessageAccepted::TYPE.into(),
        schema_version: 1,
        data: Payload::Data(json!({"message": message, "violations": []})),
        metadata: json!({"source_id": source}),
        sealed: true,
        recorded_at: Timestamp(0),
        hash: [0; 32],
    }
}

/// Folds `messages` from source `s1` at positions 1, 2, 3, …
fn given(messages: impl IntoIterator<Item = Value>) -> Profiles {
    given_from(messages.into_iter().map(|message| ("s1", message)))
}

fn given_from<'a>(messages: impl IntoIterator<Item = (&'a str, Value)>) -> Profiles {
    let mut profiles = Profiles::default();
    for (index, (source, message)) in messages.into_iter().enumerate() {
        profiles.apply(&accepted(index as u64 + 1, source, message));
    }
    profiles
}

/// `second` seconds past 2024-01-01T00:00:00Z, as the message carries it.
fn at(second: u32) -> String {
    format!("2024-01-01T00:{:02}:{:02}.000Z", second / 60, second % 60)
}

fn time(second: u32) -> Timestamp {
    Timestamp::parse_rfc3339(&at(second)).unwrap()
}

fn user(value: &str) -> Identifier {
    Identifier::new(IdentifierKind::UserId, value)
}

fn anonymous(value: &str) -> Identifier {
    Identifier::new(IdentifierKind::AnonymousId, value)
}

fn profile_of(profiles: &Profiles, identifier: Identifier) -> Profile {
    profiles.profile(WORKSPACE, &identifier).expect("the identifier has a profile")
}

#[test]
fn traits_last_write_wins_by_timestamp_with_position_breaking_ties() {
    let profiles = given([
        json!({"type": "identify", "userId": "u1", "timestamp": at(10), "traits": {"plan": "pro", "seats": 3}}),
        // Arrives late but happened earlier: it does not overwrite.
        json!({"type": "identify", "userId": "u1", "timestamp": at(5), "traits": {"plan": "free", "country": "FR"}}),
        // Same time, later position: it wins the tie.
        json!({"type": "track", "userId": "u1", "event": "Seen", "timestamp": at(10),
            "context": {"traits": {"seats": 4}}}),
    ]);
    let traits = profile_of(&profiles, user("u1")).traits;
    assert_eq!(traits["plan"].value, json!("pro"));
    assert_eq!(traits["plan"].position, Position(1));
    assert_eq!(traits["country"].value, json!("FR"));
    assert_eq!(traits["seats"].value, json!(4));
    assert_eq!(traits["seats"].position, Position(3));
    assert_eq!(traits["seats"].timestamp, time(10));
    assert_eq!(traits["seats"].source_id.as_deref(), Some("s1"));
}

#[test]
fn identify_traits_outrank_context_traits_of_the_same_call() {
    let profiles = given([json!({"type": "identify", "userId": "u1", "timestamp": at(1),
        "traits": {"plan": "pro"}, "context": {"traits": {"plan": "free", "locale": "fr"}}})]);
    let traits = profile_of(&profiles, user("u1")).traits;
    assert_eq!(traits["plan"].value, json!("pro"));
    assert_eq!(traits["locale"].value, json!("fr"));
}

#[test]
fn a_merge_unites_counts_revenue_sources_timelines_and_keeps_the_newest_trait() {
    let profiles = given_from([
        ("web", json!({"type": "page", "anonymousId": "a1", "name": "Home", "timestamp": at(1)})),
        ("web", json!({"type": "identify", "anonymousId": "a1", "timestamp": at(2), "traits": {"plan": "old"}})),
        ("ios", json!({"type": "identify", "userId": "u1", "timestamp": at(30), "traits": {"plan": "new"}})),
        (
            "ios",
            json!({"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(31),
            "properties": {"revenue": 10.5}}),
        ),
        (
            "web",
            json!({"type": "track", "anonymousId": "a1", "event": "Order Completed", "timestamp": at(3),
            "properties": {"revenue": 2}}),
        ),
        // Login: the older anonymous profile survives, the user's is absorbed.
        ("web", json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "timestamp": at(40)})),
    ]);
    let merged = profile_of(&profiles, user("u1"));
    assert_eq!(merged, profile_of(&profiles, anonymous("a1")));
    assert_eq!(merged.identifiers, [user("u1"), anonymous("a1")]);
    assert_eq!(merged.traits["plan"].value, json!("new"));
    assert_eq!(
        merged.event_counts,
        BTreeMap::from([("page".into(), 1), ("identify".into(), 3), ("Order Completed".into(), 2)])
    );
    assert_eq!(merged.revenue, BTreeMap::from([("USD".into(), 12.5)]));
    assert_eq!(merged.sources, BTreeSet::from(["ios".into(), "web".into()]));
    assert_eq!((merged.first_seen, merged.last_seen), (Some(time(1)), Some(time(40))));
    let positions: Vec<u64> = profiles.timeline(WORKSPACE, merged.id, None, 10).iter().map(|entry| entry.0.0).collect();
    assert_eq!(positions, [6, 5, 4, 3, 2, 1]);
    assert_eq!(merged.merges.len(), 1);
    assert_eq!(merged.merges[0].position, Position(6));
    let absorbed = merged.merges[0].absorbed;
    assert_eq!(profiles.profile_by_id(WORKSPACE, absorbed), Some(merged));
}

#[test]
fn revenue_is_totalled_per_currency_exactly() {
    let profiles = given([
        json!({"type": "track", "userId": "u1", "event": "Buy", "properties": {"revenue": 0.1}}),
        json!({"type": "track", "userId": "u1", "event": "Buy", "properties": {"revenue": 0.2, "currency": "USD"}}),
        json!({"type": "track", "userId": "u1", "event": "Buy", "properties": {"revenue": 7, "currency": "eur"}}),
        json!({"type": "track", "userId": "u1", "event": "Refund", "properties": {"revenue": -2, "currency": "EUR"}}),
        // Not a number, and `total` alone: neither counts.
        json!({"type": "track", "userId": "u1", "event": "Buy", "properties": {"revenue": "9"}}),
        json!({"type": "track", "userId": "u1", "event": "Buy", "properties": {"total": 9}}),
    ]);
    let revenue = profile_of(&profiles, user("u1")).revenue;
    assert_eq!(revenue, BTreeMap::from([("EUR".into(), 5.0), ("USD".into(), 0.3)]));
}

#[test]
fn consent_is_the_latest_by_timestamp() {
    let consent = |marketing: bool| json!({"categoryPreferences": {"marketing": marketing}});
    let profiles = given([
        json!({"type": "track", "userId": "u1", "event": "A", "timestamp": at(10), "context": {"consent": consent(true)}}),
        json!({"type": "track", "userId": "u1", "event": "B", "timestamp": at(5), "context": {"consent": consent(false)}}),
        json!({"type": "track", "userId": "u1", "event": "C", "timestamp": at(20)}),
    ]);
    let current = profile_of(&profiles, user("u1")).consent.expect("consent was given");
    assert_eq!((current.value, current.position), (consent(true), Position(1)));

    let later = given([
        json!({"type": "track", "userId": "u1", "event": "A", "timestamp": at(10), "context": {"consent": consent(true)}}),
        json!({"type": "track", "userId": "u1", "event": "B", "timestamp": at(15), "context": {"consent": consent(false)}}),
    ]);
    assert_eq!(profile_of(&later, user("u1")).consent.map(|consent| consent.value), Some(consent(false)));
}

#[test]
fn the_timeline_is_newest_first_and_paginates_by_position() {
    let profiles =
        given((1..=5).map(|n| json!({"type": "track", "userId": "u1", "event": format!("E{n}"), "timestamp": at(n)})));
    let id = profile_of(&profiles, user("u1")).id;
    let page = |before: Option<u64>| -> Vec<u64> {
        let entries = profiles.timeline(WORKSPACE, id, before.map(Position), 2);
        assert!(entries.iter().all(|entry| entry.1 == id));
        entries.into_iter().map(|entry| entry.0.0).collect()
    };
    assert_eq!(page(None), [5, 4]);
    assert_eq!(page(Some(4)), [3, 2]);
    assert_eq!(page(Some(2)), [1]);
    assert_eq!(page(Some(1)), Vec::<u64>::new());
    let event = accepted(1, "s1", json!({"type": "track", "userId": "u1", "event": "E1", "timestamp": at(1)}));
    let first = timeline_entry_of(&event, id).unwrap();
    assert_eq!((first.message_type.as_str(), first.name.as_deref(), first.timestamp), ("track", Some("E1"), time(1)));
}

#[test]
fn events_whose_identifiers_are_all_blocked_are_attributed_to_nobody() {
    let mut profiles = Profiles::default();
    let blocked = accepted(
        1,
        "s1",
        json!({"type": "track", "userId": "null", "anonymousId": "anonymous",
        "event": "Buy", "traits": {"email": "test@test.com"}, "properties": {"revenue": 5}}),
    );
    assert_eq!(profiles.attribute(&blocked), None);
    let ok = accepted(2, "s1", json!({"type": "track", "userId": "u1", "event": "Buy"}));
    assert!(profiles.attribute(&ok).is_some());
    let ws = profiles.graph().workspace(WORKSPACE).unwrap();
    assert_eq!(ws.profiles().len(), 1);
    assert_eq!(profile_of(&profiles, user("u1")).event_counts, BTreeMap::from([("Buy".into(), 1)]));
    assert_eq!(profiles.profile(WORKSPACE, &user("null")), None);
}

#[test]
fn a_group_call_is_attributed_through_ids_stored_earlier_and_keeps_the_groups_newest_traits() {
    let profiles = given([
        json!({"type": "identify", "userId": "u1", "timestamp": at(1)}),
        json!({"type": "group", "userId": "u1", "groupId": "acme", "timestamp": at(5),
            "traits": {"name": "Acme", "plan": "pro"}}),
        json!({"type": "group", "userId": "u1", "groupId": "acme", "timestamp": at(3), "traits": {"plan": "free"}}),
        json!({"type": "group", "userId": "u2", "groupId": "orphan", "timestamp": at(6)}),
    ]);
    let profile = profile_of(&profiles, user("u1"));
    assert_eq!(profile.groups.keys().collect::<Vec<_>>(), ["acme"]);
    let acme = &profile.groups["acme"].traits;
    assert_eq!((&acme["name"].value, &acme["plan"].value), (&json!("Acme"), &json!("pro")));
    assert_eq!(profile.event_counts, BTreeMap::from([("identify".into(), 1), ("group".into(), 2)]));
    assert!(profile.traits.is_empty(), "group traits are not the person's");
    assert_eq!(profiles.profile(WORKSPACE, &user("u2")), None);
}

/// Every live profile of the workspace, oldest first, with its timeline.
/// A profile as of an event is read off its document when nothing after
/// the event set a trait or the consent of the profile now; otherwise the
/// document gives it back to be folded, and the fold differs.
#[test]
fn a_profile_as_of_an_event_is_read_off_its_document_only_when_nothing_later_set_a_trait() {
    let identify = |second: u32, plan: &str| json!({"type": "identify", "userId": "u1", "traits": {"plan": plan}, "timestamp": at(second)});
    let order =
        |second: u32| json!({"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(second)});
    let messages = vec![identify(1, "free"), order(2), order(3)];
    let events: Vec<RecordedEvent> =
        messages.iter().enumerate().map(|(n, message)| accepted(n as u64 + 1, "s1", message.clone())).collect();
    let (profiles, id) = {
        let profiles = given(messages.clone());
        let id = profile_of(&profiles, user("u1")).id;
        (profiles, id)
    };
    let doc = profiles.doc(WORKSPACE, id).unwrap();
    for position in [1, 2, 3] {
        let past = doc.as_of(Position(position), &Lookup::Profile(id)).unwrap();
        let folded = past.clone().advance(None, &events[..position as usize]).0;
        let read = past.read_off(&doc).expect("nothing after the identify set a trait");
        assert_eq!(read, folded, "as of position {position}");
    }

    // A later identify set the plan: the events before it are folded.
    let mut messages = messages;
    messages.push(identify(4, "pro"));
    let events: Vec<RecordedEvent> =
        messages.iter().enumerate().map(|(n, message)| accepted(n as u64 + 1, "s1", message.clone())).collect();
    let profiles = given(messages.clone());
    let doc = profiles.doc(WORKSPACE, id).unwrap();
    let past = doc.as_of(Position(2), &Lookup::Profile(id)).unwrap();
    let folded = past.clone().advance(None, &events[..2]).0;
    assert_eq!(folded.traits["plan"].value, json!("free"));
    assert!(past.read_off(&doc).is_err(), "the document's plan was set after position 2");
    let past = doc.as_of(Position(4), &Lookup::Profile(id)).unwrap();
    assert_eq!(past.read_off(&doc).unwrap().traits["plan"].value, json!("pro"));

    // An anonymous visitor's traits, merged in later, are not the user's then.
    let messages = vec![
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "free"}, "timestamp": at(1)}),
        json!({"type": "identify", "anonymousId": "a1", "traits": {"city": "Oslo"}, "timestamp": at(2)}),
        json!({"type": "track", "userId": "u1", "anonymousId": "a1", "event": "Signed In", "timestamp": at(3)}),
    ];
    let profiles = given(messages);
    let id = profile_of(&profiles, user("u1")).id;
    let doc = profiles.doc(WORKSPACE, id).unwrap();
    let past = doc.as_of(Position(1), &Lookup::Profile(id)).unwrap();
    assert!(past.read_off(&doc).is_err(), "the city came with a profile merged in after position 1");
    let past = doc.as_of(Position(3), &Lookup::Profile(id)).unwrap();
    assert_eq!(past.read_off(&doc).unwrap().traits.len(), 2, "after the merge, both traits");
}

fn snapshot(profiles: &Profiles) -> Vec<(Profile, Vec<(Position, ProfileId)>)> {
    let Some(ws) = profiles.graph().workspace(WORKSPACE) else { return Vec::new() };
    ws.profiles()
        .into_iter()
        .map(|id| (profiles.profile_by_id(WORKSPACE, id).unwrap(), profiles.timeline(WORKSPACE, id, None, usize::MAX)))
        .collect()
}

/// One random message over a small pool of ids, times and values.
fn arbitrary_message() -> impl Strategy<Value = Value> {
    let pick = |pool: &'static [&'static str]| proptest::option::of(proptest::sample::select(pool));
    (
        0..5usize,
        pick(&["u1", "u2", "u3"]),
        pick(&["a1", "a2", "a3", "a4", "anonymous"]),
        pick(&["x@y.com", "z@y.com", "test@test.com"]),
        0..20u32,
        pick(&["free", "pro", "team"]),
        proptest::option::of((-500..5_000i64, proptest::sample::select(&["USD", "EUR"][..]))),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(kind, user_id, anonymous_id, email, second, plan, revenue, marketing)| {
            let kind = ["identify", "track", "page", "alias", "group"][kind];
            let mut message = json!({"type": kind, "timestamp": at(second), "event": "E", "name": "Home",
                "groupId": "acme", "traits": {"plan": plan}, "context": {"traits": {"email": email}}});
            if let Some(user_id) = user_id {
                message["userId"] = json!(user_id);
            }
            if let Some(anonymous_id) = anonymous_id {
                message[if kind == "alias" { "previousId" } else { "anonymousId" }] = json!(anonymous_id);
            }
            if let Some((cents, currency)) = revenue {
                message["properties"] = json!({"revenue": cents as f64 / 100.0, "currency": currency});
            }
            if let Some(marketing) = marketing {
                message["context"]["consent"] = json!({"categoryPreferences": {"marketing": marketing}});
            }
            message
        })
}

proptest! {
    #[test]
    fn profiles_are_independent_of_batch_size_and_merges_agree_with_attribution(
        messages in proptest::collection::vec(arbitrary_message(), 0..40),
        batch_sizes in proptest::collection::vec(1..6usize, 1..10),
    ) {
        let events: Vec<RecordedEvent> = messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| accepted(index as u64 + 1, ["s1", "s2"][index % 2], message))
            .collect();

        let mut at_once = Profiles::default();
        let attributed: Vec<Option<ProfileId>> = events.iter().map(|event| at_once.attribute(event)).collect();

        let mut batched = Profiles::default();
        let mut rest = events.as_slice();
        for &size in batch_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, later) = rest.split_at(size.min(rest.len()));
            batched.apply_all(batch);
            rest = later;
        }
        let expected = snapshot(&at_once);
        prop_assert_eq!(&snapshot(&batched), &expected);

        let counted: u64 = expected.iter().flat_map(|(profile, _)| profile.event_counts.values()).sum();
        prop_assert_eq!(counted, attributed.iter().flatten().count() as u64);

        // Recording every event straight on the profile it ended up in gives
        // the state that merges built.
        let Some(ws) = at_once.graph().workspace(WORKSPACE) else { return Ok(()) };
        let mut replayed: HashMap<ProfileId, ProfileState> = HashMap::new();
        for (event, profile) in events.iter().zip(&attributed) {
            if let Some(profile) = profile {
                let live = ws.resolve(*profile).expect("an attributed profile stays live or absorbed");
                let message = event.data.value().unwrap().get("message").unwrap();
                replayed.entry(live).or_default().record(event, message, *profile);
            }
        }
        let empty = ProfileState::default();
        for id in ws.profiles() {
            let built = at_once.state(WORKSPACE, id).unwrap_or(&empty);
            prop_assert_eq!(built, replayed.get(&id).unwrap_or(&empty));
        }
        prop_assert_eq!(at_once.workspaces.get(&WORKSPACE).map_or(0, HashMap::len), replayed.len());
    }
}

/// One random message that names, besides what the folds read, what they
/// do not (`context.page`, other properties, `enrichment`), with custom
/// identifier kinds, consent in both dialects and violations.
fn arbitrary_rich_event() -> impl Strategy<Value = (Value, Value)> {
    (arbitrary_message(), 0..4usize, proptest::option::of(proptest::sample::select(&["c1", "c2"][..])), any::<bool>())
        .prop_map(|(mut message, extra, crm, flagged)| {
            message["context"]["page"] = json!({"url": "https://shop.example/p/1", "title": "P"});
            message["context"]["library"] = json!({"name": "analytics.js"});
            if let Some(crm) = crm {
                message["context"]["externalIds"] = json!([{"type": "crm", "id": crm, "collection": "users"}]);
                message["traits"]["loyalty"] = json!(format!("l-{crm}"));
            }
            match extra {
                0 => {
                    message["context"]["consentManagement"] =
                        json!({"allowedConsentIds": ["ads"], "deniedConsentIds": [7]})
                }
                1 => message["properties"]["sku"] = json!(["a", {"deep": [1, 2.5, null]}]),
                2 => message["messageId"] = json!("m-1"),
                _ => message["context"]["traits"]["phone"] = json!("+14155550100"),
            }
            let violations =
                if flagged { json!([{"field": "context.traits.email", "rule": "email"}]) } else { json!([]) };
            let data = json!({"message": message, "enrichment": {"ip": "203.0.113.7"}, "originals": {},
                "violations": violations});
            (data, json!({"source_id": "s1", "request_id": "r"}))
        })
}

proptest! {
    #[test]
    fn folding_only_the_folded_parts_gives_the_profiles_whole_messages_give(
        events in proptest::collection::vec(arbitrary_rich_event(), 0..40),
    ) {
        let rules = IdentityRules::default()
            .with_custom(onepd_domain::identity::CustomKind {
                name: "crm".into(),
                from: onepd_domain::identity::CustomSource::ExternalId,
            })
            .with_custom(onepd_domain::identity::CustomKind {
                name: "loyalty".into(),
                from: onepd_domain::identity::CustomSource::Trait("loyalty".into()),
            });
        let mut whole = Profiles::new(rules.clone());
        let mut parted = Profiles::new(rules);
        for (index, (data, metadata)) in events.into_iter().enumerate() {
            let mut event = accepted(index as u64 + 1, "s1", Value::Null);
            event.metadata = metadata;
            let text = serde_json::to_vec(&data).unwrap();
            let parts = onepd_domain::fields::Fields::of(FOLDED_PARTS, MessageAccepted::TYPE);
            event.data = Payload::Data(data);
            whole.apply(&event);
            event.data = Payload::Data(parts.decode(&text).unwrap());
            parted.apply(&event);
        }
        prop_assert_eq!(snapshot(&parted), snapshot(&whole));
        let docs = |profiles: &Profiles| -> Vec<ProfileDoc> {
            let ids = profiles.graph().workspace(WORKSPACE).map(|ws| ws.profiles()).unwrap_or_default();
            ids.into_iter().filter_map(|id| profiles.doc(WORKSPACE, id)).collect()
        };
        prop_assert_eq!(docs(&parted), docs(&whole));
    }
}
